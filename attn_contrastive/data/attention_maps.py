"""The teacher's attention-map dataset: reading it and joining it to images.

Layout of a map dataset folder (written by :mod:`attn_contrastive.tasks.label`):

* ``metadata.json``: teacher checkpoint and model config, source dataset,
  split and number of examples, map size, number of shards.
* ``shard-XXXXX-of-YYYYY.npz``: ``maps`` (uint8 ``[n, H, W]``, each scaled so
  its maximum is 255) and ``keys`` (the source records' ``file_name``) for the
  contiguous index range ``shard_range(i)``; uncompressed, so that a local
  shard is read memory-mapped (a compressed one is still read, whole).

Maps are aligned index-by-index with the image source; the join checks each
record's key instead of trusting the order.
"""
from __future__ import annotations

import bisect
import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import mmap
import os
import struct
import tempfile
import threading
import zipfile
from typing import Any

import numpy as np
from etils import epath

from attn_contrastive import paths
from attn_contrastive.data import images as images_lib

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
  if not paths.exists(path):
    raise FileNotFoundError(
        f"no attention-map dataset at {maps_dir} ({METADATA} missing); make it with\n"
        "  python -m attn_contrastive.main --config=configs/label.py "
        f"--workdir={maps_dir} --config.teacher_checkpoint=TEACHER_WORKDIR")
  return paths.read_json(path)


class ShardError(ValueError):
  """A shard file that cannot be read: truncated, not a zip, or of the wrong shape."""


@dataclasses.dataclass(frozen=True)
class _Member:
  """Where one ``.npy`` member of a shard lies in the file.

  ``offset`` is the absolute position of the array's data, ``None`` when the
  member is compressed (its bytes are not the array's, so it cannot be mapped).
  """
  offset: int | None
  dtype: np.dtype
  shape: tuple[int, ...]
  fortran_order: bool

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


# A zip local file header: signature, 22 bytes, file name and extra field lengths.
_LOCAL_HEADER = struct.Struct("<4s22xHH")


def _member(f, zf: zipfile.ZipFile, name: str) -> _Member:
  """The layout of member ``name``: an uncompressed ``.npy`` is contiguous after
  its zip local header and its npy header, so its data sits at a known offset."""
  info = zf.getinfo(name)
  f.seek(info.header_offset)
  signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
  if signature != b"PK\x03\x04":
    raise zipfile.BadZipFile(f"no local header for {name}")
  with zf.open(info) as m:
    version = np.lib.format.read_magic(m)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read(m)
    npy_header = m.tell()
  stored = info.compress_type == zipfile.ZIP_STORED and not dtype.hasobject
  offset = (info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + npy_header
            if stored else None)
  return _Member(offset, dtype, tuple(shape), fortran_order)


def _mapped(path: epath.Path, layout: dict[str, _Member]) -> dict[str, np.ndarray]:
  """A local shard's arrays as read-only views of one memory map of its file.

  One ``mmap`` for both members (``np.memmap`` would open and map the file once per
  array, at several times the cost: a shuffled read opens a shard for nearly every
  map); the map lives as long as an array viewing it.
  """
  with open(os.fspath(path), "rb") as f:
    buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
  return {key: np.ndarray(m.shape, m.dtype, buffer=buffer, offset=m.offset,
                          order="F" if m.fortran_order else "C")
          for key, m in layout.items()}


def _rerun_hint(path: epath.Path) -> str:
  return (f"re-run the label task with the same flags (--workdir={path.parent}): it keeps "
          "the whole shards and redoes missing and broken ones")


