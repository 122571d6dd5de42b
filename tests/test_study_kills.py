"""The study as one unit under SIGKILL: killed once inside each of training, labelling,
linear evaluation's features, robustness's conditions and the report, then finished by
the same command, it writes an uninterrupted study's ``report.csv`` byte for byte and
redoes nothing it had finished.

The study is ``tests/study_kill_worker.py``'s: ``configs/study.py`` with sizes reduced,
run through ``main.execute``. The uninterrupted study runs in this process; the killed
one as processes of their own, started again and again with the same command, each
with this process's environment (the tests' persistent compilation cache, so that a
restart costs its imports and tracing, not its compilations) and its records read
slowly, so that a kill lands inside the stage it aims at on a fast machine as on a
slow one. Each kill waits for a seeded number of the stage's pieces on disk (label
shards, checkpoints, feature shards, conditions; the report's folder), then for a
seeded delay shorter than one more piece; where it landed is read from the disk
afterwards (``ATTN_CONTRASTIVE_STUDY_KILLS_SEED=N`` draws other moments). Nothing
finished is redone: every stage's ``results.json`` and every finished piece keeps its
inode and modification time to the end, and the runs' stage lines show each stage
finished by one run and skipped ("done earlier") by the later ones.
"""
from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

import study_kill_worker as worker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "study_kill_worker.py")
TIMEOUT_S = 300
SEED = int(os.environ.get("ATTN_CONTRASTIVE_STUDY_KILLS_SEED", "0"))
#: Seconds per record read or image corrupted (16 make a label shard, a feature shard,
#: a condition or a training step's batch) and per report figure in the killed study.
READ_S, FIGURE_S = 0.005, 0.3
BASE = os.path.join(worker.ROW, "seed0")
#: Each stage's folder, in the order the study runs them.
FOLDERS = {"teacher": "teacher", "label": "maps_train", "train": os.path.join(BASE, "train"),
           "linear_eval": os.path.join(BASE, "linear_eval"),
           "robustness": os.path.join(BASE, "robustness")}
#: A stage's finished pieces: files written once each, whose inode and mtime a redo
#: would change.
PIECES = ("*/results.json", "*/*/*/results.json", "maps_train/shard-*.npz",
          "*/checkpoints/*/_CHECKPOINT_METADATA", "*/*/*/checkpoints/*/_CHECKPOINT_METADATA",
          "*/*/linear_eval/features/*/*.npz", "*/*/robustness/conditions/*_*.json")


def _count(workdir: str, pattern: str) -> int:
  return len(glob.glob(os.path.join(workdir, pattern)))


def _checkpoints(workdir: str) -> int:
  folder = os.path.join(workdir, FOLDERS["train"], "checkpoints")
  return sum(bool(re.fullmatch(r"\d+", n)) for n in os.listdir(folder)) if os.path.isdir(
      folder) else 0


