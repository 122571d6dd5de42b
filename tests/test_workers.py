"""grain worker processes end with the run: on its normal end, on Ctrl-C, on an error
and when the training process itself is SIGKILLed.

Each test starts ``tests/train_worker.py`` (a short SimCLR run with
``input.num_workers=2``, or only its input pipeline) in a session of its
own, follows its output, lists every descendant process it has while it runs
(the two workers and multiprocessing's resource tracker) and, once it has
ended, checks that none of them is still alive a few seconds later (a
zombie counts as ended: it has exited and waits only to be reaped).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
TIMEOUT_S = 120
GRACE_S = 5.0


def _alive(processes: dict[int, psutil.Process]) -> list[str]:
  out = []
  for p in processes.values():
    try:
      if p.status() != psutil.STATUS_ZOMBIE:
        out.append(f"{p.pid} {p.info['cmdline'][:80]}")
    except psutil.NoSuchProcess:
      pass
  return out


def _run(tmp_path, *flags: str, action=None
         ) -> tuple[int, dict[int, psutil.Process], str, list[str]]:
  """Runs the worker; ``action(proc, seen)`` once it has reported progress and its
  workers have started. Returns the exit status, every descendant seen while it
  ran, its stderr and its progress lines."""
  log = tmp_path / "stderr.txt"
  with open(log, "w") as err:
    proc = subprocess.Popen([sys.executable, WORKER, str(tmp_path / "run"), *flags],
                            stdout=subprocess.PIPE, stderr=err, text=True,
                            env=dict(os.environ), start_new_session=True)
  progress, lines = threading.Event(), []

  def follow():
    for line in proc.stdout:
      if line.startswith(("step", "batch")):
        lines.append(line.split()[1])
        progress.set()

  threading.Thread(target=follow, daemon=True).start()
  seen: dict[int, psutil.Process] = {}
  acted, deadline = action is None, time.monotonic() + TIMEOUT_S
  try:
    while proc.poll() is None:
      assert time.monotonic() < deadline, "the run did not end"
      try:
        children = psutil.Process(proc.pid).children(recursive=True)
      except psutil.NoSuchProcess:
        children = []
      for child in children:
        _note(seen, child)
      if not acted and progress.is_set() and len(_workers(seen)) >= 2:
        action(proc, seen)
        acted = True
      time.sleep(0.05)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert acted, "the run ended before it could be interrupted"
  return proc.wait(), seen, log.read_text(), lines


def _note(seen: dict[int, psutil.Process], child: psutil.Process) -> None:
  """Records ``child`` with its command line, kept for after it ends (read again while
  it runs: a process just spawned shows its parent's until it executes its own)."""
  line = " ".join(_cmdline(child))
  known = seen.setdefault(child.pid, child)
  if line or not hasattr(known, "info"):
    known.info = {"cmdline": line}


def _workers(seen: dict[int, psutil.Process]) -> list[psutil.Process]:
  return [p for p in seen.values() if "spawn_main" in p.info["cmdline"]]


def _assert_none_survives(seen: dict[int, psutil.Process], stderr: str) -> None:
  assert len(_workers(seen)) >= 2, f"no grain worker processes were seen: {stderr[-2000:]}"
  deadline = time.monotonic() + GRACE_S
  while _alive(seen) and time.monotonic() < deadline:
    time.sleep(0.1)
  survivors = _alive(seen)
  for p in seen.values():  # never leave one behind, even when the test fails
    try:
      p.kill()
    except psutil.NoSuchProcess:
      pass
  assert not survivors, f"still running {GRACE_S} s after the run ended: {survivors}"


def _cmdline(p: psutil.Process) -> list[str]:
  try:
    return p.cmdline()
  except psutil.Error:
    return []


def _shared_memory() -> set[str]:
  """The names of the shared-memory segments of grain's batches (``/dev/shm/psm_*``)."""
  shm = "/dev/shm"
  return {n for n in os.listdir(shm) if n.startswith("psm_")} if os.path.isdir(shm) else set()


def test_workers_end_with_a_finished_run(tmp_path):
  rc, seen, stderr, _ = _run(tmp_path, "--steps=8")
  assert rc == 0, stderr[-3000:]
  _assert_none_survives(seen, stderr)


def _press_ctrl_c(proc: subprocess.Popen, seen) -> None:
  """SIGINT to the run's process group, as Ctrl-C in a terminal sends it, and again
  every 5 s while the run lasts, as a user would press it again: Python ignores a
  KeyboardInterrupt raised inside a garbage-collection callback (JAX has one)."""
  del seen

  def press():
    while proc.poll() is None:
      try:
        os.killpg(proc.pid, signal.SIGINT)
      except ProcessLookupError:
        return
      time.sleep(5)

  threading.Thread(target=press, daemon=True).start()


def test_workers_end_on_ctrl_c(tmp_path):
  """Ctrl-C mid-run: the run stops, and its workers (which ignore SIGINT themselves,
  ``pipeline.init_worker``) with it."""
  rc, seen, stderr, lines = _run(tmp_path, "--steps=2000", action=_press_ctrl_c)
  assert rc != 0 and "KeyboardInterrupt" in stderr, stderr[-3000:]
  assert lines[-1] != "2000"
  _assert_none_survives(seen, stderr)


def test_workers_end_when_a_record_fails_mid_run(tmp_path):
  """A worker's reader raises for a record of step 7: the run stops with its error."""
  rc, seen, stderr, lines = _run(tmp_path, "--steps=12", "--fail_at_step=7")
  assert rc == 1 and "cannot be read" in stderr, stderr[-3000:]
  assert lines == ["2", "4", "6"]  # mid-run: steps 1-6 were trained
  _assert_none_survives(seen, stderr)


def test_workers_end_when_the_training_process_is_sigkilled(tmp_path):
  """Without a parent, each worker exits within a second (``pipeline.init_worker``),
  and the resource tracker after them, which frees the shared-memory batches that
  were in flight when the training process was killed."""
  before, in_flight = _shared_memory(), set()

  def kill(proc, seen):
    time.sleep(0.5)  # batches queue up behind the reader
    in_flight.update(_shared_memory() - before)
    proc.kill()

  rc, seen, stderr, _ = _run(tmp_path, "--steps=2000", "--pipeline_only", action=kill)
  assert rc == -signal.SIGKILL
  _assert_none_survives(seen, stderr)
  if not os.path.isdir("/dev/shm"):
    return
  assert in_flight, "no shared-memory batch was in flight at the kill"
  deadline = time.monotonic() + GRACE_S
  while in_flight & _shared_memory() and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not in_flight & _shared_memory(), "shared memory left behind"
