"""Tests for attn_contrastive.data.augment: each op on its own, then the views."""

import dataclasses
import numpy as np
import pytest

from attn_contrastive.data import augment as A


def _rng(seed=0):
  return np.random.default_rng(seed)


def _random_image(h=96, w=128, seed=0):
  return _rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth_image(h=64, w=64, seed=0):
  """A smooth float32 RGB image in roughly [0.2, 0.8] (no clipping by mild ops)."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  phase = _rng(seed).random(3).astype(np.float32) * 6
  chans = [0.5 + 0.3 * np.sin(xx / 9 + phase[c]) * np.cos(yy / 13 + phase[c]) for c in range(3)]
  return np.stack(chans, -1).astype(np.float32)


def _square_scene(h, w, square=(0.25, 0.5, 0.5, 0.75)):
  """Zero array with ones in a normalised (y0, x0, y1, x1) square (pixel-aligned here)."""
  out = np.zeros((h, w), np.float32)
  y0, x0, y1, x1 = square
  out[round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)] = 1.0
  return out


def _random_box(rng, h, w, snap):
  """A random box covering 20-100% of each side; on whole pixels if ``snap``."""
  size = rng.uniform(0.2, 1.0, 2)
  start = rng.random(2) * (1 - size)
  y0, x0, y1, x1 = (*start, *(start + size))
  if snap:
    y0, y1 = round(y0 * h) / h, round(y1 * h) / h
    x0, x1 = round(x0 * w) / w, round(x1 * w) / w
  return A.Box(y0, x0, min(y1, 1.0), min(x1, 1.0))


def _hflip(a):
  return np.ascontiguousarray(np.asarray(a)[:, ::-1])


def _gray(img):
  """The grayscale op on a copy (channels equal, input dtype kept)."""
  out = np.array(img, np.uint8 if img.dtype == np.uint8 else np.float32)
  A._grayscale_(out)
  return out


def _color_jitter(rng, img, b, c, s, h, impl="simclrv1"):
  return A.apply_color_jitter(img, A.sample_jitter_params(rng, b, c, s, h, impl))


def _centroid(a):
  a = np.asarray(a, np.float64)
  ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]]
  total = a.sum()
  return (ys * a).sum() / total, (xs * a).sum() / total


# ---------------------------------------------------------------------------
# Box and box sampling.
# ---------------------------------------------------------------------------


def test_box_validation_and_flip():
  with pytest.raises(ValueError):
    A.Box(0.5, 0.0, 0.5, 1.0)
  with pytest.raises(ValueError):
    A.Box(0.0, 0.0, 1.1, 1.0)
  b = A.Box(0.1, 0.2, 0.6, 0.5)
  assert b.hflipped() == A.Box(0.1, 0.5, 0.6, 0.8)
  np.testing.assert_allclose(dataclasses.astuple(b.hflipped().hflipped()), dataclasses.astuple(b))
  assert b.area == pytest.approx(0.5 * 0.3)


@pytest.mark.parametrize("hw", [(224, 224), (375, 500), (500, 300)])
def test_sample_crop_box_statistics(hw):
  h, w = hw
  rng = _rng(1)
  boxes = [A.sample_crop_box(rng, h, w) for _ in range(2000)]
  areas = np.array([b.area for b in boxes])
  coords = np.array([[b.y0, b.x0, b.y1, b.x1] for b in boxes])
  assert coords.min() >= 0.0 and coords.max() <= 1.0
  assert np.all(coords[:, 2] > coords[:, 0]) and np.all(coords[:, 3] > coords[:, 1])
  # Whole pixels; at least 10% of the image (min_object_covered), aspect
  # within 3/4..4/3 up to the rounding of the width.
  pix = coords * [h, w, h, w]
  np.testing.assert_allclose(pix, np.round(pix), atol=1e-6)
  assert areas.min() >= 0.1 - 1e-9 and areas.max() <= 1.0 + 1e-9
  box_h, box_w = pix[:, 2] - pix[:, 0], pix[:, 3] - pix[:, 1]
  full = (box_h == h) & (box_w == w)
  assert np.all(full | (box_w >= 3 / 4 * box_h - 0.5))
  assert np.all(full | (box_w <= 4 / 3 * box_h + 0.5))
  assert areas.min() < 0.12 and areas.max() > 0.7  # 500x300: at most 0.8 fits 3/4..4/3
  centres = (coords[:, :2] + coords[:, 2:]) / 2
  np.testing.assert_allclose(centres.mean(0), [0.5, 0.5], atol=0.02)


def test_sample_crop_box_matches_tensorflow_sampler():
  """Our sampler and TensorFlow's sample_distorted_bounding_box (SimCLR's call)
  give the same distribution of crop areas and aspect ratios."""
  import tensorflow as tf  # a dependency of the project (tfds image datasets)
  h, w, n = 375, 500, 1500
  tf_areas, tf_aspects = [], []
  for i in range(n):
    _, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        [h, w, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=[i, 7], min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    bh, bw = int(size[0]), int(size[1])
    tf_areas.append(bh * bw / (h * w))
    tf_aspects.append(bw / bh)
  rng = _rng(4)
  boxes = [A.sample_crop_box(rng, h, w) for _ in range(n)]
  areas = np.array([b.area for b in boxes])
  aspects = np.array([b.width * w / (b.height * h) for b in boxes])
  qs = [0.1, 0.25, 0.5, 0.75, 0.9]
  # Torchvision's sampler (area uniform) has median area ~0.54 here, TF's ~0.42.
  np.testing.assert_allclose(np.quantile(areas, qs), np.quantile(tf_areas, qs), atol=0.04)
  np.testing.assert_allclose(np.quantile(aspects, qs), np.quantile(tf_aspects, qs), atol=0.04)
  # TF falls back to the whole image as often as we do (the full box).
  assert abs(np.mean(areas == 1.0) - np.mean(np.array(tf_areas) == 1.0)) < 0.03


def test_sample_crop_box_fallback_is_whole_image():
  # A 10x1000 strip: no box with aspect <= 4/3 reaches 10% of the area.
  assert A.sample_crop_box(_rng(0), 10, 1000) == A.Box.full()


def test_sample_crop_box_consumes_rng_identically():
  # Same number of draws whatever the outcome (fallback or not).
  r1, r2 = _rng(3), _rng(3)
  A.sample_crop_box(r1, 10, 1000)
  A.sample_crop_box(r2, 300, 300)
  assert r1.random() == r2.random()


def test_center_crop_box_256x341():
  box = A.center_crop_box(256, 341)
  assert box.y0 == pytest.approx(16 / 256) and box.y1 == pytest.approx(240 / 256)
  assert box.x0 == pytest.approx(58.5 / 341) and box.x1 == pytest.approx(282.5 / 341)
  assert box.height * 256 == pytest.approx(224) and box.width * 341 == pytest.approx(224)
  portrait = A.center_crop_box(400, 300, crop_fraction=1.0)
  np.testing.assert_allclose(dataclasses.astuple(portrait), [50 / 400, 0.0, 350 / 400, 1.0])


# ---------------------------------------------------------------------------
# crop_resize / hflip.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 1), (37, 53, 3), (37, 53, 6)])
def test_crop_resize_full_box_is_identity(shape):
  x = _rng(0).integers(0, 256, shape, dtype=np.uint8)
  out = A.crop_resize(x, A.Box.full(), shape[:2])
  assert out.dtype == np.uint8 and out.shape == x.shape
  np.testing.assert_array_equal(out, x)
  xf = x.astype(np.float64) / 7
  outf = A.crop_resize(xf, A.Box.full(), shape[:2])
  assert outf.dtype == np.float32 and outf.shape == x.shape
  np.testing.assert_allclose(outf, xf, rtol=1e-6)


def test_crop_resize_integer_crop_is_exact_slice():
  x = _random_image(50, 80)
  box = A.Box(10 / 50, 20 / 80, 40 / 50, 60 / 80)
  np.testing.assert_array_equal(A.crop_resize(x, box, (30, 40)), x[10:40, 20:60])


@pytest.mark.parametrize("snap", [False, True])
@pytest.mark.parametrize("out", [6, 16, 40, 200])
def test_crop_resize_is_subpixel_exact_on_ramps(out, snap):
  """On a linear ramp, any correctly aligned filter returns the sample position."""
  h, w = 96, 128
  ramp_x = np.broadcast_to(((np.arange(w) + 0.5) / w).astype(np.float32), (h, w))
  ramp_y = np.ascontiguousarray(
      np.broadcast_to(((np.arange(h) + 0.5) / h)[:, None], (h, w)), np.float32)
  rng = _rng(out)
  for _ in range(20):
    box = _random_box(rng, h, w, snap)
    ox = A.crop_resize(np.ascontiguousarray(ramp_x), box, (out, out))
    oy = A.crop_resize(ramp_y, box, (out, out))
    pos = (np.arange(out) + 0.5) / out
    want_x = box.x0 + pos * box.width
    want_y = box.y0 + pos * box.height
    mid = out // 2
    for got, want, side, extent in ((ox[mid], want_x, w, box.width), (oy[:, mid], want_y, h,
                                                                      box.height)):
      # Away from the image border, where edge replication bends the ramp.
      margin = max(1.0, 2 * extent * side / out) / side
      inner = (want > margin) & (want < 1 - margin)
      # Errors in output pixels (OpenCV warps in 1/32-pixel steps).
      np.testing.assert_allclose(got[inner] / extent * out, want[inner] / extent * out, atol=0.04)


@pytest.mark.parametrize("out", [24, 64, 150])
def test_crop_resize_whole_pixel_and_general_paths_agree(out):
  """A box on whole pixels (fast resize) and one nudged off them (warp) agree."""
  x = _random_image(96, 128)
  rng = _rng(out)
  for _ in range(10):
    box = A.sample_crop_box(rng, 96, 128, area_range=(0.2, 1.0))
    eps = 1e-4 / 128
    nudged = A.Box(box.y0, box.x0 + eps if box.x0 == 0 else box.x0 - eps, box.y1, box.x1)
    a = A.crop_resize(x, box, out).astype(int)
    b = A.crop_resize(x, nudged, out).astype(int)
    assert np.abs(a - b).max() <= 2
    assert np.abs(a - b).mean() < 0.3


def test_crop_resize_flip_matches_hflip():
  x = _random_image()
  rng = _rng(5)
  for _ in range(10):
    box = A.sample_crop_box(rng, 96, 128)
    for out in (20, 64):  # antialiased and plain paths
      plain = A.crop_resize(x, box, out)
      np.testing.assert_array_equal(A.crop_resize(x, box, out, flip=True), _hflip(plain))
      mirrored = A.crop_resize(_hflip(x), box.hflipped(), out).astype(int)
      assert np.abs(mirrored - _hflip(plain).astype(int)).max() <= 2


def test_crop_resize_antialiases_strong_downscaling():
  # A one-pixel checkerboard averaged over large areas is flat grey.
  board = ((np.indices((512, 512)).sum(0) % 2) * 255).astype(np.uint8)
  out = A.crop_resize(board, A.Box(0.0, 0.0, 0.9, 0.9), 64).astype(np.float32)
  assert abs(out.mean() - 127.5) < 3 and out.std() < 8


def test_crop_resize_dtypes_and_many_channels():
  x = _rng(0).random((90, 120, 6))
  out = A.crop_resize(x, A.Box(0.1, 0.1, 0.9, 0.9), 16)  # antialiased path
  assert out.dtype == np.float32 and out.shape == (16, 16, 6)
  # Channels are resampled independently.
  np.testing.assert_allclose(out[..., 4], A.crop_resize(x[..., 4], A.Box(0.1, 0.1, 0.9, 0.9), 16),
                             atol=1e-6)
  assert A.crop_resize(x > 0.5, A.Box.full(), 8).dtype == np.float32


def test_public_ops_do_not_modify_their_input():
  u8 = _random_image(40, 50)
  f = u8.astype(np.float32) / 255
  keep_u8, keep_f = u8.copy(), f.copy()
  rng = _rng(0)
  for img in (u8, f):
    _color_jitter(rng, img, 0.8, 0.8, 0.8, 0.2)
    _gray(img)
    A.blur(img, rng.uniform(0.1, 2.0))
    A.crop_resize(img, A.Box(0.1, 0.2, 0.7, 0.9), 20, flip=True)
  A.simclr_view(rng, f, f[..., 0], out_size=20)
  np.testing.assert_array_equal(u8, keep_u8)
  np.testing.assert_array_equal(f, keep_f)


def test_crop_resize_nearest_and_shapes():
  x = _rng(0).random((24, 32)).astype(np.float32)
  out = A.crop_resize(x, A.Box(0.0, 0.0, 0.5, 0.5), (24, 32), interpolation="nearest")
  np.testing.assert_array_equal(out[::2, ::2], x[:12, :16])
  assert A.crop_resize(x[..., None], A.Box.full(), (5, 7)).shape == (5, 7, 1)
  with pytest.raises(ValueError):
    A.crop_resize(x, A.Box.full(), 8, interpolation="cubic")


def test_image_and_map_stay_aligned_across_resolutions():
  """Same bright square in a 96x128 image and a 24x32 map: views line up."""
  square = (0.25, 0.5, 0.5, 0.75)
  image = (np.repeat(_square_scene(96, 128, square)[..., None], 3, -1) * 255).astype(np.uint8)
  attn = _square_scene(24, 32, square)
  rng = _rng(7)
  checked = 0
  while checked < 40:
    box = A.sample_crop_box(rng, 96, 128, area_range=(0.1, 1.0))
    flip = bool(rng.random() < 0.5)
    y0, x0, y1, x1 = square
    if not (box.y0 < y0 and box.x0 < x0 and box.y1 > y1 and box.x1 > x1):
      continue  # keep the square whole so centroids are comparable
    checked += 1
    iv = A.crop_resize(image, box, 48, flip=flip)[..., 0].astype(np.float32) / 255
    mv = A.crop_resize(attn, box, 48, flip=flip)
    np.testing.assert_allclose(_centroid(iv), _centroid(mv), atol=0.5)
    # Where the square should be, analytically.
    cy = ((y0 + y1) / 2 - box.y0) / box.height * 48 - 0.5
    cx = ((x0 + x1) / 2 - box.x0) / box.width * 48 - 0.5
    if flip:
      cx = 47 - cx
    np.testing.assert_allclose(_centroid(mv), (cy, cx), atol=0.5)
    a, b = iv > 0.5, mv > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.7


# ---------------------------------------------------------------------------
# Colour ops.
# ---------------------------------------------------------------------------


def test_color_jitter_shape_dtype_range():
  rng = _rng(0)
  u8 = _random_image(40, 50)
  f = u8.astype(np.float32) / 255
  for _ in range(20):
    out = _color_jitter(rng, u8, 0.8, 0.8, 0.8, 0.2)
    assert out.shape == u8.shape and out.dtype == np.uint8
    outf = _color_jitter(rng, f, 0.8, 0.8, 0.8, 0.2)
    assert outf.shape == f.shape and outf.dtype == np.float32
    assert outf.min() >= 0.0 and outf.max() <= 1.0


def test_color_jitter_zero_strength_is_identity():
  u8 = _random_image(40, 50)
  np.testing.assert_array_equal(_color_jitter(_rng(1), u8, 0, 0, 0, 0), u8)
  f = _smooth_image()
  np.testing.assert_array_equal(_color_jitter(_rng(1), f, 0, 0, 0, 0), f)


@pytest.mark.parametrize("impl", ["simclrv1", "simclrv2"])
def test_jitter_params_ranges_and_order(impl):
  rng = _rng(2)
  ps = [A.sample_jitter_params(rng, 0.8, 0.5, 0.3, 0.2, impl) for _ in range(500)]
  for p in ps:
    assert sorted(p.order) == [0, 1, 2, 3]
  b = np.array([p.brightness for p in ps])
  d = np.array([p.brightness_delta for p in ps])
  c = np.array([p.contrast for p in ps])
  s = np.array([p.saturation for p in ps])
  hue = np.array([p.hue for p in ps])
  if impl == "simclrv2":  # multiplicative brightness
    assert 0.2 <= b.min() and b.max() <= 1.8 and b.min() < 0.3 and b.max() > 1.7
    assert np.all(d == 0.0)
  else:  # additive brightness, TF's random_brightness
    assert -0.8 <= d.min() and d.max() <= 0.8 and d.min() < -0.7 and d.max() > 0.7
    assert np.all(b == 1.0)
  assert 0.5 <= c.min() and c.max() <= 1.5
  assert 0.7 <= s.min() and s.max() <= 1.3
  assert -0.2 <= hue.min() and hue.max() <= 0.2 and hue.min() < -0.15 and hue.max() > 0.15
  assert len({p.order for p in ps}) == 24
  with pytest.raises(ValueError, match="simclrv1"):
    A.sample_jitter_params(rng, 0.8, 0.5, 0.3, 0.2, "v3")


def _only(order=(0, 1, 2, 3), brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0,
          delta=0.0):
  return A.JitterParams(order, brightness, contrast, saturation, hue, delta)


def test_individual_jitter_ops():
  img = _smooth_image()
  # Brightness multiplies (v2, clipped at 1) or adds (v1, clipped to [0, 1]).
  np.testing.assert_allclose(
      A.apply_color_jitter(img, _only(brightness=1.5)), np.minimum(img * 1.5, 1), atol=1e-6)
  np.testing.assert_allclose(
      A.apply_color_jitter(img, _only(delta=-0.3)), np.maximum(img - 0.3, 0), atol=1e-6)
  # Contrast keeps each channel's mean when nothing clips.
  low = A.apply_color_jitter(img, _only(contrast=0.5))
  np.testing.assert_allclose(low.mean((0, 1)), img.mean((0, 1)), atol=1e-5)
  assert low.std() < img.std() * 0.6
  # Saturation 0 leaves each pixel's HSV value, max(R, G, B), on all channels.
  np.testing.assert_allclose(
      A.apply_color_jitter(img, _only(saturation=0.0)),
      np.repeat(img.max(-1, keepdims=True), 3, -1), atol=1e-6)
  # Hue: a third of a turn sends red to green to blue.
  red = np.zeros((2, 2, 3), np.float32)
  red[..., 0] = 1.0
  np.testing.assert_allclose(
      A.apply_color_jitter(red, _only(hue=1 / 3))[0, 0], [0, 1, 0], atol=1e-5)
  np.testing.assert_allclose(
      A.apply_color_jitter(red, _only(hue=-1 / 3))[0, 0], [0, 0, 1], atol=1e-5)
  # Half a turn twice is the identity.
  twice = A.apply_color_jitter(A.apply_color_jitter(img, _only(hue=0.5)), _only(hue=0.5))
  np.testing.assert_allclose(twice, img, atol=1e-4)


def test_jitter_ops_match_tensorflow():
  """Each colour op equals TensorFlow's adjust_* op that SimCLR calls (then clipped)."""
  import tensorflow as tf  # a dependency of the project (tfds image datasets)
  img = _rng(8).random((24, 32, 3)).astype(np.float32)
  cases = [
      (_only(delta=0.3), lambda x: tf.image.adjust_brightness(x, 0.3)),
      (_only(delta=-0.45), lambda x: tf.image.adjust_brightness(x, -0.45)),
      (_only(brightness=1.4), lambda x: x * 1.4),
      (_only(contrast=1.6), lambda x: tf.image.adjust_contrast(x, 1.6)),
      (_only(contrast=0.3), lambda x: tf.image.adjust_contrast(x, 0.3)),
      (_only(saturation=1.7), lambda x: tf.image.adjust_saturation(x, 1.7)),
      (_only(saturation=0.4), lambda x: tf.image.adjust_saturation(x, 0.4)),
      (_only(hue=0.17), lambda x: tf.image.adjust_hue(x, 0.17)),
      (_only(hue=-0.2), lambda x: tf.image.adjust_hue(x, -0.2)),
  ]
  for params, tf_op in cases:
    want = np.clip(tf_op(tf.constant(img)).numpy(), 0.0, 1.0)
    np.testing.assert_allclose(A.apply_color_jitter(img, params), want, atol=2e-5,
                               err_msg=str(params))
  gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(tf.constant(img))).numpy()
  np.testing.assert_allclose(_gray(img), gray, atol=2e-3)


