"""A validation split corrupted on the fly: ImageNet-C's recipe for any dataset.

ImageNet-C corrupts each validation image *after* the evaluation view
(resize 256, centre crop 224). :class:`CorruptedSplit` does the same with the
evaluation view of the run being scored, for data without a released
corrupted copy (the synthetic data; ImageNet itself when the release is not
at hand). Each image's corruption draws from a generator seeded by the
study seed, the corruption, the severity and the image's index, so a split
is the same on every host, in every process layout and on every rerun.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from attn_contrastive.data import image_corruptions


def corruption_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
  """The generator of one corrupted image (independent of any other's draws)."""
  return np.random.default_rng([seed, image_corruptions.ALL.index(name), severity, index])


class CorruptedSplit:
  """``source`` under ``view`` then ``corrupt(name, severity)``, as a random-access source.

  ``view(record) -> {"image": uint8 H×W×3, "label"}`` is the evaluation view;
  items are ``{"image", "label"}`` of the corrupted view. ``clean_cache``
  (optional, shared between the conditions of one evaluation) keeps the
  clean views, so the images are decoded once for all the conditions.
  ``constants``: :func:`image_corruptions.corrupt`'s table, ``"imagenet"``
  (ImageNet-C's) or ``"cifar"`` (CIFAR-10-C's, for 32-px images).
  """

  def __init__(self, source, view: Callable[[Any], dict[str, Any]], name: str, severity: int,
               seed: int = 0, clean_cache: dict[int, dict[str, Any]] | None = None,
               constants: str = "imagenet"):
    if name not in image_corruptions.ALL:
      raise ValueError(f"unknown corruption {name!r}; choose from {image_corruptions.ALL}")
    if severity not in range(1, 6):
      raise ValueError(f"severity {severity}: ImageNet-C's severities are 1 to 5")
    if constants not in image_corruptions.CONSTANTS:
      raise ValueError(f"unknown constants {constants!r}; choose from "
                       f"{tuple(image_corruptions.CONSTANTS)}")
    self.source, self.view, self.name, self.severity = source, view, name, severity
    self.seed, self.clean_cache, self.constants = seed, clean_cache, constants

  def __len__(self) -> int:
    return len(self.source)

  def clean(self, index: int) -> dict[str, Any]:
    """The clean evaluation view of example ``index``."""
    if self.clean_cache is None:
      return self.view(self.source[index])
    if index not in self.clean_cache:
      self.clean_cache[index] = self.view(self.source[index])
    return self.clean_cache[index]

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self.clean(int(index))
    rng = corruption_rng(self.seed, self.name, self.severity, int(index))
    image = image_corruptions.corrupt(np.asarray(ex["image"]), self.name, self.severity, rng,
                                      self.constants)
    return {"image": image, "label": ex["label"]}