def inspect_shard(path: str | os.PathLike, num_maps: int,
                  map_hw: tuple[int, int] | None = None) -> dict[str, _Member]:
  """Where a shard's ``maps`` and ``keys`` lie; refuses a broken shard.

  Reads only the zip directory and the two npy headers. Raises
  :class:`ShardError`, naming the file and the fix, for a file that is not a
  whole zip (a truncated copy loses the directory at its end), lacks a member,
  or does not hold ``num_maps`` maps (of ``map_hw``, if given) and keys.
  """
  path = epath.Path(path)
  try:
    with path.open("rb") as f, zipfile.ZipFile(f) as zf:
      layout = {key: _member(f, zf, f"{key}.npy") for key in ("maps", "keys")}
      size = f.seek(0, 2)
  except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError, struct.error) as e:
    raise ShardError(f"attention-map shard {path} cannot be read ({type(e).__name__}: "
                     f"{e}); it is truncated or damaged: {_rerun_hint(path)}") from e
  maps, keys = layout["maps"], layout["keys"]
  want = (num_maps, *map_hw) if map_hw else maps.shape
  if maps.shape[:1] != (num_maps,) or maps.shape != want or keys.shape != (num_maps,):
    raise ShardError(f"attention-map shard {path} holds maps {maps.shape} and keys "
                     f"{keys.shape}, not {num_maps} maps of {map_hw or 'any size'}: "
                     f"{_rerun_hint(path)}")
  if any(m.offset is not None and m.offset + m.nbytes > size for m in layout.values()):
    raise ShardError(f"attention-map shard {path} is truncated ({size} bytes): "
                     f"{_rerun_hint(path)}")
  return layout


def _same_checkpoint(a: str, b: str) -> bool:
  """Whether two spellings of a checkpoint path name the same folder."""
  def norm(p: str) -> str:
    return paths.resolve(os.path.expanduser(os.fspath(p))).rstrip("/")
  return norm(a) == norm(b)


def label_command(workdir: str, dataset: str, split: str, teacher: str = "TEACHER_WORKDIR"
                  ) -> str:
  """The command that makes maps of ``dataset``/``split`` with ``teacher``."""
  arg = ":imagenet" if dataset.startswith("imagenet") else ""
  return (f"python -m attn_contrastive.main --config=configs/label.py{arg} "
          f"--workdir={workdir} --config.teacher_checkpoint={teacher} "
          f"--config.data.name={dataset} --config.data.split={split}")


def check_metadata(metadata: dict[str, Any], maps_dir: str, *, dataset: str | None = None,
                   split: str | None = None, num_examples: int | None = None,
                   teacher: str | None = None) -> None:
  """Refuses maps made from another dataset, split, dataset version or teacher.

  ``num_examples`` is the image split's length: another count means that the
  maps were made from another version (or copy) of the dataset. ``teacher``
  (a checkpoint path; empty or None: any) must be the one that made the maps.
  """
  src = metadata["source"]
  made = metadata.get("teacher_checkpoint") or "TEACHER_WORKDIR"
  want_data, want_split = dataset or src["dataset"], split or src["split"]
  remake = ("make maps of it with\n  "
            + label_command("NEW_MAPS_DIR", want_data, want_split,
                            teacher or made) + "\nand set attention.maps_dir to NEW_MAPS_DIR")
  for field, want in (("dataset", dataset), ("split", split)):
    have = src[field]
    if want is not None and have != want:
      raise ValueError(f"attention maps in {maps_dir} were made from {field} "
                       f"{have!r}, not {want!r}; {remake}")
  if num_examples is not None and int(src["num_examples"]) != int(num_examples):
    raise ValueError(
        f"attention maps in {maps_dir} cover {src['num_examples']} examples of "
        f"{src['dataset']} {src['split']}, but the image split read now has {num_examples}: "
        f"they were made from another version or copy of the dataset (check data.data_dir); "
        f"{remake}")
  if teacher and not _same_checkpoint(metadata.get("teacher_checkpoint", ""), teacher):
    raise ValueError(
        f"attention maps in {maps_dir} were made by the teacher "
        f"{metadata.get('teacher_checkpoint') or '(unnamed)'}, but this run expects "
        f"attention.teacher_checkpoint={teacher}; point attention.maps_dir at that "
        f"teacher's maps, or {remake}")


#: Shards a source keeps open at once (per process: each grain worker has its own).
DEFAULT_OPEN_SHARDS = 8


