"""Attention heads and the attention loss against an independent NumPy version."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_contrastive import losses
from attn_contrastive.models.attention import AttentionHeads, spatial_softmax
from attn_contrastive.models.resnet import ResNet


def _np_softmax(z):
  z = z.reshape(len(z), -1).astype(np.float64)
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def _np_attention_loss(logits, teacher, alpha, beta, quantile=None):
  total = 0.0
  for s in logits:
    m = _np_softmax(logits[s])
    q = np.maximum(teacher[s].reshape(len(m), -1).astype(np.float64), 0)
    q = q / q.sum(1, keepdims=True)
    kld = np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / m), 0), 1)
    z = (m - m.mean(1, keepdims=True)) / m.std(1, keepdims=True)
    if quantile is None:
      w = q
    else:
      w = (q >= np.quantile(q, quantile, axis=1, keepdims=True)).astype(np.float64)
    nss = np.sum(w * z, 1) / w.sum(1)
    total += np.mean(alpha * kld - beta * nss)
  return total


@pytest.mark.parametrize("quantile", [None, 0.8])
def test_attention_loss_matches_numpy(quantile):
  rng = np.random.default_rng(0)
  logits = {"conv3": rng.normal(size=(4, 8, 8)).astype(np.float32),
            "conv4": rng.normal(size=(4, 4, 4)).astype(np.float32)}
  teacher = {"conv3": rng.random((4, 8, 8)).astype(np.float32) * 3,
             "conv4": rng.random((4, 4, 4)).astype(np.float32)}
  teacher["conv3"][0, :4] = 0.0  # zeros in the target: KLD terms drop out
  loss, metrics = losses.attention_loss(logits, teacher, 1.0, 0.5, quantile)
  expected = _np_attention_loss(logits, teacher, 1.0, 0.5, quantile)
  np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-5)
  assert set(metrics) == {"attn_kld/conv3", "attn_nss/conv3", "attn_kld/conv4", "attn_nss/conv4"}


def test_negative_quantile_means_density_target():
  rng = np.random.default_rng(1)
  logits = {"conv3": rng.normal(size=(2, 4, 4)).astype(np.float32)}
  teacher = {"conv3": rng.random((2, 4, 4)).astype(np.float32)}
  a, _ = losses.attention_loss(logits, teacher, 1.0, 1.0, -1)
  b, _ = losses.attention_loss(logits, teacher, 1.0, 1.0, None)
  np.testing.assert_allclose(a, b)


def test_heads_shapes_and_gradient():
  encoder = ResNet(depth=10, width=4, stem_kernel=3, stem_stride=1, stem_pool=False,
                   conv_impl="xla")
  heads = AttentionHeads(stages=("conv3", "conv4"), width=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  feats, _ = encoder.init_with_output(jax.random.PRNGKey(1), x, train=False)
  variables = heads.init(jax.random.PRNGKey(2), feats, train=False)
  logits = heads.apply(variables, feats, train=False)
  assert logits["conv3"].shape == (2, 8, 8) and logits["conv4"].shape == (2, 4, 4)
  np.testing.assert_allclose(spatial_softmax(logits["conv3"]).sum((1, 2)), 1.0, rtol=1e-5)
  teacher = {s: jax.random.uniform(jax.random.PRNGKey(3), v.shape) for s, v in logits.items()}

  def f(params):
    out = heads.apply({**variables, "params": params}, feats, train=False)
    return losses.attention_loss(out, teacher, 1.0, 0.1)[0]

  grads = jax.grad(f)(variables["params"])
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert max(float(jnp.abs(g).max()) for g in leaves) > 0


def _tiny_attn_config():
  from attn_contrastive import config as config_lib
  c = config_lib.base_config()
  c.data.image_size = 16
  c.model.update(dict(depth=10, width=4, stem_kernel=3, stem_stride=1, stem_pool=False,
                      proj_hidden_dim=16, proj_out_dim=8, conv_impl="xla"))
  c.optim.update(dict(base_lr=1.0, warmup_epochs=0.0))
  c.attention.update(dict(enabled=True, width=4, beta=0.5, map_size=8))
  return c


def _fused_steps(n_devices, config, batch):
  from attn_contrastive.models.simclr import simclr_from_config
  from attn_contrastive.tasks import pretrain
  from attn_contrastive.train import loop, mesh as mesh_lib, optim
  from attn_contrastive.train.state import create_train_state
  model = simclr_from_config(config.model, config.attention)
  mesh = mesh_lib.make_mesh(n_devices)
  schedule = optim.make_schedule(config.optim, 16, 4, 1)
  tx = optim.make_optimizer(config.optim, schedule)
  state = create_train_state(model, tx, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32),
                             0, mesh_lib.replicated(mesh))
  init = jax.device_get(state.params)
  step = loop.jit_train_step(
      loop.make_train_step(pretrain.make_loss_fn(model, config), schedule), mesh)
  rng = jax.device_put(jax.random.PRNGKey(1), mesh_lib.replicated(mesh))
  for _ in range(2):
    state, metrics = step(state, mesh_lib.to_global(batch, mesh), rng)
  return init, *jax.device_get((state.params, state.batch_stats, metrics))


def test_fused_attention_step_eight_devices_equal_one():
  assert jax.device_count() == 8
  config = _tiny_attn_config()
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8) for k in ("view1", "view2")}
  batch.update({k: rng.random((16, 8, 8)).astype(np.float32) for k in ("map1", "map2")})
  _, p8, s8, m8 = _fused_steps(8, config, batch)
  p0, p1, s1, m1 = _fused_steps(1, config, batch)
  for k in ("loss", "nt_xent", "attn_loss", "attn_kld/conv3", "attn_nss/conv4"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m1["nt_xent"] + m1["attn_loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves((p8, s8)), jax.tree.leaves((p1, s1))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  head0 = jax.tree.leaves(p0["attention"])
  head1 = jax.tree.leaves(p1["attention"])
  assert max(np.abs(a - b).max() for a, b in zip(head0, head1)) > 1e-4


def test_contrastive_views_carry_aligned_maps():
  from attn_contrastive.data import pipeline
  aug = _tiny_attn_config().aug
  rng = np.random.default_rng(0)
  example = {"image": rng.integers(0, 256, (24, 24, 3), dtype=np.uint8),
             "attention_map": rng.integers(0, 256, (12, 12), dtype=np.uint8)}
  with_maps = pipeline.ContrastiveViews(16, aug, 8)(example, np.random.default_rng(5))
  plain = pipeline.ContrastiveViews(16, aug)(example, np.random.default_rng(5))
  assert with_maps["map1"].shape == with_maps["map2"].shape == (8, 8)
  assert "map1" not in plain
  np.testing.assert_array_equal(with_maps["view1"], plain["view1"])
  np.testing.assert_array_equal(with_maps["view2"], plain["view2"])
