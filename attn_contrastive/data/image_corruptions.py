"""The 19 ImageNet-C corruptions, for uint8 RGB images of any size.

Hendrycks & Dietterich (2019), "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", define 15 benchmark corruptions in four
families (noise, blur, weather, digital) plus four held-out ones (speckle
noise, gaussian blur, spatter, saturate), each at five severities. Their code
is written for 224-px images; the `imagecorruptions` package (Michaelis et al.
2019, version 1.1.2) generalises it to any image size (fog's plasma fractal at
the next power of two, frost textures rescaled to cover the image, zoom layers
cropped back, elastic parameters proportional to the image side). This module
follows that generalisation's maths and published constants, so that a
corruption without randomness gives the same pixels as the reference, and a
random one gives the same pixels when fed the same random draws.

Differences from the reference, all deliberate:

* every random number comes from the `numpy.random.Generator` passed in, never
  from numpy's global state, so a seed fixes the output;
* scikit-image is not used: its Gaussian filter is `scipy.ndimage`'s filter
  (mode "nearest", truncate 4), and its RGB<->HSV conversions are rewritten
  here with the same arithmetic;
* glass blur's pixel shuffle, a per-pixel Python loop in the reference, is
  computed with array operations that give the same result (see
  `_glass_shuffle`);
* the three corruptions the reference cannot run under numpy 2 and current
  scikit-image (glass blur, gaussian blur, fog) work here;
* water spatter on an image too small for any drop to form (seen at 16 px)
  leaves the image as it is, where the reference divides 0 by 0 and
  returns black.

Where `imagecorruptions` itself departs from ImageNet-C's original 224-px
script, this module follows `imagecorruptions`: motion blur and snow's smear
are a numpy line blur instead of ImageMagick's motion blur, the elastic
transform has no random affine step and other parameters, frost textures are
scaled by 1.1 before cropping, pixelate upsamples with nearest instead of
box filtering, and zoom layers are cropped at the top-left instead of the
centre. The released ImageNet-C files were moreover saved as JPEG at quality
85, which images made here are not.

Float results are clipped to [0, 1] (or [0, 255]) and truncated to uint8, as
the reference's `np.uint8(...)` does.

`corrupt(..., constants="cifar")` uses CIFAR-10-C's parameters instead
(`make_cifar_c.py` of the same authors: milder severities for 32-px images,
frost textures scaled by 0.2, pixelate upsampled with the box filter, and an
elastic transform with a random affine step first). Its zoom layers are
cropped at the top-left like the ImageNet ones, where that script crops
their centre (a pixel's shift at most on 32 px).
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["BENCHMARK", "EXTRA", "ALL", "CATEGORIES", "SEVERITIES", "CONSTANTS", "corrupt"]

BENCHMARK: tuple[str, ...] = (
  "gaussian_noise", "shot_noise", "impulse_noise",
  "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
  "snow", "frost", "fog", "brightness",
  "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL: tuple[str, ...] = BENCHMARK + EXTRA
CATEGORIES: dict[str, tuple[str, ...]] = {
  "noise": BENCHMARK[0:3],
  "blur": BENCHMARK[3:7],
  "weather": BENCHMARK[7:11],
  "digital": BENCHMARK[11:15],
  "extra": EXTRA,
}

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_FROST_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frost")
_FROST_FILES = (
  "frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")

_Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# ---------------------------------------------------------------------------
# Shared helpers.
# ---------------------------------------------------------------------------


def _unit(image: np.ndarray) -> np.ndarray:
  """uint8 image as float64 in [0, 1]."""
  return image / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
  """Float image in [0, 1] (clipped) to uint8, truncating like the reference."""
  return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _gaussian(x: np.ndarray, sigma: float | np.ndarray, mode: str = "nearest",
              truncate: float = 4.0) -> np.ndarray:
  """Gaussian blur over the two spatial axes of an HxW or HxWxC float array.

  Equal to scikit-image's `filters.gaussian` on a float image (which only
  forwards to `scipy.ndimage.gaussian_filter`, with sigma 0 on the channel
  axis); kept as a function so the defaults (mode "nearest", truncate 4)
  are those of the reference.
  """
  sigmas = list(np.broadcast_to(np.asarray(sigma, dtype=float), (2,)))
  if x.ndim == 3:
    sigmas.append(0.0)
  return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
  """Centre crop of 1/factor of each side, zoomed back by `factor` (linear).

  The output is at least as large as `x` (not cropped to it); callers take
  its top-left HxW corner, as the reference does. The zoom is
  `scipy.ndimage.zoom` with order 1, as in the reference.
  """
  h, w = x.shape[:2]
  ch = int(np.ceil(h / float(factor)))
  cw = int(np.ceil(w / float(factor)))
  top, left = (h - ch) // 2, (w - cw) // 2
  crop = x[top:top + ch, left:left + cw]
  if crop.ndim == 2:
    return ndimage.zoom(crop, (factor, factor), order=1)
  # Channel by channel: the same values as one zoom by (factor, factor, 1), twice as fast.
  return np.stack(
    [ndimage.zoom(crop[..., c], (factor, factor), order=1) for c in range(crop.shape[2])],
    axis=-1)


def _disk_kernel(radius: int, alias_blur: float) -> np.ndarray:
  """Defocus kernel: a normalised disk, anti-aliased by a small Gaussian.

  As ImageNet-C: the support is at least 17x17 (radius <= 8), and the
  anti-aliasing Gaussian is 3x3 up to radius 8 and 5x5 above.
  """
  if radius <= 8:
    coords = np.arange(-8, 8 + 1)
    ksize = (3, 3)
  else:
    coords = np.arange(-radius, radius + 1)
    ksize = (5, 5)
  xs, ys = np.meshgrid(coords, coords)
  disk = np.array((xs ** 2 + ys ** 2) <= radius ** 2, dtype=np.float32)
  disk /= np.sum(disk)
  return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def _line_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
  """ImageNet-C's motion blur: a one-sided Gaussian-weighted smear along `angle`.

  Sums `2 * radius + 1` copies of `x`, the i-th shifted by i pixels (rounded)
  along the direction `angle` (degrees) with edge pixels replicated, weighted
  by a half-Gaussian of std `sigma` in i. Stops at the first shift as large as
  the image, like the reference. Works on HxW or HxWxC arrays; returns
  float64, unclipped.
  """
  width = 2 * radius + 1
  weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
  weights = weights / np.sum(weights)
  point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
  hypot = math.hypot(point[0], point[1])
  h, w = x.shape[:2]
  shifts = []
  for i in range(width):
    dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
    dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
    if abs(dy) >= h or abs(dx) >= w:
      break
    shifts.append((dy, dx))
  pad = max(max(abs(dy), abs(dx)) for dy, dx in shifts)
  padding = ((pad, pad), (pad, pad)) + ((0, 0),) * (x.ndim - 2)
  padded = np.pad(x, padding, mode="edge")
  blurred = np.zeros(x.shape, dtype=np.float64)
  for weight, (dy, dx) in zip(weights, shifts):
    # Shifting by (dy, dx) with replicated edges: out[r, c] = x[clip(r - dy), clip(c - dx)].
    blurred += weight * padded[pad - dy:pad - dy + h, pad - dx:pad - dx + w]
  return blurred


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
  """Diamond-square height map of side `size` (a power of two), scaled to [0, 1].

  ImageNet-C's fog texture: the random perturbation starts at amplitude 100
  (drawn uniform in +-100, times 100) and is divided by `decay` at each
  halving of the step. The draws are made in the reference's order (square
  step, then the two diamond sub-grids) so the same draws give the same map.
  """
  grid = np.empty((size, size), dtype=np.float64)
  grid[0, 0] = 0
  step = size
  wibble = 100.0

  def perturbed_mean(total: np.ndarray) -> np.ndarray:
    return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

  while step >= 2:
    half = step // 2
    # Squares: the centre of each square of corners `step` apart.
    corners = grid[0:size:step, 0:size:step]
    total = corners + np.roll(corners, shift=-1, axis=0)
    total += np.roll(total, shift=-1, axis=1)
    grid[half:size:step, half:size:step] = perturbed_mean(total)
    # Diamonds: the edge midpoints, from two centres and two corners each.
    centres = grid[half:size:step, half:size:step]
    corners = grid[0:size:step, 0:size:step]
    total = centres + np.roll(centres, 1, axis=0) + (corners + np.roll(corners, -1, axis=1))
    grid[0:size:step, half:size:step] = perturbed_mean(total)
    total = centres + np.roll(centres, 1, axis=1) + (corners + np.roll(corners, -1, axis=0))
    grid[half:size:step, 0:size:step] = perturbed_mean(total)
    step //= 2
    wibble /= decay

  grid -= grid.min()
  return grid / grid.max()


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """HxWx3 float RGB in [0, 1] to HSV in [0, 1], scikit-image's arithmetic.

  Hue is taken from the last channel reaching the maximum (blue over green
  over red), and is 0 where the pixel is grey, as in `skimage.color.rgb2hsv`.
  """
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  # Element-wise over the channels: the same values as max / ptp along the last axis, faster.
  v = np.maximum(np.maximum(r, g), b)
  delta = v - np.minimum(np.minimum(r, g), b)
  grey = delta == 0.0
  safe_delta = np.where(grey, 1.0, delta)
  safe_v = np.where(grey, 1.0, v)
  s = np.where(grey, 0.0, delta / safe_v)
  h = np.where(
    b == v, 4.0 + (r - g) / safe_delta,
    np.where(g == v, 2.0 + (b - r) / safe_delta, (g - b) / safe_delta))
  h = (h / 6.0) % 1.0
  h[grey] = 0.0
  return np.stack([h, s, v], axis=-1)


# Sector k of the hue circle takes its (R, G, B) from these entries of (v, p, q, t).
_HSV_SECTORS = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """Inverse of `_rgb_to_hsv`, with `skimage.color.hsv2rgb`'s arithmetic."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = np.floor(h * 6)
  f = h * 6 - sector
  p = v * (1 - s)
  q = v * (1 - f * s)
  t = v * (1 - (1 - f) * s)
  candidates = np.stack([v, p, q, t], axis=-1)
  index = _HSV_SECTORS[sector.astype(np.uint8) % 6]
  return np.take_along_axis(candidates, index, axis=-1)


