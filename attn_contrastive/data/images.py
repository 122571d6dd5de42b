"""Decoding a dataset's stored images, and what happens to those that cannot be.

Every image a task reads comes out of a tfds record's ``image`` feature, which
holds the file's bytes as the dataset was built: ``imagenet2012`` and the
released ImageNet-C keep each JPEG as downloaded, so a truncated or corrupt
file, a grey-scale or CMYK JPEG or a PNG behind a ``.JPEG`` name reaches the
reader unchanged. tfds's own NumPy decoder would hand such files on wrongly
(16-bit PNGs wrapped modulo 256, RGBA with four channels, a failed decode as
``None`` deep in the pipeline), so :func:`decode` replaces it:

* every decodable image becomes uint8 ``H x W x 3`` RGB: grey-scale (``1``,
  ``L``, ``LA``) is repeated over the three channels; alpha (``RGBA``,
  ``LA``, ``PA``, palette transparency) is dropped, as Pillow's
  ``convert("RGB")`` and torchvision's image loader do, so the pixels are the
  colour values the file stores; CMYK becomes RGB by Pillow's conversion
  (``(255 - C)(255 - K) / 255``, with Adobe's inverted CMYK undone on
  decode); 16-bit samples keep their high byte (``>> 8``: 65535 -> 255, a
  linear rescaling, where Pillow's ``convert`` of ``I;16`` clips every value
  above 255 to white).
* an 8-bit baseline (or extended sequential) JPEG of one or three
  components, the bulk of ImageNet, is decoded by libjpeg-turbo directly
  (``simplejpeg``: the same library, integer IDCT and fancy upsampling as
  Pillow, so the pixels are Pillow's, without Pillow's per-image overhead);
  everything else (progressive, CMYK, 12-bit, PNG, ...) and any JPEG that
  libjpeg-turbo reports a problem with goes through Pillow, which decides as
  it always has.
* a file that cannot be decoded (corrupt, truncated, not an image, an
  unsupported mode such as floating point) raises :class:`BadImageError`
  naming the record's ``file_name``. The whole image is decoded, so a
  truncated file is caught rather than returned with grey rows (unless some
  code sets Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES``). EXIF orientation
  is not applied, as in tfds and the reference ImageNet pipelines.

A split opened by :func:`attn_contrastive.data.sources.open_split` is a
:class:`SkippingSource`: a record whose image cannot be decoded is replaced by
the next record that can (the whole record, label and joined attention map
included), logged with its file name and counted in a :class:`BadImageLog`;
past ``data.max_bad_images`` distinct bad records the read stops with
:class:`TooManyBadImagesError`, naming the files and the key to raise.
Replacing instead of dropping keeps every index valid, so a training batch
stays full, the shuffled stream and its checkpointed position are unchanged
(resume stays exact: which records are bad is a property of the bytes), the
global batch is the same for any number of processes, and evaluations keep
their split size, shard boundaries and every image with its own label (the
neighbour then counts twice in a score: at most ``max_bad_images / N`` of
it). The label task instead writes an all-zero map for a bad image
(:func:`record_or_blank`), so its map dataset has exactly one map per key.
Counts and the limit are per process and split (per grain worker process
with ``input.num_workers > 0``). A training run's log also records its bad
records in a folder of the workdir (:attr:`BadImageLog.record_dir`), one
file per process and worker, so that its ``results.json`` counts them over
all of them (:func:`recorded`).
"""
from __future__ import annotations

import io
import os
import socket
import threading
from typing import Any

import numpy as np
from absl import logging
from PIL import Image as PILImage

try:
  import simplejpeg
except ImportError:  # every image then goes through Pillow
  simplejpeg = None

#: The default of ``data.max_bad_images``: undecodable records a split may skip.
DEFAULT_MAX_BAD_IMAGES = 100

#: How many file names an error message lists before summarising the rest.
_LISTED = 10

