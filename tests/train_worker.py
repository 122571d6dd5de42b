"""A short training run with grain worker processes, run as its own process by
``tests/test_workers.py``.

  python tests/train_worker.py WORKDIR [--steps=N] [--fail_at_step=K] [--pipeline_only]

The SimCLR run of ``benchmarks/memory.py`` (a tiny ResNet here, 16-px
views, batch 16) with ``input.num_workers=2``: its memory monitor prints a
line every 2 steps, so that a test can follow the run. ``--fail_at_step``
makes the split's reader raise for the first record of step K's batch, inside
a worker process, as a record that cannot be read would. ``--pipeline_only``
reads the same batches from ``pipeline.train_iterator`` without training
(no model, no TensorFlow: a faster start), printing a line every 2 batches.
Only the standard library is imported at the top: grain's workers (started with
``spawn``) run this file's top level again.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

NUM_IMAGES = 256  # 16 steps an epoch
BATCH = 16


def images(bad: int = -1):
  """The run's split: random 20-px images labelled by index modulo 4; reading record
  ``bad`` raises (``tests/fakes.py``, which grain's workers import as well)."""
  from fakes import random_images
  return random_images(NUM_IMAGES, classes=4, bad=bad)


def record_of_step(step: int, seed: int) -> int:
  """The record first in step ``step``'s batch (one process), as the pipeline shuffles;
  in no earlier step if ``step`` is in the first epoch."""
  import grain
  ds = grain.MapDataset.source(list(range(NUM_IMAGES))).seed(seed).shuffle().repeat(None)
  return int(ds[(step - 1) * BATCH])


def read_batches(config, source, steps: int) -> None:
  """``steps`` batches of the run's input pipeline, without the training step."""
  from attn_contrastive.data import pipeline
  it = pipeline.train_iterator(
      source, pipeline.ContrastiveViews(config.data.image_size, config.aug),
      seed=config.seed, global_batch=BATCH, num_threads=config.input.num_threads,
      prefetch=config.input.prefetch, num_workers=config.input.num_workers)
  for step in range(1, steps + 1):
    next(it)
    if step % 2 == 0:
      print(f"batch {step}", flush=True)


def make_config(steps: int):
  """The run's config: a ResNet of width 4 on 16-px views, two grain workers."""
  import memory
  config = memory.make_config(steps, 2, num_workers=2, batch=BATCH, image_size=16,
                              conv_impl="xla")
  config.model.update(dict(width=4, proj_hidden_dim=16, proj_out_dim=8))
  config.input.update(dict(num_threads=1, prefetch=1))
  return config


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--fail_at_step", type=int, default=0)
  parser.add_argument("--pipeline_only", action="store_true")
  args = parser.parse_args()
  from absl import flags as absl_flags
  import memory
  absl_flags.FLAGS(["train_worker"])  # grain's worker processes read absl flags
  config = make_config(args.steps)
  bad = record_of_step(args.fail_at_step, config.seed) if args.fail_at_step else -1
  if args.pipeline_only:
    read_batches(config, images(bad), args.steps)
  else:
    from attn_contrastive.train import loop
    monitor = memory.MemoryMonitor()
    loop.run(config, args.workdir, memory.make_task(config, images(bad), monitor))
  print("done", flush=True)


if __name__ == "__main__":
  main()
