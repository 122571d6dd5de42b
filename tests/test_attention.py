"""Attention heads and the attention loss against an independent NumPy version."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fakes import human_squares
from helpers import TINY_MODEL, TINY_RESNET, filled_variables, zip_leaves

from attn_contrastive import losses
from attn_contrastive.models.attention import AttentionHeads, spatial_softmax
from attn_contrastive.models.resnet import ResNet
from attn_contrastive.saliency import jax_metrics


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
  loss, metrics = jax.jit(losses.attention_loss, static_argnums=(2, 3, 4))(
      logits, teacher, 1.0, 0.5, quantile)
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
  encoder = ResNet(**TINY_RESNET)
  heads = AttentionHeads(stages=("conv3", "conv4"), width=4)
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  feats = jax.jit(functools.partial(encoder.apply, train=False))(
      filled_variables(encoder, x.shape), x)
  variables = jax.jit(functools.partial(heads.init, train=False))(jax.random.PRNGKey(2), feats)
  logits = jax.jit(functools.partial(heads.apply, train=False))(variables, feats)
  assert logits["conv3"].shape == (2, 8, 8) and logits["conv4"].shape == (2, 4, 4)
  np.testing.assert_allclose(spatial_softmax(logits["conv3"]).sum((1, 2)), 1.0, rtol=1e-5)
  teacher = {s: jax.random.uniform(jax.random.PRNGKey(3), v.shape) for s, v in logits.items()}

  def f(params):
    out = heads.apply({**variables, "params": params}, feats, train=False)
    return losses.attention_loss(out, teacher, 1.0, 0.1)[0]

  grads = jax.jit(jax.grad(f))(variables["params"])
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert max(float(jnp.abs(g).max()) for g in leaves) > 0


def _tiny_attn_config():
  from attn_contrastive import config as config_lib
  c = config_lib.base_config()
  c.data.image_size = 16
  c.model.update(TINY_MODEL)
  c.optim.update(dict(base_lr=1.0, warmup_epochs=0.0))
  c.attention.update(dict(enabled=True, width=4, beta=0.5, map_size=8))
  return c


def _fused_steps(n_devices, config, batch):
  from helpers import run_steps
  from attn_contrastive.models.simclr import simclr_from_config
  from attn_contrastive.tasks import pretrain
  model = simclr_from_config(config.model, config.attention)
  return run_steps(n_devices, config, model, pretrain.make_loss_fn(model, config), batch)


def test_fused_attention_step_eight_devices_equal_one():
  assert jax.device_count() == 8
  config = _tiny_attn_config()
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8) for k in ("view1", "view2")}
  batch.update({k: rng.random((16, 8, 8)).astype(np.float32) for k in ("map1", "map2")})
  _, p8, s8, m8 = _fused_steps(8, config, batch)
  p0, p1, s1, m1 = _fused_steps(1, config, batch)
  # 8 devices sum the batch's rows in another order (about n·eps relative per sum);
  # two steps at 1.0 · 16/256 under LARS carry it to ~1e-6 in the parameters
  # (measured ≤ 0.16 of the tolerance). atol for metrics near zero (NSS ≈ 3e-3).
  for k in ("loss", "nt_xent", "attn_loss", "attn_kld/conv3", "attn_nss/conv4"):
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m1["nt_xent"] + m1["attn_loss"], rtol=1e-5)
  for a, b in zip_leaves((p8, s8), (p1, s1)):
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


def test_supervised_loss_is_cross_entropy_plus_attention():
  """The supervised attention row's loss: CE + L_attn of the resized crop maps,
  each term against NumPy; the heads get a non-zero gradient."""
  from attn_contrastive.models.build import build_model
  from attn_contrastive.models.forward import normalize_images
  from attn_contrastive.tasks import supervised
  c = _tiny_attn_config()
  c.task = "supervised"
  model = build_model(c)
  rng = np.random.default_rng(2)
  batch = {"image": rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, 6).astype(np.int32),
           "map": rng.random((6, 8, 8)).astype(np.float32)}
  x = normalize_images(batch["image"])
  variables = filled_variables(model, x.shape)
  loss_fn = supervised.make_loss_fn(model, c)
  (loss, (_, metrics)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables["params"], variables["batch_stats"], batch, None)
  out, _ = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  logits = np.asarray(out["logits"], np.float64)
  logp = logits - logits.max(1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(1, keepdims=True))
  ce = -np.mean(logp[np.arange(6), batch["label"]])
  heads = {s: np.asarray(v) for s, v in out["attention_logits"].items()}
  teacher = {s: np.asarray(jax_metrics.resize_maps(batch["map"], v.shape[1:]))
             for s, v in heads.items()}
  assert teacher["conv3"].shape == (6, 8, 8) and teacher["conv4"].shape == (6, 4, 4)
  attn = _np_attention_loss(heads, teacher, c.attention.alpha, c.attention.beta)
  np.testing.assert_allclose(metrics["cross_entropy"], ce, rtol=1e-4)
  np.testing.assert_allclose(metrics["attn_loss"], attn, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(loss, ce + attn, rtol=1e-4)
  head_grads = jax.tree.leaves(grads["attention"])
  assert max(float(jnp.abs(g).max()) for g in head_grads) > 0


def test_supervised_view_keeps_a_square_aligned():
  """A bright square in the image and the same square in a half-size map stay
  on the same pixels through random crops and flips."""
  from attn_contrastive.data import pipeline
  aug = _tiny_attn_config().aug
  image = np.zeros((32, 32, 3), np.uint8)
  image[8:16, 12:20] = 255
  amap = np.zeros((16, 16), np.uint8)
  amap[4:8, 6:10] = 255
  example = {"image": image, "attention_map": amap, "label": 3}
  view = pipeline.SupervisedView(16, aug, 16)
  for seed in range(40):
    out = view(example, np.random.default_rng(seed))
    assert out["label"] == 3 and out["map"].shape == (16, 16)
    in_image = out["image"].mean(-1) > 127
    in_map = out["map"] > 127
    assert np.mean(in_image == in_map) >= 0.95, seed


def test_cotrain_views_bring_aligned_human_examples():
  from attn_contrastive.data import pipeline
  aug = _tiny_attn_config().aug
  example = {"image": np.full((24, 24, 3), 90, np.uint8)}
  views = pipeline.CoTrainViews(16, aug, 16, human_squares(5, 32, side=10, seed=3))
  plain = pipeline.ContrastiveViews(16, aug)
  for seed in range(25):
    out = views(example, np.random.default_rng(seed))
    assert set(out) == {"view1", "view2", "human_image", "human_map"}
    ref = plain(example, np.random.default_rng(seed))
    np.testing.assert_array_equal(out["view1"], ref["view1"])  # same draws first
    assert out["human_image"].shape == (16, 16, 3) and out["human_map"].shape == (16, 16)
    in_image = out["human_image"].mean(-1) > 127
    assert np.mean(in_image == (out["human_map"] > 127)) >= 0.95, seed


def _submodule_forward(model, variables, x, train=True):
  """One submodule of the SimCLR model on its own (its outputs and new stats)."""
  name = {"ResNet": "encoder", "ProjectionHead": "head", "AttentionHeads": "attention"}[
      type(model).__name__]
  apply = jax.jit(functools.partial(model.apply, train=train, mutable=["batch_stats"]))
  out, upd = apply({"params": variables["params"][name],
                    "batch_stats": variables["batch_stats"][name]}, x)
  return out, upd["batch_stats"]


@pytest.mark.parametrize("cotrain_bn", ["separate", "joint"])
def test_cotrain_loss_uses_views_for_nt_xent_and_human_images_for_heads(cotrain_bn):
  """NT-Xent of the fused co-train step uses the views only (projection head
  and its BatchNorm included), L_attn the human images' heads against the
  human maps; with ``separate`` BatchNorm the encoder's batch (and running)
  statistics come from the views alone, with ``joint`` from views and human
  images together. The reference runs the encoder, projection head and
  attention heads as separate modules."""
  from attn_contrastive.models.simclr import simclr_from_config
  from attn_contrastive.models.forward import normalize_images
  from attn_contrastive.tasks import pretrain
  c = _tiny_attn_config()
  c.attention.labels = "human"
  c.attention.cotrain_bn = cotrain_bn
  model = simclr_from_config(c.model, c.attention)
  rng = np.random.default_rng(4)
  batch = {k: rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
           for k in ("view1", "view2", "human_image")}
  batch["human_map"] = rng.random((4, 8, 8)).astype(np.float32)
  views = normalize_images(np.concatenate([batch["view1"], batch["view2"]]))
  human = normalize_images(batch["human_image"])
  variables = filled_variables(model, views.shape)
  loss, (stats, metrics) = jax.jit(pretrain.make_loss_fn(model, c))(
      variables["params"], variables["batch_stats"], batch, None)

  if cotrain_bn == "joint":
    feats, enc_stats = _submodule_forward(model.encoder, variables, np.concatenate([views, human]))
    view_feats = {k: v[:8] for k, v in feats.items()}
    human_feats = {k: v[8:] for k, v in feats.items()}
  else:
    view_feats, enc_stats = _submodule_forward(model.encoder, variables, views)
    human_feats, _ = _submodule_forward(model.encoder, variables, human)
  z, head_stats = _submodule_forward(model.head, variables, view_feats["pooled"])
  logits, attn_stats = _submodule_forward(model.attention, variables, human_feats)
  z1, z2 = np.split(np.asarray(z), 2)
  np.testing.assert_allclose(metrics["nt_xent"],
                             losses.nt_xent(z1, z2, c.loss.temperature), rtol=5e-5)
  # (rtol: the temperature, 0.2, multiplies the logits' rounding by 5)
  heads = {s: np.asarray(v) for s, v in logits.items()}
  teacher = {s: np.asarray(jax_metrics.resize_maps(batch["human_map"], v.shape[1:]))
             for s, v in heads.items()}
  attn = _np_attention_loss(heads, teacher, c.attention.alpha, c.attention.beta)
  np.testing.assert_allclose(metrics["attn_loss"], attn, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(loss, metrics["nt_xent"] + attn, rtol=1e-4)
  want = {"encoder": enc_stats, "head": head_stats, "attention": attn_stats}
  for a, b in zip_leaves(stats, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
