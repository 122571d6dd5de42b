"""Ctrl-C stops every kind of task the first time, cleanly, and the same command resumes.

Each test starts ``tests/interrupt_worker.py`` (a task through main's stop
handling, on tiny in-memory data) in a session of its own with SIGINT at its
default, sends SIGINT to its process group once, as a terminal's Ctrl-C does,
at a moment drawn from a seeded generator, and checks that the run ends within
:data:`STOP_S` with exit status 130 and one line saying where it stopped (no
traceback, no leaked shared memory), that no process it started outlives it,
and that running the same command again finishes the work.

``ATTN_CONTRASTIVE_INTERRUPT_TRIES=20 pytest tests/test_interrupt.py`` repeats
each case at 20 moments (``…_SEED`` picks another draw).
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import interrupt_worker
import kill_worker
import processes

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interrupt_worker.py")
#: The longest a run may take to stop after Ctrl-C.
STOP_S = 30.0
TIMEOUT_S = 180.0
TRIES = int(os.environ.get("ATTN_CONTRASTIVE_INTERRUPT_TRIES", "1"))
SEED = int(os.environ.get("ATTN_CONTRASTIVE_INTERRUPT_SEED", "0"))
#: Seconds after "ready" (pretraining: after its grain workers started) within which
#: Ctrl-C lands: inside each job's work (its compilation and its steps, shards or
#: stages) on any machine fast or slow.
WINDOW_S = {"pretrain": 1.5, "label": 1.0, "features": 0.8, "study": 1.5}
STUDY_STAGES = ("teacher", "maps_train", "contrastive/seed0/train",
                "contrastive/seed0/linear_eval")


class Run:
  """One start of the worker: follows its output and its descendants until it ends."""

  def __init__(self, job: str, workdir: str, log: str, sigint=signal.default_int_handler):
    self.err = open(log, "w")
    with processes.children_sigint(sigint):
      self.proc = subprocess.Popen([sys.executable, WORKER, job, workdir],
                                   stdout=subprocess.PIPE, stderr=self.err, text=True,
                                   env=dict(os.environ), start_new_session=True)
    self.log, self.out, self.seen, self.shm = log, [], {}, set()
    self.ready = threading.Event()
    threading.Thread(target=self._follow, daemon=True).start()
    self.start = time.monotonic()

  def _follow(self) -> None:
    for line in self.proc.stdout:
      self.out.append(line.strip())
      if line.strip() == "ready":
        self.ready.set()

  def _note(self) -> None:
    """Notes the run's processes and the shared-memory batches they hold."""
    processes.note_descendants(self.proc.pid, self.seen)
    self.shm |= processes.mapped_shared_memory([self.proc.pid, *self.seen])

  def wait_ready(self) -> None:
    while not self.ready.wait(0.05):
      self._note()
      assert self.proc.poll() is None, self.stderr()
      assert time.monotonic() - self.start < TIMEOUT_S, "the worker never got ready"

  def wait_for_workers(self) -> None:
    while len(processes.grain_workers(self.seen)) < 2:
      self._note()
      assert self.proc.poll() is None, self.stderr()
      assert time.monotonic() - self.start < TIMEOUT_S, "no grain workers started"
      time.sleep(0.02)

  def sleep(self, seconds: float) -> None:
    """Sleeps, noting the descendants as they come."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and self.proc.poll() is None:
      self._note()
      time.sleep(0.02)

  def wait(self, timeout: float) -> tuple[int, float]:
    """(exit status, seconds it took); the process group is killed past ``timeout``."""
    t0 = time.monotonic()
    while self.proc.poll() is None and time.monotonic() - t0 < timeout:
      self._note()
      time.sleep(0.02)
    if self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGKILL)
    rc, took = self.proc.wait(), time.monotonic() - t0
    self.err.close()
    return rc, took

  def stderr(self) -> str:
    with open(self.log) as f:
      return f.read()


def _finished(job: str, workdir: str) -> None:
  """Asserts that ``job``'s work in ``workdir`` is whole."""
  if job == "pretrain":
    with open(os.path.join(workdir, "results.json")) as f:
      assert json.load(f)["step"] == interrupt_worker.PRETRAIN_STEPS
  elif job == "label":
    from attn_contrastive.data import attention_maps as am
    maps = am.AttentionMapSource(workdir)
    assert [maps[i]["file_name"] for i in range(len(maps))] == [
        f"img_{i:03d}.png" for i in range(kill_worker.NUM_IMAGES)]
  elif job == "features":
    shards = sorted(glob.glob(os.path.join(workdir, "*.npz")))
    labels = np.concatenate([np.load(s)["labels"] for s in shards])
    np.testing.assert_array_equal(labels, np.arange(kill_worker.NUM_IMAGES))
  else:
    for stage in STUDY_STAGES:
      assert os.path.exists(os.path.join(workdir, stage, "results.json")), stage
  assert not glob.glob(os.path.join(workdir, "**", "*.tmp*"), recursive=True)


