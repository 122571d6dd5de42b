"""Tests for attn_contrastive.data.image_corruptions (ImageNet-C's 19 corruptions).

Three kinds of checks:

* properties every corruption must have (shape, dtype, determinism given a
  seed, argument validation, speed);
* the published constants, through statistics that do not depend on any
  reference code (noise levels, blur sigma, fog's range compression);
* equality with the `imagecorruptions` package (the field's reference code):
  deterministic corruptions directly; random ones by seeding numpy's global
  generator, which the reference draws from, and feeding this module a
  generator with the same legacy stream, so both see identical draws. The
  three reference functions that no longer run under numpy 2 / current
  scikit-image (glass blur, gaussian blur, fog) are run with the two removed
  names they use (`np.float_`, `gaussian(multichannel=...)`) restored.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest
from scipy import ndimage

from attn_contrastive.data import image_corruptions as C

RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform", "speckle_noise", "spatter")
DETERMINISTIC = tuple(name for name in C.ALL if name not in RANDOM)


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
  """Gradients, a sine, a red square and mild noise: something every corruption changes."""
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([230 * xx / w + 10, 230 * yy / h + 10, 128 + 60 * np.sin(xx / 5.0)], -1)
  base[h // 4:h // 2, w // 4:w // 2] = (250, 30, 40)
  noise = np.random.default_rng(seed).normal(0, 12, base.shape)
  return np.clip(base + noise, 0, 255).astype(np.uint8)


SQUARE = _textured(40, 40)
WIDE = _textured(36, 57, seed=1)
TALL = _textured(50, 33, seed=2)


def _flat(level: int, side: int = 64) -> np.ndarray:
  return np.full((side, side, 3), level, dtype=np.uint8)


class _LegacyGenerator:
  """numpy's legacy RandomState behind the Generator methods the module calls.

  Seeded like `np.random.seed`, it yields the draws the reference takes from
  numpy's global state, provided the module asks for the same distributions
  in the same order (which is what these tests check).
  """

  def __init__(self, seed: int):
    self._state = np.random.RandomState(seed)

  def integers(self, low, high=None, size=None):
    return self._state.randint(low, high, size)

  def __getattr__(self, name):
    return getattr(self._state, name)


@pytest.fixture
def reference(monkeypatch):
  """imagecorruptions, with the names its code needs under numpy 2 / scikit-image >= 0.19."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import imagecorruptions as ic  # the test extra installs it
    import imagecorruptions.corruptions as icc
    from skimage.filters import gaussian
  saved = np.random.get_state()

  def gaussian_multichannel(image, sigma=1, multichannel=None, **kwargs):
    if multichannel:
      kwargs["channel_axis"] = -1
    return gaussian(image, sigma=sigma, **kwargs)

  monkeypatch.setattr(np, "float_", np.float64, raising=False)
  monkeypatch.setattr(icc, "gaussian", gaussian_multichannel)
  yield ic
  np.random.set_state(saved)


def _reference_output(ic, image, name, severity, seed):
  np.random.seed(seed)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return ic.corrupt(image, corruption_name=name, severity=severity)


def _assert_close(ours, theirs, what):
  diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
  assert ours.shape == theirs.shape, what
  assert diff.max() <= 1, f"{what}: max |diff| {diff.max()}"
  assert diff.mean() <= 0.01, f"{what}: mean |diff| {diff.mean():.4f}"


# ---------------------------------------------------------------------------
# Names and arguments.
# ---------------------------------------------------------------------------


def test_names_and_categories():
  assert C.BENCHMARK == (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
    "pixelate", "jpeg_compression")
  assert C.EXTRA == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
  assert C.ALL == C.BENCHMARK + C.EXTRA
  assert C.CATEGORIES == {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": C.EXTRA,
  }


def test_names_match_reference(reference):
  assert tuple(reference.get_corruption_names("all")) == C.ALL
  for category in ("noise", "blur", "weather", "digital"):
    assert tuple(reference.get_corruption_names(category)) == C.CATEGORIES[category]


def test_invalid_arguments():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="gaussian_noise.*saturate"):
    C.corrupt(SQUARE, "rain", 1, rng)
  for severity in (0, 6, True, 2.0, "3"):
    with pytest.raises(ValueError, match="Severity"):
      C.corrupt(SQUARE, "contrast", severity, rng)
  with pytest.raises(ValueError, match="uint8"):
    C.corrupt(SQUARE.astype(np.float32), "contrast", 1, rng)
  with pytest.raises(ValueError, match="HxWx3"):
    C.corrupt(SQUARE[..., 0], "contrast", 1, rng)
  with pytest.raises(ValueError, match="16"):
    C.corrupt(SQUARE[:15], "contrast", 1, rng)
  assert C.corrupt(SQUARE, "contrast", np.int64(2), rng).shape == SQUARE.shape