def test_to_grayscale_equal_channels():
  for img in (_random_image(30, 40), _smooth_image()):
    g = _gray(img)
    assert g.shape == img.shape and g.dtype == img.dtype
    np.testing.assert_array_equal(g[..., 0], g[..., 1])
    np.testing.assert_array_equal(g[..., 1], g[..., 2])
  g = _gray(np.float32([[[1.0, 0.0, 0.0]]]))
  np.testing.assert_allclose(g[0, 0], [0.299] * 3, atol=1e-4)


def test_blur_kernel_size_is_a_tenth_of_the_view():
  assert A.blur_kernel_size(224) == 23
  assert A.blur_kernel_size(64) == 7
  assert A.blur_kernel_size(32) == 3
  # The op really spreads a point over that many taps (zero padding around).
  delta = np.zeros((224, 224, 3), np.float32)
  delta[112, 112] = 1.0
  support = np.nonzero(A.blur(delta, 2.0)[..., 0] > 0)
  assert np.ptp(support[0]) + 1 == 23 and np.ptp(support[1]) + 1 == 23


def _numpy_simclr_blur(img, sigma):
  """SimCLR's blur computed independently: normalised Gaussian of height//10
  (made odd) taps, two 1-D convolutions over a zero-padded image."""
  radius = (img.shape[0] // 10) // 2
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-x**2 / (2 * sigma**2))
  k /= k.sum()
  out = np.zeros(img.shape, np.float64)
  for c in range(img.shape[2]):
    rows = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, img[..., c])
    out[..., c] = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, rows)
  return out


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_blur_equals_simclr_zero_padded_gaussian(sigma):
  img = _random_image(64, 64).astype(np.float32) / 255
  np.testing.assert_allclose(A.blur(img, sigma), _numpy_simclr_blur(img, sigma), atol=1e-5)
  # Zero padding: a white image darkens at its corners.
  white = np.ones((64, 64, 3), np.float32)
  assert A.blur(white, 2.0)[0, 0, 0] < 0.5 and A.blur(white, 2.0)[32, 32, 0] == pytest.approx(1)