@pytest.mark.parametrize("job", ["pretrain", "label", "features", "study"])
def test_ctrl_c_stops_the_task_cleanly_and_the_rerun_finishes(tmp_path, job):
  rng = np.random.default_rng([SEED, list(WINDOW_S).index(job)])
  for attempt in range(TRIES):
    workdir = str(tmp_path / f"run{attempt}")
    run = Run(job, workdir, str(tmp_path / f"{attempt}.err"))
    run.wait_ready()
    if job == "pretrain":  # the moment is drawn once its grain workers run
      run.wait_for_workers()
    delay = float(rng.uniform(0.0, WINDOW_S[job]))
    run.sleep(delay)
    assert run.proc.poll() is None, f"ended before Ctrl-C at {delay:.2f} s: {run.stderr()}"
    os.killpg(run.proc.pid, signal.SIGINT)
    rc, took = run.wait(STOP_S)
    stderr, where = run.stderr(), f"(try {attempt}, Ctrl-C {delay:.2f} s after ready)"
    assert rc == 130, f"{where} exit status {rc} after {took:.1f} s\n{stderr[-3000:]}"
    assert "stopped by Ctrl-C" in stderr and "run the same command again" in stderr, where
    assert "Traceback" not in stderr and "leaked" not in stderr, f"{where}\n{stderr[-3000:]}"
    if job == "pretrain":
      assert len(processes.grain_workers(run.seen)) >= 2, f"{where}: no grain workers seen"
    processes.assert_none_survives(run.seen)
    if job == "pretrain":
      assert run.shm, f"{where}: no shared-memory batch was seen"
    assert not run.shm & processes.shared_memory(), f"{where}: shared memory left"
    rerun = Run(job, workdir, str(tmp_path / f"{attempt}.rerun.err"))
    rc, _ = rerun.wait(TIMEOUT_S)
    stderr = rerun.stderr()
    assert rc == 0 and rerun.out[-1:] == ["done"], stderr[-3000:]
    _finished(job, workdir)
    # A finished run leaves no process and no batch behind either (nor a warning).
    assert "leaked" not in stderr, stderr[-3000:]
    if job == "pretrain":
      assert len(processes.grain_workers(rerun.seen)) >= 2, "the rerun had no grain workers"
    processes.assert_none_survives(rerun.seen)
    assert not rerun.shm & processes.shared_memory(), "the rerun left shared memory"


def test_ctrl_c_is_ignored_when_the_parent_ignores_it(tmp_path):
  """``nohup`` and background jobs start a run with SIGINT ignored: it stays ignored."""
  run = Run("features", str(tmp_path / "run"), str(tmp_path / "err"), sigint=signal.SIG_IGN)
  run.wait_ready()
  os.killpg(run.proc.pid, signal.SIGINT)
  rc, _ = run.wait(TIMEOUT_S)
  assert rc == 0 and run.out[-1:] == ["done"], run.stderr()[-3000:]
  _finished("features", str(tmp_path / "run"))
