r"""A folder of the user's own images as a tfds dataset: ``folder:PATH``.

``PATH`` holds either one subfolder per class (``PATH/<class>/**/<image>``:
labelled, the classes in sorted order of their folder names) or images
directly (``PATH/<image>``: unlabelled, for pretraining and labelling only).
Any file whose extension Pillow can open is an image; other files (notes,
``.DS_Store``, ``Thumbs.db``) and hidden ones are ignored and counted in the
dataset's ``metadata.json``. The files are stored as they are, so a file that
cannot be decoded is met when a task reads it: skipped, named and counted
against ``data.max_bad_images`` as for ImageNet (:mod:`attn_contrastive.data.images`).

The ``train`` / ``validation`` split is drawn once, at prepare time, from the
seed: in each class the sorted file names are permuted by a generator seeded
by ``(seed, class name)`` and the first ``round(fraction × n)`` go to
validation (at least one, and at most ``n - 1``, of a class of two or more
images when ``fraction > 0``). A file's split therefore depends only on the
seed, the fraction and the files of its own class, never on the order the
file system lists them in. Records are keyed (``file_name``) by their path
under ``PATH``, which the label task's maps use to join.

Prepare with ``python -m attn_contrastive.data.prepare --dataset=folder:PATH``
(``--validation_fraction``, ``--split_seed``); every task reads it as
``--config.data.name=folder:PATH``. The prepared dataset is the tfds config
named after the folder (``image_folder/<folder name>``) under the data
folder, read back from its own files (:func:`prepared_builder`), so a task
does not need the source folder: prepare once, copy the data folder to a
bucket.
"""
from __future__ import annotations

import dataclasses
import os
import re
import zlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image as PILImage

#: How a config's ``data.name`` names a folder of images.
PREFIX = "folder:"
#: The tfds name the folders' datasets are stored under.
BUILDER_NAME = "image_folder"
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 0


def is_folder(name: str) -> bool:
  """Whether a dataset name is ``folder:PATH``."""
  return str(name).startswith(PREFIX)


def folder_of(name: str) -> str:
  """The folder ``folder:PATH`` names, ``~`` expanded; refuses an empty one."""
  path = str(name)[len(PREFIX):]
  if not path:
    raise ValueError(f"{name!r} names no folder: write folder:PATH, e.g. folder:~/my_images")
  return os.path.expanduser(path) if "://" not in path else path


def source_folder(name: str) -> str:
  """The folder of ``folder:PATH`` as recorded in the prepared dataset: absolute if local."""
  path = folder_of(name)
  return path if "://" in path else os.fspath(epath.Path(path).resolve())


def config_name(name: str) -> str:
  """The tfds config of ``folder:PATH``: the folder's own name, as tfds allows it."""
  base = epath.Path(source_folder(name).rstrip("/")).name or "root"
  slug = re.sub(r"[^a-z0-9_]+", "_", base.lower()).strip("_")
  return slug or f"folder_{zlib.crc32(base.encode()):08x}"


def image_extensions() -> frozenset[str]:
  """The file extensions (lower case, with the dot) that Pillow can open."""
  return frozenset(ext for ext, fmt in PILImage.registered_extensions().items()
                   if fmt in PILImage.OPEN)


@dataclasses.dataclass(frozen=True)
class Listing:
  """A folder's images: ``files[i]`` relative to the folder, ``labels[i]`` its
  class index (empty when unlabelled), ``classes`` in label order, and the
  relative paths of the files ignored as not images."""

  files: tuple[str, ...]
  labels: tuple[int, ...]
  classes: tuple[str, ...]
  ignored: tuple[str, ...]

  @property
  def labelled(self) -> bool:
    return bool(self.classes)


def _walk(under: epath.Path) -> Iterator[epath.Path]:
  """Every non-hidden file below ``under``, in sorted order."""
  for path in sorted(under.iterdir()):
    if path.name.startswith("."):
      continue
    if path.is_dir():
      yield from _walk(path)
    else:
      yield path


def _relative(root: epath.Path, path: epath.Path) -> str:
  return os.fspath(path)[len(os.fspath(root)):].lstrip("/")


def images_under(folder: str) -> tuple[list[str], list[str]]:
  """``(images, ignored)``: every file below ``folder`` (any layout, any depth) relative
  to it, in sorted order, split into images (by extension, as :func:`list_folder`) and
  the other files. For inference on a folder, which has no classes."""
  root = epath.Path(folder)
  if not root.is_dir():
    raise FileNotFoundError(f"{folder} is not a folder: pass a folder of images")
  extensions = image_extensions()
  images, ignored = [], []
  for path in _walk(root):
    (images if path.suffix.lower() in extensions else ignored).append(_relative(root, path))
  if not images:
    raise FileNotFoundError(f"no image under {folder} (extensions Pillow opens: .jpg, "
                            f".png, .webp, ...; ignored: {ignored[:5]})")
  return images, ignored