def test_gaussian_blur_preserves_mean_and_range():
  rng = _rng(0)
  img = _random_image(64, 64).astype(np.float32) / 255
  for _ in range(5):
    out = A.blur(img, rng.uniform(0.1, 2.0))
    assert out.shape == img.shape and out.dtype == np.float32
    assert abs(out[8:-8, 8:-8].mean() - img[8:-8, 8:-8].mean()) < 0.01
    assert out.min() >= 0.0 and out.max() <= 1.0
  strong = A.blur(img, 2.0)
  assert strong.std() < img.std() * 0.5
  np.testing.assert_allclose(A.blur(img, 0.1), img, atol=1e-3)  # tiny sigma ~ identity
  u8 = A.blur(_random_image(64, 64), 1.0)
  assert u8.dtype == np.uint8


# ---------------------------------------------------------------------------
# Composed views.
# ---------------------------------------------------------------------------


def test_simclr_view_outputs():
  img = _random_image(75, 100)
  attn = _rng(1).random((16, 16, 1)).astype(np.float32) * 5
  rng = _rng(0)
  for _ in range(10):
    view, mview = A.simclr_view(rng, img, attn, out_size=32, map_size=(8, 12))
    assert view.shape == (32, 32, 3) and view.dtype == np.float32
    assert view.min() >= 0.0 and view.max() <= 1.0
    assert mview.shape == (8, 12) and mview.dtype == np.float32 and mview.min() >= 0.0
  view, mview = A.simclr_view(rng, img, out_size=(24, 40))
  assert view.shape == (24, 40, 3) and mview is None
  # Grayscale input is accepted and gives the same view as its RGB copy.
  gray = img[..., 0]
  for g in (gray, gray[..., None]):
    view, _ = A.simclr_view(_rng(5), g, out_size=16)
    assert view.shape == (16, 16, 3)
    rgb_view, _ = A.simclr_view(_rng(5), np.repeat(gray[..., None], 3, -1), out_size=16)
    np.testing.assert_allclose(view, rgb_view, atol=1e-6)
  with pytest.raises(ValueError):
    A.simclr_view(rng, img[..., :2], out_size=16)


