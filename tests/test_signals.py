"""SIGTERM to one process of a two-process run, for every kind of piecewise task.

Each job starts ``tests/signal_worker.py`` on two processes (``jax.distributed``
on 127.0.0.1, one CPU device each), sends SIGTERM to process 1 alone once the
task's first piece is written, and checks that both processes exit 75 within
:data:`STOP_S` (JAX's preemption service tells process 0; both stop at the same
boundary), that the finished pieces are kept, and that the same command run
again finishes the work without redoing a kept piece and ends with what an
uninterrupted run (the second launch's ``--straight`` run) leaves.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import multiprocess
import signal_worker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "signal_worker.py")
#: The longest both processes may take to exit after the signal.
STOP_S = 60.0
#: Seconds per record read in the run that is signalled: a piece takes about 2 s and
#: the pieces after the first over 10 s, longer than the preemption notice takes to
#: reach every process; the stop comes within that time, so the slow pieces after it
#: never run, and the rerun reads at full speed.
READ_S = {"label": 0.5, "features": 1.0, "robustness": 0.4, "study": 0.45}
#: Each job's pieces (globs under its workdir) and how many a finished run has.
PIECES = {"label": ("shard-*.npz", signal_worker.SHARDS),
          "features": ("*.npz", signal_worker.SHARDS),
          "robustness": ("conditions/*.json", 2 * len(signal_worker.CORRUPTIONS)),
          "study": ("**/results.json", 4)}


def _start(job: str, workdir: str, log_dir: str, tag: str, read_s: float,
           straight: str | None = None) -> list[subprocess.Popen]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=multiprocess.xla_flags(1))
  port, procs = multiprocess.free_port(), []
  for p in range(2):
    args = [sys.executable, WORKER, f"--job={job}", f"--workdir={workdir}",
            f"--read_s={read_s}", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
            f"--process_id={p}", *([f"--straight={straight}"] if straight else [])]
    log = open(os.path.join(log_dir, f"{tag}.p{p}.log"), "w")
    procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env))
  return procs


def _pieces(job: str, workdir: str) -> dict[str, tuple[int, int]]:
  """Each finished piece's path → (inode, mtime): a piece redone would change both."""
  found = glob.glob(os.path.join(workdir, PIECES[job][0]), recursive=True)
  if job == "study":  # a stage's pieces: its results.json and its shards
    found += glob.glob(os.path.join(workdir, "**", "shard-*.npz"), recursive=True)
  return {os.path.relpath(f, workdir): (os.stat(f).st_ino, os.stat(f).st_mtime_ns)
          for f in found}


def _finished(job: str, workdir: str) -> int:
  return len(glob.glob(os.path.join(workdir, PIECES[job][0]), recursive=True))


def _content(job: str, workdir: str) -> dict[str, object]:
  """What the job leaves, without timings."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "**", "*.npz"), recursive=True)):
    with np.load(path) as z:
      out[os.path.relpath(path, workdir)] = {k: z[k].tolist() for k in z.files}
  if job == "robustness":
    for path in sorted(glob.glob(os.path.join(workdir, "conditions", "*_*.json"))):
      with open(path) as f:
        out[os.path.basename(path)] = {k: v for k, v in json.load(f).items()
                                       if k != "wall_time_s"}
  return out


def test_sigterm_to_one_process_stops_both_at_a_boundary_and_the_rerun_finishes(tmp_path):
  """Every job at once (their processes mostly wait on slowed reads, so running them
  side by side costs the suite one job's wall time, not four): each is signalled
  when its first piece is written, then all are rerun side by side."""
  jobs = sorted(PIECES)
  workdirs = {job: str(tmp_path / job / "run") for job in jobs}
  logs_at = {job: str(tmp_path / job) for job in jobs}
  for job in jobs:
    os.makedirs(logs_at[job])
  procs = {job: _start(job, workdirs[job], logs_at[job], "stopped", READ_S[job])
           for job in jobs}
  signalled, deadline = {}, time.monotonic() + 300
  while len(signalled) < len(jobs):
    for job in set(jobs) - set(signalled):
      assert all(p.poll() is None for p in procs[job]) and time.monotonic() < deadline, (
          job, multiprocess.logs(logs_at[job], "stopped"))
      if _finished(job, workdirs[job]) >= 1:
        procs[job][1].send_signal(signal.SIGTERM)
        signalled[job] = time.monotonic()
    time.sleep(0.05)
  ended, deadline = {}, time.monotonic() + STOP_S + 60
  while len(ended) < len(jobs) and time.monotonic() < deadline:
    for job in set(jobs) - set(ended):
      if all(p.poll() is not None for p in procs[job]):
        ended[job] = time.monotonic()
    time.sleep(0.05)
  kept = {}
  for job in jobs:
    codes = multiprocess.wait(procs[job], timeout=1.0)
    took = ended.get(job, float("inf")) - signalled[job]
    logs = multiprocess.logs(logs_at[job], "stopped")
    assert codes == [75, 75] and took < STOP_S, (job, codes, took, logs)
    assert "preempted: stopped; its finished pieces" in logs, job
    kept[job] = _pieces(job, workdirs[job])
    assert 1 <= _finished(job, workdirs[job]) < PIECES[job][1], (job, logs)

  straight = {job: str(tmp_path / job / "straight") for job in jobs}
  reruns = {job: _start(job, workdirs[job], logs_at[job], "rerun", 0.0, straight[job])
            for job in jobs}
  for job in jobs:
    codes = multiprocess.wait(reruns[job])
    assert codes == [0, 0], (job, multiprocess.logs(logs_at[job], "rerun"))
    after = _pieces(job, workdirs[job])
    assert {k: after.get(k) for k in kept[job]} == kept[job], f"{job}: a kept piece was redone"
    assert _finished(job, workdirs[job]) == PIECES[job][1], job
    assert _content(job, workdirs[job]) == _content(job, straight[job]), job
