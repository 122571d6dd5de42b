"""A task run as its own process for the Ctrl-C tests, through the same stop handling
as ``python -m attn_contrastive.main`` (:func:`preemption.run_stoppable`).

  python tests/interrupt_worker.py {pretrain,label,features,study} WORKDIR

* ``pretrain``: ``tests/train_worker.py``'s SimCLR run with two grain worker
  processes, :data:`PRETRAIN_STEPS` steps, a checkpoint every 4.
* ``label``: ``tests/kill_worker.py``'s label job (8 shards, read slowly).
* ``features``: ``tests/kill_worker.py``'s feature extraction into a cache, the
  first part of a linear evaluation.
* ``study``: :class:`attn_contrastive.tasks.study.Study` over one row of
  ``configs/study.py`` and four of its stages (teacher, label, training,
  linear evaluation), each a label job (as above) into the stage's folder.

``ready`` is printed when the work begins (after the imports), ``done`` when it
ends; the exit status is main's (0, or 130 after Ctrl-C). Only the standard
library is imported at the top: grain's workers (``spawn``) run it again.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PRETRAIN_STEPS = 24
#: Seconds per record read: label and feature extraction last over a second (8
#: shards of 8 records), each study stage about half as long.
READ_S = 0.02
STUDY_READ_S = 0.01


def pretrain(workdir: str) -> None:
  import train_worker  # (puts benchmarks/ on the path)
  import memory
  from attn_contrastive.train import loop
  config = train_worker.make_config(PRETRAIN_STEPS)
  config.train.update(dict(checkpoint_every=4, log_every=4))
  task = memory.make_task(config, train_worker.images(), memory.MemoryMonitor())
  loop.run(config, workdir, task)


def study(workdir: str) -> None:
  import kill_worker
  from attn_contrastive import config as config_lib
  from attn_contrastive.tasks import study as study_lib
  c = config_lib.load_config_file(os.path.join(os.path.dirname(HERE), "configs", "study.py"))
  c.study.rows = ("contrastive",)
  c.study.stages = ("teacher", "label", "train", "linear_eval")
  study_lib.Study(c, workdir, run_stage=lambda _, stage_dir: kill_worker.run_label(
      stage_dir, STUDY_READ_S)).run()


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("job", choices=("pretrain", "label", "features", "study"))
  parser.add_argument("workdir")
  args = parser.parse_args()
  import kill_worker
  import helpers  # noqa: F401
  from attn_contrastive.train import preemption
  if args.job == "pretrain":
    from absl import flags as absl_flags
    absl_flags.FLAGS(["interrupt_worker"])  # grain's worker processes read absl flags
  jobs = {"pretrain": pretrain, "study": study,
          "label": lambda w: kill_worker.run_label(w, READ_S),
          "features": lambda w: kill_worker.extract_features(w, READ_S)}
  print("ready", flush=True)
  preemption.run_stoppable(lambda: jobs[args.job](args.workdir))
  print("done", flush=True)


if __name__ == "__main__":
  main()
