"""One path layer for every file the project reads or writes, local or remote.

Workdirs, checkpoints, ``config.json`` and ``results.json``, attention maps,
feature caches and reports may live on a local disk or in a bucket
(``gs://bucket/dir``, or any other scheme that :mod:`etils.epath` knows).
Every read and write goes through these functions, which hand the path to
``etils.epath``, the layer that tfds and orbax use too, so that a remote path
is never mistaken for a local folder (``os.path.abspath("gs://b/x")`` is
``<cwd>/gs:/b/x``). ``os.path.join``, ``dirname`` and ``basename`` are safe on
URIs; ``abspath``, ``realpath`` and ``normpath`` are not: use :func:`resolve`.

Local paths behave as they always did: :func:`resolve` makes them absolute
as ``os.path.abspath`` does, and an atomic write is a temporary file renamed
into place with ``os.replace``, so a killed process leaves the old file or
the new one, never half of one. A remote file is written in one upload to its
final name instead: on GCS an object appears whole when its upload completes,
or not at all, which is the same guarantee, whereas epath's ``rename`` there
is a copy then a delete (TensorFlow's GCS filesystem; gcsfs first tries the
server-side move, which only buckets with a hierarchical namespace accept), a
second upload's worth of traffic, and a kill between the two leaves both names.

Backends for ``gs://``: epath uses TensorFlow's GCS filesystem (TensorFlow is
a dependency), or fsspec's gcsfs when ``EPATH_USE_TF=false`` (``pip install
gcsfs``); orbax writes a checkpoint's arrays with tensorstore's GCS driver and
its metadata through epath. ``.npz`` files on a remote path are read and
written whole through an in-memory buffer (the zip format seeks back and forth).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from typing import IO, Any, Iterator, Union

import numpy as np
from etils import epath

PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
  """Whether ``path`` is a URI (``gs://…``) rather than a local path."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> str:
  """``path`` made absolute: a local one as ``os.path.abspath`` does, a URI as it is."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def real(path: PathLike) -> str:
  """``path`` with local symbolic links resolved (``os.path.realpath``); a URI as it is."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.realpath(path)


def exists(path: PathLike) -> bool:
  """Whether a file or folder is at ``path``."""
  return epath.Path(path).exists()


def isdir(path: PathLike) -> bool:
  """Whether ``path`` is a folder; in a bucket, whether any object lies under it."""
  return epath.Path(path).is_dir()


def listdir(path: PathLike) -> list[str]:
  """The names in a folder (in a bucket: the next level of object names under it)."""
  return [p.name for p in epath.Path(path).iterdir()]


def makedirs(path: PathLike) -> None:
  """Creates a local folder and its parents (existing ones are fine).

  A no-op for a URI: a bucket has no folders (an object's name makes its
  prefix), and creating one would create a bucket that does not exist.
  """
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def walk(root: PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
  """``os.walk`` (top down, so ``dirs`` can be pruned in place) for any path."""
  if not is_remote(root):
    yield from os.walk(root)
    return
  scheme = os.fspath(root).partition("://")[0]
  for folder, dirs, files in epath.Path(root).walk():
    folder = os.fspath(folder)
    if not is_remote(folder):  # fsspec names the folders without their scheme
      folder = f"{scheme}://{folder.lstrip('/')}"
    yield folder, dirs, files


def glob(folder: PathLike, pattern: str) -> list[str]:
  """The paths in ``folder`` whose names match ``pattern`` (no ``**``)."""
  return sorted(os.fspath(p) for p in epath.Path(folder).glob(pattern))


def mtime(path: PathLike) -> float:
  """The last modification time, in seconds since the epoch."""
  if not is_remote(path):
    return os.path.getmtime(path)
  return float(epath.Path(path).stat().mtime)


def read_text(path: PathLike) -> str:
  return epath.Path(path).read_text()


def read_bytes(path: PathLike) -> bytes:
  return epath.Path(path).read_bytes()


def read_json(path: PathLike, *, fix: str | None = None) -> Any:
  """The JSON file at ``path``. With ``fix`` (what rebuilds the file), a damaged one
  raises ValueError naming the file, the fault and ``fix``."""
  if fix is None:
    return json.loads(read_text(path))
  try:
    return json.loads(read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}): it was damaged after it was "
                     f"written. {fix}") from None


def write_text(path: PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` in place (not atomic on a local disk)."""
  epath.Path(path).write_text(text)


def write_atomic(path: PathLike, data: str | bytes) -> None:
  """Writes ``data`` so that a reader sees the old file or the new one, never half.

  Local: a temporary file beside ``path`` (named after this process), then
  ``os.replace``. Remote: one upload to ``path`` itself (see the module's
  docstring).
  """
  if is_remote(path):
    if isinstance(data, bytes):
      epath.Path(path).write_bytes(data)
    else:
      epath.Path(path).write_text(data)
    return
  with _replacing(path, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)


@contextlib.contextmanager
def _replacing(path: PathLike, mode: str) -> Iterator[IO]:
  """A local file to write, named ``<path>.tmp<pid>`` until the block ends, then
  renamed to ``path`` (``os.replace``); a kill leaves the temporary file, which
  :func:`remove_temporaries` clears."""
  tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
  with open(tmp, mode) as f:
    yield f
  os.replace(tmp, path)


def write_json(path: PathLike, obj: Any, *, sort_keys: bool = True) -> None:
  """Writes ``obj`` as indented JSON, atomically (:func:`write_atomic`)."""
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys))


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
  """Every array of an ``.npz`` file, read whole (a remote one in one download)."""
  source = path if not is_remote(path) else io.BytesIO(read_bytes(path))
  with np.load(source) as z:
    return {key: z[key] for key in z.files}


def save_npz_atomic(path: PathLike, **arrays: np.ndarray) -> None:
  """Writes an uncompressed ``.npz`` (``np.savez``) atomically, creating its folder.

  Local: written to a temporary file, then renamed; remote: built in memory
  and uploaded in one piece. Either way each array lies contiguous in the file.
  """
  if is_remote(path):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())
    return
  makedirs(os.path.dirname(os.fspath(path)) or ".")
  with _replacing(path, "wb") as f:
    np.savez(f, **arrays)


def remove_temporaries(path: PathLike) -> list[str]:
  """Removes the temporary files that killed atomic writes of ``path`` left beside it.

  A process killed between creating ``<path>.tmp<pid>`` and renaming it leaves
  that file behind (never ``path`` itself half written). A job that restarts
  calls this before writing ``path`` again, so that no temporary file
  outlives the job. Returns the removed paths; none on a remote path, where a
  write is one upload and leaves nothing behind. Only the job that owns
  ``path`` may call it: another live writer's temporary file would go too.
  """
  if is_remote(path):
    return []
  folder, name = os.path.split(os.fspath(path))
  folder = folder or "."
  if not os.path.isdir(folder):
    return []
  removed = []
  for other in sorted(os.listdir(folder)):
    if other.startswith(f"{name}.tmp"):
      try:
        os.remove(os.path.join(folder, other))
        removed.append(os.path.join(folder, other))
      except FileNotFoundError:  # another process of the job removed it first
        pass
  return removed