# ---------------------------------------------------------------------------
# Properties of every corruption.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", C.ALL)
def test_shape_dtype_and_change(name):
  for image in (SQUARE, WIDE, TALL, _textured(16, 16)):
    before = image.copy()
    for severity in C.SEVERITIES:
      out = C.corrupt(image, name, severity, np.random.default_rng(severity))
      assert out.shape == image.shape and out.dtype == np.uint8, (name, severity, image.shape)
      assert np.array_equal(image, before), "input modified"
      changed = np.mean(out != image)
      assert changed > 0.01, (name, severity, image.shape, changed)


@pytest.mark.parametrize("name", C.ALL)
def test_seeded(name):
  first = C.corrupt(WIDE, name, 3, np.random.default_rng(7))
  again = C.corrupt(WIDE, name, 3, np.random.default_rng(7))
  other = C.corrupt(WIDE, name, 3, np.random.default_rng(8))
  assert np.array_equal(first, again)
  if name in RANDOM:
    assert not np.array_equal(first, other)
  else:
    assert np.array_equal(first, other)


def test_global_random_state_untouched():
  state = np.random.get_state()
  for name in RANDOM:
    C.corrupt(SQUARE, name, 5, np.random.default_rng(0))
  after = np.random.get_state()
  assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2] == state[2]


def test_fast_enough_for_on_the_fly_use():
  image = _textured(64, 64)
  rng = np.random.default_rng(0)
  C.corrupt(image, "frost", 1, rng)  # Reads the textures.
  start = time.perf_counter()
  for name in C.ALL:
    for severity in C.SEVERITIES:
      C.corrupt(image, name, severity, rng)
  # About 0.1 s on one core; generous for loaded machines.
  assert time.perf_counter() - start < 3.0


def test_frost_textures_packaged():
  names = sorted(os.listdir(C._FROST_DIR))
  assert names == ["NOTICE", "frost1.png", "frost2.png", "frost3.png", "frost4.jpg",
                   "frost5.jpg", "frost6.jpg"]
  for index in range(6):
    texture = C._frost_texture(index)
    assert texture.ndim == 3 and texture.shape[2] == 3 and min(texture.shape[:2]) >= 300
  assert C._frost_texture(0) is C._frost_texture(0)


def test_spatter_without_drops_leaves_image():
  image = _flat(100, 16)
  unchanged = 0
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for seed in range(40):
      out = C.corrupt(image, "spatter", 1, np.random.default_rng(seed))
      unchanged += np.array_equal(out, image)
  assert unchanged > 0  # About one seed in eight forms no drop on 16 px.


# ---------------------------------------------------------------------------
# Published constants, checked through statistics.
# ---------------------------------------------------------------------------


def _robust_std(values: np.ndarray) -> float:
  """Std of a Gaussian sample from its median absolute deviation (clipped tails do not matter)."""
  return float(np.median(np.abs(values - np.median(values))) / 0.6745)


@pytest.mark.parametrize("severity,std", list(zip(C.SEVERITIES, (0.08, 0.12, 0.18, 0.26, 0.38))))
def test_gaussian_noise_std(severity, std):
  image = _flat(128)
  out = C.corrupt(image, "gaussian_noise", severity, np.random.default_rng(severity))
  # Undo the truncation to uint8 (half a level on average).
  noise = (out + 0.5) / 255 - 128 / 255
  assert abs(_robust_std(noise) - std) < 0.04 * std
  assert abs(np.median(noise)) < 0.05 * std


@pytest.mark.parametrize("severity,photons", list(zip(C.SEVERITIES, (60, 25, 12, 5, 3))))
def test_shot_noise_poisson(severity, photons):
  level = 12  # Dark enough that Poisson(x * c) / c almost never reaches 1.
  out = C.corrupt(_flat(level), "shot_noise", severity, np.random.default_rng(severity))
  counts = out / 255 * photons
  k = np.rint(counts)
  assert np.abs(counts - k).max() < photons / 255 + 1e-9, "output not on the k / c grid"
  lam = level / 255 * photons
  assert abs(k.mean() - lam) < 0.06 * lam
  assert abs(k.var() - lam) < 0.1 * lam


