r"""Host input pipeline throughput: ImageNet-like JPEGs with attention maps → SimCLR views.

Writes (once, then reuses; ``imagenet_like.py``) an array_record tfds
dataset of ImageNet-like JPEGs (about 500×375, ~110 kB: smooth multi-scale
random textures saved at quality 92 with 4:2:0 chroma, as photographs are)
with the records of tfds's ``imagenet2012`` (``image``, ``label``,
``file_name``), and a map dataset beside it written with the label task's
own writers (64×64 uint8 maps, ``--maps_per_shard`` maps a shard). Then it
times the pipeline a pretraining
run uses, end to end: ``sources.open_split`` (tfds data source: record read,
``tf.Example`` parse, JPEG decode), the join to the maps
(``attention_maps.with_attention_maps``), the "Contrastive attn. teacher"
row's transform (two SimCLR views at 224 px with their 28×28 maps) and
``pipeline.train_iterator`` (grain: shuffle, ``random_map``, batch, threads,
worker processes), for each ``--settings`` entry ``THREADSxWORKERS``
(``input.num_threads`` × ``input.num_workers``) and each ``--views_on`` path,
``--rounds`` times round by round (every setting and path once a round, so
that a burst of other load on a shared machine hits them alike; the median
is reported).

Reported per setting: views/s (wall clock), the CPU cores the pipeline kept
busy (CPU seconds of this process and its worker processes over wall
seconds) and views per CPU second, i.e. views/s per host core. The pieces
are timed alone first, in this process's main thread pinned to one core with
OpenCV on one thread, by CPU time and wall clock: decode only (a data-source
read), the views only (on images decoded beforehand), the join (decode + map
read + key check), and the join + views (what one pipeline record costs,
without grain); the same with ``aug.views_on = "device"`` (``views_device``,
``decode_join_views_device``: the host crops, flips and resizes in uint8 and
draws the colour parameters, the step applies them); and the JPEG decode alone on the stored bytes, by Pillow
(``jpeg_pillow``) and by the decoder the pipeline uses (``jpeg_turbo``:
libjpeg-turbo directly for sequential JPEGs, ``data/images.py``), side by
side. Last, the share of images for which a half-scale JPEG decode
would give the same views (both crops shrink by more than 2×).

Usage::

    python benchmarks/input_pipeline.py [--num_images 2000] [--batch 64] \
        [--batches 30] [--settings 1x0,2x0,4x0,2x2] [--data_dir DIR]

``--prefetch`` is grain's buffer, ``input.prefetch`` (in batches; 0: as many
as threads). The last line printed is one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import cv2
import numpy as np
from absl import flags as absl_flags

from attn_contrastive import config as config_lib
from attn_contrastive.data import augment, pipeline
from attn_contrastive.data import images as images_lib

import imagenet_like  # beside this script
from machine import cpu_info  # beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def transform_of_the_row(views_on: str = "host"):
  """The "Contrastive attn. teacher" ImageNet row's transform (224 px, 28×28 maps), its
  views made whole on the host or left to the device's colour ops (``aug.views_on``)."""
  c = config_lib.load_config_file(
      os.path.join(ROOT, "configs", "contrastive_attn_teacher.py:imagenet"))
  c.aug.views_on = views_on
  return pipeline.ContrastiveViews(c.data.image_size, c.aug, c.attention.map_size)


# ---------------------------------------------------------------------------
# Measuring.
# ---------------------------------------------------------------------------




