"""In-memory splits that stand in for datasets: records by index (``len`` and ``[i]``),
as the tfds sources that the tasks open are.

NumPy only (OpenCV for a blurred fixation map), so that the worker scripts,
grain's spawned readers among them, import it without JAX.
"""
from __future__ import annotations

import time

import numpy as np


def file_names(n: int, ext: str = ".png") -> list[bytes]:
  """The records' keys, ``img_000.png`` …, as bytes, as the datasets store them."""
  return [f"img_{i:03d}{ext}".encode() for i in range(n)]


class Split:
  """Records made of columns: record ``i`` holds every column's ``i``-th entry.

  ``read_s``: seconds each read takes (a slow decoder, so that a job's work, not
  only its start, lasts long enough to be killed in). ``bad``: the index whose
  read raises ``OSError``, as a record that cannot be read does (-1: none).
  """

  def __init__(self, *, read_s: float = 0.0, bad: int = -1, **columns):
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
      sizes = {k: len(v) for k, v in columns.items()}
      raise ValueError(f"columns of different lengths: {sizes}")
    self.columns, self.read_s, self.bad = columns, read_s, bad

  @property
  def images(self) -> np.ndarray:
    return self.columns["image"]

  @property
  def labels(self) -> np.ndarray:
    return self.columns["label"]

  def __len__(self) -> int:
    return len(next(iter(self.columns.values())))

  def __getitem__(self, i: int) -> dict:
    if self.read_s:
      time.sleep(self.read_s)
    if i == self.bad:
      raise OSError(f"record {i} cannot be read")
    return {k: v[i] for k, v in self.columns.items()}

  def __iter__(self):
    return (self[i] for i in range(len(self)))


class Permuted:
  """``source`` read in the order ``perm``: record ``i`` is ``source[perm[i]]``."""

  def __init__(self, source, perm):
    self.source, self.perm = source, perm

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    return self.source[int(self.perm[i])]


def random_images(n: int, hw: int | tuple[int, int] = 20, *, seed: int = 0,
                  classes: int | None = None, random_labels: bool = False,
                  keys: bool = False, **split) -> Split:
  """Uniformly random uint8 images with a ``label`` (and with ``keys`` a ``file_name``).

  Labels: drawn from ``[0, classes)`` after the images with ``random_labels``,
  else the index modulo ``classes`` (the index itself without ``classes``).
  ``split``: :class:`Split`'s ``read_s`` and ``bad``.
  """
  h, w = (hw, hw) if isinstance(hw, int) else hw
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
  if random_labels:
    labels = rng.integers(0, classes, n)
  else:
    labels = np.arange(n) % classes if classes else np.arange(n)
  columns = dict(image=images, label=labels)
  if keys:
    columns["file_name"] = file_names(n)
  return Split(**columns, **split)


PALETTE = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])


def colours(n: int, seed: int, *, keys: bool = False, **split) -> Split:
  """24-px images whose colour is the class (4 classes), with pixel noise: a split that
  a tiny encoder separates after a few steps. ``split``: :class:`Split`'s ``read_s``."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, len(PALETTE), n)
  noise = rng.integers(-30, 30, (n, 24, 24, 3))
  images = np.clip(PALETTE[labels][:, None, None] + noise, 0, 255).astype(np.uint8)
  columns = dict(image=images, label=labels)
  if keys:
    columns["file_name"] = file_names(n)
  return Split(**columns, **split)


def human_squares(n: int = 6, size: int = 16, *, side: int = 6, fixations: int = 5,
                  seed: int = 1, background: tuple[int, int] = (0, 60),
                  map_blur: float = 0.0) -> Split:
  """A human-attention split: a bright square (250) on dark noise, fixated.

  Records hold ``image`` (``size`` px), ``saliency_map`` (grey, ``size × size × 1``)
  and ``fixations`` (int32 ``[fixations, 2]`` (row, col), all in the square). The map
  is the square itself (255), or with ``map_blur`` (a Gaussian's sigma in pixels) the
  blurred fixation counts scaled to a peak of 255, as SALICON's maps are made.
  """
  rng = np.random.default_rng(seed)
  images, maps, fixes = [], [], []
  for _ in range(n):
    image = rng.integers(*background, (size, size, 3)).astype(np.uint8)
    r, c = rng.integers(0, size - side, 2)
    image[r:r + side, c:c + side] = 250
    fix = np.stack([rng.integers(r, r + side, fixations),
                    rng.integers(c, c + side, fixations)], 1).astype(np.int32)
    if map_blur:
      import cv2  # pylint: disable=g-import-not-at-top
      counts = np.zeros((size, size), np.float32)
      np.add.at(counts, (fix[:, 0], fix[:, 1]), 1.0)
      blurred = cv2.GaussianBlur(counts, (0, 0), map_blur)
      smap = np.round(blurred / blurred.max() * 255).astype(np.uint8)[..., None]
    else:
      smap = np.zeros((size, size, 1), np.uint8)
      smap[r:r + side, c:c + side] = 255
    images.append(image)
    maps.append(smap)
    fixes.append(fix)
  return Split(image=np.stack(images), saliency_map=np.stack(maps), fixations=fixes)
