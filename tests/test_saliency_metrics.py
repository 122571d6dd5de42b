"""Tests of the saliency metrics (NumPy reference and JAX batched versions)."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_contrastive.saliency import jax_metrics as jm
from attn_contrastive.saliency import metrics as sm


def _gaussian_map(h, w, cy, cx, sigma):
  """A Gaussian blob (unnormalised) centred at (cy, cx)."""
  y, x = np.mgrid[0:h, 0:w]
  return np.exp(-((y - cy)**2 + (x - cx)**2) / (2 * sigma**2))


@pytest.fixture
def scene():
  """A small ground truth: blurred map from a few fixations."""
  rng = np.random.default_rng(1)
  h, w = 24, 32
  fix_rc = np.stack([rng.integers(4, h - 4, 12), rng.integers(4, w - 4, 12)], axis=1)
  fix = sm.fixations_to_map(fix_rc, h, w)
  gt = cv2.GaussianBlur(fix.astype(np.float64), (0, 0), 2.0)
  return gt, fix


def _auc_judd_loop(sal, fix):
  """MIT AUC_Judd.m transcribed with explicit loops (no jitter), for reference."""
  s = (sal - sal.min()) / (sal.max() - sal.min())
  S, F = s.ravel(), fix.ravel() > 0
  th = np.sort(S[F])[::-1]
  n_fix, n_pix = th.size, S.size
  tp, fp = [0.0], [0.0]
  for i, t in enumerate(th, start=1):
    tp.append(i / n_fix)
    fp.append((np.sum(S >= t) - i) / (n_pix - n_fix))
  tp.append(1.0)
  fp.append(1.0)
  return np.trapezoid(tp, fp)


# ----------------------------------------------------------------- identities


def test_map_equal_to_ground_truth(scene):
  gt, _ = scene
  assert sm.cc(gt, gt) == pytest.approx(1.0, abs=1e-12)
  assert sm.kld(gt, gt) == pytest.approx(0.0, abs=1e-9)
  assert sm.sim(gt, gt) == pytest.approx(1.0, abs=1e-12)


def test_scale_and_shift_invariance(scene):
  gt, fix = scene
  pred = gt + 0.3 * _gaussian_map(*gt.shape, 12, 16, 6)
  for fn in (sm.nss, sm.auc_judd, sm.auc_borji):
    assert fn(3.0 * pred + 7.0, fix) == pytest.approx(fn(pred, fix), abs=1e-9)
  assert sm.cc(3.0 * pred - 7.0, gt) == pytest.approx(sm.cc(pred, gt), abs=1e-12)
  assert sm.kld(5.0 * pred, gt) == pytest.approx(sm.kld(pred, gt), abs=1e-12)


def test_peaked_on_fixations(scene):
  _, fix = scene
  pred = fix.astype(np.float64)
  # z-score of a binary map with k ones out of N at a one: sqrt((N-k)/k).
  k, n = fix.sum(), fix.size
  assert sm.nss(pred, fix) == pytest.approx(np.sqrt((n - k) / k))
  assert sm.nss(pred, fix) > 5
  assert sm.auc_judd(pred, fix) == pytest.approx(1.0, abs=1e-6)
  assert sm.auc_borji(pred, fix) > 0.95


def test_hand_example_3x3():
  # P = 1..9 row-major; fixations at the values 3 (row 0, col 2) and 8 (row 2, col 1).
  # mean 5, population variance (16+9+4+1+0+1+4+9+16)/9 = 20/3,
  # z(3) = -2/sqrt(20/3), z(8) = 3/sqrt(20/3), NSS = (1/2)/sqrt(20/3) = 0.19365.
  # AUC-Judd: 2 fixations, 7 other pixels. Threshold 8: 2 pixels >= 8, tp = 1/2,
  # fp = (2-1)/7. Threshold 3: 7 pixels >= 3, tp = 1, fp = (7-2)/7.
  # Curve (0,0) (1/7,1/2) (5/7,1) (1,1): area 1/28 + 3/7 + 2/7 = 21/28 = 0.75.
  pred = np.arange(1.0, 10.0).reshape(3, 3)
  fix = np.zeros((3, 3), bool)
  fix[0, 2] = fix[2, 1] = True
  assert sm.nss(pred, fix) == pytest.approx(0.5 / np.sqrt(20 / 3))
  assert sm.nss(pred, fix) == pytest.approx(0.19365, abs=1e-5)
  assert sm.auc_judd(pred, fix) == pytest.approx(0.75, abs=1e-6)
  assert sm.auc_judd(pred, fix, jitter=False) == pytest.approx(0.75)


def test_auc_judd_matches_mit_loop():
  rng = np.random.default_rng(3)
  sal = rng.random((15, 20))
  fix = rng.random((15, 20)) < 0.1
  assert sm.auc_judd(sal, fix, jitter=False) == pytest.approx(_auc_judd_loop(sal, fix))
  assert sm.auc_judd(sal, fix) == pytest.approx(_auc_judd_loop(sal, fix), abs=1e-6)


def test_auc_judd_jitter_is_deterministic():
  pred = np.zeros((8, 8))
  pred[2:6, 2:6] = 1.0  # many ties
  fix = np.zeros((8, 8), bool)
  fix[3, 3] = fix[0, 0] = True
  assert sm.auc_judd(pred, fix) == sm.auc_judd(pred, fix)
  assert sm.auc_judd(pred, fix, seed=0) == sm.auc_judd(pred, fix, seed=0)


def test_auc_borji_and_shuffled(scene):
  gt, fix = scene
  assert 0.5 < sm.auc_borji(gt, fix) <= 1.0
  assert sm.auc_borji(gt, fix, seed=4) == sm.auc_borji(gt, fix, seed=4)
  h, w = gt.shape
  # Other images' fixations cluster at the centre: a centre prior is no
  # better than chance at separating them from this image's central fixations.
  other = np.zeros_like(fix)
  other[h // 2 - 3:h // 2 + 3, w // 2 - 3:w // 2 + 3] = True
  centre = sm.center_bias_map(h, w)
  own = np.zeros_like(fix)
  own[h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2] = True
  assert sm.auc_borji(centre, own) > 0.9
  assert sm.auc_shuffled(centre, own, other) == pytest.approx(0.5, abs=0.15)
  assert sm.auc_shuffled(gt, fix, other) > 0.5
  with pytest.raises(ValueError, match="other fixation map has no fixations"):
    sm.auc_shuffled(gt, fix, np.zeros_like(fix))
  with pytest.raises(ValueError, match="other_fixation_map shape"):
    sm.auc_shuffled(gt, fix, np.ones((3, 3)))


# ----------------------------------------------------------------- conventions


def test_constant_map(scene):
  gt, fix = scene
  const = np.full(gt.shape, 0.7)
  assert sm.nss(const, fix) == 0.0
  assert sm.cc(const, gt) == 0.0
  assert sm.cc(gt, const) == 0.0
  assert sm.auc_judd(const, fix) == 0.5
  assert sm.auc_borji(const, fix) == 0.5
  assert sm.auc_shuffled(const, fix, fix) == 0.5
  # A constant map is the uniform density for KLD, SIM and information gain.
  q = gt / gt.sum()
  n = gt.size
  assert sm.kld(const, gt) == pytest.approx(np.sum(q * np.log(q * n + 1e-300)), rel=1e-9)
  gt_density = (gt - gt.min()) / np.sum(gt - gt.min())
  assert sm.sim(const, gt) == pytest.approx(np.minimum(gt_density, 1 / n).sum())
  uniform = np.ones(gt.shape)
  assert sm.info_gain(const, fix, uniform) == pytest.approx(0.0, abs=1e-12)


def test_constant_after_resize_is_still_constant(scene):
  gt, fix = scene
  assert sm.nss(np.full((5, 7), 0.3), fix) == 0.0


def test_empty_fixation_map(scene):
  gt, fix = scene
  empty = np.zeros_like(fix)
  for call in (lambda: sm.nss(gt, empty), lambda: sm.auc_judd(gt, empty),
               lambda: sm.auc_borji(gt, empty), lambda: sm.auc_shuffled(gt, empty, fix),
               lambda: sm.info_gain(gt, empty, gt)):
    with pytest.raises(ValueError, match="fixation map has no fixations"):
      call()


def test_invalid_inputs(scene):
  gt, fix = scene
  bad = gt.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    sm.nss(bad, fix)
  with pytest.raises(ValueError, match="NaN"):
    sm.cc(gt, bad)
  with pytest.raises(ValueError, match="negative"):
    sm.kld(gt - 0.5, gt)
  with pytest.raises(ValueError, match="negative"):
    sm.kld(gt, gt - 0.5)
  with pytest.raises(ValueError, match="negative"):
    sm.nss(gt, -fix.astype(float))
  with pytest.raises(ValueError, match="sums to zero"):
    sm.kld(gt, np.zeros_like(gt))
  with pytest.raises(ValueError, match="2-D"):
    sm.cc(np.zeros((2, 3, 4)), gt)
  with pytest.raises(ValueError, match="every pixel"):
    sm.auc_judd(gt, np.ones_like(fix))
  with pytest.raises(ValueError, match="gt_map shape"):
    sm.evaluate_all(gt, gt[:-1], fix)


def test_negative_values_allowed_where_shift_invariant(scene):
  gt, fix = scene
  shifted = gt - 10.0
  assert sm.nss(shifted, fix) == pytest.approx(sm.nss(gt, fix))
  assert sm.cc(shifted, gt) == pytest.approx(1.0)
  assert sm.sim(shifted, gt) == pytest.approx(1.0)
  assert sm.auc_judd(shifted, fix) == pytest.approx(sm.auc_judd(gt, fix))


def test_channel_axis_is_dropped(scene):
  gt, fix = scene
  assert sm.cc(gt[..., None], gt[..., None]) == pytest.approx(1.0)


def test_resize_to_ground_truth_size(scene):
  gt, fix = scene
  h, w = gt.shape
  small = _gaussian_map(h // 2 + 1, w // 2 - 3, 5, 6, 3) + 0.05
  resized = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
  np.testing.assert_allclose(sm.resize_to(small, (h, w)), resized)
  baseline = sm.center_bias_map(h, w)
  assert sm.nss(small, fix) == pytest.approx(sm.nss(resized, fix))
  assert sm.cc(small, gt) == pytest.approx(sm.cc(resized, gt))
  assert sm.kld(small, gt) == pytest.approx(sm.kld(resized, gt))
  assert sm.sim(small, gt) == pytest.approx(sm.sim(resized, gt))
  assert sm.auc_judd(small, fix) == pytest.approx(sm.auc_judd(resized, fix))
  assert sm.auc_borji(small, fix) == pytest.approx(sm.auc_borji(resized, fix))
  assert sm.info_gain(small, fix, baseline[::2, ::2]) == pytest.approx(
      sm.info_gain(resized, fix, sm.resize_to(baseline[::2, ::2], (h, w))))


def test_kld_direction():
  # Ground truth puts all mass on two of four pixels; the prediction is uniform.
  # KL(Q || P) = 2 * 0.5 * log(0.5 / 0.25) = log 2, finite.
  # KL(P || Q) would be infinite (P has mass where Q has none); with the MIT eps
  # it is 2 * 0.25 * log(0.25 / eps) + 2 * 0.25 * log(0.25 / 0.5) = 16.98.
  q = np.array([[0.5, 0.5], [0.0, 0.0]])
  p = np.full((2, 2), 0.25)
  assert sm.kld(p, q) == pytest.approx(np.log(2.0), rel=1e-12)
  assert sm.kld(q, p) == pytest.approx(0.5 * np.log(0.25 / sm.EPS) + 0.5 * np.log(0.5), rel=1e-9)
  assert sm.kld(q, p) > 10


def test_all_zero_prediction_kld_is_large_and_finite(scene):
  gt, _ = scene
  value = sm.kld(np.zeros_like(gt), gt)
  assert np.isfinite(value) and value > 20


def test_info_gain(scene):
  gt, fix = scene
  h, w = gt.shape
  baseline = sm.center_bias_map(h, w)
  assert sm.info_gain(baseline, fix, baseline) == 0.0
  assert sm.info_gain(gt, fix, baseline) > 0.0
  # Hand check: uniform baseline over N pixels, prediction uniform over the
  # k fixated pixels (min-max keeps it): gain log2(N / k) per fixation,
  # up to eps.
  k, n = fix.sum(), fix.size
  assert sm.info_gain(fix.astype(float), fix, np.ones((h, w))) == pytest.approx(np.log2(n / k))


def test_center_bias_map():
  cb = sm.center_bias_map(30, 40)
  assert cb.shape == (30, 40)
  assert cb.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(cb, cb[::-1, :])
  np.testing.assert_allclose(cb, cb[:, ::-1])
  assert np.unravel_index(cb.argmax(), cb.shape) in {(14, 19), (14, 20), (15, 19), (15, 20)}
  iso = sm.center_bias_map(30, 40, sigma_fraction=0.2, isotropic=True)
  # Isotropic: centre (14.5, 19.5); offsets (0.5, 5.5) and (5.5, 0.5) weigh the same.
  assert iso[14, 14] == pytest.approx(iso[9, 19], rel=1e-12)
  # Anisotropic (default): the same offsets differ, rows fall off faster (H < W).
  assert cb[14, 14] > cb[9, 19]
  with pytest.raises(ValueError):
    sm.center_bias_map(30, 40, sigma_fraction=0.0)


def test_fixations_to_map():
  m = sm.fixations_to_map(np.array([[0, 0], [2, 3], [2, 3]]), 3, 4)
  assert m.dtype == bool and m.shape == (3, 4)
  assert m.sum() == 2 and m[0, 0] and m[2, 3]
  assert not sm.fixations_to_map(np.zeros((0, 2), np.int32), 3, 4).any()
  with pytest.raises(ValueError, match="outside"):
    sm.fixations_to_map(np.array([[3, 0]]), 3, 4)
  with pytest.raises(ValueError, match="outside"):
    sm.fixations_to_map(np.array([[0, -1]]), 3, 4)
  with pytest.raises(ValueError, match="shape"):
    sm.fixations_to_map(np.array([1, 2, 3]), 3, 4)


def test_evaluate_all(scene):
  gt, fix = scene
  h, w = gt.shape
  scores = sm.evaluate_all(gt, gt, fix)
  assert set(scores) == {"nss", "cc", "kld", "sim", "auc_judd", "auc_borji"}
  scores = sm.evaluate_all(gt, gt, fix, other_fixation_map=fix,
                           baseline_map=sm.center_bias_map(h, w))
  assert {"auc_shuffled", "info_gain"} <= set(scores)
  assert all(isinstance(v, float) and np.isfinite(v) for v in scores.values())
  assert scores["cc"] == pytest.approx(1.0)


# ----------------------------------------------------------------- JAX versions


@pytest.fixture
def batch():
  rng = np.random.default_rng(7)
  b, h, w = 3, 12, 16
  pred = rng.random((b, h, w)) + 0.01
  gt = rng.random((b, h, w))**3
  fix = rng.random((b, h, w)) < 0.08
  fix[:, 0, 0] = True
  return pred, gt, fix


def test_jax_agrees_with_numpy(batch):
  """Each metric as one program (as the evaluation runs it), against NumPy's."""
  pred, gt, fix = batch
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  jm_cc, jm_nss = jax.jit(jm.cc), jax.jit(jm.nss)
  kld, nss_from_logits = jax.jit(jm.kld_from_logits), jax.jit(jm.nss_from_logits)
  np.testing.assert_allclose(
      jm_cc(f32(pred), f32(gt)), [sm.cc(p, g) for p, g in zip(pred, gt)], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      jm_nss(f32(pred), f32(fix)), [sm.nss(p, f) for p, f in zip(pred, fix)], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      kld(f32(np.log(pred)), f32(gt)), [sm.kld(p, g) for p, g in zip(pred, gt)],
      rtol=1e-4, atol=1e-5)
  probs = pred / pred.sum(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(
      nss_from_logits(f32(np.log(pred)), f32(fix)), [sm.nss(p, f) for p, f in zip(probs, fix)],
      rtol=1e-4, atol=1e-5)
  # A trailing channel axis of size 1 is accepted.
  np.testing.assert_allclose(
      jm_cc(f32(pred)[..., None],
            f32(gt)[..., None]), jm_cc(f32(pred), f32(gt)))


def test_jax_density_nss(batch):
  pred, gt, fix = batch
  z = (pred - pred.mean(axis=(1, 2), keepdims=True)) / pred.std(axis=(1, 2), keepdims=True)
  expected = (gt * z).sum(axis=(1, 2)) / gt.sum(axis=(1, 2))
  np.testing.assert_allclose(
      jm.nss(jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32)), expected, rtol=1e-4,
      atol=1e-5)
  # Binary weights give the binary NSS; scaling the weights changes nothing.
  np.testing.assert_allclose(
      jm.nss(pred, 5.0 * fix.astype(np.float32)), jm.nss(pred, fix), rtol=1e-5, atol=1e-6)