@functools.lru_cache(maxsize=None)
def _frost_texture(index: int) -> np.ndarray:
  """The `index`-th frost texture (BGR, as cv2 reads it), read once."""
  path = os.path.join(_FROST_DIR, _FROST_FILES[index])
  texture = cv2.imread(path, cv2.IMREAD_COLOR)
  if texture is None:
    raise FileNotFoundError(f"Frost texture not found: {path}")
  texture.setflags(write=False)
  return texture


@functools.lru_cache(maxsize=32)
def _frost_resized(index: int, width: int, height: int) -> np.ndarray:
  """Frost texture `index` resized (bicubic) to width x height, cached."""
  resized = cv2.resize(_frost_texture(index), dsize=(width, height),
                       interpolation=cv2.INTER_CUBIC)
  resized.setflags(write=False)
  return resized


# ---------------------------------------------------------------------------
# Noise.
# ---------------------------------------------------------------------------


def _gaussian_noise(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Additive Gaussian noise, std 0.08 .. 0.38 of the range (ImageNet-C)."""
  std = p
  x = _unit(image)
  return _to_uint8(x + rng.normal(size=x.shape, scale=std))


def _shot_noise(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Poisson (photon) noise: Poisson(x * c) / c with c = 60 .. 3 (ImageNet-C).

  The variance of a pixel of value x (in [0, 1]) is x / c.
  """
  photons = p
  x = _unit(image)
  return _to_uint8(rng.poisson(x * photons) / float(photons))


def _impulse_noise(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Salt-and-pepper noise on 3 .. 27% of the values (ImageNet-C).

  Each channel value independently becomes 0 or 255 (even odds) with
  probability `amount`; the draws are those of scikit-image's
  `random_noise(mode="s&p")` given the same generator.
  """
  amount = p
  x = _unit(image)
  flipped = rng.random(x.shape) <= amount
  salted = rng.random(x.shape) <= 0.5
  x[flipped & salted] = 1.0
  x[flipped & ~salted] = 0.0
  return _to_uint8(x)


def _speckle_noise(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Multiplicative Gaussian noise x * (1 + n), std of n 0.15 .. 0.6 (ImageNet-C)."""
  std = p
  x = _unit(image)
  return _to_uint8(x + x * rng.normal(size=x.shape, scale=std))


# ---------------------------------------------------------------------------
# Blur.
# ---------------------------------------------------------------------------


def _defocus_blur(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Convolution with an anti-aliased disk of radius 3 .. 10 px (ImageNet-C).

  Borders reflect (OpenCV's default, as in the reference).
  """
  radius, alias_blur = p
  kernel = _disk_kernel(radius, alias_blur)
  x = _unit(image)
  blurred = np.stack([cv2.filter2D(x[..., c], -1, kernel) for c in range(3)], axis=-1)
  return _to_uint8(blurred)


def _glass_shuffle(x: np.ndarray, max_delta: int, rng: np.random.Generator) -> np.ndarray:
  """One pass of glass blur's local pixel shuffle, without a per-pixel loop.

  The reference visits the pixels (h, w) with max_delta < h <= H - max_delta
  and max_delta < w <= W - max_delta in reverse raster order and, for each,
  draws (dx, dy) uniformly in [-max_delta, max_delta - 1]^2 and executes
  `x[h, w], x[h', w'] = x[h', w'], x[h, w]` with (h', w') = (h + dy, w + dx).
  On numpy rows that statement is not a swap: the right side holds views, so
  the first assignment also changes the second value and the pixel at
  (h', w') keeps its colour. What ImageNet-C computed (and what this
  reproduces) is the sequential copy x[h, w] <- x[h', w'].

  A copy reads the current value of its source, which is already overwritten
  when the source was visited earlier, i.e. lies in the visited region later
  in raster order. Each pixel therefore follows a chain of sources, strictly
  increasing in raster order, to the first one not overwritten before it was
  read, and takes that pixel's original value. The chains are resolved by
  pointer doubling (a handful of vectorised rounds, as chains are short), and
  the draws are made in the reference's order, so the same draws give the
  same image.
  """
  h, w = x.shape[:2]
  rows = np.arange(h - max_delta, max_delta, -1)
  cols = np.arange(w - max_delta, max_delta, -1)
  if rows.size == 0 or cols.size == 0:
    return x
  draws = rng.integers(-max_delta, max_delta, size=(rows.size, cols.size, 2))
  dx, dy = draws[..., 0], draws[..., 1]
  target = rows[:, None] * w + cols[None, :]
  src_rows = rows[:, None] + dy
  src_cols = cols[None, :] + dx
  source = src_rows * w + src_cols
  # A source was overwritten before being read iff it is visited and later in raster order.
  visited = ((src_rows > max_delta) & (src_rows <= h - max_delta)
             & (src_cols > max_delta) & (src_cols <= w - max_delta))
  pointer = np.arange(h * w)
  resolved = np.ones(h * w, dtype=bool)
  pointer[target.ravel()] = source.ravel()
  resolved[target.ravel()] = ~(visited & (source > target)).ravel()
  pending = np.flatnonzero(~resolved)
  while pending.size:
    nxt = pointer[pending]
    pointer[pending], resolved[pending] = pointer[nxt], resolved[nxt]
    pending = pending[~resolved[pending]]
  return x.reshape(h * w, -1)[pointer].reshape(x.shape)


def _glass_blur(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Gaussian blur, local pixel shuffling, Gaussian blur again (ImageNet-C).

  (sigma, max displacement, shuffle passes) = (0.7, 1, 2) .. (1.5, 4, 2). The
  shuffle acts on the uint8-truncated first blur, as in the reference, and
  is the reference's sequential copy (see `_glass_shuffle`), vectorised.
  """
  sigma, max_delta, passes = p
  x = (_gaussian(_unit(image), sigma) * 255).astype(np.uint8)
  for _ in range(passes):
    x = _glass_shuffle(x, max_delta, rng)
  return _to_uint8(_gaussian(_unit(x), sigma))


def _motion_blur(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Smear along a random direction in [-45, 45] degrees (ImageNet-C).

  (radius, sigma) = (10, 3) .. (20, 15): the kernel has 2 * radius + 1 taps
  with half-Gaussian weights of std sigma (see `_line_blur`).
  """
  radius, sigma = p
  angle = rng.uniform(-45, 45)
  blurred = _line_blur(image, radius=radius, sigma=sigma, angle=angle)
  return np.clip(blurred, 0, 255).astype(np.uint8)


def _zoom_blur(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Mean of the image and centre zooms by 1 .. 1.1-1.3 (ImageNet-C).

  The zoom factors are the reference's `np.arange` sequences (11 to 16 of
  them); each zoomed layer is cropped to the image's top-left HxW.
  """
  factors = p
  x = _unit(image).astype(np.float32)
  h, w = x.shape[:2]
  total = np.zeros_like(x)
  for factor in factors:
    total += _clipped_zoom(x, factor)[:h, :w]
  return _to_uint8((x + total) / (len(factors) + 1))


def _gaussian_blur(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Gaussian blur with sigma 1, 2, 3, 4, 6 px, replicated borders (ImageNet-C)."""
  sigma = p
  return _to_uint8(_gaussian(_unit(image), sigma))


# ---------------------------------------------------------------------------
# Weather.
# ---------------------------------------------------------------------------


def _snow(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Motion-blurred flakes over a brightened, desaturated image (ImageNet-C).

  Flakes: Gaussian noise N(mean, std) zoomed up, thresholded, smeared by
  `_line_blur` in a random direction in [-135, -45] degrees, rounded to
  uint8, and added with its 180-degree rotation. The image is first mixed
  with max(image, 1.5 * grey + 0.5). Constants
  (mean, std, zoom, threshold, blur radius, blur sigma, image weight) per
  severity are ImageNet-C's.
  """
  mean, std, zoom, threshold, radius, sigma, keep = p
  x = image.astype(np.float32) / 255.0
  h, w = x.shape[:2]
  flakes = rng.normal(size=(h, w), loc=mean, scale=std)
  flakes = _clipped_zoom(flakes, zoom)
  flakes[flakes < threshold] = 0
  flakes = np.clip(flakes, 0, 1)
  flakes = _line_blur(flakes, radius=radius, sigma=sigma, angle=rng.uniform(-135, -45))
  flakes = np.round(flakes * 255).astype(np.uint8) / 255.0
  flakes = flakes[:h, :w, None]
  grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
  x = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
  return _to_uint8(x + flakes + np.rot90(flakes, k=2))


def _frost(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Blend with a random crop of a frost texture (ImageNet-C).

  out = a * image + b * frost, (a, b) = (1, 0.4) .. (0.6, 0.75). The texture
  is scaled (bicubic) by 1.1 times the factor that makes it cover the image
  (at least 1), or by a fixed factor (CIFAR-10-C's 0.2) that still covers
  it, then cropped at a random offset. As in ImageNet-C's code the
  texture is drawn among the first five of the six files.
  """
  weight_image, weight_frost, texture_scale = p
  index = int(rng.integers(5))
  tex_h, tex_w = _frost_texture(index).shape[:2]
  h, w = image.shape[:2]
  cover = max(h / tex_h, w / tex_w) * 1.1
  scale = max(1.1, cover) if texture_scale is None else max(texture_scale, cover)
  texture = _frost_resized(index, int(np.ceil(tex_w * scale)), int(np.ceil(tex_h * scale)))
  top = rng.integers(0, texture.shape[0] - h)
  left = rng.integers(0, texture.shape[1] - w)
  crop = texture[top:top + h, left:left + w, ::-1]
  return np.clip(weight_image * image + weight_frost * crop, 0, 255).astype(np.uint8)


def _fog(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Add a plasma-fractal haze and compress the range (ImageNet-C).

  out = (x + a * fractal) * max(x) / (max(x) + a), the fractal in [0, 1] of
  side the next power of two of the image's longer side, (a, decay) =
  (1.5, 2) .. (3, 1.4).
  """
  strength, decay = p
  h, w = image.shape[:2]
  size = 1 << (max(h, w) - 1).bit_length()
  x = _unit(image)
  peak = x.max()
  x += strength * _plasma_fractal(size, decay, rng)[:h, :w, None]
  return _to_uint8(x * peak / (peak + strength))


def _brightness(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Add 0.1 .. 0.5 to the HSV value channel (ImageNet-C)."""
  shift = p
  hsv = _rgb_to_hsv(_unit(image))
  hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
  return _to_uint8(_hsv_to_rgb(hsv))


def _spatter(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Water drops (severities 1-3) or mud (4-5) on the lens (ImageNet-C).

  A blurred Gaussian noise field thresholded into blobs. Water: the blobs'
  intensity times an embossed, equalised distance-to-edge map, scaled to
  `strength` at its peak, adds pale turquoise (175, 238, 238). Mud: the blob
  mask, blurred and cut below 0.8, replaces the image with brown
  (63, 42, 20). Constants (mean, std, blur sigma, threshold, strength or mud
  blur, mud?) are ImageNet-C's. If no blob survives the threshold (possible
  on very small images) the reference divides 0 by 0; here the image is left
  without spatter.
  """
  mean, std, sigma, threshold, strength, mud = p
  x = image.astype(np.float32) / 255.0
  liquid = rng.normal(size=x.shape[:2], loc=mean, scale=std)
  liquid = _gaussian(liquid, sigma)
  liquid[liquid < threshold] = 0
  if not mud:
    liquid = (liquid * 255).astype(np.uint8)
    dist = 255 - cv2.Canny(liquid, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = cv2.filter2D(dist, cv2.CV_8U, emboss)
    dist = cv2.blur(dist, (3, 3)).astype(np.float32)
    m = liquid * dist
    peak = m.max()
    if peak == 0:
      return _to_uint8(x)
    m = m / peak * np.float32(strength)
    color = np.array([175, 238, 238], dtype=np.float64) / 255.0
    return _to_uint8(x + m[..., None] * color.astype(np.float32))
  blobs = np.where(liquid > threshold, 1, 0).astype(np.float32)
  m = _gaussian(blobs, strength)
  m[m < 0.8] = 0
  color = np.array([63, 42, 20], dtype=np.float64) / 255.0 * m[..., None]
  x *= 1 - m[..., None]
  return _to_uint8(x + color)


# ---------------------------------------------------------------------------
# Digital.
# ---------------------------------------------------------------------------

_RESAMPLING = {"nearest": Image.NEAREST, "box": Image.BOX}


def _contrast(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Scale each channel's deviation from its mean by 0.4 .. 0.05 (ImageNet-C)."""
  factor = p
  x = _unit(image)
  means = np.mean(x, axis=(0, 1), keepdims=True)
  return _to_uint8((x - means) * factor + means)


def _elastic_transform(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Warp by a smooth random displacement field (imagecorruptions' version).

  Each displacement component is uniform noise in +-0.005 * H px, smoothed
  by a Gaussian of sigma 0.01 * (H, W) (reflecting borders, truncate 3), and
  scaled by alpha = 250 * (0.05, 0.065, 0.085, 0.1, 0.12); the image is
  resampled bilinearly with reflecting borders.
  """
  alpha = p
  x = image.astype(np.float32) / 255.0
  h, w = x.shape[:2]
  sigma = np.array((h, w)) * 0.01
  max_shift = h * 0.005
  dx = (_gaussian(rng.uniform(-max_shift, max_shift, size=(h, w)), sigma, mode="reflect",
                  truncate=3) * alpha).astype(np.float32)
  dy = (_gaussian(rng.uniform(-max_shift, max_shift, size=(h, w)), sigma, mode="reflect",
                  truncate=3) * alpha).astype(np.float32)
  cols, rows = np.meshgrid(np.arange(w), np.arange(h))
  coords = np.stack([rows + dy, cols + dx])
  warped = np.stack(
    [ndimage.map_coordinates(x[..., c], coords, order=1, mode="reflect") for c in range(3)],
    axis=-1)
  return _to_uint8(warped)


def _elastic_transform_cifar(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """CIFAR-10-C's elastic transform: a random affine warp, then a displacement field.

  ``p = (alpha, sigma, affine)``, fractions of the image's shorter side
  (CIFAR-10-C's pixel values over its 32 px): the three points of
  ``(centre ± side // 3)`` move by uniform draws in ``±affine``
  (``cv2.warpAffine``, reflect-101 borders); each displacement component is
  uniform noise in ±1 px smoothed by a Gaussian of ``sigma`` (reflecting
  borders, truncate 3) times ``alpha``; bilinear resampling, reflecting
  borders. Draws in the reference's order: the affine, then x, then y.
  """
  side = min(image.shape[:2])
  alpha, sigma, affine = (f * side for f in p)
  x = image.astype(np.float32) / 255.0
  h, w = x.shape[:2]
  centre = np.float32((h, w)) // 2
  square = side // 3
  src = np.float32([centre + square, [centre[0] + square, centre[1] - square],
                    centre - square])
  dst = src + rng.uniform(-affine, affine, size=src.shape).astype(np.float32)
  x = cv2.warpAffine(x, cv2.getAffineTransform(src, dst), (w, h),
                     borderMode=cv2.BORDER_REFLECT_101)
  dx = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3)
        * alpha).astype(np.float32)
  dy = (_gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3)
        * alpha).astype(np.float32)
  cols, rows = np.meshgrid(np.arange(w), np.arange(h))
  coords = np.stack([rows + dy, cols + dx])
  warped = np.stack(
    [ndimage.map_coordinates(x[..., c], coords, order=1, mode="reflect") for c in range(3)],
    axis=-1)
  return _to_uint8(warped)


def _pixelate(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """Box-downsample to 0.6 .. 0.25 of the size, upsample back (ImageNet-C: nearest).

  CIFAR-10-C upsamples with the box filter too.
  """
  factor, upsample = p
  h, w = image.shape[:2]
  small = Image.fromarray(image).resize((int(w * factor), int(h * factor)), Image.BOX)
  return np.array(small.resize((w, h), _RESAMPLING[upsample]))


def _jpeg_compression(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """JPEG round trip (Pillow) at quality 25, 18, 15, 10, 7 (ImageNet-C)."""
  quality = p
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "JPEG", quality=quality)
  buffer.seek(0)
  with Image.open(buffer) as decoded:
    return np.array(decoded)


def _saturate(image: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
  """HSV saturation s -> s * a + b, (a, b) = (0.3, 0) .. (20, 0.2) (ImageNet-C)."""
  scale, offset = p
  hsv = _rgb_to_hsv(_unit(image))
  hsv[..., 1] = np.clip(hsv[..., 1] * scale + offset, 0, 1)
  return _to_uint8(_hsv_to_rgb(hsv))


_CORRUPTIONS: dict[str, _Corruption] = {
  "gaussian_noise": _gaussian_noise,
  "shot_noise": _shot_noise,
  "impulse_noise": _impulse_noise,
  "defocus_blur": _defocus_blur,
  "glass_blur": _glass_blur,
  "motion_blur": _motion_blur,
  "zoom_blur": _zoom_blur,
  "snow": _snow,
  "frost": _frost,
  "fog": _fog,
  "brightness": _brightness,
  "contrast": _contrast,
  "elastic_transform": _elastic_transform,
  "pixelate": _pixelate,
  "jpeg_compression": _jpeg_compression,
  "speckle_noise": _speckle_noise,
  "gaussian_blur": _gaussian_blur,
  "spatter": _spatter,
  "saturate": _saturate,
}
assert tuple(_CORRUPTIONS) == ALL


# ---------------------------------------------------------------------------
# The constants: each corruption's parameters at severities 1-5.
# ---------------------------------------------------------------------------

#: ImageNet-C's (``make_imagenet_c.py``, as ``imagecorruptions`` generalises them).
IMAGENET: dict[str, tuple] = {
  "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
  "shot_noise": (60, 25, 12, 5, 3),
  "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
  "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
  "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
  "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
  "zoom_blur": (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
                np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)),
  "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8),
           (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
           (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
           (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
           (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
  "frost": ((1, 0.4, None), (0.8, 0.6, None), (0.7, 0.7, None), (0.65, 0.7, None),
            (0.6, 0.75, None)),
  "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
  "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
  "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
  "elastic_transform": tuple(250 * a for a in (0.05, 0.065, 0.085, 0.1, 0.12)),
  "pixelate": ((0.6, "nearest"), (0.5, "nearest"), (0.4, "nearest"), (0.3, "nearest"),
               (0.25, "nearest")),
  "jpeg_compression": (25, 18, 15, 10, 7),
  "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
  "gaussian_blur": (1, 2, 3, 4, 6),
  "spatter": ((0.65, 0.3, 4, 0.69, 0.6, 0),
              (0.65, 0.3, 3, 0.68, 0.6, 0),
              (0.65, 0.3, 2, 0.68, 0.5, 0),
              (0.65, 0.3, 1, 0.65, 1.5, 1),
              (0.67, 0.4, 1, 0.65, 1.5, 1)),
  "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
}

#: CIFAR-10-C's (Hendrycks & Dietterich, ``make_cifar_c.py``): milder, for 32-px images.
#: Frost scales its texture by 0.2, pixelate upsamples with the box filter, and the
#: elastic transform is the affine-then-displacement variant (fractions of the side).
CIFAR: dict[str, tuple] = {
  "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
  "shot_noise": (500, 250, 100, 75, 50),
  "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
  "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
  "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
  "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
  "zoom_blur": (np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)),
  "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
           (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
           (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
           (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
           (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
  "frost": ((1, 0.2, 0.2), (1, 0.3, 0.2), (0.9, 0.4, 0.2), (0.85, 0.4, 0.2),
            (0.75, 0.45, 0.2)),
  "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
  "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
  "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
  "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                        (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
  "pixelate": ((0.95, "box"), (0.9, "box"), (0.85, "box"), (0.75, "box"), (0.65, "box")),
  "jpeg_compression": (80, 65, 58, 50, 40),
  "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
  "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
  "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0),
              (0.65, 0.1, 0.8, 0.7, 0.5, 0),
              (0.65, 0.3, 1, 0.69, 0.5, 0),
              (0.65, 0.1, 0.7, 0.69, 0.6, 1),
              (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
  "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}

#: ``corrupt``'s ``constants``: the parameter table of each benchmark.
CONSTANTS: dict[str, dict[str, tuple]] = {"imagenet": IMAGENET, "cifar": CIFAR}
assert all(set(table) == set(ALL) for table in CONSTANTS.values())

#: Where a benchmark's recipe differs from ImageNet-C's in more than its numbers.
_VARIANTS: dict[str, dict[str, _Corruption]] = {
  "imagenet": {}, "cifar": {"elastic_transform": _elastic_transform_cifar}}


def corrupt(image: np.ndarray, name: str, severity: int,
            rng: np.random.Generator, constants: str = "imagenet") -> np.ndarray:
  """Apply ImageNet-C corruption `name` at `severity` (1-5) to an RGB image.

  Args:
    image: uint8 array HxWx3, both sides at least 16 px.
    name: one of `ALL`.
    severity: 1 (mildest) to 5.
    rng: source of all random draws; corruptions without randomness ignore
      it. The same generator state gives the same output.
    constants: whose parameters: "imagenet" (ImageNet-C's) or "cifar"
      (CIFAR-10-C's, made for 32-px images, which ImageNet-C's severities
      would mostly destroy).

  Returns:
    A new uint8 HxWx3 array.
  """
  if name not in _CORRUPTIONS:
    raise ValueError(f"Unknown corruption {name!r}; expected one of {', '.join(ALL)}")
  if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
      or severity not in SEVERITIES):
    raise ValueError(f"Severity must be one of {SEVERITIES}, got {severity!r}")
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"Expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
  if min(image.shape[:2]) < 16:
    raise ValueError(f"Image sides must be at least 16 px, got {image.shape[:2]}")
  if constants not in CONSTANTS:
    raise ValueError(f"Unknown constants {constants!r}; expected one of {', '.join(CONSTANTS)}")
  function = _VARIANTS[constants].get(name, _CORRUPTIONS[name])
  out = function(np.ascontiguousarray(image), CONSTANTS[constants][name][int(severity) - 1], rng)
  assert out.shape == image.shape and out.dtype == np.uint8
  return out