_ALPHA_MODES = ("RGBA", "RGBa", "RGBX", "PA")
_GREY_ALPHA_MODES = ("LA", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class BadImageError(ValueError):
  """A record's image cannot be decoded; names the record and the reason."""

  def __init__(self, name: str, reason: str):
    super().__init__(f"{name}: cannot decode image ({reason})")
    self.name, self.reason = name, reason

  def __reduce__(self):
    """Pickles by name and reason (grain's worker processes send errors back)."""
    return type(self), (self.name, self.reason)


class TooManyBadImagesError(RuntimeError):
  """More records of a split than ``data.max_bad_images`` could not be decoded."""


# ---------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
  return np.repeat(grey[..., None], 3, axis=-1)


def _high_byte(samples: np.ndarray) -> np.ndarray:
  """16-bit samples as 8-bit: the high byte (a linear map, never a clip)."""
  return (samples.astype(np.uint32) >> 8).astype(np.uint8)


def to_rgb(img: PILImage.Image, name: str = "image") -> np.ndarray:
  """A decoded Pillow image as uint8 ``H x W x 3`` RGB (see the module docstring).

  ``I`` (32-bit integer, how some decoders give 16-bit grey) is read as 16-bit
  when its values fit; floating-point (``F``) and other modes without an
  agreed 8-bit range raise :class:`BadImageError`.
  """
  mode = img.mode
  if mode == "RGB":
    return np.asarray(img, np.uint8)
  if mode == "L":
    return _grey_to_rgb(np.asarray(img, np.uint8))
  if mode in _GREY_ALPHA_MODES:
    return _grey_to_rgb(np.asarray(img.getchannel(0), np.uint8))
  if mode in _SIXTEEN_BIT_MODES:
    return _grey_to_rgb(_high_byte(np.asarray(img)))
  if mode == "I":
    samples = np.asarray(img)
    if samples.size and (samples.min() < 0 or samples.max() > 65535):
      raise BadImageError(name, "32-bit integer samples outside the 16-bit range")
    return _grey_to_rgb(_high_byte(samples))
  if mode in _ALPHA_MODES or mode in ("1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
    return np.asarray(img.convert("RGB"), np.uint8)
  raise BadImageError(name, f"unsupported image mode {mode!r}")


#: Start-of-frame markers: baseline and extended sequential (Huffman) JPEG.
_SEQUENTIAL_SOF = (0xC0, 0xC1)
#: Every other start-of-frame marker (progressive, lossless, arithmetic coding).
_OTHER_SOF = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def is_sequential_jpeg(data: bytes) -> bool:
  """Whether ``data`` is a sequential 8-bit JPEG of 1 or 3 components (grey or
  colour): the files libjpeg-turbo decodes to what Pillow gives, read from the
  markers before the first scan."""
  if data[:2] != b"\xff\xd8":
    return False
  pos = 2
  while pos + 4 <= len(data):
    if data[pos] != 0xFF:
      return False
    marker = data[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    if marker in _SEQUENTIAL_SOF:
      return pos + 10 <= len(data) and data[pos + 4] == 8 and data[pos + 9] in (1, 3)
    if marker in _OTHER_SOF or marker == 0xDA:
      return False
    pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
  return False


def _decode_turbo(data: bytes) -> np.ndarray:
  """A sequential JPEG by libjpeg-turbo, strictly: any warning (a truncated
  file, corrupt data) raises ``ValueError``."""
  grey = simplejpeg.decode_jpeg_header(data)[2] == "Gray"
  pixels = simplejpeg.decode_jpeg(data, "GRAY" if grey else "RGB", strict=True)
  return _grey_to_rgb(pixels[..., 0]) if grey else pixels


def decode(data: bytes, name: str = "image") -> np.ndarray:
  """An encoded image (JPEG, PNG, any format Pillow reads) as uint8 RGB.

  Decodes the whole file, so a truncated one is caught here rather than
  returned with its missing rows filled in. Raises :class:`BadImageError`
  naming ``name`` for anything that cannot be decoded. Sequential 8-bit
  JPEGs take libjpeg-turbo's direct path (see the module docstring).
  """
  if simplejpeg is not None and is_sequential_jpeg(data):
    try:
      return _decode_turbo(data)
    except ValueError:
      pass  # Pillow judges the file, as for every other format
  return decode_with_pillow(data, name)


def decode_with_pillow(data: bytes, name: str = "image") -> np.ndarray:
  """:func:`decode` by Pillow alone, whatever the format."""
  try:
    with PILImage.open(io.BytesIO(data)) as img:
      img.load()
      return to_rgb(img, name)
  except BadImageError:
    raise
  except PILImage.UnidentifiedImageError as err:
    raise BadImageError(name, "not in an image format that Pillow can read") from err
  except Exception as err:  # pylint: disable=broad-except
    # Pillow raises OSError, SyntaxError, ValueError, struct.error,
    # DecompressionBombError... for damaged files: any of them is a bad image.
    raise BadImageError(name, f"{type(err).__name__}: {err}") from err


def record_name(record: dict[str, Any], index: int, dataset: str = "") -> str:
  """The record's ``file_name``, or ``'<dataset> record <index>'`` without one."""
  key = record.get("file_name") if isinstance(record, dict) else None
  if isinstance(key, np.ndarray):
    key = key.item()
  if isinstance(key, bytes):
    key = key.decode(errors="replace")
  if key:
    return str(key)
  return f"{dataset + ' ' if dataset else ''}record {index}"


# ---------------------------------------------------------------------------
# Sources.
# ---------------------------------------------------------------------------


class DataFileError(RuntimeError):
  """A dataset's stored file is truncated or damaged: the dataset must be prepared again."""


class DecodedSource:
  """``source[i]`` with its ``image`` bytes decoded by :func:`decode`.

  ``source`` is a tfds data source opened with the image left encoded
  (``decoders={'image': tfds.decode.SkipDecoding()}``); an image that is
  already an array is passed on as it is. An undecodable image raises
  :class:`BadImageError` naming the record's file name. A record the
  storage cannot give back whole raises :class:`DataFileError`, which no
  record may stand in for: a chunk that fails its checksum (a flipped bit),
  or a record with no feature at all (tfds's array_record reader returns one
  for every record past the end of a file cut short). ``locate(index)``
  gives the file that holds record ``index`` and what rebuilds it.
  """

  def __init__(self, source, dataset: str = "", locate=None):
    self.source, self.dataset, self.locate = source, dataset, locate

  def __len__(self) -> int:
    return len(self.source)

  def _damaged(self, index: int, reason: str) -> DataFileError:
    where, fix = (self.locate(index) if self.locate
                  else (f"record {index} of {self.dataset}", "prepare it again"))
    return DataFileError(f"{where} cannot be read ({reason}): the file is truncated or "
                         f"damaged; {fix}")

  def __getitem__(self, index: int) -> dict[str, Any]:
    try:
      record = dict(self.source[index])
    except RuntimeError as e:  # array_record (riegeli): a chunk whose hash does not match
      raise self._damaged(index, str(e)) from None
    if record and all(v is None for v in record.values()):
      raise self._damaged(index, "an empty record")
    image = record.get("image")
    if isinstance(image, (bytes, np.bytes_)):
      record["image"] = decode(bytes(image), record_name(record, index, self.dataset))
    return record


class BadImageLog:
  """The distinct bad records a process met in one split, with a limit.

  Each is logged (a warning with its file name and the reason) the first time
  it is met and counted once, however many epochs meet it again. Meeting one
  more than ``limit`` raises :class:`TooManyBadImagesError`. Counts are per
  process (per grain worker process with ``input.num_workers > 0``).
  """

  def __init__(self, dataset: str, limit: int = DEFAULT_MAX_BAD_IMAGES):
    self.dataset, self.limit = dataset, int(limit)
    self.bad: dict[int, tuple[str, str]] = {}
    #: Where each new bad record is also written (:func:`recorded` reads them): the
    #: folder follows the log into grain's worker processes.
    self.record_dir: str | None = None
    self._lock = threading.Lock()

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    del state["_lock"]
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  @property
  def count(self) -> int:
    return len(self.bad)

  def is_bad(self, index: int) -> bool:
    return index in self.bad

  def add(self, index: int, err: BadImageError) -> None:
    """Counts record ``index`` as bad; raises once past the limit."""
    with self._lock:
      if index in self.bad:
        return
      self.bad[index] = (err.name, err.reason)
      count = len(self.bad)
      if self.record_dir:
        self._record()
    logging.warning("%s: record %d, %s, skipped: cannot decode its image (%s) "
                    "[%d bad so far, data.max_bad_images=%d]", self.dataset, index,
                    err.name, err.reason, count, self.limit)
    if count > self.limit:
      raise TooManyBadImagesError(self.message())

  def _record(self) -> None:
    """Writes this process's bad records of the split to :attr:`record_dir`."""
    from attn_contrastive import paths  # pylint: disable=g-import-not-at-top
    name = f"{self.dataset.replace('/', '__')}.{socket.gethostname()}.{os.getpid()}.json"
    paths.makedirs(self.record_dir)
    paths.write_json(os.path.join(self.record_dir, name), {
        "split": self.dataset, "bad": {str(i): n for i, (n, _) in self.bad.items()}})

  def message(self) -> str:
    """What the error past the limit says: the count, the files, the key to raise."""
    items = sorted(self.bad.items())
    names = [f"{name} ({reason})" for _, (name, reason) in items[:_LISTED]]
    more = f"\n  ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return (f"{self.dataset}: {len(items)} records whose image cannot be decoded, more "
            f"than data.max_bad_images={self.limit}:\n  " + "\n  ".join(names) + more +
            f"\nRepair or remove these files and prepare the dataset again, or skip "
            f"more with --config.data.max_bad_images={max(2 * len(items), 1)}.")


class SkippingSource:
  """``source[i]``, or for a record that cannot be decoded the next one that can.

  The next decodable record in index order (wrapping past the end) stands in
  for a bad one; bad records are counted in ``log`` (a :class:`BadImageLog`),
  which stops the read past its limit. The replacement depends only on which
  records are bad, so every index maps to the same record in every epoch,
  process and resumed run.
  """

  def __init__(self, source, log: BadImageLog):
    self.source, self.log = source, log

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    n = len(self.source)
    if not -n <= index < n:
      raise IndexError(index)
    index %= n
    for step in range(n):
      j = (index + step) % n
      if self.log.is_bad(j):
        continue
      try:
        return self.source[j]
      except BadImageError as err:
        self.log.add(j, err)
    raise TooManyBadImagesError(f"{self.log.dataset}: no record of the split has an image "
                                f"that can be decoded\n{self.log.message()}")

  def record_or_blank(self, index: int) -> tuple[dict[str, Any], bool]:
    """Record ``index`` itself, and whether its image was bad (see :func:`record_or_blank`)."""
    try:
      return self.source[index], False
    except BadImageError as err:
      self.log.add(int(index), err)
      return {"file_name": err.name, "image": np.zeros((1, 1, 3), np.uint8)}, True

  def joined(self, wrap) -> SkippingSource:
    """``wrap(the unskipped source)`` under the same skipping and the same log.

    A join (images + attention maps) goes *below* the skipping, so that a bad
    image's record is replaced together with its map and keys keep matching.
    """
    return SkippingSource(wrap(self.source), self.log)


def record_or_blank(source, index: int) -> tuple[dict[str, Any], bool]:
  """``(record, False)``, or for an undecodable image ``(stand-in, True)``.

  The stand-in has the record's ``file_name`` and a black 1 x 1 image; the
  bad record is counted against the source's limit. For tasks that must keep
  one output per record, in order (the label task). A source that does not
  skip (a plain sequence) returns its record.
  """
  if isinstance(source, SkippingSource):
    return source.record_or_blank(index)
  return source[index], False


def join_below_skipping(source, wrap):
  """``wrap(source)``, put below ``source``'s skipping if it skips (see
  :meth:`SkippingSource.joined`)."""
  if isinstance(source, SkippingSource):
    return source.joined(wrap)
  return wrap(source)


def recorded(record_dir: str, listed: int = 20) -> dict[str, dict[str, Any]]:
  """``{split: {"count", "files"}}`` of the bad records written to ``record_dir`` by
  every process and worker (:attr:`BadImageLog.record_dir`): distinct records
  counted once, the first ``listed`` file names in index order."""
  from attn_contrastive import paths  # pylint: disable=g-import-not-at-top
  merged: dict[str, dict[str, str]] = {}
  for path in paths.glob(record_dir, "*.json") if paths.exists(record_dir) else []:
    part = paths.read_json(path)
    merged.setdefault(part["split"], {}).update(part["bad"])
  return {split: {"count": len(bad), "files": [bad[i] for i in sorted(bad, key=int)][:listed]}
          for split, bad in sorted(merged.items())}
