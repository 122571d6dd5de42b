"""SALICON (Saliency in Context) as a tensorflow-datasets builder.

SALICON holds 10,000 training, 5,000 validation and 5,000 test images from
MS COCO 2014 (640 x 480) with human spatial-attention labels collected by
mouse tracking: per-observer fixations and a grey-scale saliency map per
image (none for test). This builder reads the official release from the
manual directory; see :data:`MANUAL_INSTRUCTIONS` for the expected layout.

Usage::

    import tensorflow_datasets as tfds
    from attn_contrastive.data import salicon  # registers the builder

    builder = tfds.builder("salicon/salicon2017", data_dir=...)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=...),
        file_format="array_record")
    source = tfds.data_source("salicon/salicon2017", split="train", data_dir=...)

Features of one example:

* ``image``: uint8 ``[H, W, 3]``, the original JPEG bytes (re-encoded only
  when a file is not a plain RGB / grey-scale JPEG, e.g. CMYK, converted by
  :func:`attn_contrastive.data.images.to_rgb`).
* ``saliency_map``: uint8 ``[H, W, 1]`` PNG, the released map (colour or
  16-bit maps are converted to 8-bit grey). Test images have no ground
  truth: their map is all zeros, with the image's size.
* ``fixations``: int32 ``[N, 2]``, 0-based ``(row, col)``; the ``.mat``
  files store 1-based ``[x, y]``, so ``row = round(y) - 1`` and
  ``col = round(x) - 1``. Positions at most :data:`BORDER_TOLERANCE` pixels
  outside the image are clipped onto its border (mouse-based positions pile
  up on and just past the border); farther out and NaN / inf positions are
  dropped (see :func:`read_fixation_file`). All observers are concatenated,
  each in its recorded order. Empty (``[0, 2]``) for test images.
* ``observer``: int32 ``[N]``, the index of each fixation's observer in
  the file's ``gaze`` struct array (0-based; an observer without fixations
  keeps its index but contributes no rows).
* ``file_name``: the image's file name, e.g.
  ``COCO_train2014_000000000009.jpg``.

What the build does with damaged or inconsistent files, and why:

* refused, naming the file and the fix: an image that cannot be decoded, a
  train / validation image without its map or ``.mat`` file, a map or
  ``.mat`` file without its image (an incompletely extracted ``images``
  folder would otherwise give a smaller split than the release's), a map of
  another size than its image (a map from another source or edition: resizing
  it would hide the mix-up), a ``.mat`` file that is unreadable, lacks
  ``resolution`` / ``gaze`` / an observer's ``fixations``, names another
  image, or gives another resolution than the image's. Each is a damaged or
  mixed-up download, and the release has the right file.
* counted and handled: fixations just outside the image are clipped, those
  farther out or not finite are dropped (per position: the rest of the file
  is good). Each split's counts (``kept``, ``clipped``, ``outside``,
  ``non_finite``, ``at_zero``, ``at_far_edge``) are logged and stored in the
  prepared dataset's ``metadata.json`` (``builder.info.metadata``).
* warned: 0-based coordinates cannot be told from 1-based ones file by file
  (they differ by one pixel, and 1-based mouse data reaches 0 past the
  border), but over a split 1-based data reaches ``x = W`` or ``y = H`` and
  0-based data never does: a split with coordinates at 0 and none at the far
  edge is logged as looking 0-based (SALICON's files are 1-based), and the
  counts are in the metadata.

Editions (builder configs): ``salicon2015`` is the original release of
Jiang et al. (CVPR 2015); ``salicon2017`` (the default) is the update
released for the LSUN 2017 saliency challenge. Both share the images; the
2017 release re-derived the fixations (and the saliency maps built from
them) from the recorded mouse trajectories with a revised processing, so
fixation counts and maps differ between editions. The ``.mat`` files have
the same keys in both, and this builder reads both the same way.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Iterator

import cv2
import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image as PILImage

from attn_contrastive.data import images as images_lib

_DESCRIPTION = """\
SALICON: 20,000 MS COCO 2014 images (10,000 train, 5,000 validation, 5,000
test) with spatial-attention labels from mouse tracking: per-observer
fixations and a saliency map for train and validation.
"""

_CITATION = """\
@inproceedings{jiang2015salicon,
  title={SALICON: Saliency in Context},
  author={Jiang, Ming and Huang, Shengsheng and Duan, Juanyong and Zhao, Qi},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={1072--1080},
  year={2015}
}
"""

MANUAL_INSTRUCTIONS = """\
Download the SALICON release from http://salicon.net (images, saliency maps
and fixations of the edition you want) and extract it into `manual_dir`:

  manual_dir/
    images/train/COCO_train2014_XXXXXXXXXXXX.jpg   (10,000)
    images/val/COCO_val2014_XXXXXXXXXXXX.jpg       (5,000)
    images/test/COCO_test2014_XXXXXXXXXXXX.jpg     (5,000, optional)
    maps/train/<image name>.png                    grey-scale saliency maps
    maps/val/<image name>.png
    fixations/train/<image name>.mat               per-observer gaze data
    fixations/val/<image name>.mat