def _targets(rng: np.random.Generator, workdir: str):
  """(stage aimed at, reached(), seconds to wait once reached) of each kill, in order.

  A kill waits for ``k`` of its stage's pieces (at least one, and one fewer than the
  stage has), then for less than half the slowed reads of the next piece, so that it
  lands before the stage ends however fast the machine.
  """
  piece = 16 * READ_S  # a shard, a condition, a training step
  label = int(rng.integers(1, worker.LABEL_SHARDS))
  checkpoint = int(rng.integers(1, worker.TRAIN_STEPS // worker.CHECKPOINT_EVERY))
  features = int(rng.integers(1, worker.NUM_TRAIN // worker.FEATURE_SHARD))
  conditions = int(rng.integers(1, len(worker.CORRUPTIONS) * len(worker.SEVERITIES)))
  yield ("label", lambda: _count(workdir, "maps_train/shard-*.npz") >= label,
         rng.uniform(0, piece / 2))
  yield ("train", lambda: _checkpoints(workdir) >= checkpoint,
         rng.uniform(0, piece * worker.CHECKPOINT_EVERY / 2))
  yield ("linear_eval", lambda: _count(workdir, os.path.join(
      FOLDERS["linear_eval"], "features", "train", "*.npz")) >= features,
         rng.uniform(0, piece / 2))
  yield ("robustness", lambda: _count(workdir, os.path.join(
      FOLDERS["robustness"], "conditions", "*_*.json")) >= conditions,
         rng.uniform(0, piece / 2))
  # The report draws its three figures, FIGURE_S each, once its folder is made.
  yield ("report", lambda: os.path.isdir(os.path.join(workdir, "report")),
         rng.uniform(0, 2 * FIGURE_S))


def _landed(workdir: str) -> str:
  """The stage a kill stopped: the first without its results (the report: without the
  study's own), or ``between <stage> and <next>`` if it had not begun."""
  done = [s for s, f in FOLDERS.items() if os.path.exists(os.path.join(workdir, f,
                                                                       "results.json"))]
  stage = next((s for s in FOLDERS if s not in done), "report")
  began = (os.path.isdir(os.path.join(workdir, "report")) if stage == "report"
           else os.path.isdir(os.path.join(workdir, FOLDERS[stage])))
  if stage == "report" and os.path.exists(os.path.join(workdir, "results.json")):
    return "after the end"
  return stage if began else f"between {done[-1] if done else 'start'} and {stage}"


def _pieces(workdir: str) -> dict[str, tuple[int, int]]:
  """Each finished piece's path → (inode, mtime); not a checkpoint still being written
  (``<step>.orbax-checkpoint-tmp``), which the next run removes."""
  found = [f for p in PIECES for f in glob.glob(os.path.join(workdir, p))
           if "tmp" not in os.path.relpath(f, workdir)]
  return {os.path.relpath(f, workdir): (os.stat(f).st_ino, os.stat(f).st_mtime_ns)
          for f in found}


def _start(data_dir: str, workdir: str, log: str) -> subprocess.Popen:
  with open(log, "w") as out:
    return subprocess.Popen([sys.executable, WORKER, data_dir, workdir, f"--read_s={READ_S}",
                             f"--figure_s={FIGURE_S}"], stdout=out, stderr=subprocess.STDOUT,
                            env=dict(os.environ))


def _wait_for(proc: subprocess.Popen, reached) -> bool:
  """Polls until ``reached()``; False if ``proc`` ended first."""
  deadline = time.monotonic() + TIMEOUT_S
  while not reached():
    if proc.poll() is not None:
      return False
    assert time.monotonic() < deadline, "the study made no progress"
    time.sleep(0.005)
  return True


def _finished_stages(logs: list[str]) -> dict[str, int]:
  """How many runs finished each stage, from their ``stage k/n <name>: <took>`` lines
  (``done earlier`` for a stage that a run found finished and skipped)."""
  counts = {}
  for log in logs:
    with open(log) as f:
      for name, took in re.findall(r"^stage \d+/\d+ (\S+): ([^,\n]+)", f.read(), re.M):
        counts.setdefault(name, 0)
        counts[name] += took != "done earlier"
  return counts


def test_a_study_killed_in_every_stage_ends_with_the_uninterrupted_report(tmp_path):
  from attn_contrastive import main
  data_dir = str(tmp_path / "data")
  worker.build_data(data_dir)
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  main.execute(worker.study_config(data_dir), straight, "configs/study.py")

  landed, kept, logs = [], {}, []
  for aim, reached, delay in _targets(np.random.default_rng(SEED), killed):
    logs.append(str(tmp_path / f"{len(logs)}.log"))
    proc = _start(data_dir, killed, logs[-1])
    try:
      if _wait_for(proc, reached):
        time.sleep(delay)
    finally:
      proc.kill()
    assert proc.wait() in (0, -signal.SIGKILL), open(logs[-1]).read()[-3000:]
    landed.append((aim, _landed(killed)))
    now = _pieces(killed)
    assert {k: now.get(k) for k in kept} == kept, f"a finished piece was redone: {landed}"
    kept = now
  logs.append(str(tmp_path / "last.log"))
  proc = _start(data_dir, killed, logs[-1])
  assert proc.wait(TIMEOUT_S) == 0, open(logs[-1]).read()[-3000:]
  print("kills (aimed at, landed in):", landed)

  assert len({where for _, where in landed} & (set(FOLDERS) | {"report"})) >= 4, landed
  after = _pieces(killed)
  assert {k: after.get(k) for k in kept} == kept, "a finished piece was redone"
  finished = _finished_stages(logs)  # each stage finished by one run, skipped by the later
  assert finished == {name: 1 for name in finished} and len(finished) == len(FOLDERS), finished
  with open(os.path.join(straight, "report", "report.csv"), "rb") as f:
    expected = f.read()
  for row in (b"classification,Contrastive attn. teacher,linear_cached/top1,",
              b"robustness,Contrastive attn. teacher,robustness/mce,",
              b"alignment,Teacher,alignment/model/nss,"):
    assert row in expected, expected  # every stage's numbers are in it
  with open(os.path.join(killed, "report", "report.csv"), "rb") as f:
    assert f.read() == expected  # byte for byte: the report holds no time or path
  assert os.path.exists(os.path.join(killed, "report", "report.md"))
  assert not glob.glob(os.path.join(killed, "**", "*.tmp*"), recursive=True)
  assert not glob.glob(os.path.join(killed, "**", "*orbax-checkpoint-tmp*"), recursive=True)