def default_cache_dir(maps_dir: str, metadata: dict[str, Any]) -> str:
  """Where this machine keeps its copy of a remote map dataset: one folder per
  dataset (its path and metadata) under the temporary directory."""
  text = os.fspath(maps_dir) + json.dumps(metadata, sort_keys=True)
  digest = hashlib.sha1(text.encode()).hexdigest()[:16]
  return os.path.join(tempfile.gettempdir(), "attn_contrastive_maps", digest)


def _local_copy(path: epath.Path, cache_dir: str, layout: dict[str, _Member]) -> epath.Path:
  """Shard ``path`` copied into ``cache_dir``, unless a whole copy is there already.

  Written under a temporary name, then renamed, so that processes copying at
  once (several on one host) never see half a file.
  """
  local = epath.Path(cache_dir) / path.name
  if local.exists():
    try:
      if inspect_shard(local, layout["keys"].shape[0]) == layout:
        return local
    except ShardError:
      pass  # a damaged copy: made again below
  tmp = local.parent / f"{local.name}.tmp{os.getpid()}-{threading.get_ident()}"
  tmp.write_bytes(path.read_bytes())
  os.replace(tmp, local)
  return local


class AttentionMapSource:
  """Random access to the maps: ``source[i] = {'attention_map', 'file_name'}``.

  Memory is bounded: shards written uncompressed (the label task's ``np.savez``)
  are memory-mapped and only the maps read are paged in (the page cache is
  shared by every process of the host). Shards on a remote file system
  (``gs://``) are first copied to this machine's disk, once, into
  ``cache_dir`` (default :func:`default_cache_dir`; ImageNet's take 5.3 GB), as
  shuffled reads would otherwise fetch a whole shard per map. Compressed
  shards, or any shard with ``memory_map=False``, are read whole. Either way
  at most ``max_open_shards`` shards are held, least recently used first out.
  Every shard's zip directory is checked when the source is opened, so a
  missing or truncated shard is refused up front, with its name. Pickling
  (grain workers) carries the layout of the shards, never their maps.

  Refuses a dataset made from another source dataset, split, version
  (``num_examples``) or teacher than the ones named (see :func:`check_metadata`).
  """

  def __init__(self, maps_dir: str, dataset: str | None = None, split: str | None = None,
               *, num_examples: int | None = None, teacher: str | None = None,
               max_open_shards: int = DEFAULT_OPEN_SHARDS, memory_map: bool = True,
               cache_dir: str | None = None):
    if max_open_shards < 1:
      raise ValueError(f"max_open_shards must be at least 1, got {max_open_shards}")
    self.maps_dir = maps_dir
    self.metadata = read_metadata(maps_dir)
    check_metadata(self.metadata, maps_dir, dataset=dataset, split=split,
                   num_examples=num_examples, teacher=teacher)
    n, s = self.metadata["source"]["num_examples"], self.metadata["num_shards"]
    self._ranges = shard_ranges(n, s)
    self._starts = [a for a, _ in self._ranges]
    self._paths = [epath.Path(shard_path(maps_dir, i, s)) for i in range(s)]
    missing = [i for i, p in enumerate(self._paths) if not p.exists()]
    if missing:
      raise FileNotFoundError(f"attention maps in {maps_dir} are incomplete: shards "
                              f"{missing[:5]}{'...' if len(missing) > 5 else ''} missing; "
                              "rerun the label task with the same flags "
                              f"(--workdir={maps_dir}) to finish them")
    self.memory_map = bool(memory_map)
    self.cache_dir = None
    if self.memory_map and paths.is_remote(maps_dir):
      self.cache_dir = cache_dir or default_cache_dir(maps_dir, self.metadata)
      os.makedirs(self.cache_dir, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(min(32, s)) as pool:
      opened = list(pool.map(self._open_file, range(s)))
    self._paths = [path for path, _ in opened]
    self._layouts = [layout for _, layout in opened]
    self.max_open_shards = int(max_open_shards)
    self._open: collections.OrderedDict[int, dict[str, np.ndarray]] = collections.OrderedDict()
    self._lock = threading.Lock()

  def _open_file(self, index: int) -> tuple[epath.Path, dict[str, _Member]]:
    """Shard ``index``'s file to read (a local copy of a remote one) and its layout."""
    size = self.metadata.get("map_size")
    hw = (int(size), int(size)) if size else None
    start, stop = self._ranges[index]
    layout = inspect_shard(self._paths[index], stop - start, hw)
    if self.cache_dir is None:
      return self._paths[index], layout
    return _local_copy(self._paths[index], self.cache_dir, layout), layout

  def __len__(self) -> int:
    return int(self.metadata["source"]["num_examples"])

  def __getstate__(self) -> dict[str, Any]:
    """Everything but the open shards and the lock (a worker opens its own)."""
    state = self.__dict__.copy()
    state["_open"] = collections.OrderedDict()
    del state["_lock"]
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  @property
  def open_shards(self) -> list[int]:
    """The shards held now, least recently used first."""
    with self._lock:
      return list(self._open)

  def _load(self, index: int) -> dict[str, np.ndarray]:
    """Shard ``index``'s arrays: memory-mapped if it can be, else read whole."""
    path, layout = self._paths[index], self._layouts[index]
    if self.memory_map and all(m.offset is not None for m in layout.values()):
      return _mapped(path, layout)
    try:
      with np.load(io.BytesIO(path.read_bytes())) as z:  # one read, also remote
        return {"maps": z["maps"], "keys": z["keys"]}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
      raise ShardError(f"attention-map shard {path} cannot be read ({type(e).__name__}: "
                       f"{e}): {_rerun_hint(path)}") from e

  def _shard(self, index: int) -> dict[str, np.ndarray]:
    """Shard ``index``, opened if needed; evicts the least recently used past the bound."""
    with self._lock:
      if index in self._open:
        self._open.move_to_end(index)
        return self._open[index]
    shard = self._load(index)  # outside the lock: other threads keep reading
    with self._lock:
      self._open[index] = shard
      self._open.move_to_end(index)
      while len(self._open) > self.max_open_shards:
        self._open.popitem(last=False)
    return shard

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(i)
    s = bisect.bisect_right(self._starts, i) - 1
    shard = self._shard(s)
    j = i - self._ranges[s][0]
    # A copy (4 KB), so that a record never keeps a shard open.
    return {"attention_map": np.array(shard["maps"][j]),
            "file_name": key_str(shard["keys"][j])}


class JoinedSource:
  """Image records with ``attention_map`` added; checks ``file_name`` per record."""

  def __init__(self, images, maps, key: str = "file_name"):
    if len(images) != len(maps):
      raise ValueError(f"image source has {len(images)} records but the attention "
                       f"maps {len(maps)}: the maps were made from another split or "
                       "version of the dataset; make maps of this one with the label task "
                       "(configs/label.py)")
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
                        split: str | None = None, teacher: str | None = None):
  """Opens ``maps_dir`` (checked against ``dataset``/``split``, the image
  source's length and ``teacher``, if given) and joins it.

  The join goes below the image source's skipping of undecodable images
  (:func:`attn_contrastive.data.images.join_below_skipping`), so that a bad
  image's record is replaced together with its map and the keys keep matching.
  """
  maps = AttentionMapSource(maps_dir, dataset, split, num_examples=len(images), teacher=teacher)
  return images_lib.join_below_skipping(images, lambda inner: JoinedSource(inner, maps))


def with_config_maps(images, config, split: str, maps_dir: str):
  """:func:`with_attention_maps` for a run's ``config``: ``images`` (split ``split`` of
  ``config.data``) joined to the maps in ``maps_dir``, which must be of that dataset
  and split, and made by ``config.attention.teacher_checkpoint`` when it is set."""
  return with_attention_maps(images, maps_dir, dataset=config.data.name, split=split,
                             teacher=config.attention.get("teacher_checkpoint"))
