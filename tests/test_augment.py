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


@pytest.mark.parametrize("snap", [True, False])
@pytest.mark.parametrize("hw", [(224, 224), (375, 500), (500, 300)])
def test_sample_crop_box_statistics(hw, snap):
  h, w = hw
  rng = _rng(1)
  boxes = [A.sample_crop_box(rng, h, w, snap=snap) for _ in range(2000)]
  areas = np.array([b.area for b in boxes])
  aspects = np.array([(b.width * w) / (b.height * h) for b in boxes])
  coords = np.array([[b.y0, b.x0, b.y1, b.x1] for b in boxes])
  assert coords.min() >= 0.0 and coords.max() <= 1.0
  assert np.all(coords[:, 2] > coords[:, 0]) and np.all(coords[:, 3] > coords[:, 1])
  # Snapping to whole pixels moves each side by at most half a pixel.
  tol_area, tol_aspect = (2 / min(h, w), 0.01) if snap else (1e-9, 1e-9)
  assert areas.min() >= 0.08 - tol_area and areas.max() <= 1.0 + 1e-9
  assert aspects.min() >= 3 / 4 - tol_aspect and aspects.max() <= 4 / 3 + tol_aspect
  if snap:
    pix = coords * [h, w, h, w]
    np.testing.assert_allclose(pix, np.round(pix), atol=1e-6)
  # The whole range is used, and positions cover the image evenly.
  assert areas.min() < 0.1 and areas.max() > 0.75
  if h == w:  # log-uniform aspect; on other shapes the fit test skews it
    assert np.mean(np.log(aspects)) == pytest.approx(0.0, abs=0.03)
  centres = (coords[:, :2] + coords[:, 2:]) / 2
  np.testing.assert_allclose(centres.mean(0), [0.5, 0.5], atol=0.02)


def test_sample_crop_box_fallback_is_centred_crop():
  # A 10x1000 strip: no box with aspect <= 4/3 reaches 8% of the area.
  box = A.sample_crop_box(_rng(0), 10, 1000, snap=False)
  assert (box.y0, box.y1) == (0.0, 1.0)
  assert box.width * 1000 == pytest.approx(10 * 4 / 3)
  assert (box.x0 + box.x1) / 2 == pytest.approx(0.5)
  snapped = A.sample_crop_box(_rng(0), 10, 1000)
  assert snapped.width * 1000 == pytest.approx(13) and snapped.x0 * 1000 == pytest.approx(493)


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
    box = A.sample_crop_box(rng, h, w, area_range=(0.05, 1.0), snap=snap)
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
      np.testing.assert_array_equal(A.crop_resize(x, box, out, flip=True), A.hflip(plain))
      mirrored = A.crop_resize(A.hflip(x), box.hflipped(), out).astype(int)
      assert np.abs(mirrored - A.hflip(plain).astype(int)).max() <= 2


def test_hflip():
  x = np.arange(24).reshape(2, 4, 3)
  np.testing.assert_array_equal(A.hflip(x)[:, 0], x[:, -1])
  np.testing.assert_array_equal(A.hflip(A.hflip(x)), x)
  assert A.hflip(x).flags.c_contiguous


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
    A.color_jitter(rng, img, 0.8, 0.8, 0.8, 0.2)
    A.to_grayscale(img)
    A.gaussian_blur(rng, img)
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
    out = A.color_jitter(rng, u8, 0.8, 0.8, 0.8, 0.2)
    assert out.shape == u8.shape and out.dtype == np.uint8
    outf = A.color_jitter(rng, f, 0.8, 0.8, 0.8, 0.2)
    assert outf.shape == f.shape and outf.dtype == np.float32
    assert outf.min() >= 0.0 and outf.max() <= 1.0


def test_color_jitter_zero_strength_is_identity():
  u8 = _random_image(40, 50)
  np.testing.assert_array_equal(A.color_jitter(_rng(1), u8, 0, 0, 0, 0), u8)
  f = _smooth_image()
  np.testing.assert_array_equal(A.color_jitter(_rng(1), f, 0, 0, 0, 0), f)


def test_jitter_params_ranges_and_order():
  rng = _rng(2)
  ps = [A.sample_jitter_params(rng, 0.8, 0.5, 0.3, 0.2) for _ in range(500)]
  for p in ps:
    assert sorted(p.order) == [0, 1, 2, 3]
  b = np.array([p.brightness for p in ps])
  c = np.array([p.contrast for p in ps])
  s = np.array([p.saturation for p in ps])
  hue = np.array([p.hue for p in ps])
  assert 0.2 <= b.min() and b.max() <= 1.8 and b.min() < 0.3 and b.max() > 1.7
  assert 0.5 <= c.min() and c.max() <= 1.5
  assert 0.7 <= s.min() and s.max() <= 1.3
  assert -0.2 <= hue.min() and hue.max() <= 0.2 and hue.min() < -0.15 and hue.max() > 0.15
  assert len({p.order for p in ps}) == 24


def _only(order=(0, 1, 2, 3), brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0):
  return A.JitterParams(order, brightness, contrast, saturation, hue)


def test_individual_jitter_ops():
  img = _smooth_image()
  # Brightness multiplies (clipped at 1).
  np.testing.assert_allclose(
      A.apply_color_jitter(img, _only(brightness=1.5)), np.minimum(img * 1.5, 1), atol=1e-6)
  # Contrast keeps each channel's mean when nothing clips.
  low = A.apply_color_jitter(img, _only(contrast=0.5))
  np.testing.assert_allclose(low.mean((0, 1)), img.mean((0, 1)), atol=1e-5)
  assert low.std() < img.std() * 0.6
  # Saturation 0 is grayscale.
  np.testing.assert_allclose(
      A.apply_color_jitter(img, _only(saturation=0.0)), A.to_grayscale(img), atol=1e-6)
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


def test_to_grayscale_equal_channels():
  for img in (_random_image(30, 40), _smooth_image()):
    g = A.to_grayscale(img)
    assert g.shape == img.shape and g.dtype == img.dtype
    np.testing.assert_array_equal(g[..., 0], g[..., 1])
    np.testing.assert_array_equal(g[..., 1], g[..., 2])
  g = A.to_grayscale(np.float32([[[1.0, 0.0, 0.0]]]))
  np.testing.assert_allclose(g[0, 0], [0.299] * 3, atol=1e-4)


def test_gaussian_blur_preserves_mean_and_range():
  rng = _rng(0)
  img = _random_image(64, 64).astype(np.float32) / 255
  for _ in range(5):
    out = A.gaussian_blur(rng, img)
    assert out.shape == img.shape and out.dtype == np.float32
    assert abs(out.mean() - img.mean()) < 0.01
    assert out.min() >= 0.0 and out.max() <= 1.0
  strong = A.blur(img, 2.0)
  assert strong.std() < img.std() * 0.5
  np.testing.assert_allclose(A.blur(img, 0.1), img, atol=1e-3)  # tiny sigma ~ identity
  u8 = A.gaussian_blur(rng, _random_image(64, 64))
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