@pytest.mark.parametrize("severity,amount", list(zip(C.SEVERITIES, (.03, .06, .09, .17, .27))))
def test_impulse_noise_fraction(severity, amount):
  image = _flat(128)
  out = C.corrupt(image, "impulse_noise", severity, np.random.default_rng(severity))
  changed = out != image
  assert abs(changed.mean() - amount) < 0.1 * amount
  assert set(np.unique(out[changed])) == {0, 255}
  assert abs(np.mean(out[changed] == 255) - 0.5) < 0.05


@pytest.mark.parametrize("severity,std", list(zip(C.SEVERITIES, (.15, .2, .35, .45, .6))))
def test_speckle_noise_std(severity, std):
  level = 100
  out = C.corrupt(_flat(level), "speckle_noise", severity, np.random.default_rng(severity))
  relative = (out + 0.5) / level - 1  # x * (1 + n) / x - 1 = n.
  assert abs(_robust_std(relative) - std) < 0.04 * std


@pytest.mark.parametrize("severity,sigma", list(zip(C.SEVERITIES, (1, 2, 3, 4, 6))))
def test_gaussian_blur_is_scipy_gaussian(severity, sigma):
  for image in (SQUARE, WIDE):
    blurred = ndimage.gaussian_filter(image / 255.0, (sigma, sigma, 0), mode="nearest",
                                      truncate=4.0)
    expected = (np.clip(blurred, 0, 1) * 255).astype(np.uint8)
    ours = C.corrupt(image, "gaussian_blur", severity, np.random.default_rng(0))
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("severity,strength", list(zip(C.SEVERITIES, (1.5, 2, 2.5, 2.5, 3))))
def test_fog_range_compression(severity, strength):
  # On a flat 32x32 image the whole 32x32 fractal is used, so it reaches 0 and 1:
  # out = (x + a * F) * x / (x + a) spans [x^2 / (x + a), x].
  x = 200 / 255
  out = C.corrupt(_flat(200, 32), "fog", severity, np.random.default_rng(severity))
  assert abs(int(out.min()) - int(x * x / (x + strength) * 255)) <= 1
  assert int(out.max()) in (199, 200)


def test_plasma_fractal_statistics():
  means, rough = [], {}
  for decay in (2.0, 1.4):
    rough[decay] = []
    for seed in range(5):
      fractal = C._plasma_fractal(64, decay, np.random.default_rng(seed))
      assert fractal.shape == (64, 64)
      assert fractal.min() == 0.0 and fractal.max() == 1.0
      means.append(fractal.mean())
      rough[decay].append(np.abs(np.diff(fractal, axis=1)).mean())
  assert 0.35 < np.mean(means) < 0.65
  # A slower decay of the perturbation leaves more fine-scale texture.
  assert all(r14 > 1.5 * r2 for r14, r2 in zip(rough[1.4], rough[2.0]))


# ---------------------------------------------------------------------------
# Glass blur's shuffle.
# ---------------------------------------------------------------------------


def test_reference_swap_statement_copies():
  """The reference's `x[a], x[b] = x[b], x[a]` on numpy rows copies x[b] into x[a]."""
  x = np.arange(6, dtype=np.uint8).reshape(2, 1, 3)
  x[0, 0], x[1, 0] = x[1, 0], x[0, 0]
  np.testing.assert_array_equal(x[:, 0], [[3, 4, 5], [3, 4, 5]])


def _sequential_shuffle(x, max_delta, seed):
  """The reference's loop, as it behaves (a copy per visited pixel), with Generator draws."""
  rng = np.random.default_rng(seed)
  h, w = x.shape[:2]
  rows = range(h - max_delta, max_delta, -1)
  cols = range(w - max_delta, max_delta, -1)
  draws = rng.integers(-max_delta, max_delta, size=(len(rows), len(cols), 2))
  x = x.copy()
  for i, r in enumerate(rows):
    for j, c in enumerate(cols):
      dx, dy = draws[i, j]
      x[r, c] = x[r + dy, c + dx]
  return x


