"""Per-example image augmentation on the host, in numpy and OpenCV.

Small named ops (crop boxes, crop-and-resize, flip, colour ops, blur) and the
three composed views the tasks use:

* ``simclr_view``: random resized crop + flip + colour distortion + blur, the
  SimCLR recipe (Chen et al. 2020);
* ``supervised_train_view``: random resized crop + flip;
* ``eval_view``: deterministic resize-short-side + centre crop.

Geometry is expressed as a `Box` in *normalised* coordinates of the whole
image, so one box crops an image and its attention map identically whatever
their resolutions (a 64x64 map lines up with a 375x500 image). Colour ops
never touch maps. Every composed view draws its random numbers in a fixed
order that does not depend on whether a map is given, so the image view is
the same with or without a map.

Coordinate convention: a pixel ``i`` covers the continuous interval
``[i, i + 1)``; the normalised coordinate ``u`` in ``[0, 1]`` is the
continuous pixel coordinate divided by the image side. Output pixel centres
are mapped to input coordinates by one affine map, so crops are exact to a
sub-pixel.

Images are uint8 (0..255) or float (assumed in [0, 1]) arrays of shape
HxWx3; maps are HxW or HxWx1 arrays of any non-negative scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np

from attn_contrastive.config_checks import JITTER_IMPLS

__all__ = [
    "Box",
    "JitterParams",
    "sample_crop_box",
    "center_crop_box",
    "crop_resize",
    "sample_jitter_params",
    "apply_color_jitter",
    "blur",
    "simclr_view",
    "supervised_train_view",
    "eval_view",
    "whole_image",
    "gray_map",
    "rasterize_fixations",
]

# Downscale factors (input pixels per output pixel) above this are first
# halved with an area filter so that strong downscaling does not alias.
_ANTIALIAS_FACTOR = 2.0

_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}

# ---------------------------------------------------------------------------
# Boxes.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Box:
  """A crop box in normalised image coordinates, ``0 <= y0 < y1 <= 1``.

  Normalised coordinates make one box valid for an image and for its
  attention map even though they have different resolutions.
  """

  y0: float
  x0: float
  y1: float
  x1: float

  def __post_init__(self) -> None:
    if not (0.0 <= self.y0 < self.y1 <= 1.0 and 0.0 <= self.x0 < self.x1 <= 1.0):
      raise ValueError(f"Box must satisfy 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1, got {self}")

  @classmethod
  def full(cls) -> Box:
    """The box covering the whole image."""
    return cls(0.0, 0.0, 1.0, 1.0)

  @property
  def height(self) -> float:
    return self.y1 - self.y0

  @property
  def width(self) -> float:
    return self.x1 - self.x0

  @property
  def area(self) -> float:
    """Fraction of the image area the box covers."""
    return self.height * self.width

  def hflipped(self) -> Box:
    """The mirror box: cropping a flipped image with it equals flipping the crop."""
    return Box(self.y0, 1.0 - self.x1, self.y1, 1.0 - self.x0)


def sample_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 100,
    min_object_covered: float = 0.1,
) -> Box:
  """Samples a random-resized-crop box the way SimCLR and Inception do.

  SimCLR crops with TensorFlow's ``sample_distorted_bounding_box`` over the
  whole image (area 0.08-1, aspect ratio 3/4-4/3, ``min_object_covered``
  0.1, 100 attempts); this is that sampler, on whole pixels. Each attempt
  draws an aspect ratio (width / height) uniformly from ``aspect_range``
  and a height uniformly from the whole-pixel heights whose box fits the
  image with an area in ``area_range``; the box must also cover
  ``min_object_covered`` of the image (so the smallest SimCLR crop is 10%
  of the image, not 8%). Its top-left corner is uniform over the positions
  ``[0, side - box)``. When every attempt fails, the whole image is the box.

  The rng is consumed identically on every call (four uniforms per attempt
  are drawn at once), whatever the outcome.
  """
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  image_area = height * width
  min_area, max_area = area_range[0] * image_area, area_range[1] * image_area
  lo, hi = aspect_range
  # Plain Python over the candidates is several times faster than numpy.
  for u_aspect, u_height, u_top, u_left in rng.random((attempts, 4)).tolist():
    hw = _inception_box_size(height, width, lo + (hi - lo) * u_aspect, min_area, max_area,
                             u_height)
    if hw is not None and hw[0] * hw[1] >= min_object_covered * image_area:
      hk, wk = hw
      top = int(u_top * (height - hk)) if hk < height else 0
      left = int(u_left * (width - wk)) if wk < width else 0
      return _box_from_pixels(top, left, hk, wk, height, width)
  return Box.full()


def _inception_box_size(height: int, width: int, aspect: float, min_area: float,
                        max_area: float, u: float) -> tuple[int, int] | None:
  """(box height, box width) in whole pixels for one attempt, or None.

  TensorFlow's ``GenerateRandomCrop``: heights between those of the
  smallest and largest allowed areas (capped so that the width fits), one
  picked by ``u``; the width is the rounded height times the aspect ratio;
  a box that rounding left too small grows by a pixel, at most twice.
  """
  hk = round(math.sqrt(min_area / aspect))
  max_h = round(math.sqrt(max_area / aspect))
  if round(max_h * aspect) > width:
    max_h = int((width + 0.5 - 1e-7) / aspect)
    if round(max_h * aspect) > width:
      max_h -= 1
  max_h = min(max_h, height)
  hk = min(hk, max_h)
  if hk < max_h:
    hk += int(u * (max_h - hk + 1))
  wk = round(hk * aspect)
  for _ in range(2):
    if wk * hk < min_area:
      hk += 1
      wk = round(hk * aspect)
  if not (min_area <= wk * hk <= max_area and 0 < wk <= width and 0 < hk <= height):
    return None
  return hk, wk


def center_crop_box(height: int, width: int, crop_fraction: float = 0.875) -> Box:
  """The evaluation crop as a box: resize short side, centre-crop a square.

  Resizing the short side to S and centre-cropping ``crop_fraction * S``
  (256 -> 224 for the default 0.875) is, in the original image, a centred
  square of side ``crop_fraction * min(height, width)``.
  """
  if not 0.0 < crop_fraction <= 1.0:
    raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
  side = crop_fraction * min(height, width)
  return _box_from_pixels((height - side) / 2, (width - side) / 2, side, side, height, width)


def _box_from_pixels(top: float, left: float, h: float, w: float, height: int, width: int) -> Box:
  """Converts a pixel-space box to a normalised `Box`, clamped to [0, 1]."""
  y0 = min(max(top / height, 0.0), 1.0)
  x0 = min(max(left / width, 0.0), 1.0)
  y1 = min(max((top + h) / height, y0), 1.0)
  x1 = min(max((left + w) / width, x0), 1.0)
  return Box(y0, x0, y1, x1)


# ---------------------------------------------------------------------------
# Geometry.
# ---------------------------------------------------------------------------


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  """``size`` as (height, width)."""
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def _as_cv_array(array: np.ndarray) -> np.ndarray:
  """uint8 stays uint8; any other dtype becomes float32 (what cv2 handles fast)."""
  array = np.asarray(array)
  if array.dtype != np.uint8 and array.dtype != np.float32:
    array = array.astype(np.float32)
  return array


def _area_resize(array: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """Area-filter resize that also handles more than four channels."""
  dsize = (size_hw[1], size_hw[0])
  if array.ndim == 3 and array.shape[2] > 4:
    parts = [
        cv2.resize(np.ascontiguousarray(array[..., i:i + 4]), dsize, interpolation=cv2.INTER_AREA)
        for i in range(0, array.shape[2], 4)
    ]
    parts = [p[..., None] if p.ndim == 2 else p for p in parts]
    return np.concatenate(parts, axis=-1)
  return cv2.resize(array, dsize, interpolation=cv2.INTER_AREA)


def crop_resize(
    array: np.ndarray,
    box: Box,
    out_size: int | Sequence[int],
    interpolation: str = "linear",
    *,
    flip: bool = False,
) -> np.ndarray:
  """Crops ``box`` out of ``array`` and resizes it to ``out_size``.

  Output pixel centres are mapped to input coordinates by one affine map
  and the image is sampled there (bilinear or nearest, edges of the whole
  image replicated), so the crop is sub-pixel exact, continuous in the
  box, and one box lands on the same content at any resolution. Only a
  window around the box is read. A downscaling box on whole pixels takes
  the faster ``cv2.resize`` (which follows the same map); any other box
  uses ``cv2.warpAffine`` (1/32-pixel precision).

  Antialiasing (linear only): when a side shrinks by more than 2x, the
  window is first halved k times with an exact 2x2 area filter on a grid
  aligned to the whole image (a mipmap level, the same for every box), so
  the remaining bilinear step shrinks by at most 2x; coordinates just
  halve, so geometry is unchanged.

  ``flip=True`` mirrors the result horizontally (bit-identical to
  mirroring ``crop_resize(array, box, out_size)``).

  Args:
    array: HxW, HxWx1 or HxWxC; uint8 or any real dtype.
    box: normalised crop box.
    out_size: int (square) or (height, width).
    interpolation: 'linear' or 'nearest'.
    flip: mirror the output horizontally.

  Returns:
    Array of shape ``out_size`` (+ the input's channel axis, if any);
    uint8 for uint8 input, float32 otherwise.
  """
  if interpolation not in _INTERPOLATIONS:
    raise ValueError(
        f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
  arr = _as_cv_array(array)
  if arr.ndim not in (2, 3):
    raise ValueError(f"expected HxW or HxWxC array, got shape {arr.shape}")
  keep_axis = arr.ndim == 3
  if keep_axis and arr.shape[2] == 1:
    arr = arr[..., 0]
  oh, ow = _pair(out_size)
  height, width = arr.shape[:2]
  linear = interpolation == "linear"

  # Box in continuous pixel coordinates (pixel i covers [i, i + 1)).
  y0, y1 = _snap(box.y0 * height), _snap(box.y1 * height)
  x0, x1 = _snap(box.x0 * width), _snap(box.x1 * width)
  fy, fx = (y1 - y0) / oh, (x1 - x0) / ow  # input pixels per output pixel
  levels = 0
  if linear:
    f = max(fy, fx)
    while f > _ANTIALIAS_FACTOR:
      f /= 2
      levels += 1

  on_pixels = all(float(v).is_integer() for v in (y0, y1, x0, x1))
  if linear and levels == 0 and on_pixels and fy >= 1 and fx >= 1:
    # Shrinking samples only inside the box, so a resize of the exact
    # crop follows the same map.
    crop = arr[int(y0):int(y1), int(x0):int(x1)]
    out = cv2.resize(crop, (ow, oh), interpolation=cv2.INTER_LINEAR)
  else:
    step = 2**levels
    r0, r1 = _window(y0, y1, height, step)
    c0, c1 = _window(x0, x1, width, step)
    pad_y, pad_x = r1 - min(r1, height), c1 - min(c1, width)
    region = arr[r0:r1 - pad_y, c0:c1 - pad_x]
    if pad_y or pad_x:
      region = cv2.copyMakeBorder(region, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
    for _ in range(levels):
      region = _halve(region)
    y0, y1, x0, x1 = (y0 - r0) / step, (y1 - r0) / step, (x0 - c0) / step, (x1 - c0) / step
    # warpAffine reads a window of a larger image (a strided view) at over twice
    # the cost of reading the same pixels copied out (the copy is a few µs).
    region = np.ascontiguousarray(region)
    # src = a * dst + b, in pixel indices whose centres sit at integers.
    ay, ax = (y1 - y0) / oh, (x1 - x0) / ow
    matrix = np.array([[ax, 0.0, x0 + 0.5 * ax - 0.5], [0.0, ay, y0 + 0.5 * ay - 0.5]],
                      dtype=np.float64)
    out = cv2.warpAffine(
        region,
        matrix,
        (ow, oh),
        flags=_INTERPOLATIONS[interpolation] | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
  if flip:
    out = cv2.flip(out, 1)
  if keep_axis and out.ndim == 2:
    out = out[..., None]
  return out


def _snap(v: float) -> float:
  """Rounds a pixel coordinate to an integer when it is one up to float error."""
  r = round(v)
  return float(r) if abs(v - r) < 1e-6 else v


def _window(lo: float, hi: float, size: int, step: int) -> tuple[int, int]:
  """Pixel window [a, b) around [lo, hi) with one ``step`` of margin.

  Both ends are multiples of ``step`` so that halving the window
  reproduces the whole image's mipmap; ``b`` may pass ``size`` by less than
  a step (the caller pads by replication).
  """
  a = max(0, (math.floor(lo) // step - 1) * step)
  b = (-(-math.ceil(hi) // step) + 1) * step
  b = min(b, -(-size // step) * step)
  return a, max(b, a + step)


def _halve(region: np.ndarray) -> np.ndarray:
  """2x2 area downscale; odd sides are padded by replicating the last pixel.

  Output pixel i covers input pixels 2i and 2i+1, so coordinates simply
  halve. (OpenCV's 2x2 area path is fast; other ratios are not.)
  """
  h, w = region.shape[:2]
  if h % 2 or w % 2:
    region = cv2.copyMakeBorder(region, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
  return _area_resize(region, ((h + 1) // 2, (w + 1) // 2))


# ---------------------------------------------------------------------------
# Colour ops (images only; never applied to attention maps).
# ---------------------------------------------------------------------------


def _to_float_image(image: np.ndarray) -> np.ndarray:
  """A float32 copy of an RGB image in [0, 1] (uint8 is divided by 255)."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"colour ops expect an HxWx3 image, got shape {image.shape}")
  out = image.astype(np.float32, copy=True)
  if image.dtype == np.uint8:
    out *= np.float32(1 / 255)
  return out


def _like_input(out: np.ndarray, image: np.ndarray) -> np.ndarray:
  """Returns float32 ``out`` in the input's dtype (uint8 is rounded back)."""
  if np.asarray(image).dtype == np.uint8:
    return np.rint(out * 255).astype(np.uint8)
  return out


@dataclasses.dataclass(frozen=True, slots=True)
class JitterParams:
  """One draw of colour-jitter parameters.

  ``order`` is a permutation of (0 brightness, 1 contrast, 2 saturation,
  3 hue). Brightness is a factor (``brightness``, SimCLR v2) or an added
  offset (``brightness_delta``, SimCLR v1); contrast and saturation are
  factors and ``hue`` is a shift in fractions of the colour wheel.
  """

  order: tuple[int, ...]
  brightness: float
  contrast: float
  saturation: float
  hue: float
  brightness_delta: float = 0.0


def sample_jitter_params(
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    impl: str = "simclrv1",
) -> JitterParams:
  """Draws SimCLR colour-jitter parameters (always eight uniforms).

  Contrast and saturation factors are uniform in ``[max(0, 1 - s), 1 + s]``
  and the hue shift in ``[-hue, hue]`` (``hue <= 0.5``). Brightness follows
  ``impl``, SimCLR's two versions of it: ``simclrv1`` (the SimCLR paper,
  TensorFlow's ``random_brightness``) adds an offset uniform in
  ``[-brightness, brightness]``; ``simclrv2`` multiplies by a factor uniform
  in ``[max(0, 1 - brightness), 1 + brightness]``.
  """
  if not 0.0 <= hue <= 0.5:
    raise ValueError(f"hue must be in [0, 0.5], got {hue}")
  if impl not in JITTER_IMPLS:
    raise ValueError(f"colour-jitter impl {impl!r}: choose one of {JITTER_IMPLS}")
  u = rng.random(8).tolist()
  order = tuple(sorted(range(4), key=u.__getitem__))

  def factor(strength: float, v: float) -> float:
    lo = max(0.0, 1.0 - strength)
    return lo + (1.0 + strength - lo) * v

  v1 = impl == "simclrv1"
  return JitterParams(
      order=order,
      brightness=1.0 if v1 else factor(brightness, u[4]),
      contrast=factor(contrast, u[5]),
      saturation=factor(saturation, u[6]),
      hue=hue * (2.0 * u[7] - 1.0),
      brightness_delta=brightness * (2.0 * u[4] - 1.0) if v1 else 0.0,
  )


# Colour ops below work in place on one float32 HxWx3 buffer in [0, 1]
# (OpenCV writes back into its input with ``dst=img``, which is safe for
# these per-pixel maps and for the separable blur). At 224 px a fresh
# 600 KB temporary per op can cost as much as the arithmetic.


def _clip_upper_(img: np.ndarray) -> None:
  """In place: min(x, 1). (OpenCV's threshold is several times faster than numpy here.)"""
  cv2.threshold(img, 1.0, 1.0, cv2.THRESH_TRUNC, dst=img)


def _clip_(img: np.ndarray) -> None:
  """In place: clips to [0, 1]."""
  cv2.threshold(img, 1.0, 1.0, cv2.THRESH_TRUNC, dst=img)
  cv2.threshold(img, 0.0, 0.0, cv2.THRESH_TOZERO, dst=img)


def _brightness_(img: np.ndarray, factor: float, delta: float = 0.0) -> None:
  """In place: ``x * factor + delta`` (factor >= 0), clipped to [0, 1]."""
  if factor != 1.0:
    img *= np.float32(factor)
  if delta != 0.0:
    img += np.float32(delta)
    _clip_(img)
  else:
    _clip_upper_(img)


def _contrast_(img: np.ndarray, factor: float) -> None:
  """In place: scales deviations from each channel's mean (as TF's adjust_contrast).

  ``f * x + (1 - f) * mean`` is one affine colour map, applied in a single
  pass (numpy broadcasting over a length-3 axis is far slower).
  """
  m = [(1.0 - factor) * v for v in cv2.mean(img)[:3]]
  f = factor
  matrix = np.array([[f, 0.0, 0.0, m[0]], [0.0, f, 0.0, m[1]], [0.0, 0.0, f, m[2]]], np.float32)
  cv2.transform(img, matrix, dst=img)
  _clip_(img)


def _saturation_(img: np.ndarray, factor: float) -> None:
  """In place: scales HSV saturation by ``factor``, clipped to 1.

  As TensorFlow's ``adjust_saturation``, which SimCLR uses (factor 0 gives
  each pixel's value, max(R, G, B), on all channels).
  """
  cv2.cvtColor(img, cv2.COLOR_RGB2HSV, dst=img)  # S and V in [0, 1]
  sat = img[..., 1]
  sat *= np.float32(factor)
  np.minimum(sat, np.float32(1.0), out=sat)
  cv2.cvtColor(img, cv2.COLOR_HSV2RGB, dst=img)
  _clip_(img)


def _hue_(img: np.ndarray, shift: float) -> None:
  """In place: rotates hue by ``shift`` turns in HSV space.

  The shift is taken modulo one turn: OpenCV wraps hues past 360 degrees but
  not negative ones.
  """
  cv2.cvtColor(img, cv2.COLOR_RGB2HSV, dst=img)  # H in degrees [0, 360)
  img[..., 0] += np.float32(360.0 * (shift % 1.0))
  cv2.cvtColor(img, cv2.COLOR_HSV2RGB, dst=img)
  _clip_(img)


def _jitter_(img: np.ndarray, params: JitterParams) -> None:
  """In place: colour jitter of a float32 [0, 1] RGB image.

  An op whose factor is exactly neutral is skipped, so zero strength is an
  exact identity.
  """
  for op in params.order:
    if op == 0 and (params.brightness != 1.0 or params.brightness_delta != 0.0):
      _brightness_(img, params.brightness, params.brightness_delta)
    elif op == 1 and params.contrast != 1.0:
      _contrast_(img, params.contrast)
    elif op == 2 and params.saturation != 1.0:
      _saturation_(img, params.saturation)
    elif op == 3 and params.hue != 0.0:
      _hue_(img, params.hue)


def apply_color_jitter(image: np.ndarray, params: JitterParams) -> np.ndarray:
  """Applies drawn jitter parameters to an RGB image; returns the input's dtype.

  The ops are TensorFlow's ``adjust_*`` ones that SimCLR uses, each result
  clipped to [0, 1]: brightness adds (``simclrv1``) or multiplies
  (``simclrv2``), contrast scales deviations from the per-channel mean,
  saturation scales HSV saturation, hue rotates in HSV.
  """
  img = _to_float_image(image)
  _jitter_(img, params)
  return _like_input(img, image)


def _grayscale_(img: np.ndarray) -> None:
  """In place: luma (ITU-R 601 weights) repeated over the three channels."""
  cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB, dst=img)


def blur_kernel_size(height: int, kernel_fraction: float = 0.1) -> int:
  """SimCLR's Gaussian kernel size: 10% of the view's side, made odd.

  The radius is ``int(fraction * height) // 2`` and the kernel has
  ``2 * radius + 1`` taps: 23 at 224 px, 7 at 64 px.
  """
  radius = max(1, int(kernel_fraction * height + 1e-9) // 2)
  return 2 * radius + 1


def _blur_(img: np.ndarray, sigma: float, kernel_fraction: float = 0.1) -> None:
  """In place: separable Gaussian blur with zero padding, as SimCLR's.

  SimCLR convolves with ``padding='SAME'``, so the image fades towards black
  within a radius of its border; the kernel is the normalised Gaussian over
  all :func:`blur_kernel_size` taps.
  """
  radius = blur_kernel_size(img.shape[0], kernel_fraction) // 2
  taps = np.exp(-np.arange(-radius, radius + 1, dtype=np.float64)**2 / (2.0 * sigma**2))
  kernel = (taps / taps.sum()).astype(np.float32)
  cv2.sepFilter2D(img, -1, kernel, kernel, dst=img, borderType=cv2.BORDER_CONSTANT)


def blur(image: np.ndarray, sigma: float, kernel_fraction: float = 0.1) -> np.ndarray:
  """Gaussian blur with a given sigma and a kernel ``kernel_fraction`` of the height
  (zero padding, as SimCLR's).

  Keeps shape; uint8 stays uint8, other dtypes become float32.
  """
  image = np.asarray(image)
  out = image.astype(np.uint8 if image.dtype == np.uint8 else np.float32, copy=True)
  _blur_(out, sigma, kernel_fraction)
  return out


# ---------------------------------------------------------------------------
# Composed views.
# ---------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
  """Accepts HxWx3, or grayscale HxW / HxWx1 (made RGB after the crop)."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
    raise ValueError(f"expected an HxWx3 (or grayscale) image, got shape {image.shape}")
  return image


def _image_to_unit_float(view: np.ndarray) -> np.ndarray:
  """A freshly cropped image as float32 RGB in [0, 1] (uint8 / 255; floats clipped)."""
  if view.ndim == 2:
    view = cv2.cvtColor(view, cv2.COLOR_GRAY2RGB)
  if view.dtype == np.uint8:
    out = view.astype(np.float32)
    out *= np.float32(1 / 255)
    return out
  _clip_(view)  # float32 and fresh from crop_resize
  return view


def _map_view(attn_map: np.ndarray | None, box: Box, size: tuple[int, int],
              flip: bool) -> np.ndarray | None:
  """Crops a map with the image's box and flip; returns HxW float32 or None."""
  if attn_map is None:
    return None
  m = np.asarray(attn_map)
  if m.ndim == 3 and m.shape[2] == 1:
    m = m[..., 0]
  if m.ndim != 2:
    raise ValueError(f"attention map must be HxW or HxWx1, got shape {np.shape(attn_map)}")
  out = crop_resize(m.astype(np.float32, copy=False), box, size, flip=flip)
  return np.maximum(out, np.float32(0.0), out=out)


def _geometric_view(
    image: np.ndarray,
    attn_map: np.ndarray | None,
    box: Box,
    flip: bool,
    out_size: int | Sequence[int],
    map_size: int | Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Applies one box and flip to the image (-> float32 [0, 1]) and the map."""
  out_hw = _pair(out_size)
  map_hw = out_hw if map_size is None else _pair(map_size)
  view = _image_to_unit_float(crop_resize(image, box, out_hw, flip=flip))
  return view, _map_view(attn_map, box, map_hw, flip)


def supervised_train_view(
    rng: np.random.Generator,
    image: np.ndarray,
    attn_map: np.ndarray | None = None,
    *,
    out_size: int | Sequence[int],
    area_range: tuple[float, float] = (0.08, 1.0),
    map_size: int | Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Random resized crop + horizontal flip (supervised / linear-eval training).

  Random draws, in order: crop box, flip. Returns the image as float32
  HxWx3 in [0, 1] and the map (float32 ``map_size``, default ``out_size``,
  non-negative, not renormalised) or None.
  """
  image = _check_image(image)
  box = sample_crop_box(rng, image.shape[0], image.shape[1], area_range)
  flip = bool(rng.random() < 0.5)
  return _geometric_view(image, attn_map, box, flip, out_size, map_size)


def eval_view(
    image: np.ndarray,
    attn_map: np.ndarray | None = None,
    *,
    out_size: int | Sequence[int],
    crop_fraction: float = 0.875,
    map_size: int | Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Deterministic evaluation view: resize short side + centre crop.

  Returns the image as float32 HxWx3 in [0, 1] and the map (float32
  ``map_size``, default ``out_size``, non-negative, not renormalised) or None.
  """
  image = _check_image(image)
  box = center_crop_box(image.shape[0], image.shape[1], crop_fraction)
  return _geometric_view(image, attn_map, box, False, out_size, map_size)


def _simclr_draws(rng: np.random.Generator, image_hw: tuple[int, int], strength: float,
                  p_jitter: float, p_gray: float, p_blur: float,
                  area_range: tuple[float, float], jitter_impl: str) -> tuple:
  """A SimCLR view's random draws, in their fixed order, always all of them: crop
  box, flip, jitter coin, jitter parameters, grayscale coin, blur coin, blur sigma.
  One function for both view paths, so one rng state gives the same view on the
  host and on the device."""
  box = sample_crop_box(rng, image_hw[0], image_hw[1], area_range)
  flip = bool(rng.random() < 0.5)
  do_jitter = bool(rng.random() < p_jitter)
  s = 0.8 * strength
  jitter = sample_jitter_params(rng, s, s, s, min(0.2 * strength, 0.5), jitter_impl)
  do_gray = bool(rng.random() < p_gray)
  do_blur = bool(rng.random() < p_blur)
  sigma = float(rng.uniform(0.1, 2.0))
  return box, flip, do_jitter, jitter, do_gray, do_blur, sigma


def simclr_view(
    rng: np.random.Generator,
    image: np.ndarray,
    attn_map: np.ndarray | None = None,
    *,
    out_size: int | Sequence[int],
    strength: float = 1.0,
    p_jitter: float = 0.8,
    p_gray: float = 0.2,
    p_blur: float = 0.5,
    area_range: tuple[float, float] = (0.08, 1.0),
    map_size: int | Sequence[int] | None = None,
    jitter_impl: str = "simclrv1",
) -> tuple[np.ndarray, np.ndarray | None]:
  """One SimCLR view: crop + flip, colour jitter, grayscale, blur.

  Colour jitter (p_jitter) uses brightness / contrast / saturation
  ``0.8 * strength`` and hue ``0.2 * strength``, brightness as ``jitter_impl``
  (see :func:`sample_jitter_params`); grayscale with p_gray; Gaussian blur
  with p_blur (sigma in [0.1, 2] pixels of the view, kernel 10% of the
  view's height, zero padding). The map gets only the crop and flip.

  Random draws, in order and always all of them: crop box, flip, jitter
  coin, jitter parameters, grayscale coin, blur coin, blur sigma. So the
  geometry matches ``supervised_train_view`` for the same rng state, and
  the image is the same with or without a map.

  Returns:
    (image float32 HxWx3 in [0, 1], map float32 ``map_size`` (default
    ``out_size``), non-negative and not renormalised, or None).
  """
  image = _check_image(image)
  box, flip, do_jitter, jitter, do_gray, do_blur, sigma = _simclr_draws(
      rng, image.shape[:2], strength, p_jitter, p_gray, p_blur, area_range, jitter_impl)

  view, map_view = _geometric_view(image, attn_map, box, flip, out_size, map_size)
  # `view` is a fresh buffer: the colour ops below work on it in place.
  if do_jitter:
    _jitter_(view, jitter)
  if do_gray:
    _grayscale_(view)
  if do_blur:
    _blur_(view, sigma)
  _clip_(view)
  return view, map_view


#: The columns of :func:`simclr_geometry`'s colour parameters, one row per view.
COLOUR_PARAMS = ("jitter", "order0", "order1", "order2", "order3", "brightness", "contrast",
                 "saturation", "hue", "brightness_delta", "gray", "blur", "sigma")


def simclr_geometry(
    rng: np.random.Generator,
    image: np.ndarray,
    attn_map: np.ndarray | None = None,
    *,
    out_size: int | Sequence[int],
    strength: float = 1.0,
    p_jitter: float = 0.8,
    p_gray: float = 0.2,
    p_blur: float = 0.5,
    area_range: tuple[float, float] = (0.08, 1.0),
    map_size: int | Sequence[int] | None = None,
    jitter_impl: str = "simclrv1",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
  """:func:`simclr_view` with its colour ops left to the accelerator.

  The same draws in the same order as :func:`simclr_view` (so one rng state
  gives the same view either way); the crop and flip are made here, in
  uint8, and the colour ops' draws are returned as a float32 row of
  :data:`COLOUR_PARAMS` for ``data/device_colour.py`` to apply in the
  jitted step.

  Returns:
    (image uint8 HxWx3, map as :func:`simclr_view`'s or None, colour params [13]).
  """
  image = _check_image(image)
  box, flip, do_jitter, jitter, do_gray, do_blur, sigma = _simclr_draws(
      rng, image.shape[:2], strength, p_jitter, p_gray, p_blur, area_range, jitter_impl)
  out_hw = _pair(out_size)
  view = crop_resize(image, box, out_hw, flip=flip)
  if view.dtype != np.uint8:
    raise ValueError(f"views on the device need uint8 images, got {view.dtype}")
  if view.ndim == 2:
    view = cv2.cvtColor(view, cv2.COLOR_GRAY2RGB)
  map_view = _map_view(attn_map, box, out_hw if map_size is None else _pair(map_size), flip)
  params = np.array([do_jitter, *jitter.order, jitter.brightness, jitter.contrast,
                     jitter.saturation, jitter.hue, jitter.brightness_delta, do_gray, do_blur,
                     sigma], np.float32)
  return view, map_view, params


# ---------------------------------------------------------------------------
# Saliency data: whole images, stored maps, fixations.
# ---------------------------------------------------------------------------


def whole_image(image: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
  """The whole image resized to ``image_hw`` (uint8): its maps stay aligned with it."""
  return np.asarray(crop_resize(np.asarray(image), Box.full(), image_hw), np.uint8)


def gray_map(x: np.ndarray) -> np.ndarray:
  """A stored saliency map, ``H×W×1`` or ``H×W``, as ``H×W``."""
  x = np.asarray(x)
  return x[..., 0] if x.ndim == 3 else x


def rasterize_fixations(fixations: np.ndarray, image_hw: tuple[int, int], box: Box,
                        flip: bool, out_hw: tuple[int, int]) -> np.ndarray:
  """Binary fixation map of the crop ``box`` (and ``flip``) at ``out_hw``.

  A fixation at pixel ``(r, c)`` of an ``image_hw`` image sits at the
  normalised centre ``((r + .5) / H, (c + .5) / W)``, this module's
  convention; it lands in the output cell that covers that point inside the
  box, or nowhere if the box excludes it. Mapped point by point, no fixation
  can vanish or smear, as one would when resizing a sparse point map.
  Returns float32 ``out_hw`` in {0, 1}.
  """
  out = np.zeros(out_hw, np.float32)
  fix = np.asarray(fixations).reshape(-1, 2)
  if fix.size == 0:
    return out
  u = (fix[:, 0] + 0.5) / image_hw[0]
  v = (fix[:, 1] + 0.5) / image_hw[1]
  rows = np.floor((u - box.y0) / box.height * out_hw[0]).astype(np.int64)
  cols = np.floor((v - box.x0) / box.width * out_hw[1]).astype(np.int64)
  keep = (rows >= 0) & (rows < out_hw[0]) & (cols >= 0) & (cols < out_hw[1])
  rows, cols = rows[keep], cols[keep]
  if flip:
    cols = out_hw[1] - 1 - cols
  out[rows, cols] = 1.0
  return out
