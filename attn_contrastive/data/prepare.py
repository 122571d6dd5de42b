r"""Builds a tfds dataset in array_record format, by name.

Usage:

  python -m attn_contrastive.data.prepare --dataset=salient_objects/classification
  python -m attn_contrastive.data.prepare --dataset=salient_objects/human_attention \
      --data_dir=~/tensorflow_datasets
  python -m attn_contrastive.data.prepare --dataset=folder:~/my_images \
      --validation_fraction=0.1 --split_seed=0

Every module of `attn_contrastive.data` is imported first, so the project's own
builders (e.g. ``salient_objects``) are registered with tfds alongside its
catalogue. ``folder:PATH`` is a folder of the user's own images
(:mod:`attn_contrastive.data.image_folder`). The training pipeline reads the result with `tfds.data_source`,
which needs the random-access array_record format.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import time
from typing import Sequence

from absl import app, flags, logging

_DATASET = flags.DEFINE_string(
    "dataset", None, "tfds name, 'name/config[:version]', e.g. "
    "salient_objects/classification, or folder:PATH for a folder of images.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Where to write; default: $TFDS_DATA_DIR or "
    "~/tensorflow_datasets.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Where manually downloaded files lie (ImageNet's "
    "ILSVRC2012_img_{train,val}.tar, the SALICON release); default: "
    "<data_dir>/downloads/manual.")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", 0.1, "folder:PATH only: the share of each class's images "
    "held out as the validation split.")
_SPLIT_SEED = flags.DEFINE_integer(
    "split_seed", 0, "folder:PATH only: the seed of the train/validation split.")
_FILE_FORMAT = flags.DEFINE_enum(
    "file_format", "array_record", ["array_record", "tfrecord"],
    "Record format; the training pipeline needs array_record.")


def register_builders(package: str = "attn_contrastive.data") -> dict[str, str]:
  """Imports every module of ``package`` so that its tfds builders register.

  Importing is what registers a `tfds.core.GeneratorBasedBuilder` subclass
  under its snake-case name. A module that fails to import is skipped (it may
  not define the requested dataset); returns {module: error} for those, so
  that a missing dataset can be explained.
  """
  pkg = importlib.import_module(package)
  failures = {}
  for info in pkgutil.iter_modules(pkg.__path__, prefix=package + "."):
    if info.name.endswith(".prepare"):
      continue
    try:
      importlib.import_module(info.name)
    except Exception as e:  # pylint: disable=broad-except
      failures[info.name] = f"{type(e).__name__}: {e}"
      logging.warning("skipping %s: %s", info.name, failures[info.name])
  return failures


def _builder(name: str, data_dir: str | None, validation_fraction: float, split_seed: int):
  """The builder of ``name``; for ``folder:PATH`` refuses one prepared differently."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from attn_contrastive.data import image_folder  # pylint: disable=g-import-not-at-top

  if image_folder.is_folder(name):
    root = data_dir or tfds.core.constants.DATA_DIR
    prepared = image_folder.prepared_builder(name, root)
    if prepared is not None:
      image_folder.check_same_split(prepared, name, validation_fraction, split_seed)
      return prepared
    return image_folder.builder(name, root, validation_fraction, split_seed)
  failures = register_builders()
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    detail = "".join(f"\n  {m}: {err}" for m, err in failures.items())
    raise ValueError(f"unknown dataset {name!r}"
                     + (f"; modules that failed to import:{detail}"
                        if detail else "")) from e


def prepare(name: str, data_dir: str | None = None,
            file_format: str = "array_record", manual_dir: str | None = None, *,
            validation_fraction: float = 0.1, split_seed: int = 0) -> str:
  """Builds dataset ``name`` (no-op if already built); returns its folder.

  ``validation_fraction`` and ``split_seed`` split a ``folder:PATH`` dataset
  (:mod:`attn_contrastive.data.image_folder`). Raises if the dataset is
  unknown or already stored in another format (or, for a folder, split
  otherwise).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if data_dir:
    data_dir = os.path.expanduser(data_dir)
  builder = _builder(name, data_dir, validation_fraction, split_seed)
  if builder.is_prepared():
    found = builder.info.file_format.value
    if found != file_format:
      raise ValueError(f"{name} in {builder.data_dir} is stored as {found}, "
                       f"not {file_format}; delete that folder to rebuild it")
    logging.info("%s is already prepared in %s", name, builder.data_dir)
  else:
    start = time.perf_counter()
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
    builder.download_and_prepare(file_format=file_format,
                                 download_config=download_config)
    logging.info("built %s in %.1f s", name, time.perf_counter() - start)
  return os.fspath(builder.data_dir)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _DATASET.value:
    raise app.UsageError("pass --dataset=NAME, e.g. salient_objects/classification")
  start = time.perf_counter()
  path = prepare(_DATASET.value, _DATA_DIR.value, _FILE_FORMAT.value,
                 _MANUAL_DIR.value, validation_fraction=_VALIDATION_FRACTION.value,
                 split_seed=_SPLIT_SEED.value)
  print(f"{_DATASET.value}: {path} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
  app.run(main)
