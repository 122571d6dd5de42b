"""The benchmark's FLOP count (the numerator of MFU) against hand counts."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import train_step  # noqa: E402


def _conv(x, w, stride):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_forward_flops_match_hand_count():
  x, w, d = jnp.ones((4, 16, 16, 3)), jnp.ones((3, 3, 3, 8)), jnp.ones((8 * 16 * 16, 10))
  f = lambda x, w, d: jnp.sum(_conv(x, w, 1).reshape(4, -1) @ d)
  expected = 2 * 4 * 16 * 16 * 8 * (3 * 3 * 3) + 2 * 4 * (8 * 16 * 16) * 10
  assert train_step.jaxpr_flops(jax.make_jaxpr(f)(x, w, d).jaxpr) == expected


def test_gradient_of_strided_conv_counts_three_passes():
  """Forward, input gradient and weight gradient each cost one forward, even with
  stride 2 (the input gradient's dilation holes are not work)."""
  x, w = jnp.ones((2, 16, 16, 4)), jnp.ones((3, 3, 4, 8))
  f = lambda x, w: jnp.sum(_conv(x, w, 2))
  forward = 2 * 2 * 8 * 8 * 8 * (3 * 3 * 4)
  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, w).jaxpr
  assert train_step.jaxpr_flops(jaxpr) == 3 * forward


def test_scan_body_counted_per_iteration():
  a = jnp.ones((5, 7))
  f = lambda a: jax.lax.scan(lambda c, _: (c @ jnp.ones((7, 7)), None), a, None, length=6)[0]
  assert train_step.jaxpr_flops(jax.make_jaxpr(f)(a).jaxpr) == 6 * 2 * 5 * 7 * 7
  np.testing.assert_array_equal(f(a), a * 7.0 ** 6)


def test_torch_reference_mirrors_the_model():
  """The PyTorch SimCLR network has exactly the Flax model's parameter count,
  and its NT-Xent equals the project's."""
  import torch
  from attn_contrastive import config as config_lib
  from attn_contrastive import losses
  from attn_contrastive.models.simclr import simclr_from_config
  from attn_contrastive.train.state import count_params
  import torch_reference
  root = os.path.dirname(os.path.dirname(__file__))
  for arg in ("synthetic", "imagenet"):
    c = config_lib.load_config_file(os.path.join(root, "configs", f"contrastive.py:{arg}"))
    model = simclr_from_config(c.model)
    s = c.data.image_size
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3)))
    net = torch_reference.SimCLRNet(c.model)
    assert sum(p.numel() for p in net.parameters()) == count_params(shapes["params"])
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 6, 8)).astype(np.float32)
  np.testing.assert_allclose(
      float(torch_reference.nt_xent(torch.from_numpy(z1), torch.from_numpy(z2), 0.2)),
      float(losses.nt_xent(z1, z2, 0.2)), rtol=1e-5)