def _process_cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of process ``pid`` (all its threads)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except OSError:
    return 0.0
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
  """Every live process below ``pid`` (grain's worker processes)."""
  children: dict[int, list[int]] = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      except (OSError, ValueError, IndexError):
        continue
      children.setdefault(ppid, []).append(int(entry))
  out, todo = [], [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      out.append(child)
      todo.append(child)
  return out


def cpu_seconds() -> float:
  """CPU seconds used so far by this process and its live descendants."""
  return time.process_time() + sum(_process_cpu_seconds(p) for p in _descendants(os.getpid()))


class _OneCore:
  """Pins the calling thread to one core and OpenCV to one thread, then restores both."""

  def __enter__(self):
    self.cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    self.affinity = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if self.affinity:
      os.sched_setaffinity(0, {max(self.affinity)})
    return self

  def __exit__(self, *exc):
    cv2.setNumThreads(self.cv2_threads)
    if self.affinity:
      os.sched_setaffinity(0, self.affinity)


def _cpu_seconds_of(fn, items) -> tuple[float, float]:
  """(wall seconds, this thread's CPU seconds) of ``fn`` over ``items``."""
  t0, c0 = time.perf_counter(), time.thread_time()
  for x in items:
    fn(x)
  return time.perf_counter() - t0, time.thread_time() - c0


def _encoded(source, i: int) -> bytes:
  """Record ``i``'s image as stored (the JPEG's bytes), from beneath the decoding."""
  while not isinstance(source[i].get("image"), (bytes, np.bytes_)):
    source = source.source
  return bytes(source[i]["image"])


def time_pieces(images, joined, transform, device_transform, num: int, rounds: int = 5,
                seed: int = 0) -> dict[str, dict[str, float]]:
  """Images/s of each piece on one core (see the module docstring).

  The images are cut into ``rounds`` chunks and every piece runs on each chunk
  in turn, so that a burst of other load hits all pieces alike; each rate is
  the median over the chunks, by the wall clock and by this thread's CPU time
  (less disturbed by other load).
  """
  idx = [int(i) for i in np.random.default_rng(seed).permutation(len(images))[:num]]
  rng = np.random.default_rng(seed)
  pieces = {
      "jpeg_pillow": lambda i: images_lib.decode_with_pillow(encoded[i]),
      "jpeg_turbo": lambda i: images_lib.decode(encoded[i]),
      "decode": lambda i: images[i],
      "views": lambda i: transform(decoded[i], rng),
      "views_device": lambda i: device_transform(decoded[i], rng),
      "decode_join": lambda i: joined[i],
      "decode_join_views": lambda i: transform(joined[i], rng),
      "decode_join_views_device": lambda i: device_transform(joined[i], rng),
  }
  times = {name: [] for name in pieces}
  with _OneCore():
    decoded = {i: joined[i] for i in idx}
    encoded = {i: _encoded(images, i) for i in idx}
    for fn in pieces.values():
      fn(idx[0])  # warm-up
    for chunk in np.array_split(np.array(idx), max(1, min(rounds, len(idx)))):
      chunk = [int(i) for i in chunk]
      for name, fn in pieces.items():
        wall, cpu = _cpu_seconds_of(fn, chunk)
        times[name].append((len(chunk) / max(wall, 1e-9), len(chunk) / max(cpu, 1e-9)))
  return {name: {"wall": float(np.median([w for w, _ in t])),
                 "cpu": float(np.median([c for _, c in t]))} for name, t in times.items()}


def time_pipeline(joined, transform, *, threads: int, workers: int, batch: int,
                  batches: int, warmup: int, prefetch: int) -> dict[str, float]:
  """The grain pipeline of a training run: views/s, cores kept busy, views/s per core."""
  it = pipeline.train_iterator(joined, transform, seed=0, global_batch=batch,
                               num_threads=threads, prefetch=prefetch or threads,
                               num_workers=workers)
  try:
    for _ in range(warmup):
      next(it)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(batches):
      b = next(it)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()
  assert b["view1"].shape == (batch, 224, 224, 3) and b["map1"].shape == (batch, 28, 28)
  views = 2 * batch * batches
  in_flight = max(workers, 1) * min(threads, prefetch or threads)  # batches being made
  return {"threads": threads, "workers": workers, "in_flight": in_flight,
          "views_per_s": views / wall,
          "busy_cores": cpu / wall, "views_per_core_s": views / max(cpu, 1e-9)}


def median_run(views_on: str, timed: list[dict[str, float]]) -> dict[str, Any]:
  """One setting's rounds as one row: each rate's median, and every round's views/s
  per core."""
  row = dict(timed[0], views_on=views_on)
  for key in ("views_per_s", "busy_cores", "views_per_core_s"):
    row[key] = float(np.median([t[key] for t in timed]))
  row["views_per_core_s_runs"] = [t["views_per_core_s"] for t in timed]
  return row


def reduced_decode_share(shapes, out_size: int = 224, area_min: float = 0.08,
                         samples: int = 20000, seed: int = 0) -> dict[str, float]:
  """Per image shape, the share of images whose two SimCLR crops both shrink by more
  than 2×.

  ``augment.crop_resize`` first halves such a crop with a 2×2 area filter on
  the whole image's grid, so only for them would a JPEG decoded at half scale
  (DCT scaling: PIL's ``draft``, OpenCV's ``IMREAD_REDUCED_COLOR_2``) give the
  same views up to that filter; both views come from one decode.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for height, width, _ in shapes:
    both = 0
    for _ in range(samples):
      boxes = [augment.sample_crop_box(rng, height, width, (area_min, 1.0)) for _ in range(2)]
      both += all(max(b.height * height, b.width * width) > 2 * out_size for b in boxes)
    out[f"{height}x{width}"] = both / samples
  return out


def parse_settings(text: str) -> list[tuple[int, int]]:
  """``"1x0,4x2"`` → [(1, 0), (4, 2)] (threads × worker processes)."""
  out = []
  for part in text.split(","):
    threads, _, workers = part.strip().partition("x")
    out.append((int(threads), int(workers or 0)))
  return out


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Builds what is missing, times the pieces and every setting; prints a table."""
  info = cpu_info()
  print(f"CPU: {info['model']}; flags: {' '.join(info['flags'])}; "
        f"{info['usable_cores']} usable of {info['cpu_count']} cores")
  t0 = time.perf_counter()
  images, joined, data_dir = imagenet_like.prepare(args.data_dir, args.num_images,
                                                     args.maps_per_shard)
  kb = imagenet_like.mean_jpeg_kb(data_dir)
  print(f"dataset: {len(images)} images, JPEGs of {kb:.0f} kB on average, in {data_dir} "
        f"({time.perf_counter() - t0:.1f} s to build or open)")
  transform, device_transform = (transform_of_the_row(v) for v in ("host", "device"))
  pieces = time_pieces(images, joined, transform, device_transform,
                       min(args.piece_images, len(images)))
  print("\npieces, one core; images/s by CPU time (wall clock), two views an image:")
  for name, rate in pieces.items():
    print(f"  {name:24s} {rate['cpu']:7.1f} ({rate['wall']:7.1f}) images/s "
          f"{1e3 / rate['cpu']:6.2f} ms/image")
  runs: dict[tuple[str, int, int], list[dict[str, float]]] = {}
  for _ in range(args.rounds):  # round by round, so that a burst of load hits every setting
    for views_on in args.views_on.split(","):
      for threads, workers in parse_settings(args.settings):
        runs.setdefault((views_on, threads, workers), []).append(time_pipeline(
            joined, transform if views_on == "host" else device_transform, threads=threads,
            workers=workers, batch=args.batch, batches=args.batches, warmup=args.warmup,
            prefetch=args.prefetch))
  rows = [median_run(views_on, timed) for (views_on, _, _), timed in runs.items()]
  print(f"\npipeline, batch {args.batch}, {args.batches} batches after {args.warmup}, median "
        f"of {args.rounds} rounds (views/s per core: lowest-highest):")
  print(f"  {'views on':>8s} {'threads':>7s} {'workers':>7s} {'in flight':>9s} "
        f"{'views/s':>9s} {'busy cores':>10s} {'views/s/core':>12s}")
  for row in rows:
    print(f"  {row['views_on']:>8s} {row['threads']:7d} {row['workers']:7d} "
          f"{row['in_flight']:9d} {row['views_per_s']:9.1f} {row['busy_cores']:10.2f} "
          f"{row['views_per_core_s']:12.1f} ({min(row['views_per_core_s_runs']):.0f}-"
          f"{max(row['views_per_core_s_runs']):.0f})")
  cores = {}
  for views_on in args.views_on.split(","):
    best = max(r["views_per_core_s"] for r in rows if r["views_on"] == views_on)
    suffix = "" if views_on == "host" else "_device"
    record_rate = 2 * pieces[f"decode_join_views{suffix}"]["cpu"]
    cores[views_on] = args.target / best
    print(f"\nviews on the {views_on}: the pieces alone give {record_rate:.0f} views per CPU "
          f"second; the best setting keeps {best / record_rate:.0%} of that; host cores to "
          f"feed {args.target:,.0f} views/s at its per-core rate ({best:.0f}): "
          f"{cores[views_on]:.1f}")
  share = reduced_decode_share(imagenet_like.SHAPES, samples=args.crop_samples)
  print("images whose two crops both shrink by more than 2x (a half-scale decode would "
        "do): " + ", ".join(f"{k} {v:.2%}" for k, v in share.items()))
  return {"cpu": info, "num_images": len(images), "mean_jpeg_kb": kb,
          "pieces_images_per_s": pieces, "pipeline": rows, "target_views_per_s": args.target,
          "cores_for_target": cores, "half_scale_decode_share": share}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--num_images", type=int, default=2000, help="images in the dataset")
  p.add_argument("--data_dir", default="/tmp/attn_contrastive_input_bench",
                 help="where the dataset is written (one folder per image count)")
  p.add_argument("--maps_per_shard", type=int, default=16,
                 help="maps per shard: ImageNet's maps are in 1,024 shards, so nearly "
                 "every shuffled read opens a shard; small shards keep that so here")
  p.add_argument("--settings", default="1x0,2x0,4x0,2x2",
                 help="comma-separated THREADSxWORKERS (input.num_threads x num_workers)")
  p.add_argument("--views_on", default="host,device",
                 help="comma-separated aug.views_on paths the pipeline is timed with")
  p.add_argument("--batch", type=int, default=64, help="images per batch")
  p.add_argument("--batches", type=int, default=30, help="timed batches per setting")
  p.add_argument("--rounds", type=int, default=3,
                 help="times every setting is timed, round by round; the median is reported")
  p.add_argument("--warmup", type=int, default=4, help="untimed batches first")
  p.add_argument("--prefetch", type=int, default=4,
                 help="grain's prefetch buffer in batches (input.prefetch; 0: the number "
                 "of threads)")
  p.add_argument("--piece_images", type=int, default=200, help="images per piece timing")
  p.add_argument("--crop_samples", type=int, default=20000,
                 help="crop pairs drawn per image shape for the half-scale decode share")
  p.add_argument("--target", type=float, default=7144.0,
                 help="views/s to feed (one H200's SimCLR R50 step, benchmarks/README.md)")
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if not absl_flags.FLAGS.is_parsed():
    absl_flags.FLAGS(["input_pipeline"])  # grain's worker processes read absl flags
  out = run(args)
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