@pytest.mark.parametrize("max_delta", (1, 2, 3, 4))
def test_glass_shuffle_matches_sequential_loop(max_delta):
  image = _textured(29, 37, seed=max_delta)
  for seed in range(3):
    ours = C._glass_shuffle(image.copy(), max_delta, np.random.default_rng(seed))
    np.testing.assert_array_equal(ours, _sequential_shuffle(image, max_delta, seed))
    # Pixels outside the visited window keep their colour; all colours come from the input.
    inner = np.zeros(image.shape[:2], dtype=bool)
    inner[max_delta + 1:image.shape[0] - max_delta + 1,
          max_delta + 1:image.shape[1] - max_delta + 1] = True
    np.testing.assert_array_equal(ours[~inner], image[~inner])
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    assert all(tuple(p) in colours for p in ours.reshape(-1, 3))
    if max_delta > 1:  # With max_delta 1 the displacements are in {-1, 0}^2, often zero.
      assert np.mean(np.any(ours != image, axis=-1)[inner]) > 0.5


def test_glass_blur_differs_from_gaussian_blur():
  image = _textured(48, 48)
  for severity, sigma in zip(C.SEVERITIES, (0.7, 0.9, 1, 1.1, 1.5)):
    glass = C.corrupt(image, "glass_blur", severity, np.random.default_rng(0)).astype(float)
    once = ndimage.gaussian_filter(image / 255.0, (sigma, sigma, 0), mode="nearest")
    twice = ndimage.gaussian_filter(np.floor(once * 255) / 255, (sigma, sigma, 0),
                                    mode="nearest")
    plain = (np.clip(twice, 0, 1) * 255).astype(np.uint8)
    assert np.abs(glass - plain).mean() > 2.0, severity


# ---------------------------------------------------------------------------
# Equality with the reference implementation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_match_reference(reference, name):
  for image in (SQUARE, WIDE, TALL):
    for severity in C.SEVERITIES:
      ours = C.corrupt(image, name, severity, np.random.default_rng(0))
      theirs = _reference_output(reference, image, name, severity, seed=0)
      _assert_close(ours, theirs, (name, severity, image.shape))


@pytest.mark.parametrize("name", sorted(set(RANDOM) - {"impulse_noise"}))
def test_random_match_reference_with_same_draws(reference, name):
  images = (SQUARE, WIDE) if name != "glass_blur" else (_textured(32, 36),)
  for image in images:
    for severity in C.SEVERITIES:
      seed = 100 + severity
      ours = C.corrupt(image, name, severity, _LegacyGenerator(seed))
      theirs = _reference_output(reference, image, name, severity, seed)
      _assert_close(ours, theirs, (name, severity, image.shape))


def test_random_reference_statistics_frost_snow_spatter(reference):
  """Independent seeds: output statistics agree with the reference's over a few draws."""
  for name in ("frost", "snow", "spatter", "motion_blur", "elastic_transform"):
    for severity in (1, 5):
      ours = [C.corrupt(SQUARE, name, severity, np.random.default_rng(s)) for s in range(4)]
      theirs = [_reference_output(reference, SQUARE, name, severity, 50 + s) for s in range(4)]
      for stat in (np.mean, np.std):
        a = np.mean([stat(o.astype(float)) for o in ours])
        b = np.mean([stat(t.astype(float)) for t in theirs])
        assert abs(a - b) < 0.15 * b + 3, (name, severity, stat.__name__, a, b)


def test_impulse_noise_matches_scikit_image(reference):
  from skimage.util import random_noise
  for severity, amount in zip(C.SEVERITIES, (.03, .06, .09, .17, .27)):
    noisy = random_noise(WIDE / 255.0, mode="s&p", amount=amount, rng=np.random.default_rng(9))
    expected = (np.clip(noisy, 0, 1) * 255).astype(np.uint8)
    ours = C.corrupt(WIDE, "impulse_noise", severity, np.random.default_rng(9))
    np.testing.assert_array_equal(ours, expected)


def test_plasma_fractal_matches_reference(reference):
  import imagecorruptions.corruptions as icc
  for size, decay in ((32, 2.0), (64, 1.4)):
    np.random.seed(3)
    theirs = icc.plasma_fractal(mapsize=size, wibbledecay=decay)
    ours = C._plasma_fractal(size, decay, _LegacyGenerator(3))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# CIFAR-10-C's constants (make_cifar_c.py, transcribed here independently).
# ---------------------------------------------------------------------------

