"""The teacher's attention-map dataset: reading it and joining it to images.

Layout of a map dataset folder (written by :mod:`attn_contrastive.tasks.label`):

* ``metadata.json``: teacher checkpoint and model config, source dataset,
  split and number of examples, map size, number of shards.
* ``shard-XXXXX-of-YYYYY.npz``: ``maps`` (uint8 ``[n, H, W]``, each scaled so
  its maximum is 255) and ``keys`` (the source records' ``file_name``) for the
  contiguous index range ``shard_range(i)``.

Maps are aligned index-by-index with the image source; the join checks each
record's key instead of trusting the order.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

METADATA = "metadata.json"


def shard_ranges(num_examples: int, num_shards: int) -> list[tuple[int, int]]:
  """Contiguous ``[start, stop)`` index ranges, as equal as possible."""
  bounds = np.linspace(0, num_examples, num_shards + 1).round().astype(int)
  return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def shard_path(maps_dir: str, index: int, num_shards: int) -> str:
  """The file of shard ``index``."""
  return os.path.join(maps_dir, f"shard-{index:05d}-of-{num_shards:05d}.npz")


def key_str(key: Any) -> str:
  """A record key (bytes, numpy scalar or str) as ``str``."""
  if isinstance(key, np.ndarray):
    key = key.item()
  return key.decode() if isinstance(key, bytes) else str(key)


def read_metadata(maps_dir: str) -> dict[str, Any]:
  """The dataset's ``metadata.json``; names the label task if it is missing."""
  if not maps_dir:
    raise ValueError("no attention-map dataset given: set --config.attention.maps_dir "
                     "to the workdir of a label run (configs/label.py)")
  path = os.path.join(maps_dir, METADATA)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"no attention-map dataset at {maps_dir} ({METADATA} missing); make it with\n"
        "  python -m attn_contrastive.main --config=configs/label.py "
        f"--workdir={maps_dir} --config.teacher_checkpoint=TEACHER_WORKDIR")
  with open(path) as f:
    return json.load(f)


class AttentionMapSource:
  """Random access to the maps: ``source[i] = {'attention_map', 'file_name'}``.

  Refuses a dataset made from another source dataset or split than the one
  named, or one whose shards are not all written yet.
  """

  def __init__(self, maps_dir: str, dataset: str | None = None, split: str | None = None):
    self.maps_dir = maps_dir
    self.metadata = read_metadata(maps_dir)
    for field, want in (("dataset", dataset), ("split", split)):
      have = self.metadata["source"][field]
      if want is not None and have != want:
        raise ValueError(f"attention maps in {maps_dir} were made from {field} "
                         f"{have!r}, not {want!r}")
    n, s = self.metadata["source"]["num_examples"], self.metadata["num_shards"]
    self._ranges = shard_ranges(n, s)
    self._starts = np.array([a for a, _ in self._ranges])
    missing = [i for i in range(s) if not os.path.exists(shard_path(maps_dir, i, s))]
    if missing:
      raise FileNotFoundError(f"attention maps in {maps_dir} are incomplete: shards "
                              f"{missing[:5]}{'...' if len(missing) > 5 else ''} missing; "
                              "rerun the label task to finish them")
    self._cache: dict[int, dict[str, np.ndarray]] = {}

  def __len__(self) -> int:
    return int(self.metadata["source"]["num_examples"])

  def _shard(self, index: int) -> dict[str, np.ndarray]:
    if index not in self._cache:
      with np.load(shard_path(self.maps_dir, index, self.metadata["num_shards"])) as z:
        self._cache[index] = {"maps": z["maps"], "keys": z["keys"]}
    return self._cache[index]

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(i)
    s = int(np.searchsorted(self._starts, i, side="right") - 1)
    shard = self._shard(s)
    j = i - self._ranges[s][0]
    return {"attention_map": shard["maps"][j], "file_name": key_str(shard["keys"][j])}


class JoinedSource:
  """Image records with ``attention_map`` added; checks ``file_name`` per record."""

  def __init__(self, images, maps, key: str = "file_name"):
    if len(images) != len(maps):
      raise ValueError(f"image source has {len(images)} records but the attention "
                       f"maps {len(maps)}")
    self.images, self.maps, self.key = images, maps, key

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict[str, Any]:
    record, m = dict(self.images[i]), self.maps[i]
    image_key, map_key = key_str(record[self.key]), key_str(m[self.key])
    if image_key != map_key:
      raise KeyError(f"record {i}: image {self.key} {image_key!r} does not match "
                     f"attention-map {self.key} {map_key!r}")
    record["attention_map"] = m["attention_map"]
    return record


def with_attention_maps(images, maps_dir: str, *, dataset: str | None = None,
                        split: str | None = None) -> JoinedSource:
  """Opens ``maps_dir`` (checked against ``dataset``/``split``) and joins it."""
  return JoinedSource(images, AttentionMapSource(maps_dir, dataset, split))