def test_jax_conventions():
  const = jnp.ones((2, 6, 8))
  rng = np.random.default_rng(0)
  gt = jnp.asarray(rng.random((2, 6, 8)), jnp.float32)
  np.testing.assert_array_equal(jm.cc(const, gt), 0.0)
  np.testing.assert_array_equal(jm.nss(const, gt), 0.0)
  np.testing.assert_array_equal(jm.nss(gt, jnp.zeros_like(gt)), 0.0)
  np.testing.assert_allclose(jm.kld_from_logits(jnp.log(gt), gt), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="same shape"):
    jm.cc(gt, gt[:, :-1])
  with pytest.raises(ValueError, match=r"\[B, H, W\]"):
    jm.kld_from_logits(gt[0], gt[0])


def test_jax_gradients(batch):
  pred, gt, fix = batch
  pred, gt = jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32)
  fixf = jnp.asarray(fix, jnp.float32)
  losses = {
      "kld_from_logits": lambda x: jm.kld_from_logits(x, gt).sum(),
      "cc": lambda x: jm.cc(x, gt).sum(),
      "nss": lambda x: jm.nss(x, fixf).sum(),
      "nss_density": lambda x: jm.nss(x, gt).sum(),
      "nss_from_logits": lambda x: jm.nss_from_logits(x, gt).sum(),
  }
  # One compiled function for all gradients keeps the test fast.
  grads = jax.jit(lambda x: {name: jax.grad(loss)(x) for name, loss in losses.items()})(pred)
  for name, g in grads.items():
    assert bool(jnp.all(jnp.isfinite(g))), name
    assert float(jnp.abs(g).max()) > 0, name
  # Constant prediction: zero, finite gradient (no NaN from the std).
  g = jax.jit(jax.grad(lambda x: jm.cc(x, gt).sum() + jm.nss(x, fixf).sum()))(
      jnp.ones_like(pred))
  assert bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("shape,out", [((16, 16), (8, 8)), ((12, 20), (6, 5)),
                                       ((10, 14), (4, 7)), ((8, 8), (16, 16)),
                                       ((6, 9), (11, 13))])
def test_resize_maps_equals_pillows_antialiased_bilinear(shape, out):
  """The device resize behind every attention target and label is Pillow's BILINEAR
  (a triangle filter widened by the shrink factor, edges clamped): an independent
  implementation. Each output weighs at most (2·factor + 1)² inputs in [0, 1], so
  float32 sums agree within K·eps, K ≤ 49: atol 6e-6."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  maps = np.random.default_rng(sum(shape)).random((3, *shape)).astype(np.float32)
  got = np.asarray(jm.resize_maps(maps, out))
  want = np.stack([np.asarray(Image.fromarray(m, mode="F").resize(out[::-1], Image.BILINEAR))
                   for m in maps])
  assert got.shape == (3, *out) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=6e-6)
