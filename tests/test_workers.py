"""grain worker processes end with the run: on an error and when the training process
itself is SIGKILLed (on its normal end and on Ctrl-C: ``tests/test_interrupt.py``).

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

import processes

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
TIMEOUT_S = 120


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
      processes.note_descendants(proc.pid, seen)
      if not acted and progress.is_set() and len(processes.grain_workers(seen)) >= 2:
        action(proc, seen)
        acted = True
      time.sleep(0.05)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert acted, "the run ended before it could be interrupted"
  return proc.wait(), seen, log.read_text(), lines


def _assert_none_survives(seen: dict[int, psutil.Process], stderr: str) -> None:
  assert len(processes.grain_workers(seen)) >= 2, (
      f"no grain worker processes were seen: {stderr[-2000:]}")
  processes.assert_none_survives(seen)


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
  in_flight = set()

  def kill(proc, seen):
    time.sleep(0.5)  # batches queue up behind the reader
    in_flight.update(processes.mapped_shared_memory([proc.pid, *seen]))
    proc.kill()

  rc, seen, stderr, _ = _run(tmp_path, "--steps=2000", "--pipeline_only", action=kill)
  assert rc == -signal.SIGKILL
  _assert_none_survives(seen, stderr)
  if not os.path.isdir("/dev/shm"):
    return
  assert in_flight, "no shared-memory batch was in flight at the kill"
  deadline = time.monotonic() + processes.GRACE_S
  while in_flight & processes.shared_memory() and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not in_flight & processes.shared_memory(), "shared memory left behind"
