r"""Memory over a long training run: RSS of the training process and its grain workers.

A SimCLR run of a small ResNet through the shared training loop
(``train/loop.py``) and input pipeline (``data/pipeline.py``) with
``input.num_workers`` grain worker processes (``mp_prefetch``), on an
in-memory split of random 64-px images (two 32-px views each), for
``--steps`` steps. Every ``--every`` steps, and after the last, an evaluator
that the loop calls like any other records the resident set size (RSS, from
``psutil``) of the training process and of each of its child processes (the
grain workers, and multiprocessing's resource tracker), and prints one line.
At the end: a table, and the growth of each from step ``--warmup`` to the
end and to the highest value after it. A run whose memory is flat grows by
a few percent at most; a leak grows with the steps.

RSS counts shared pages once per process that maps them (the libraries every
process loads, grain's shared-memory batches), so the children's sum is more
than they take together; what matters here is that it does not grow.

Usage::

    python benchmarks/memory.py [--steps 3000] [--every 100] [--warmup 500] \
        [--num_workers 2] [--batch 64] [--workdir DIR]

The last line printed is one JSON object with every number.

JAX and the project are imported inside the functions that use them: grain
starts its workers with ``spawn``, which runs this script's top level again
in each worker, and the workers should hold what those of a real run hold
(``python -m attn_contrastive.main`` imports little at its top level), not
TensorFlow and the training loop.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

import numpy as np
import psutil

from machine import cpu_info  # beside this script



class RandomImages:
  """An in-memory split: ``n`` random uint8 images with labels (fixed by ``seed``)."""

  def __init__(self, n: int, size: int = 64, num_classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    self.labels = rng.integers(0, num_classes, n)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"image": self.images[i], "label": int(self.labels[i])}


def make_config(steps: int, every: int, *, num_workers: int = 2, batch: int = 64,
                image_size: int = 32, conv_impl: str = "auto"):
  """A small SimCLR run: ResNet-10 of width 8, ``batch`` images a step, checkpoint at
  the end only, ``every`` steps between memory samples."""
  from attn_contrastive import config as config_lib
  c = config_lib.base_config()
  c.data.image_size = image_size
  c.model.update(dict(depth=10, width=8, stem_kernel=3, stem_stride=1, stem_pool=False,
                      proj_hidden_dim=32, proj_out_dim=16, conv_impl=conv_impl))
  c.input.update(dict(global_batch_size=batch, num_threads=2, prefetch=2,
                      num_workers=num_workers))
  c.optim.update(dict(warmup_epochs=0.1))
  c.train.update(dict(num_steps=steps, log_every=every, checkpoint_every=steps,
                      keep_checkpoints=1, async_checkpoint=False, eval_every=every))
  return c


def memory_sample(process: psutil.Process) -> dict[str, float]:
  """RSS (MiB) of ``process`` and of its living children, and their number."""
  children = []
  for child in process.children(recursive=True):
    try:
      children.append(child.memory_info().rss)
    except psutil.NoSuchProcess:  # ended between the listing and the reading
      pass
  return {"main_mib": process.memory_info().rss / 2**20,
          "children_mib": sum(children) / 2**20, "children": len(children)}


class MemoryMonitor:
  """An evaluator (:class:`attn_contrastive.evaluators.common.Evaluator`) that samples
  memory instead of scoring: the loop calls it every ``train.eval_every`` steps and
  after the last. Prints a line per sample (flushed, so another process can follow
  the run) and keeps every sample in ``rows``."""

  def __init__(self):
    self.process = psutil.Process()
    self.rows: list[dict[str, float]] = []
    self.results: dict[str, Any] = {}
    self.t0 = time.perf_counter()

  def __call__(self, state) -> dict[str, float]:
    import jax
    step = int(jax.device_get(state.step))  # waits for the step: memory after it
    row = {"step": step, "seconds": time.perf_counter() - self.t0,
           **memory_sample(self.process)}
    self.rows.append(row)
    print(f"step {step:6d}  {row['seconds']:7.1f} s  main {row['main_mib']:8.1f} MiB  "
          f"children {row['children_mib']:8.1f} MiB ({row['children']})", flush=True)
    self.results = {"memory": self.rows}
    return {"rss_main_mib": row["main_mib"], "rss_children_mib": row["children_mib"]}


def make_task(config, source, monitor: MemoryMonitor):
  """The SimCLR :class:`~attn_contrastive.train.loop.TaskSpec` of ``config`` on
  ``source``, with ``monitor`` as its evaluator."""
  import jax
  import jax.numpy as jnp
  from attn_contrastive.data import pipeline
  from attn_contrastive.models.build import build_model
  from attn_contrastive.tasks import pretrain
  from attn_contrastive.train import loop
  model = build_model(config)
  size = config.data.image_size
  return loop.TaskSpec(
      model=model, loss_fn=pretrain.make_loss_fn(model, config), train_source=source,
      train_transform=pipeline.ContrastiveViews(size, config.aug),
      sample_input=jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
      evaluate=monitor)


def growth(rows: list[dict[str, float]], warmup: int) -> dict[str, float]:
  """Growth (fractions) of each RSS from the first sample at or after ``warmup``:
  to the last sample, and to the highest sample after it."""
  after = [r for r in rows if r["step"] >= warmup]
  if len(after) < 2:
    raise ValueError(f"fewer than two samples from step {warmup}: raise --steps")
  out = {"warmup_step": after[0]["step"], "last_step": after[-1]["step"]}
  for key in ("main_mib", "children_mib"):
    base = after[0][key]
    out[f"{key}_at_warmup"] = base
    out[f"{key}_growth"] = after[-1][key] / base - 1.0
    out[f"{key}_peak_growth"] = max(r[key] for r in after) / base - 1.0
  total = [r["main_mib"] + r["children_mib"] for r in after]
  out["total_growth"] = total[-1] / total[0] - 1.0
  return out




def print_table(rows: list[dict[str, float]], summary: dict[str, float]) -> None:
  print("\n| step | s | main RSS (MiB) | children RSS (MiB) | children |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['step']} | {r['seconds']:.0f} | {r['main_mib']:.1f} | "
          f"{r['children_mib']:.1f} | {r['children']} |")
  print(f"\nfrom step {summary['warmup_step']} to {summary['last_step']}: main "
        f"{100 * summary['main_mib_growth']:+.2f}% (peak "
        f"{100 * summary['main_mib_peak_growth']:+.2f}%), children "
        f"{100 * summary['children_mib_growth']:+.2f}% (peak "
        f"{100 * summary['children_mib_peak_growth']:+.2f}%), total "
        f"{100 * summary['total_growth']:+.2f}%")


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--every", type=int, default=100)
  parser.add_argument("--warmup", type=int, default=500)
  parser.add_argument("--num_workers", type=int, default=2)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--num_images", type=int, default=2048)
  parser.add_argument("--workdir", default="", help="default: a temporary folder")
  args = parser.parse_args(argv)
  import jax
  from absl import flags as absl_flags
  from attn_contrastive.train import loop
  if not absl_flags.FLAGS.is_parsed():
    absl_flags.FLAGS(["memory"])  # grain's worker processes read absl flags
  config = make_config(args.steps, args.every, num_workers=args.num_workers,
                       batch=args.batch)
  monitor = MemoryMonitor()
  task = make_task(config, RandomImages(args.num_images), monitor)
  with tempfile.TemporaryDirectory() as tmp:
    loop.run(config, args.workdir or tmp, task)
  summary = growth(monitor.rows, args.warmup)
  print_table(monitor.rows, summary)
  result = {"args": vars(args), "cpu": cpu_info(), "python": sys.version.split()[0],
            "jax": jax.__version__, "samples": monitor.rows, "growth": summary}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