def test_simclr_view_map_gets_geometry_only_and_image_ignores_map():
  img = _random_image(96, 128)
  attn = _rng(2).random((24, 32)).astype(np.float32)
  for seed in range(10):
    view, mview = A.simclr_view(_rng(seed), img, attn, out_size=40, map_size=20)
    view_nomap, none = A.simclr_view(_rng(seed), img, out_size=40, map_size=20)
    assert none is None
    np.testing.assert_array_equal(view, view_nomap)
    # Replay the geometric draws (crop box, then flip).
    replay = _rng(seed)
    box = A.sample_crop_box(replay, 96, 128)
    flip = bool(replay.random() < 0.5)
    np.testing.assert_array_equal(mview, A.crop_resize(attn, box, 20, flip=flip))


def test_simclr_view_colour_changes_image_but_geometry_matches_supervised():
  img = _random_image(96, 128)
  attn = _rng(2).random((24, 32)).astype(np.float32)
  diffs = 0
  for seed in range(8):
    sv, sm = A.simclr_view(_rng(seed), img, attn, out_size=32)
    tv, tm = A.supervised_train_view(_rng(seed), img, attn, out_size=32)
    np.testing.assert_array_equal(sm, tm)
    diffs += not np.allclose(sv, tv, atol=1e-3)
  assert diffs >= 4  # colour distortion applies most of the time
  # With all colour ops off, the SimCLR view is the supervised view.
  sv, _ = A.simclr_view(_rng(0), img, out_size=32, strength=0.0, p_gray=0.0, p_blur=0.0)
  tv, _ = A.supervised_train_view(_rng(0), img, out_size=32)
  np.testing.assert_array_equal(sv, tv)


