"""LARS as SimCLR uses it: which parameters get weight decay and the trust
ratio, checked against a hand-written update."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_contrastive import config as config_lib
from attn_contrastive.models.simclr import simclr_from_config
from attn_contrastive.train import optim
from helpers import zip_leaves


def test_decay_mask_takes_kernels_and_leaves_biases_and_batchnorm():
  c = config_lib.base_config()
  c.model.update(dict(depth=10, width=4, proj_hidden_dim=8, proj_out_dim=4, conv_impl="xla"))
  model = simclr_from_config(c.model)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)),
                                             train=False))["params"]
  mask = optim.decay_mask(params)
  for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]:
    name = jax.tree_util.keystr(path)
    assert decayed == name.endswith("['kernel']"), name
  # The projection head: bias-free dense layers, BatchNorm after each.
  head = params["head"]
  assert set(head) == {"hidden0", "hidden0_bn", "output", "output_bn"}
  assert set(head["output"]) == {"kernel"} and set(head["output_bn"]) == {"scale"}
  assert set(head["hidden0_bn"]) == {"scale", "bias"}


def test_lars_update_matches_hand_computation():
  cfg = config_lib.base_config().optim
  cfg.update(dict(weight_decay=0.1, momentum=0.9, trust_coefficient=1e-3))
  lr = 2.0
  tx = optim.make_optimizer(cfg, optax.constant_schedule(lr))
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
            "bn": {"scale": rng.normal(size=4).astype(np.float32),
                   "bias": rng.normal(size=4).astype(np.float32)}}
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  updates2, _ = tx.update(grads, state, params)
  # Kernel: g + wd·w, scaled by eta·|w| / |g + wd·w|, times -lr; then momentum.
  w, g = params["conv"]["kernel"].astype(np.float64), grads["conv"]["kernel"]
  d = g + 0.1 * w
  first = -lr * 1e-3 * np.linalg.norm(w) / np.linalg.norm(d) * d
  np.testing.assert_allclose(updates["conv"]["kernel"], first, rtol=1e-5)
  np.testing.assert_allclose(updates2["conv"]["kernel"], first * 1.9, rtol=1e-5)
  # BatchNorm scale and bias: plain SGD with momentum, no decay, no trust ratio.
  for k in ("scale", "bias"):
    np.testing.assert_allclose(updates["bn"][k], -lr * grads["bn"][k], rtol=1e-6)
    np.testing.assert_allclose(updates2["bn"][k], -lr * 1.9 * grads["bn"][k], rtol=1e-6)


@pytest.mark.parametrize("impl", ["tpu", "cuda"])
def test_initialisation_names_its_random_algorithm(impl):
  """Parameters are drawn with Philox named in the program, so a GPU or TPU
  computes the same bits as the CPU (XLA's default generator differs by
  backend); on the CPU the values are those of a plain rbg key."""
  from attn_contrastive.train import state as state_lib
  model = simclr_from_config(_tiny_model())

  def init(key):
    return model.init(key, jnp.zeros((1, 16, 16, 3)), train=False)

  key = state_lib.init_key(0)
  text = jax.jit(init).trace(key).lower(lowering_platforms=(impl,)).as_text()
  algos = [line.split("algorithm = ")[1].split()[0] for line in text.splitlines()
           if "rng_bit_generator" in line]
  assert algos and set(algos) == {"PHILOX"}
  ours = jax.jit(init)(key)["params"]
  rbg = jax.jit(init)(jax.random.key(0, impl="rbg"))["params"]
  for a, b in zip_leaves(ours, rbg):
    np.testing.assert_array_equal(a, b)
  other = jax.jit(init)(state_lib.init_key(1))["params"]
  assert not np.allclose(ours["encoder"]["stem_conv"]["kernel"],
                         other["encoder"]["stem_conv"]["kernel"])


def _tiny_model():
  c = config_lib.base_config()
  c.model.update(dict(depth=10, width=4, proj_hidden_dim=8, proj_out_dim=4, conv_impl="xla"))
  return c.model