CIFAR_TABLE = {
  "gaussian_noise": [0.04, 0.06, .08, .09, .10],
  "shot_noise": [500, 250, 100, 75, 50],
  "impulse_noise": [.01, .02, .03, .05, .07],
  "speckle_noise": [.06, .1, .12, .16, .2],
  "gaussian_blur": [.4, .6, 0.7, .8, 1],
  "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
  "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
  "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
  "zoom_blur": [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)],
  "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
  "frost": [(1, 0.2, 0.2), (1, 0.3, 0.2), (0.9, 0.4, 0.2), (0.85, 0.4, 0.2), (0.75, 0.45, 0.2)],
  "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
           (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
           (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
  "spatter": [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
              (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
              (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
  "contrast": [.75, .5, .4, .3, 0.15],
  "brightness": [.05, .1, .15, .2, .3],
  "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
  "jpeg_compression": [80, 65, 58, 50, 40],
  "pixelate": [(0.95, "box"), (0.9, "box"), (0.85, "box"), (0.75, "box"), (0.65, "box")],
  # (alpha, sigma, affine) as make_cifar_c.py's IMSIZE * f, over IMSIZE = 32.
  "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                        (0.1, 0.03, 0.03)],
}
CIFAR_IMAGE = _textured(32, 32, seed=3)


@pytest.mark.parametrize("name", C.ALL)
def test_cifar_constants_are_make_cifar_c(name):
  """The table, and what corrupt(constants="cifar") computes with it: CIFAR-10-C's row at
  every severity, which ImageNet-C's row would not give."""
  assert len(C.CIFAR[name]) == 5
  for got, want in zip(C.CIFAR[name], CIFAR_TABLE[name]):
    if name == "pixelate":
      assert got == want
    else:
      np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float))
  severity = 3
  function = C._VARIANTS["cifar"].get(name, C._CORRUPTIONS[name])
  expected = function(CIFAR_IMAGE.copy(), CIFAR_TABLE[name][severity - 1],
                      np.random.default_rng(7))
  ours = C.corrupt(CIFAR_IMAGE, name, severity, np.random.default_rng(7), constants="cifar")
  imagenet = C.corrupt(CIFAR_IMAGE, name, severity, np.random.default_rng(7))
  np.testing.assert_array_equal(ours, expected)
  assert not np.array_equal(ours, imagenet), f"{name}: CIFAR's constants change nothing"


def test_cifar_corruptions_against_independent_computations():
  """Five corruptions recomputed from make_cifar_c.py's formulas at severity 3."""
  x = CIFAR_IMAGE / 255.0
  rng = np.random.default_rng(0)
  noise = rng.normal(size=x.shape, scale=0.08)
  np.testing.assert_array_equal(
      C.corrupt(CIFAR_IMAGE, "gaussian_noise", 3, np.random.default_rng(0), constants="cifar"),
      (np.clip(x + noise, 0, 1) * 255).astype(np.uint8))
  means = x.mean(axis=(0, 1), keepdims=True)
  np.testing.assert_array_equal(
      C.corrupt(CIFAR_IMAGE, "contrast", 3, rng, constants="cifar"),
      (np.clip((x - means) * 0.4 + means, 0, 1) * 255).astype(np.uint8))
  blurred = ndimage.gaussian_filter(x, (0.7, 0.7, 0), mode="nearest", truncate=4)
  np.testing.assert_array_equal(
      C.corrupt(CIFAR_IMAGE, "gaussian_blur", 3, rng, constants="cifar"),
      (np.clip(blurred, 0, 1) * 255).astype(np.uint8))
  from PIL import Image
  small = Image.fromarray(CIFAR_IMAGE).resize((27, 27), Image.BOX)
  np.testing.assert_array_equal(
      C.corrupt(CIFAR_IMAGE, "pixelate", 3, rng, constants="cifar"),
      np.array(small.resize((32, 32), Image.BOX)))
  # Severity 1 of the elastic transform is its affine step alone (alpha = sigma = 0).
  import cv2
  draws = np.random.default_rng(5).uniform(-2.56, 2.56, size=(3, 2)).astype(np.float32)
  src = np.float32([[26, 26], [26, 6], [6, 6]])
  warped = cv2.warpAffine((CIFAR_IMAGE / 255.0).astype(np.float32),
                          cv2.getAffineTransform(src, src + draws), (32, 32),
                          borderMode=cv2.BORDER_REFLECT_101)
  np.testing.assert_array_equal(
      C.corrupt(CIFAR_IMAGE, "elastic_transform", 1, np.random.default_rng(5),
                constants="cifar"), (np.clip(warped, 0, 1) * 255).astype(np.uint8))


def test_unknown_constants_are_refused():
  with pytest.raises(ValueError, match="constants 'mnist'"):
    C.corrupt(CIFAR_IMAGE, "fog", 1, np.random.default_rng(0), constants="mnist")