def test_views_align_image_and_map_end_to_end():
  square = (0.4, 0.2, 0.6, 0.45)
  image = (np.repeat(_square_scene(120, 160, square)[..., None], 3, -1) * 255).astype(np.uint8)
  attn = _square_scene(30, 40, square)
  rng = _rng(11)
  for _ in range(20):
    view, mview = A.supervised_train_view(rng, image, attn, out_size=64, map_size=16,
                                          area_range=(0.6, 1.0))
    iy, ix = _centroid(view[..., 0])
    my, mx = _centroid(mview)
    # Compare in normalised view coordinates; tolerance ~ a map pixel.
    np.testing.assert_allclose([(iy + 0.5) / 64, (ix + 0.5) / 64], [(my + 0.5) / 16,
                                                                    (mx + 0.5) / 16], atol=1 / 16)


def test_simclr_view_applies_each_op_with_its_probability():
  """Empirical frequencies over many views: flip 1/2, colour jitter 0.8,
  grayscale 0.2, blur 0.5 (SimCLR's), each seen in the output itself."""
  n = 3000
  colour = np.zeros((48, 48, 3), np.uint8)
  colour[...] = (200, 90, 30)
  ramp = np.tile(np.arange(48, dtype=np.float32), (48, 1))  # increases to the right
  pattern = _random_image(48, 48)
  rng = _rng(21)
  flips = jitters = grays = blurs = 0
  for _ in range(n):
    # Jitter only: the constant colour changes.
    v, m = A.simclr_view(rng, colour, ramp, out_size=16, p_gray=0.0, p_blur=0.0)
    jitters += not np.allclose(v, colour[:16, :16] / 255, atol=1e-6)
    flips += m[0, 0] > m[0, -1]
    # Grayscale only: the three channels become equal.
    v, _ = A.simclr_view(rng, colour, out_size=16, strength=0.0, p_blur=0.0)
    grays += np.allclose(v[..., 0], v[..., 1])
    # Blur only: compare with the same geometry without colour ops.
    state = rng.bit_generator.state
    v, _ = A.simclr_view(rng, pattern, out_size=16, strength=0.0, p_gray=0.0)
    rng.bit_generator.state = state
    plain, _ = A.simclr_view(rng, pattern, out_size=16, strength=0.0, p_gray=0.0, p_blur=0.0)
    blurs += not np.allclose(v, plain, atol=1e-6)
  sd = np.sqrt(0.25 / n)
  assert abs(flips / n - 0.5) < 4 * sd
  assert abs(jitters / n - 0.8) < 4 * sd
  assert abs(grays / n - 0.2) < 4 * sd
  # A sigma below ~0.2 px moves no float32 value (its neighbour weight is
  # < 1e-5), so ~5% of blurs are invisible: expect 0.5 x ~0.95.
  assert 0.44 < blurs / n < 0.5 + 4 * sd


def test_determinism():
  img = _random_image(75, 100)
  attn = _rng(1).random((16, 16)).astype(np.float32)
  a = A.simclr_view(_rng(42), img, attn, out_size=24)
  b = A.simclr_view(_rng(42), img, attn, out_size=24)
  c = A.simclr_view(_rng(43), img, attn, out_size=24)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])


def test_eval_view():
  img = _random_image(256, 341)
  attn = np.full((32, 40), 3.0, np.float32)
  view, mview = A.eval_view(img, attn, out_size=224, map_size=28)
  view2, _ = A.eval_view(img, out_size=224)
  np.testing.assert_array_equal(view, view2)
  want = A.crop_resize(img, A.center_crop_box(256, 341), 224).astype(np.float32) / 255
  np.testing.assert_allclose(view, want, atol=1e-7)
  assert mview.shape == (28, 28)
  np.testing.assert_allclose(mview, 3.0)  # not renormalised
  # 224 out of 256 wide rows start at column 58.5: each output pixel is the
  # mean of two neighbouring input columns, rows are copied.
  pair = (img[16:240, 58:282].astype(np.float32) + img[16:240, 59:283]) / 2 / 255
  np.testing.assert_allclose(view, pair, atol=0.51 / 255)
