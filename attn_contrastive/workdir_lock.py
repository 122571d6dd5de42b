"""One writer per workdir: a run holds ``<workdir>/lock.json`` while it runs.

Two runs writing one workdir (a SLURM requeue that overlaps the old job, the
same command started twice, two hosts given the same workdir by mistake)
would interleave checkpoints, shards and results. A run therefore takes the
workdir's lock before it writes anything there, and a second run on a
workdir that a live run holds is refused with the holder's host, PID and
start time (:class:`WorkdirLocked`). The lock is a small JSON record
(:func:`record`) and a lease: the holder renews it every ``lease_s / 4``
seconds from a thread, and it ends with the run (:meth:`WorkdirLock.release`).

A lock left by a dead run is taken over: by a run on the same host when the
holder's process is gone (SIGKILL, a crash; a PID reused since is told apart
by the process's start time), and by any run once the lease has expired
without renewal (a lost host). Taking over is a compare-and-swap, so of two
runs that find the same stale lock only one gets it:

* on a local (or NFS) disk the swap is done under ``flock`` of the workdir
  itself, and the record is replaced atomically (``os.replace``);
* on ``gs://`` it is an upload conditioned on the object's generation
  (``ifGenerationMatch``: 0 to create, the generation read to replace or
  delete), through gcsfs, epath's backend for GCS; a lost race is the
  server's ``412 Precondition Failed``.

With several processes, process 0 holds the lock for the run (``main``).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator

from absl import logging

from attn_contrastive import paths

FILE = "lock.json"
#: Seconds a lock stays valid without renewal; the holder renews it every quarter.
LEASE_S = 300.0


class WorkdirLocked(RuntimeError):
  """The workdir is held by a live run (named in the message)."""


class _Conflict(Exception):
  """The lock changed between reading it and writing it: another run got there first."""


def _process_start(pid: int) -> str | None:
  """The kernel's start time of ``pid`` (``/proc/<pid>/stat`` field 22), if known."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def record(lease_s: float, token: str | None = None) -> dict[str, Any]:
  """This process's lock record: who holds the workdir, since when, until when."""
  now = time.time()
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "process_start": _process_start(os.getpid()),
          "start_time": datetime.datetime.fromtimestamp(now).astimezone().isoformat(
              timespec="seconds"),
          "started": now, "renewed": now, "lease_s": lease_s,
          "token": token or uuid.uuid4().hex}


def stale_reason(held: dict[str, Any], now: float | None = None) -> str | None:
  """Why the lock ``held`` is left by a dead run, or None while its holder may live."""
  now = time.time() if now is None else now
  if held.get("host") == socket.gethostname():
    pid = int(held.get("pid", -1))
    start = _process_start(pid) if pid > 0 else None
    if start is None:
      return f"its process {pid} on this host is gone"
    if held.get("process_start") not in (None, start):
      return f"its process {pid} on this host is gone (the PID is another process's now)"
  expires = float(held.get("renewed", 0)) + float(held.get("lease_s", LEASE_S))
  if now > expires:
    return f"its lease expired {now - expires:.0f} s ago without renewal"
  return None


def describe(held: dict[str, Any]) -> str:
  return (f"host {held.get('host')}, PID {held.get('pid')}, started "
          f"{held.get('start_time')}")


class _LocalStore:
  """The record in a local file, swapped under ``flock`` of the workdir."""

  def __init__(self, workdir: str):
    self.workdir, self.path = workdir, os.path.join(workdir, FILE)

  @contextlib.contextmanager
  def _guard(self) -> Iterator[None]:
    fd = os.open(self.workdir, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
      yield
    finally:
      os.close(fd)  # releases the flock

  def _read(self) -> tuple[dict[str, Any] | None, str | None]:
    try:
      with open(self.path) as f:
        text = f.read()
    except FileNotFoundError:
      return None, None
    return _parse(text, self.path), text

  def read(self) -> tuple[dict[str, Any] | None, Any]:
    with self._guard():
      return self._read()

  def swap(self, version: Any, new: dict[str, Any] | None) -> Any:
    """Writes ``new`` (None: removes) if the file is still ``version``; its new version."""
    with self._guard():
      if self._read()[1] != version:
        raise _Conflict()
      if new is None:
        os.remove(self.path)
        return None
      text = json.dumps(new, indent=2)
      paths.write_atomic(self.path, text)
      return text


class _GcsStore:
  """The record in a GCS object, swapped with generation preconditions."""

  def __init__(self, workdir: str):
    import fsspec  # pylint: disable=g-import-not-at-top  (gcsfs: only for gs://)
    self.fs = fsspec.filesystem("gs")
    self.path = f"{workdir.rstrip('/')}/{FILE}"
    self.bucket, self.key = self.path.split("://", 1)[1].split("/", 1)

  def read(self) -> tuple[dict[str, Any] | None, Any]:
    try:
      meta = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, json_out=True)
      _, body = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, alt="media",
                             generation=meta["generation"])
    except FileNotFoundError:
      return None, 0
    return _parse(body.decode(), self.path), meta["generation"]

  def swap(self, version: Any, new: dict[str, Any] | None) -> Any:
    try:
      if new is None:
        self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key,
                     ifGenerationMatch=str(version))
        return 0
      answer = self.fs.call(
          "POST", f"{self.fs._location}/upload/storage/v1/b/{self.bucket}/o",  # pylint: disable=protected-access
          uploadType="multipart", ifGenerationMatch=str(version),
          headers={"Content-Type": 'multipart/related; boundary="==0=="'},
          data=_multipart(self.key, json.dumps(new, indent=2)), json_out=True)
    except (FileExistsError, FileNotFoundError) as e:  # gcsfs's 412 and 404
      raise _Conflict() from e
    return answer["generation"]