def list_folder(folder: str) -> Listing:
  """The images of ``folder``: one subfolder per class, or images directly in it.

  Refuses a missing folder, a folder with no image, and one that mixes
  images at its top with class subfolders (which of them would be the
  classes is not clear), naming the fix.
  """
  root = epath.Path(folder)
  if not root.is_dir():
    raise FileNotFoundError(f"{folder} is not a folder: folder:PATH names a folder of "
                            "class subfolders of images, or of images")
  extensions = image_extensions()
  is_image = lambda p: p.suffix.lower() in extensions
  top = [p for p in sorted(root.iterdir()) if not p.name.startswith(".")]
  classes = tuple(p.name for p in top if p.is_dir())
  top_images = [p.name for p in top if not p.is_dir() and is_image(p)]
  if classes and top_images:
    raise ValueError(
        f"{folder} holds class subfolders {list(classes[:5])} and images beside them "
        f"({top_images[:3]}): move the images into a class subfolder, or the subfolders' "
        "images up, so that the folder is either labelled or not")
  files, labels, ignored = [], [], []
  groups = [(i, root / c) for i, c in enumerate(classes)] or [(-1, root)]
  for label, under in groups:
    for path in _walk(under):
      if is_image(path):
        files.append(_relative(root, path))
        labels.append(label)
      else:
        ignored.append(_relative(root, path))
  if not files:
    raise FileNotFoundError(f"no image under {folder} (extensions Pillow opens: .jpg, "
                            ".png, .webp, ...; ignored: {ignored[:5]})")
  return Listing(tuple(files), tuple(labels) if classes else (), classes, tuple(ignored))


def split_indices(listing: Listing, validation_fraction: float,
                  seed: int) -> dict[str, list[int]]:
  """``{"train": [...], "validation": [...]}``, indices into ``listing.files`` in order.

  Each class (the whole folder when unlabelled) is split on its own, by a
  generator seeded with ``(seed, crc32(class name))`` (see the module docstring).
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  labels = listing.labels or (0,) * len(listing.files)
  validation = []
  for label, name in enumerate(listing.classes or ("",)):
    members = [i for i, y in enumerate(labels) if y == label]
    n = len(members)
    take = int(round(validation_fraction * n))
    if validation_fraction > 0 and n >= 2:
      take = min(max(take, 1), n - 1)
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    validation += [members[j] for j in rng.permutation(n)[:take]]
  chosen = set(validation)
  return {"train": [i for i in range(len(listing.files)) if i not in chosen],
          "validation": sorted(chosen)}


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """One folder of images and how it is split."""

  folder: str = ""
  validation_fraction: float = DEFAULT_VALIDATION_FRACTION
  seed: int = DEFAULT_SPLIT_SEED


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """The images of a folder (:mod:`attn_contrastive.data.image_folder`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file's path (tfds's default needs ``importlib_resources``)."""
    return epath.Path(__file__)

  @property
  def listing(self) -> Listing:
    if not hasattr(self, "_listing"):
      self._listing = list_folder(self.builder_config.folder)
    return self._listing

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"image": tfds.features.Image(shape=(None, None, 3)),
                "file_name": tfds.features.Text()}
    if self.listing.labelled:
      features["label"] = tfds.features.ClassLabel(names=list(self.listing.classes))
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("image", "label") if self.listing.labelled else None,
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    cfg = self.builder_config
    splits = split_indices(self.listing, cfg.validation_fraction, cfg.seed)
    self.info.metadata.update(dict(
        folder=os.fspath(cfg.folder), validation_fraction=cfg.validation_fraction,
        split_seed=cfg.seed, classes=list(self.listing.classes),
        ignored_files=len(self.listing.ignored),
        ignored_examples=list(self.listing.ignored[:20])))
    return {name: self._generate_examples(idx) for name, idx in splits.items() if idx}

  def _generate_examples(self, indices: list[int]) -> Iterator[tuple[str, dict]]:
    """Yields ``(relative path, example)`` for the split's files (tfds stores them in
    the order of a hash of the key: the same on every prepare)."""
    root = epath.Path(self.builder_config.folder)
    for i in indices:
      name = self.listing.files[i]
      example = {"image": os.fspath(root / name), "file_name": name}
      if self.listing.labelled:
        example["label"] = self.listing.labels[i]
      yield name, example


def builder(name: str, data_dir: str, validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
            seed: int = DEFAULT_SPLIT_SEED) -> ImageFolder:
  """The builder that prepares ``folder:PATH`` under ``data_dir``."""
  cfg = ImageFolderConfig(name=config_name(name), folder=source_folder(name),
                          validation_fraction=float(validation_fraction), seed=int(seed),
                          description=f"the images of {source_folder(name)}")
  return ImageFolder(config=cfg, data_dir=data_dir)


def prepared_dir(name: str, data_dir: str) -> epath.Path:
  """Where ``folder:PATH``'s prepared dataset lies under ``data_dir``."""
  return (epath.Path(data_dir) / BUILDER_NAME / config_name(name)
          / str(ImageFolder.VERSION))


def prepared_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder | None:
  """The prepared dataset of ``folder:PATH``, read from its own files (None if absent)."""
  path = prepared_dir(name, data_dir)
  if not (path / "dataset_info.json").exists():
    return None
  return tfds.builder_from_directory(os.fspath(path))


def check_same_split(prepared: tfds.core.DatasetBuilder, name: str,
                     validation_fraction: float, seed: int) -> None:
  """Refuses a prepared dataset made from another folder or with another split."""
  meta = prepared.info.metadata or {}
  want = dict(folder=source_folder(name), validation_fraction=float(validation_fraction), split_seed=int(seed))
  found = {k: meta.get(k) for k in want}
  if found != want:
    raise ValueError(
        f"{prepared.data_dir} was prepared with {found}, not {want}: delete that folder to "
        "prepare it again, or pass another --data_dir")
