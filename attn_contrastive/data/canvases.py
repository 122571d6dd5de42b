"""Where an image goes for the teacher: its own shape on a padded canvas (:class:`Placement`,
read by the label task and by inference on a folder).

The saliency teacher is fully convolutional and learnt objects at one scale
(its training input's shorter side). Resizing every whole image to the
teacher's fixed input squashes any image of another aspect ratio (a portrait
photograph reaching a teacher trained on landscape images is squeezed 1.78×
vertically), and the teacher then sees shapes it never learnt. Here each
image keeps its aspect ratio, its shorter side at the teacher's shorter
side, and is padded to one of a few canvases so that images of similar
shape share a batch (and a compiled program):

* a canvas is ``short × round_up(short · a)`` (or its transpose, for portrait
  images) for each aspect ratio ``a`` (longer / shorter side) of
  ``aspects``; an image goes on the smallest canvas of its orientation that
  holds it, in the top-left corner;
* an image longer than the largest aspect is fit inside the largest canvas,
  its aspect ratio kept (its shorter side then below the teacher's);
* sizes are multiples of ``step`` (the teacher's output stride), so that the
  image's part of the teacher's map is a whole number of map pixels.

The label task masks the padding out of the network's input and out of the
log-density, then resizes the image's part of the map to the square map
every reader expects: a map still covers the whole image, in the same
normalised coordinates, whatever the image's shape.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from attn_contrastive.config_checks import LABEL_SHAPES
from attn_contrastive.data import augment

#: The canvases' aspect ratios (longer side / shorter side): square, 4:3, 5:3 and 2:1.
DEFAULT_ASPECTS = (1.0, 4 / 3, 5 / 3, 2.0)


def _round_to(x: float, step: int) -> int:
  return max(step, int(round(x / step)) * step)


def _ceil_to(x: float, step: int) -> int:
  return max(step, math.ceil(x / step - 1e-9) * step)


def own_hw(image_hw: tuple[int, int], short: int, aspects: Sequence[float],
           step: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
  """``(image's size, canvas's size)`` for an image of ``image_hw`` pixels.

  The image's shorter side is ``short`` (rounded to ``step``) and its aspect
  ratio its own, unless it is longer than ``max(aspects)``: then it is fit
  inside the largest canvas. The canvas is the smallest of its orientation
  that holds it.
  """
  h, w = (int(v) for v in image_hw)
  if h < 1 or w < 1:
    raise ValueError(f"an image of {h}×{w} pixels has no shape to keep")
  if not aspects or min(aspects) < 1:
    raise ValueError(f"canvas aspects {tuple(aspects)} must be ratios of at least 1 "
                     "(longer side / shorter side)")
  aspect = max(h, w) / min(h, w)
  largest = max(aspects)
  fitted = next((a for a in sorted(aspects) if a >= aspect - 1e-9), largest)
  canvas_short, canvas_long = _ceil_to(short, step), _ceil_to(short * fitted, step)
  if aspect <= largest:
    img_short, img_long = short, short * aspect
  else:  # longer than the largest canvas: fit inside it
    img_short, img_long = short * largest / aspect, short * largest
  img_short = min(_round_to(img_short, step), canvas_short)
  img_long = min(_round_to(img_long, step), canvas_long)
  if h > w:
    return (img_long, img_short), (canvas_long, canvas_short)
  return (img_short, img_long), (canvas_short, canvas_long)


def on_canvas(image: np.ndarray, image_hw: tuple[int, int],
              canvas_hw: tuple[int, int]) -> np.ndarray:
  """The whole ``image`` resized to ``image_hw``, in the top-left corner of a uint8
  canvas of ``canvas_hw`` (the rest zeros: the label task masks it out)."""
  canvas = np.zeros((*canvas_hw, 3), np.uint8)
  canvas[:image_hw[0], :image_hw[1]] = augment.whole_image(image, image_hw)
  return canvas


class Placement:
  """Where each image goes for the teacher: ``own`` keeps its aspect ratio on a padded
  canvas (:func:`own_hw`, :func:`on_canvas`), ``squashed`` resizes the whole image to
  the teacher's input ``teacher_hw``.

  ``step`` is the teacher's output stride; ``aspects`` the canvases' aspect ratios.
  The label task and inference on a folder place images with it, so a map of
  one is the map of the other.
  """

  def __init__(self, teacher_hw: tuple[int, int], aspects: Sequence[float] = DEFAULT_ASPECTS,
               step: int = 1, shape: str = "own"):
    if shape not in LABEL_SHAPES:
      raise ValueError(f"placement shape {shape!r}: choose one of {LABEL_SHAPES}")
    self.teacher_hw = tuple(int(v) for v in teacher_hw)
    self.aspects, self.step, self.shape = tuple(aspects), int(step), shape

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """``(uint8 canvas, the image's size on it)``."""
    if self.shape == "squashed":
      return augment.whole_image(image, self.teacher_hw), self.teacher_hw
    image_hw, canvas_hw = own_hw(image.shape[:2], min(self.teacher_hw), self.aspects,
                                 self.step)
    return on_canvas(image, image_hw, canvas_hw), image_hw


def padded_size(n: int, batch: int, num_devices: int) -> int:
  """The batch ``n`` images are padded to: ``batch`` halved while it holds them,
  a multiple of the devices. A few sizes per canvas, so few programs compile,
  and at most about half of a short batch is padding."""
  up = lambda x: -(-x // num_devices) * num_devices  # noqa: E731
  size = up(max(batch, n))
  while size > num_devices and up(size // 2) >= n:
    size = up(size // 2)
  return size