def _multipart(name: str, text: str) -> bytes:
  """An upload's metadata and body in one request (the form whose preconditions every
  GCS implementation honours)."""
  return (f'--==0==\nContent-Type: application/json; charset=UTF-8\n\n{{"name": '
          f'{json.dumps(name)}}}\n--==0==\nContent-Type: application/json\n\n{text}'
          '\n--==0==--').encode()


def _parse(text: str, path: str) -> dict[str, Any]:
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return {"host": "?", "pid": -1, "renewed": 0, "lease_s": 0, "unreadable": path}


class WorkdirLock:
  """The lock of ``workdir``, taken by :meth:`acquire` and renewed until :meth:`release`."""

  def __init__(self, workdir: str, lease_s: float = LEASE_S):
    workdir = paths.resolve(workdir)
    self.workdir, self.lease_s = workdir, lease_s
    self.store = _GcsStore(workdir) if workdir.startswith("gs://") else _LocalStore(workdir)
    self.version: Any = None
    self.mine: dict[str, Any] | None = None
    self._stop = threading.Event()
    self._renewer: threading.Thread | None = None

  def acquire(self) -> dict[str, Any]:
    """Takes the lock (taking over a dead run's); raises :class:`WorkdirLocked` if a
    live run holds it. Returns this run's record."""
    for _ in range(5):  # a lost race re-reads: the winner is then a live holder
      held, version = self.store.read()
      if held is not None:
        reason = stale_reason(held)
        if reason is None:
          raise WorkdirLocked(
              f"{self.workdir} is in use by another run ({describe(held)}; its lease "
              f"runs {held.get('lease_s')} s from its last renewal): one run writes a "
              "workdir at a time. Wait for it to end, stop it, or choose another "
              f"--workdir; if that run is surely gone, delete {self.store.path}")
        logging.warning("Taking over the lock of %s from a dead run (%s): %s",
                        self.workdir, describe(held), reason)
      mine = record(self.lease_s)
      try:
        self.version, self.mine = self.store.swap(version, mine), mine
      except _Conflict:
        continue
      self._start_renewing()
      return mine
    raise WorkdirLocked(f"{self.workdir}: the lock kept changing while it was taken; "
                        "another run is starting there")

  def _start_renewing(self) -> None:
    self._stop.clear()
    self._renewer = threading.Thread(target=self._renew_loop, daemon=True,
                                     name="workdir-lock")
    self._renewer.start()

  def _renew_loop(self) -> None:
    while not self._stop.wait(self.lease_s / 4):
      try:
        self.renew()
      except _Conflict:
        logging.error("The lock of %s was taken by another run after this one's lease "
                      "expired: both may now write there", self.workdir)
        return
      except Exception as e:  # a network blip: try again at the next renewal
        logging.warning("Could not renew the lock of %s: %s", self.workdir, e)

  def renew(self) -> None:
    """Extends the lease (raises ``_Conflict`` if another run took the lock)."""
    mine = dict(self.mine, renewed=time.time())
    self.version, self.mine = self.store.swap(self.version, mine), mine

  def release(self) -> None:
    """Stops renewing and removes the lock, if it is still this run's."""
    self._stop.set()
    if self._renewer is not None:
      self._renewer.join()
      self._renewer = None
    if self.mine is None:
      return
    try:
      self.store.swap(self.version, None)
    except _Conflict:
      logging.warning("The lock of %s is another run's now; left in place", self.workdir)
    self.mine = None


@contextlib.contextmanager
def held(workdir: str, lease_s: float = LEASE_S) -> Iterator[WorkdirLock]:
  """The workdir's lock for the duration of the block."""
  lock = WorkdirLock(workdir, lease_s)
  lock.acquire()
  try:
    yield lock
  finally:
    lock.release()


def hold_for_run(workdir: str, lease_s: float = LEASE_S) -> WorkdirLock | None:
  """Takes ``workdir``'s lock for this run: process 0 holds it for every process.

  With several processes (``jax.distributed``) process 0 tells the others
  through the coordination service's key-value store whether it got the
  lock, so that all of them stop alike when a live run holds the workdir.
  Starts no JAX backend (``main`` calls it before the log file is set up).
  Returns the lock on process 0 (None elsewhere); raises :class:`WorkdirLocked`.
  """
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  state = distributed.global_state
  process = state.process_id if state.client is not None else 0
  lock, refusal = None, ""
  if process == 0:
    lock = WorkdirLock(workdir, lease_s)
    try:
      lock.acquire()
    except WorkdirLocked as e:
      lock, refusal = None, str(e)
    if state.client is not None:
      state.client.key_value_set(_KV_KEY, refusal or "held")
  else:
    answer = state.client.blocking_key_value_get(_KV_KEY, 600_000)
    refusal = "" if answer == "held" else answer
  if refusal:
    raise WorkdirLocked(refusal)
  return lock


#: Where process 0 says whether it holds the workdir (coordination service's store).
_KV_KEY = "attn_contrastive/workdir_lock"
