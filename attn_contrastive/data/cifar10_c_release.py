r"""CIFAR-10-C as released (Hendrycks & Dietterich, ICLR 2019), as random-access sources.

The release (``CIFAR-10-C.tar``, https://zenodo.org/record/2535967) is one
``<corruption>.npy`` per corruption, uint8 of shape 50,000 × 32 × 32 × 3:
the 10,000 CIFAR-10 test images at severity 1, then the same images at
severity 2, … 5; and ``labels.npy``, the matching 50,000 labels (the test
labels five times). The arrays are already decoded images of one size, so
:class:`CifarCSource` memory-maps them and serves one severity's slice
directly: no build step, no copy, no TensorFlow. (tfds's
``cifar10_corrupted`` downloads the same tar and re-encodes it as PNG
records; this reader serves an extracted copy without the network.)

The robustness stage reads it with ``robustness.source=released`` and
``robustness.released_dataset=cifar10_c`` (``configs/robustness.py:cifar10``).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from attn_contrastive.data import image_corruptions

MANUAL_INSTRUCTIONS = """\
Download CIFAR-10-C.tar (https://zenodo.org/record/2535967) and extract it, so
that the folder holds labels.npy and one <corruption>.npy per corruption
(e.g. gaussian_noise.npy); point robustness.manual_dir at that folder.
"""

#: Severities stacked in each file, in order (1 first).
NUM_SEVERITIES = 5


def _load(path: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing from the CIFAR-10-C folder.\n"
                            f"{MANUAL_INSTRUCTIONS}")
  try:
    return np.load(path, mmap_mode="r")
  except (ValueError, OSError, EOFError) as e:  # a truncated or damaged file
    raise ValueError(f"{path} cannot be read as a NumPy array ({e}): it is truncated or "
                     f"damaged. Extract it again.\n{MANUAL_INSTRUCTIONS}") from None


def load_labels(root: str) -> np.ndarray:
  """``labels.npy``: one label per row of every corruption's file."""
  path = os.path.join(root, "labels.npy")
  labels = _load(path)
  if labels.ndim != 1 or len(labels) % NUM_SEVERITIES:
    raise ValueError(f"{path} has shape {labels.shape}; CIFAR-10-C's labels are one "
                     f"vector of {NUM_SEVERITIES} × the test images (50,000)")
  return labels


def load_images(root: str, corruption: str, num_rows: int) -> np.ndarray:
  """``<corruption>.npy``, memory-mapped, checked against ``num_rows`` (the labels')."""
  if corruption not in image_corruptions.ALL:
    raise ValueError(f"unknown corruption {corruption!r}; choose from {image_corruptions.ALL}")
  path = os.path.join(root, f"{corruption}.npy")
  images = _load(path)
  if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3) or len(images) != num_rows:
    raise ValueError(
        f"{path} is {images.dtype} of shape {images.shape}; CIFAR-10-C's files are uint8 of "
        f"shape ({num_rows}, 32, 32, 3) (the {num_rows} rows of labels.npy: "
        f"{NUM_SEVERITIES} severities × {num_rows // NUM_SEVERITIES} images). Is it "
        f"truncated, or from another release? Extract it again.\n{MANUAL_INSTRUCTIONS}")
  return images


class CifarCSource:
  """One corruption at one severity of the release at ``root``: ``{"image", "label"}``
  items (uint8 32 × 32 × 3, int32), in the CIFAR-10 test split's order.

  The files are checked when the source is made; a copy sent to a loader
  process carries only the path and maps the files again there.
  """

  def __init__(self, root: str, corruption: str, severity: int):
    if severity not in image_corruptions.SEVERITIES:
      raise ValueError(f"severity {severity}: CIFAR-10-C's severities are 1 to 5")
    self.root, self.corruption, self.severity = root, corruption, severity
    self._arrays = self._open()

  def _open(self) -> tuple[np.ndarray, np.ndarray]:
    labels = load_labels(self.root)
    images = load_images(self.root, self.corruption, len(labels))
    per_severity = len(labels) // NUM_SEVERITIES
    rows = slice((self.severity - 1) * per_severity, self.severity * per_severity)
    return images[rows], labels[rows]

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "_arrays"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._arrays = self._open()

  def __len__(self) -> int:
    return len(self._arrays[1])

  def __getitem__(self, index: int) -> dict[str, Any]:
    images, labels = self._arrays
    return {"image": np.array(images[index]), "label": np.int32(labels[index])}


def missing_corruptions(root: str, corruptions: Sequence[str]) -> list[str]:
  """The ``corruptions`` whose file the folder at ``root`` lacks (a look, no read)."""
  return [c for c in corruptions if not os.path.isfile(os.path.join(root, f"{c}.npy"))]
