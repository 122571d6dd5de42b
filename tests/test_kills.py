"""Resumable jobs SIGKILLed at random moments, then restarted until they finish.

The label task and feature extraction run as processes of their own
(``tests/kill_worker.py``: a tiny model, an in-memory split of 64 images in 8
shards of about 40 ms each) and are killed with SIGKILL three times, at
moments drawn from a seeded generator: while a shard's temporary file is
half written (a slow disk), within a shard after a random number of
finished ones, and a random delay after the imports (in the compilation or
the work). A fourth run finishes, and the job must have left what an
uninterrupted run leaves: every example exactly once, the same bytes, and no
temporary file. The workers get this process's environment, so they share
the tests' persistent compilation cache (``tests/conftest.py``): a restart
costs its imports, not its compilations.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import numpy as np

import kill_worker
from attn_contrastive import paths
from attn_contrastive.data import attention_maps as am

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_worker.py")
TIMEOUT_S = 120


def _start(job: str, workdir: str, log, slow_write: float = 0.0) -> subprocess.Popen:
  """Starts the worker (with this process's environment) and waits until it is ready."""
  args = [sys.executable, WORKER, job, workdir]
  if slow_write:
    args.append(f"--slow_write={slow_write}")
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True,
                          env=dict(os.environ))
  assert proc.stdout.readline().strip() == "ready", f"the {job} worker failed to start"
  return proc


def _temporaries(workdir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(workdir, "*.npz.tmp*")))


def _shards(workdir: str) -> int:
  return len(glob.glob(os.path.join(workdir, "*.npz")))


def _wait_for(proc: subprocess.Popen, done) -> bool:
  """Polls until ``done()``; False if ``proc`` ended first."""
  deadline = time.monotonic() + TIMEOUT_S
  while not done():
    if proc.poll() is not None:
      return False
    assert time.monotonic() < deadline, "the job made no progress"
    time.sleep(0.002)
  return True


def _kill(proc: subprocess.Popen) -> None:
  proc.kill()
  proc.wait()


def _run_with_kills(job: str, workdir: str, log_path: str, *, seed: int,
                    window_s: float) -> list[int]:
  """Kills ``job`` three times, then lets a fourth run finish; returns the number of
  finished shards after each kill.

  The kills: while the temporary file of shard 0, 1 or 2 is half written (a slow
  disk); a random moment within the shard after a random number of finished
  shards; a random delay after the imports, up to ``window_s`` (the time an
  uninterrupted run takes from there), which may fall in the compilation or
  anywhere in the work.
  """
  rng = np.random.default_rng(seed)
  after = []
  with open(log_path, "a") as log:
    proc = _start(job, workdir, log, slow_write=0.25)
    target = int(rng.integers(0, 3))
    assert _wait_for(proc, lambda: _shards(workdir) >= target and _temporaries(workdir))
    _kill(proc)
    assert _temporaries(workdir), "the kill during a write left no temporary file"
    after.append(_shards(workdir))
    proc = _start(job, workdir, log)
    target = int(rng.integers(after[-1] + 1, kill_worker.NUM_SHARDS))
    if _wait_for(proc, lambda: _shards(workdir) >= target):
      time.sleep(rng.uniform(0.0, 0.045))  # a shard's work
    _kill(proc)
    after.append(_shards(workdir))
    proc = _start(job, workdir, log)
    time.sleep(rng.uniform(0.0, window_s))
    _kill(proc)
    after.append(_shards(workdir))
    proc = _start(job, workdir, log)
    assert proc.wait(TIMEOUT_S) == 0, open(log_path).read()[-3000:]
  assert _temporaries(workdir) == []
  return after


def test_label_killed_at_random_moments_ends_as_an_uninterrupted_run(tmp_path):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  kill_worker.run_label(straight)
  print("shards after each kill:", _run_with_kills("label", killed, str(tmp_path / "log"),
                                                   seed=0, window_s=1.2))
  n = kill_worker.NUM_SHARDS
  names = sorted(os.listdir(killed))
  assert names == sorted(["metadata.json", "results.json"]
                         + [os.path.basename(am.shard_path(killed, i, n)) for i in range(n)])
  keys = []
  for i in range(n):
    am.inspect_shard(am.shard_path(killed, i, n), 8, (8, 8))  # whole, not truncated
    with np.load(am.shard_path(straight, i, n)) as s, np.load(am.shard_path(killed, i, n)) as k:
      np.testing.assert_array_equal(k["maps"], s["maps"])
      np.testing.assert_array_equal(k["keys"], s["keys"])
      keys.extend(am.key_str(key) for key in k["keys"])
  assert keys == [f"img_{i:03d}.png" for i in range(kill_worker.NUM_IMAGES)]
  maps = am.AttentionMapSource(killed)
  assert len(maps) == kill_worker.NUM_IMAGES
  assert maps[37]["file_name"] == "img_037.png"


def test_feature_extraction_killed_at_random_moments_ends_as_an_uninterrupted_run(tmp_path):
  killed = str(tmp_path / "features")
  straight_f, straight_l = kill_worker.extract_features(None)
  print("shards after each kill:", _run_with_kills("features", killed,
                                                   str(tmp_path / "log"), seed=1,
                                                   window_s=0.6))
  n = kill_worker.NUM_SHARDS
  assert sorted(os.listdir(killed)) == [f"{i:05d}.npz" for i in range(n)]
  shards = [paths.load_npz(os.path.join(killed, f"{i:05d}.npz")) for i in range(n)]
  labels = np.concatenate([s["labels"] for s in shards])
  np.testing.assert_array_equal(labels, np.arange(kill_worker.NUM_IMAGES))  # each once
  np.testing.assert_array_equal(np.concatenate([s["features"] for s in shards]), straight_f)
  np.testing.assert_array_equal(straight_l, labels)
  f, lab = kill_worker.extract_features(killed)  # read back from the cache
  np.testing.assert_array_equal(f, straight_f)
  np.testing.assert_array_equal(lab, labels)
