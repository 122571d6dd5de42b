"""Following a test's child process and every process it starts, to check that none
outlives it."""
from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

GRACE_S = 5.0


@contextlib.contextmanager
def children_sigint(disposition=signal.default_int_handler):
  """Children started inside get SIGINT at its default (or ignored, with
  ``signal.SIG_IGN``), whatever this process inherited.

  A child inherits an ignored SIGINT (a test runner started in the
  background ignores it), and Python then never raises ``KeyboardInterrupt``:
  a test of Ctrl-C would measure nothing. A handled signal is reset to its
  default when a child executes its program; an ignored one stays ignored.
  """
  inherited = signal.signal(signal.SIGINT, disposition)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, inherited)


def note_descendants(pid: int, seen: dict[int, psutil.Process]) -> None:
  """Adds the living descendants of ``pid`` to ``seen`` with their command lines,
  kept for after they end (read again while they run: a process just spawned
  shows its parent's until it executes its own)."""
  try:
    children = psutil.Process(pid).children(recursive=True)
  except psutil.NoSuchProcess:
    return
  for child in children:
    line = " ".join(_cmdline(child))
    known = seen.setdefault(child.pid, child)
    if line or not hasattr(known, "info"):
      known.info = {"cmdline": line}


def _cmdline(p: psutil.Process) -> list[str]:
  try:
    return p.cmdline()
  except psutil.Error:
    return []


def alive(processes: dict[int, psutil.Process]) -> list[str]:
  """Those still running (a zombie counts as ended: it only waits to be reaped)."""
  out = []
  for p in processes.values():
    try:
      if p.status() != psutil.STATUS_ZOMBIE:
        out.append(f"{p.pid} {p.info['cmdline'][:80]}")
    except psutil.NoSuchProcess:
      pass
  return out


def grain_workers(seen: dict[int, psutil.Process]) -> list[psutil.Process]:
  return [p for p in seen.values() if "spawn_main" in p.info["cmdline"]]


def assert_none_survives(seen: dict[int, psutil.Process]) -> None:
  """Waits up to :data:`GRACE_S` for every process of ``seen`` to end; kills and
  names any that did not."""
  deadline = time.monotonic() + GRACE_S
  while alive(seen) and time.monotonic() < deadline:
    time.sleep(0.1)
  survivors = alive(seen)
  for p in seen.values():  # never leave one behind, even when the test fails
    try:
      p.kill()
    except psutil.NoSuchProcess:
      pass
  assert not survivors, f"still running {GRACE_S} s after the run ended: {survivors}"


def mapped_shared_memory(pids) -> set[str]:
  """The grain batch segments (``/dev/shm/psm_*``) that processes ``pids`` have mapped
  now: theirs, unlike a listing of ``/dev/shm``, which holds other runs' too."""
  names = set()
  for pid in pids:
    try:
      with open(f"/proc/{pid}/maps") as f:
        names.update(os.path.basename(line.split()[-1]) for line in f
                     if "/dev/shm/psm_" in line)
    except OSError:  # ended, or no /proc
      pass
  return names


def shared_memory() -> set[str]:
  """The names of the shared-memory segments of grain's batches (``/dev/shm/psm_*``)."""
  shm = "/dev/shm"
  return {n for n in os.listdir(shm) if n.startswith("psm_")} if os.path.isdir(shm) else set()
