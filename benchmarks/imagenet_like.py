"""An ImageNet-like array_record dataset with attention maps, for benchmarks.

JPEGs of about 500×375 and ~110 kB (smooth multi-scale random textures saved
at quality 92 with 4:2:0 chroma, as photographs are), in tfds records with
the features of tfds's ``imagenet2012`` (``image``, ``label``,
``file_name``), read by ``sources.open_split`` as ImageNet is; and a map
dataset beside it written with the label task's own writers. A module of its
own (not the benchmark script), so that grain's worker processes import the
tfds builder by name instead of defining it a second time.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds

from attn_contrastive import config as config_lib
from attn_contrastive.data import attention_maps as am
from attn_contrastive.data import sources
from attn_contrastive.tasks import label

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "input_bench_images"
SPLIT = "train"
#: (height, width, share): ImageNet's usual shapes, landscape first.
SHAPES = ((375, 500, 0.7), (500, 375, 0.2), (333, 500, 0.1))
JPEG_QUALITY = 92
MAP_SIZE = 64


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A smooth random RGB texture: noise at four scales (96, 24, 6 and 1.5
  pixels), bicubically upsampled and summed, on a random mean colour. The
  amplitudes make a 500×375 JPEG at quality 92 about 110 kB, ImageNet's mean."""
  image = np.empty((height, width, 3), np.float32)
  image[:] = 128 + rng.uniform(-40, 40, 3).astype(np.float32)
  for cell, amplitude in ((96, 70.0), (24, 40.0), (6, 30.0), (1.5, 24.0)):
    grid = rng.standard_normal((max(2, int(height / cell)), max(2, int(width / cell)), 3))
    image += amplitude * cv2.resize(grid.astype(np.float32), (width, height),
                                    interpolation=cv2.INTER_CUBIC)
  return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_record(index: int, seed: int = 0) -> dict[str, Any]:
  """Record ``index``: a JPEG of one of :data:`SHAPES`, a label and a file name."""
  rng = np.random.default_rng([seed, index])
  shares = np.array([s for _, _, s in SHAPES])
  height, width, _ = SHAPES[int(rng.choice(len(SHAPES), p=shares / shares.sum()))]
  ok, data = cv2.imencode(".jpg", texture(rng, height, width),
                          [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
  assert ok
  label_id = index % 1000
  return {"image": data.tobytes(), "label": label_id,
          "file_name": f"n{label_id:08d}_{index}.JPEG"}


class InputBenchImages(tfds.core.GeneratorBasedBuilder):
  """ImageNet-like JPEG records, with the features of tfds's ``imagenet2012``.

  The JPEG bytes are stored as made (tfds keeps encoded bytes as they are),
  so reading them costs what reading ImageNet's does.
  """

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, num_images: int = 0, seed: int = 0, **kwargs):
    self._num_images, self._seed = num_images, seed
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=1000),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {SPLIT: self._generate_examples()}

  def _generate_examples(self):
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
      records = pool.map(lambda i: jpeg_record(i, self._seed), range(self._num_images))
      for i, record in enumerate(records):
        yield i, record


def build_images(data_dir: str, num_images: int) -> None:
  """The image dataset of ``num_images`` records under ``data_dir`` (kept if built)."""
  builder = InputBenchImages(num_images=num_images, data_dir=data_dir)
  if not builder.is_prepared():
    builder.download_and_prepare(file_format="array_record")


def build_maps(maps_dir: str, data_dir: str, maps_per_shard: int) -> None:
  """Random smooth 64×64 maps of every record, keyed by its ``file_name``, written
  with the label task's writers (``metadata.json`` and ``.npz`` shards)."""
  if os.path.exists(os.path.join(maps_dir, am.METADATA)):
    return
  builder = InputBenchImages(data_dir=data_dir)
  keys_source = builder.as_data_source(split=SPLIT,
                                       decoders={"image": tfds.decode.SkipDecoding()})
  n = len(keys_source)
  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "label.py"))
  c.data.update(dict(name=NAME, split=SPLIT))
  c.label.update(dict(map_size=MAP_SIZE, num_shards=max(1, math.ceil(n / maps_per_shard))))
  os.makedirs(maps_dir, exist_ok=True)
  # The label task's own writers, so that the files are what it writes.
  write_metadata = label._write_metadata  # pylint: disable=protected-access
  save_shard = label._save_shard  # pylint: disable=protected-access
  write_metadata(maps_dir, label.metadata(c, n))
  rng = np.random.default_rng(0)
  for s, (a, b) in enumerate(am.shard_ranges(n, c.label.num_shards)):
    grid = rng.random((b - a, 4, 4)).astype(np.float32)
    maps = np.stack([cv2.resize(g, (MAP_SIZE, MAP_SIZE), interpolation=cv2.INTER_CUBIC)
                     for g in grid])
    maps = np.clip(np.round(255 * maps / maps.max((1, 2), keepdims=True)), 0, 255)
    maps = maps.astype(np.uint8)
    keys = np.array([am.key_str(keys_source[i]["file_name"]) for i in range(a, b)])
    save_shard(am.shard_path(maps_dir, s, c.label.num_shards), maps, keys)


def prepare(data_dir: str, num_images: int, maps_per_shard: int) -> tuple[Any, Any, str]:
  """(image source, joined source, dataset folder), building what is missing."""
  data_dir = os.path.join(os.path.expanduser(data_dir), f"n{num_images}")
  build_images(data_dir, num_images)
  maps_dir = os.path.join(data_dir, f"maps_{maps_per_shard}")
  build_maps(maps_dir, data_dir, maps_per_shard)
  images = sources.open_split(NAME, SPLIT, data_dir)
  return images, am.with_attention_maps(images, maps_dir, dataset=NAME, split=SPLIT), data_dir


def mean_jpeg_kb(data_dir: str, num: int = 200) -> float:
  """The mean size of the first ``num`` stored JPEGs, in kB."""
  raw = InputBenchImages(data_dir=data_dir).as_data_source(
      split=SPLIT, decoders={"image": tfds.decode.SkipDecoding()})
  return float(np.mean([len(raw[i]["image"]) for i in range(min(num, len(raw)))])) / 1e3