The maps and fixations differ between editions. To keep both, put each
edition's `maps/` and `fixations/` under a folder named after the config,
e.g. `manual_dir/salicon2015/maps/...` and `manual_dir/salicon2017/fixations/...`;
for each of `images`, `maps` and `fixations` the builder looks in
`manual_dir/<config name>/` first and then in `manual_dir/`.
Every train / validation image needs its map and its .mat file, and every
map and .mat file its image. The test split is built only when `images/test`
exists.
"""

# tfds split name -> folder name in the release.
_SPLIT_FOLDERS = {"train": "train", "validation": "val", "test": "test"}
_SPLITS_WITH_LABELS = ("train", "validation")
_IMAGE_SUFFIXES = (".jpg", ".jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(eq=False)
class SaliconConfig(tfds.core.BuilderConfig):
  """A SALICON edition: ``'2015'`` or ``'2017'``."""

  edition: str = "2017"


class Salicon(tfds.core.GeneratorBasedBuilder):
  """SALICON images with saliency maps and fixations, from the manual download."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": ("Fixations more than BORDER_TOLERANCE px outside the image and NaN / inf "
                "ones dropped (were clipped / refused); 16-bit images scaled, not clipped; "
                "maps or .mat files without an image refused; each split's fixation "
                "counts in metadata.json."),
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
  BUILDER_CONFIGS = [
      SaliconConfig(name="salicon2015", edition="2015",
                    description="Original SALICON release (CVPR 2015)."),
      SaliconConfig(
          name="salicon2017", edition="2017",
          description=("SALICON update for the LSUN 2017 challenge: fixations "
                       "and maps re-derived from the mouse trajectories.")),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "salicon2017"

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file's path (where tfds would look for a checksums file).

    tfds's default implementation imports ``importlib_resources``, which
    tensorflow-datasets declares as a dependency only for Python < 3.9;
    the path of a plain module file needs none of it.
    """
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    """Declares the features (see the module docstring)."""
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "saliency_map": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "fixations": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
            "observer": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="http://salicon.net",
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    """Finds the release folders in ``manual_dir`` and makes one generator per split."""
    root = epath.Path(dl_manager.manual_dir)
    generators = {}
    for split, folder in _SPLIT_FOLDERS.items():
      image_dir = _find_folder(root, self.builder_config.name, "images", folder)
      if split == "test":
        if image_dir is None:
          continue
        generators[split] = self._generate_examples(split, image_dir, None, None)
        continue
      if image_dir is None:
        raise FileNotFoundError(
            _missing_folder_message(root, self.builder_config.name, "images", folder))
      map_dir = _find_folder(root, self.builder_config.name, "maps", folder)
      fixation_dir = _find_folder(root, self.builder_config.name, "fixations", folder)
      for kind, found in (("maps", map_dir), ("fixations", fixation_dir)):
        if found is None:
          raise FileNotFoundError(
              _missing_folder_message(root, self.builder_config.name, kind, folder))
      generators[split] = self._generate_examples(split, image_dir, map_dir, fixation_dir)
    return generators

  def _generate_examples(self, split: str, image_dir: epath.Path, map_dir: epath.Path | None,
                         fixation_dir: epath.Path | None) -> Iterator[tuple[str, dict]]:
    """Yields ``(image stem, example)`` for every image of a split, in name order.

    Refuses a damaged, missing or extra file with its path and the fix (see the
    module docstring); stores the split's fixation counts in the metadata.
    """
    image_paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not image_paths:
      raise FileNotFoundError(f"no .jpg images in {image_dir}")
    if map_dir is None or fixation_dir is None:
      for image_path in image_paths:
        yield image_path.stem, _unlabelled_example(image_path)
      return
    for folder in (map_dir, fixation_dir):
      _check_no_orphans(image_paths, image_dir, folder)
    counts, dropped_in = FixationCounts(), []
    for image_path in image_paths:
      example, file_counts = _labelled_example(image_path, map_dir, fixation_dir)
      counts += file_counts
      if file_counts.outside or file_counts.non_finite:
        dropped_in.append(image_path.name)
      yield image_path.stem, example
    _log_fixation_counts(split, counts, dropped_in)
    self.info.metadata[f"fixations_{split}"] = counts.as_dict()


# --------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------

#: Appended to a refusal of a release file: what to do about it.
_FIX = ("Replace the file with the one of the same name from the SALICON release (the "
        "edition you build), or remove the image with its map and .mat file to build "
        "without it.")


def _unlabelled_example(image_path: epath.Path) -> dict[str, Any]:
  """A test image: no map (zeros of the image's size), no fixations."""
  image, (height, width) = _read_release_image(image_path)
  return {
      "image": image,
      "saliency_map": np.zeros((height, width, 1), np.uint8),
      "fixations": np.zeros((0, 2), np.int32),
      "observer": np.zeros((0,), np.int32),
      "file_name": image_path.name,
  }


def _labelled_example(image_path: epath.Path, map_dir: epath.Path,
                      fixation_dir: epath.Path) -> tuple[dict[str, Any], FixationCounts]:
  """A train / validation image with its map and fixations, checked against each other."""
  stem = image_path.stem
  mat_path, map_path = fixation_dir / f"{stem}.mat", map_dir / f"{stem}.png"
  for needed in (mat_path, map_path):
    if not needed.exists():
      raise FileNotFoundError(
          f"{needed} is missing (needed for image {image_path}): copy it from the SALICON "
          f"release into {needed.parent}, or remove the image to build without it.")
  image, (height, width) = _read_release_image(image_path)
  try:
    record = read_fixation_file(mat_path, expected_stem=stem)
    if record.resolution != (height, width):
      raise ValueError(f"{image_path}: image is {height} x {width} but {mat_path} gives "
                       f"resolution {record.resolution[0]} x {record.resolution[1]}")
    saliency_map = read_saliency_map(map_path, (height, width))
  except ValueError as err:
    raise ValueError(f"{err}\n{_FIX}") from err
  return {
      "image": image,
      "saliency_map": saliency_map,
      "fixations": record.fixations,
      "observer": record.observer,
      "file_name": image_path.name,
  }, record.counts


def _read_release_image(path: epath.Path) -> tuple[Any, tuple[int, int]]:
  """:func:`read_image`, its refusal completed with the fix."""
  try:
    return read_image(path)
  except ValueError as err:
    raise ValueError(f"{err}\n{_FIX}") from err


def _check_no_orphans(image_paths: list[epath.Path], image_dir: epath.Path,
                      folder: epath.Path) -> None:
  """Refuses maps or ``.mat`` files in ``folder`` whose image is not in ``image_dir``.

  The release has an image for every label file, so an orphan means that the
  images were extracted incompletely (or label files of another split were
  copied in): building would silently give a smaller split.
  """
  stems = {p.stem for p in image_paths}
  orphans = sorted(p.name for p in folder.iterdir()
                   if p.suffix.lower() in (".png", ".mat") and p.stem not in stems)
  if orphans:
    listed = ", ".join(orphans[:5]) + (" ..." if len(orphans) > 5 else "")
    raise ValueError(
        f"{folder}: {len(orphans)} file(s) without an image in {image_dir}: {listed}. "
        f"Extract the release's images of this split into {image_dir} again; or, to "
        f"build without these images, remove these files.")


def _log_fixation_counts(split: str, counts: FixationCounts, dropped_in: list[str]) -> None:
  """Logs a split's fixation counts; warns of dropped fixations and of 0-based files."""
  logging.info("SALICON %s fixations: %s", split, counts.as_dict())
  if dropped_in:
    logging.warning(
        "SALICON %s: dropped %d fixation(s) more than %d px outside their image and %d "
        "with NaN / inf coordinates, in %d file(s): %s%s", split, counts.outside,
        BORDER_TOLERANCE, counts.non_finite, len(dropped_in), ", ".join(dropped_in[:5]),
        " ..." if len(dropped_in) > 5 else "")
  if counts.at_zero and not counts.at_far_edge:
    logging.warning(
        "SALICON %s: %d fixation(s) have a coordinate of 0 and none reaches x = W or "
        "y = H: the .mat files look 0-based, but SALICON's are 1-based ([x, y] from 1), "
        "so every fixation would sit one pixel up and left of where it was recorded. "
        "Use the release's own .mat files.", split, counts.at_zero)


# --------------------------------------------------------------------------
# Locating the release
# --------------------------------------------------------------------------


def _find_folder(root: epath.Path, config_name: str, kind: str, folder: str) -> epath.Path | None:
  """Returns ``root/<config>/<kind>/<folder>`` or ``root/<kind>/<folder>``, whichever exists."""
  for base in (root / config_name, root):
    candidate = base / kind / folder
    if candidate.is_dir():
      return candidate
  return None


def _missing_folder_message(root: epath.Path, config_name: str, kind: str, folder: str) -> str:
  """Names the folders that were looked for."""
  return (f"SALICON folder '{kind}/{folder}' not found: looked for "
          f"{root / config_name / kind / folder} and {root / kind / folder}.\n"
          f"{MANUAL_INSTRUCTIONS}")


# --------------------------------------------------------------------------
# Images and maps
# --------------------------------------------------------------------------


def read_image(path: epath.Path) -> tuple[Any, tuple[int, int]]:
  """Checks an image file and returns what to store plus its ``(H, W)``.

  A plain RGB or grey-scale JPEG is stored as its original bytes (the path);
  other files (CMYK JPEG, 16-bit PNG, other formats) are decoded and
  converted to an RGB array by :func:`attn_contrastive.data.images.to_rgb`
  (16-bit samples scaled, alpha dropped), which the feature encodes as JPEG.
  Raises ValueError naming the file when it cannot be decoded (truncated
  files included: the whole image is decoded here).
  """
  data = epath.Path(path).read_bytes()
  try:
    with PILImage.open(io.BytesIO(data)) as img:
      img.load()
      size = (img.height, img.width)
      if img.format == "JPEG" and img.mode in ("RGB", "L"):
        return data, size
      return images_lib.to_rgb(img, str(path)), size
  except images_lib.BadImageError as err:
    raise ValueError(str(err)) from err
  except (OSError, ValueError, SyntaxError) as err:
    raise ValueError(f"{path}: cannot decode image ({err})") from err


def read_saliency_map(path: epath.Path, shape: tuple[int, int]) -> Any:
  """Reads a saliency map, checks its size, returns what to store.

  An 8-bit single-channel PNG is stored as its original bytes; colour maps
  become grey, 16-bit maps are scaled to 8 bits, and the result is stored
  as a ``[H, W, 1]`` uint8 array. Raises ValueError naming the file when it
  cannot be decoded, has an unsupported type, or is not ``shape`` in size.
  """
  data = epath.Path(path).read_bytes()
  decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if decoded is None:
    raise ValueError(f"{path}: cannot decode saliency map")
  arr = decoded
  if arr.ndim == 3:
    if arr.shape[2] == 1:
      arr = arr[..., 0]
    elif arr.shape[2] == 3:
      arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    elif arr.shape[2] == 4:
      arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2GRAY)
    else:
      raise ValueError(f"{path}: saliency map has {arr.shape[2]} channels")
  if arr.dtype == np.uint16:
    arr = np.round(arr / 257.0).astype(np.uint8)
  elif arr.dtype != np.uint8:
    raise ValueError(f"{path}: saliency map has unsupported dtype {arr.dtype}")
  if arr.shape != tuple(shape):
    raise ValueError(f"{path}: saliency map is {arr.shape[0]} x {arr.shape[1]}, expected "
                     f"{shape[0]} x {shape[1]} (the image's resolution)")
  if decoded.ndim == 2 and decoded.dtype == np.uint8 and data.startswith(_PNG_SIGNATURE):
    return data
  return arr[..., None]


# --------------------------------------------------------------------------
# Fixation files
# --------------------------------------------------------------------------


#: Fixations at most this many pixels outside the image are clipped onto its
#: border: mouse-tracked positions pile up on and just past the border (the
#: cursor stops at the edge of the displayed image, and 1-based rounding puts
#: it at 0 or W + 1). A position farther out is not on the image; clipping it
#: would put a fixation on the border that NSS and the AUCs score, so it is
#: dropped.
BORDER_TOLERANCE = 2


@dataclasses.dataclass
class FixationCounts:
  """What converting a file's (or a split's) fixations did.

  Attributes:
    kept: fixations stored (``clipped`` included).
    clipped: at most :data:`BORDER_TOLERANCE` px outside, moved onto the border.
    outside: farther outside the image, dropped.
    non_finite: a NaN or inf coordinate, dropped (a lost sample carries no
      position; the file's other fixations are good).
    at_zero: a coordinate that rounds to 0 (one pixel outside in 1-based
      coordinates, in range in 0-based ones).
    at_far_edge: ``x`` rounding to W or ``y`` to H (in range only in 1-based
      coordinates). A split with ``at_zero`` and no ``at_far_edge`` looks
      0-based.
  """

  kept: int = 0
  clipped: int = 0
  outside: int = 0
  non_finite: int = 0
  at_zero: int = 0
  at_far_edge: int = 0

  def __iadd__(self, other: FixationCounts) -> FixationCounts:
    for field in dataclasses.fields(self):
      setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
    return self

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FixationRecord:
  """The content of one SALICON ``.mat`` file, converted.

  Attributes:
    resolution: ``(H, W)`` from the file's ``resolution`` key.
    fixations: int32 ``[N, 2]`` 0-based ``(row, col)``, inside the image.
    observer: int32 ``[N]`` observer index (position in ``gaze``) per fixation.
    counts: what the conversion clipped, dropped and saw (:class:`FixationCounts`).
  """

  resolution: tuple[int, int]
  fixations: np.ndarray
  observer: np.ndarray
  counts: FixationCounts = dataclasses.field(default_factory=FixationCounts)

  @property
  def n_clipped(self) -> int:
    """How many fixations were moved into the image by clipping."""
    return self.counts.clipped


def read_fixation_file(path: epath.Path, expected_stem: str | None = None) -> FixationRecord:
  """Reads a SALICON ``.mat`` file: ``resolution`` and the observers' ``fixations``.

  Handles scipy's struct representations (a struct array, a single squeezed
  struct for one observer, record arrays) and squeezed fixation arrays (an
  observer with one fixation gives a length-2 vector, one with none an
  empty array). With ``expected_stem``, an ``image`` entry that names a
  different COCO image is an error. Raises ValueError naming the file for
  an unreadable file, a missing key, a bad resolution or malformed (not
  numeric, not ``[M, 2]``) fixations. Fixations outside the image or with a
  NaN / inf coordinate are clipped or dropped, and counted (see
  :func:`_convert_fixations`).
  """
  try:
    with epath.Path(path).open("rb") as f:
      mat = scipy.io.loadmat(f, squeeze_me=True, struct_as_record=False)
  except Exception as err:  # scipy raises several types for corrupt files.
    raise ValueError(f"{path}: not a readable MATLAB .mat file ({err})") from err
  for key in ("resolution", "gaze"):
    if key not in mat:
      raise ValueError(
          f"{path}: missing key '{key}' (keys: {sorted(k for k in mat if not k.startswith('__'))})")
  if expected_stem is not None and "image" in mat:
    name = str(np.asarray(mat["image"]).squeeze())
    name_stem = name.rsplit(".", 1)[0] if name.lower().endswith(_IMAGE_SUFFIXES) else name
    if name_stem.startswith("COCO_") and name_stem != expected_stem:
      raise ValueError(f"{path}: file is for image '{name}', expected '{expected_stem}'")
  height, width = _parse_resolution(mat["resolution"], path)

  rows, cols, observers = [], [], []
  counts = FixationCounts()
  for index, entry in enumerate(_gaze_entries(mat["gaze"], path)):
    xy = _as_xy(_struct_field(entry, "fixations", path, index), path, index)
    row, col = _convert_fixations(xy, height, width, counts)
    rows.append(row)
    cols.append(col)
    observers.append(np.full(len(row), index, np.int32))
  if rows:
    fixations = np.stack([np.concatenate(rows), np.concatenate(cols)], axis=1).astype(np.int32)
    observer = np.concatenate(observers)
  else:
    fixations, observer = np.zeros((0, 2), np.int32), np.zeros((0,), np.int32)
  return FixationRecord((height, width), fixations, observer, counts)


def _convert_fixations(xy: np.ndarray, height: int, width: int,
                       counts: FixationCounts) -> tuple[np.ndarray, np.ndarray]:
  """1-based ``[x, y]`` -> 0-based ``(row, col)`` inside the image; updates ``counts``.

  Rows with a NaN / inf coordinate and positions more than
  :data:`BORDER_TOLERANCE` px outside are dropped; the rest are clipped.
  """
  finite = np.all(np.isfinite(xy), axis=1)
  counts.non_finite += int(np.sum(~finite))
  x, y = np.round(xy[finite, 0]).astype(np.int64), np.round(xy[finite, 1]).astype(np.int64)
  counts.at_zero += int(np.sum((x == 0) | (y == 0)))
  counts.at_far_edge += int(np.sum((x == width) | (y == height)))
  col, row = x - 1, y - 1
  beyond = np.maximum(np.maximum(-row, row - (height - 1)), np.maximum(-col, col - (width - 1)))
  near = beyond <= BORDER_TOLERANCE
  counts.outside += int(np.sum(~near))
  counts.clipped += int(np.sum(near & (beyond > 0)))
  counts.kept += int(np.sum(near))
  return np.clip(row[near], 0, height - 1), np.clip(col[near], 0, width - 1)


def _parse_resolution(value: Any, path: epath.Path) -> tuple[int, int]:
  """Returns ``(H, W)`` from a ``resolution`` entry ``[H W]``."""
  try:
    res = np.asarray(value, dtype=np.float64).ravel()
  except (TypeError, ValueError) as err:
    raise ValueError(f"{path}: 'resolution' is not numeric ({value!r})") from err
  if res.size != 2 or not np.all(np.isfinite(res)) or np.any(res < 1) or np.any(
      res != np.round(res)):
    raise ValueError(
        f"{path}: 'resolution' must be two positive integers [H W], got {res.tolist()}")
  return int(res[0]), int(res[1])


def _gaze_entries(gaze: Any, path: epath.Path) -> list[Any]:
  """The per-observer entries of ``gaze`` as a list.

  ``gaze`` may be a ``mat_struct`` (one observer, squeezed), an object array
  of them, a record array (``struct_as_record=True``), or empty.
  """
  if isinstance(gaze, scipy.io.matlab.mat_struct):
    return [gaze]
  if isinstance(gaze, np.void) and gaze.dtype.names:
    return [gaze]
  if isinstance(gaze, np.ndarray):
    if gaze.size == 0:
      return []
    if gaze.dtype.names:
      return list(gaze.ravel())
    if gaze.dtype == object:
      entries = list(gaze.ravel())
      if all(
          isinstance(e, scipy.io.matlab.mat_struct) or (isinstance(e, np.void) and e.dtype.names)
          for e in entries):
        return entries
  raise ValueError(f"{path}: 'gaze' is not a struct array (got {type(gaze).__name__})")


def _struct_field(entry: Any, name: str, path: epath.Path, index: int) -> Any:
  """Field ``name`` of one gaze entry (``mat_struct`` or record)."""
  if isinstance(entry, scipy.io.matlab.mat_struct):
    if name in getattr(entry, "_fieldnames", []):
      return getattr(entry, name)
  elif entry.dtype.names and name in entry.dtype.names:
    return entry[name]
  raise ValueError(f"{path}: gaze entry {index} has no field '{name}'")


def _as_xy(value: Any, path: epath.Path, index: int) -> np.ndarray:
  """Returns an observer's fixations as a float ``[M, 2]`` array of ``[x, y]`` (NaN / inf
  kept: the caller drops and counts them)."""
  arr = np.asarray(value)
  while arr.dtype == object and arr.size == 1:  # Unwrap cells / record nesting.
    arr = np.asarray(arr.item())
  if arr.size == 0:
    return np.zeros((0, 2))
  try:
    arr = arr.astype(np.float64)
  except (TypeError, ValueError) as err:
    raise ValueError(f"{path}: fixations of observer {index} are not numeric") from err
  if arr.ndim == 1 and arr.size == 2:  # A single fixation, squeezed.
    arr = arr.reshape(1, 2)
  if arr.ndim != 2 or arr.shape[1] != 2:
    raise ValueError(
        f"{path}: fixations of observer {index} have shape {arr.shape}, expected (M, 2)")
  return arr
