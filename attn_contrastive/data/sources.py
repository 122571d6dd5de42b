"""Opening tfds datasets as random-access (array_record) data sources.

Reading needs no TensorFlow; building does. A dataset that is not prepared
is refused with the command that prepares it, except the bundled synthetic
data, which is cheap and is built on first use when ``data.auto_prepare``.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.proto import tf_example_pb2 as example_pb2

from attn_contrastive.data import image_folder, images, prepare

_EXAMPLE = example_pb2.Example


SYNTHETIC_PREFIX = "salient_objects"


class DatasetMissingError(FileNotFoundError):
  """A dataset is not prepared where the config points."""


def _data_dir(data_dir: str | None) -> str:
  return os.path.expanduser(data_dir) if data_dir else tfds.core.constants.DATA_DIR


def prepare_command(name: str, data_dir: str | None) -> str:
  cmd = f"python -m attn_contrastive.data.prepare --dataset={name}"
  if data_dir:
    cmd += f" --data_dir={data_dir}"
  return cmd


def get_builder(name: str, data_dir: str | None = None,
                auto_prepare: bool = False) -> tfds.core.DatasetBuilder:
  """The prepared builder of ``name``, building synthetic data if allowed.

  ``folder:PATH`` (the user's images) is read from its prepared files alone.
  """
  if image_folder.is_folder(name):
    builder = image_folder.prepared_builder(name, _data_dir(data_dir))
    if builder is None:
      raise DatasetMissingError(
          f"{name} is not prepared under {_data_dir(data_dir)}; prepare it with:\n  "
          f"{prepare_command(name, data_dir)}")
    return builder
  prepare.register_builders()
  try:
    builder = tfds.builder(name, data_dir=_data_dir(data_dir))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetMissingError(f"unknown dataset {name!r}: {e}") from e
  if not builder.is_prepared():
    if auto_prepare and name.startswith(SYNTHETIC_PREFIX):
      builder = _build_once(name, data_dir)
    else:
      raise DatasetMissingError(
          f"dataset {name!r} is not prepared under {_data_dir(data_dir)}; "
          f"prepare it with:\n  {prepare_command(name, data_dir)}")
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise DatasetMissingError(
        f"dataset {name!r} under {builder.data_dir} is stored as "
        f"{builder.info.file_format.value}; random access needs array_record: "
        f"delete that folder and run:\n  {prepare_command(name, data_dir)}")
  return builder


def _build_once(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Builds a synthetic dataset on first use, once however many processes ask.

  The processes of a multi-process run on one host (or on hosts sharing a
  folder) would otherwise all build it and collide when tfds renames its
  finished folder into place: the first takes a lock file beside the data,
  the others wait for it and then find the dataset prepared.
  """
  import fcntl  # pylint: disable=g-import-not-at-top  (POSIX; local data folders only)
  root = _data_dir(data_dir)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{name.replace('/', '_')}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = tfds.builder(name, data_dir=root)
    if not builder.is_prepared():
      logging.info("Building %s into %s (first use)", name, builder.data_dir)
      builder.download_and_prepare(file_format="array_record")
  return builder


def require_labels(data, needed_by: str) -> None:
  """Refuses the dataset a config's ``data`` names if it has no ``label``
  (a flat ``folder:PATH``), before anything is computed: ``needed_by`` says
  what needs them."""
  builder = get_builder(data.name, data.data_dir, data.get("auto_prepare", False))
  if "label" not in builder.info.features:
    raise ValueError(
        f"{data.name} has no labels, which {needed_by} needs: put its images in one "
        "subfolder per class and prepare it again (docs/own_images.md)")


def open_config_split(data, split: str, name: str | None = None) -> images.SkippingSource:
  """``split`` of the dataset a config's ``data`` names (or of ``name``: the
  human-attention data of the co-train row, ImageNet-C), opened with that
  config's ``data_dir``, ``auto_prepare`` and ``max_bad_images``."""
  return open_split(name or data.name, split, data.data_dir, data.get("auto_prepare", False),
                    max_bad_images=data.get("max_bad_images"))


def _locate(builder, dataset: str, command: str, index: int) -> tuple[str, str]:
  """Which file of ``dataset`` (``<name>/<split>``) holds record ``index``, and what
  rebuilds it."""
  info = builder.info.splits[dataset.rsplit("/", 1)[1]]
  ends = np.cumsum(info.shard_lengths)
  shard = min(int(np.searchsorted(ends, index, side="right")), len(ends) - 1)
  path = os.path.join(os.fspath(builder.data_path), info.filenames[shard])
  return (f"record {index} of {dataset}, in {path},",
          f"delete {os.fspath(builder.data_path)} and prepare the dataset again:\n  {command}")


def _flat_kinds(features) -> dict[str, str] | None:
  """``{name: "bytes" | "int"}`` when every feature is an encoded image, a text or a
  class label (tfds's ``imagenet2012``, the image folders, the released ImageNet-C);
  None for anything else (maps, fixations, nested features)."""
  kinds = {}
  for name, feature in features.items():
    if isinstance(feature, (tfds.features.Image, tfds.features.Text)):
      kinds[name] = "bytes"
    elif isinstance(feature, tfds.features.ClassLabel):
      kinds[name] = "int"
    else:
      return None
  return kinds


class FlatRecordSource:
  """A tfds array_record data source of flat records (:func:`_flat_kinds`), each
  parsed straight from its ``tf.train.Example``.

  Gives what tfds's own parser gives with the image left encoded (``bytes``
  for images and texts, ``int`` for labels) at about half its CPU per record,
  which a training run pays for every view it makes: tfds goes through its
  generic nested-feature machinery and a NumPy array per feature. A record
  lacking a feature (a file cut short), or a source whose records are not
  serialized (tfds's mocked data), goes to tfds's parser, which decides as it
  always has.
  """

  def __init__(self, source, kinds: dict[str, str]):
    self.source, self.kinds = source, kinds

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    serialized = self.source.data_source[index]
    if not isinstance(serialized, bytes):  # a source that is not serialized records
      return self.source[index]
    feature = _EXAMPLE.FromString(serialized).features.feature
    try:
      return {name: (feature[name].bytes_list.value[0] if kind == "bytes"
                     else feature[name].int64_list.value[0])
              for name, kind in self.kinds.items()}
    except IndexError:  # a feature missing or empty
      return self.source[index]


def open_split(name: str, split: str, data_dir: str | None = None,
               auto_prepare: bool = False, *,
               max_bad_images: int | None = None) -> images.SkippingSource:
  """A random-access source over one split (``len`` and ``__getitem__``).

  Its ``image`` feature is decoded by :func:`attn_contrastive.data.images.decode`
  (uint8 RGB whatever the stored file's mode or depth), and a record whose
  image cannot be decoded is replaced by the next one that can, counted, and
  refused past ``max_bad_images`` (``data.max_bad_images``; None: the default
  :data:`attn_contrastive.data.images.DEFAULT_MAX_BAD_IMAGES`; see
  :class:`attn_contrastive.data.images.SkippingSource`).
  """
  builder = get_builder(name, data_dir, auto_prepare)
  if split not in builder.info.splits:
    raise ValueError(f"dataset {name!r} has no split {split!r}; it has "
                     f"{sorted(builder.info.splits)}")
  features = builder.info.features
  encoded = "image" in features and isinstance(features["image"], tfds.features.Image)
  decoders = {"image": tfds.decode.SkipDecoding()} if encoded else None
  dataset = f"{name}/{split}"
  locate = functools.partial(_locate, builder, dataset, prepare_command(name, data_dir))
  records = builder.as_data_source(split=split, decoders=decoders)
  kinds = _flat_kinds(features) if encoded else None
  if kinds and hasattr(records, "data_source"):
    records = FlatRecordSource(records, kinds)
  return images.SkippingSource(
      images.DecodedSource(records, dataset, locate),
      images.BadImageLog(dataset, images.DEFAULT_MAX_BAD_IMAGES if max_bad_images is None
                         else max_bad_images))
