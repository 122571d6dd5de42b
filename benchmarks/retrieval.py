r"""Retrieval at ImageNet size: time against the gallery's size, memory with the gallery split.

Random ``D``-dimensional features (1,000 classes, labels uniform) stand in
for a run's embeddings: the kernels' cost depends on the shapes only. Two
measurements, printed as a table and, last, one JSON object:

* ``time``: :func:`retrieval_metrics.retrieval_metrics` (each positive's rank
  counted, no sort) and the sort of every ranking it replaced (mAP only, same
  chunks) on ``--queries`` queries against galleries of ``--sizes`` items;
  the mAPs must agree. The growth exponent of each (``t ∝ N^a``, least
  squares over the sizes) and the time at ``--target`` (``Q×N``) extrapolated
  from the largest size (linear in ``Q``).
* ``memory``: peak resident set size of each process when ``--processes``
  processes (``jax.distributed`` on 127.0.0.1, one CPU device each) hold one
  block of a ``--gallery``-item gallery each, against one process holding it
  whole, the same ``--memory_queries`` queries; every process makes only its
  own rows (generated block by block from the seed), so none ever holds the
  whole gallery. The metrics must agree. ``--metric knn`` measures the kNN
  classifier (the monitor's bank, ``--knn_k`` neighbours) instead of
  retrieval: the ranked classes must agree.

Usage::

    python benchmarks/retrieval.py time [--queries 1000] [--sizes 50000,100000,200000]
    python benchmarks/retrieval.py memory [--gallery 1000000] [--processes 2] [--metric knn]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from machine import cpu_info  # beside this script

_FLAGS = argparse.ArgumentParser()
_FLAGS.add_argument("what", choices=("time", "memory", "worker"))
_FLAGS.add_argument("--dim", type=int, default=128)
_FLAGS.add_argument("--classes", type=int, default=1000)
_FLAGS.add_argument("--chunk", type=int, default=64)
_FLAGS.add_argument("--queries", type=int, default=1000)
_FLAGS.add_argument("--sizes", default="50000,100000,200000")
_FLAGS.add_argument("--target", default="50000x1000000")
_FLAGS.add_argument("--gallery", type=int, default=1_000_000)
_FLAGS.add_argument("--memory_queries", type=int, default=256)
_FLAGS.add_argument("--processes", type=int, default=2)
_FLAGS.add_argument("--metric", choices=("retrieval", "knn"), default="retrieval")
_FLAGS.add_argument("--knn_k", type=int, default=200)
_FLAGS.add_argument("--coordinator")
_FLAGS.add_argument("--process_id", type=int, default=0)

#: Rows generated per seed: any block of rows is made without the others.
_BLOCK = 1 << 16


def random_rows(start: int, stop: int, dim: int, classes: int, seed: int):
  """Rows ``start … stop-1`` of a random split (features, int32 labels), the same
  rows whatever block they are asked in."""
  feats, labels = [], []
  for b in range(start // _BLOCK, -(-stop // _BLOCK)):
    rng = np.random.default_rng([seed, b])
    x = rng.standard_normal((_BLOCK, dim), np.float32)
    y = rng.integers(0, classes, _BLOCK).astype(np.int32)
    lo, hi = max(start - b * _BLOCK, 0), min(stop - b * _BLOCK, _BLOCK)
    feats.append(x[lo:hi])
    labels.append(y[lo:hi])
  return np.concatenate(feats), np.concatenate(labels)


def sorted_map(queries, query_labels, gallery, gallery_labels, chunk: int) -> float:
  """The mAP by sorting every query's whole ranking (the method counting replaced)."""
  import jax
  import jax.numpy as jnp

  @jax.jit
  def sums(q, ql, g, gl):
    g = g / jnp.linalg.norm(g, axis=1, keepdims=True)

    def one(xs):
      qc, lc = xs
      sim = jnp.einsum("cd,nd->cn", qc, g, precision=jax.lax.Precision.HIGHEST)
      rel = (lc[:, None] == gl[None, :]).astype(jnp.int32)
      _, rel = jax.lax.sort((-sim, rel), dimension=1, is_stable=True, num_keys=1)
      hits = jnp.cumsum(rel, axis=1)
      prec = hits / jnp.arange(1, g.shape[0] + 1, dtype=jnp.float32)
      r = hits[:, -1]
      ap = jnp.sum(jnp.where(rel > 0, prec, 0.0), axis=1) / jnp.maximum(r, 1)
      return jnp.sum(jnp.where(r > 0, ap, 0.0)), jnp.sum(r > 0)
    return jax.lax.map(one, (q.reshape(-1, chunk, q.shape[1]), ql.reshape(-1, chunk)))

  total, used = sums(queries, query_labels, gallery, gallery_labels)
  return float(np.sum(np.asarray(total, np.float64)) / np.sum(np.asarray(used)))


def _timed(fn, *args, **kwargs):
  """``fn``'s result, wall seconds and this process's CPU seconds (all threads): on a
  shared machine the CPU seconds are the steadier figure."""
  start, cpu = time.perf_counter(), time.process_time()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start, time.process_time() - cpu


def time_sizes(args) -> dict:
  """Both methods' seconds per size (after a compile on the same shapes), and exponents."""
  from attn_contrastive.evaluators import retrieval_metrics as rm
  sizes = [int(s) for s in args.sizes.split(",")]
  q, ql = random_rows(0, args.queries, args.dim, args.classes, seed=1)
  rows = []
  for n in sizes:
    g, gl = random_rows(0, n, args.dim, args.classes, seed=0)
    run = lambda: rm.retrieval_metrics(q, ql, g, gl, ks=(1, 10, 100), chunk=args.chunk)  # noqa
    run()
    counted, t_count, cpu_count = _timed(run)
    sorted_map(q, ql, g, gl, args.chunk)
    mean_ap, t_sort, cpu_sort = _timed(sorted_map, q, ql, g, gl, args.chunk)
    if abs(mean_ap - counted["map"]) > 1e-5:
      raise AssertionError(f"mAP {counted['map']} counted, {mean_ap} sorted at N = {n}")
    rows.append({"gallery": n, "count_s": t_count, "sort_s": t_sort, "count_cpu_s": cpu_count,
                 "sort_cpu_s": cpu_sort, "map": counted["map"]})
    print(f"N = {n:>9,}: counted {t_count:8.2f} s ({cpu_count:.2f} CPU s), sorted "
          f"{t_sort:8.2f} s ({cpu_sort:.2f} CPU s), mAP {counted['map']:.6f}", flush=True)
  log_n = np.log([r["gallery"] for r in rows])
  tq, tn = (int(v) for v in args.target.split("x"))
  out = {"queries": args.queries, "dim": args.dim, "chunk": args.chunk, "rows": rows}
  for method in ("count", "sort"):
    for clock in ("s", "cpu_s"):
      t = np.array([r[f"{method}_{clock}"] for r in rows])
      a = float(np.polyfit(log_n, np.log(t), 1)[0])
      target = float(t[-1] * (tq / args.queries) * (tn / sizes[-1]) ** a)
      out[f"{method}_exponent_{clock}"], out[f"{method}_target_{clock}"] = a, target
      print(f"{method} ({clock}): t ∝ N^{a:.2f}; {args.target}: {target / 3600:.2f} h "
            "(extrapolated)")
  return out


def worker(args) -> None:
  """One process: its block of the gallery, the metrics, its peak RSS (one JSON line)."""
  import jax
  if args.processes > 1:
    jax.distributed.initialize(args.coordinator, args.processes, args.process_id)
  from attn_contrastive.evaluators import retrieval_metrics as rm
  from attn_contrastive.train import mesh as mesh_lib
  mesh = mesh_lib.make_mesh()
  n = args.gallery
  padded = -(-n // mesh.size) * mesh.size
  rows = mesh_lib.process_rows(padded, mesh)
  g, gl = random_rows(min(rows.start, n), min(rows.stop, n), args.dim, args.classes, seed=0)
  gallery = mesh_lib.rows_from_processes(g, padded, mesh)
  labels = mesh_lib.rows_from_processes(gl, padded, mesh)
  del g, gl
  q, ql = random_rows(0, args.memory_queries, args.dim, args.classes, seed=1)
  if args.metric == "knn":
    ranked, seconds, _ = _timed(
        lambda: np.asarray(rm.knn_classify(q, gallery, labels, num_classes=args.classes,
                                           k=args.knn_k, chunk=args.chunk, num_items=n)))
    out = {"top1": rm.topk_accuracy(ranked, ql)["top1"],
           "ranked_sha1": hashlib.sha1(ranked.astype(np.int32).tobytes()).hexdigest()}
  else:
    scores, seconds, _ = _timed(rm.retrieval_metrics, q, ql, gallery, labels,
                                chunk=args.chunk, num_items=n)
    out = {"map": scores["map"], "precision@10": scores["precision@10"]}
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps({"process": jax.process_index(), "peak_rss_bytes": peak, "seconds": seconds,
                    **out}), flush=True)


def _workers(args, processes: int) -> list[dict]:
  """Runs ``processes`` workers to the end; their JSON lines."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  base = [sys.executable, __file__, "worker", f"--gallery={args.gallery}",
          f"--memory_queries={args.memory_queries}", f"--dim={args.dim}",
          f"--chunk={args.chunk}", f"--classes={args.classes}", f"--processes={processes}",
          f"--metric={args.metric}", f"--knn_k={args.knn_k}"]
  if processes > 1:
    import socket
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      base.append(f"--coordinator=127.0.0.1:{s.getsockname()[1]}")
  procs = [subprocess.Popen(base + [f"--process_id={p}"], stdout=subprocess.PIPE, env=env,
                            text=True) for p in range(processes)]
  outs = [p.communicate()[0] for p in procs]
  if any(p.returncode for p in procs):
    raise RuntimeError(f"a worker failed: {[p.returncode for p in procs]}")
  return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def memory(args) -> dict:
  """Peak RSS per process, the gallery whole in one process and split over several."""
  whole = _workers(args, 1)
  split = _workers(args, args.processes)
  for w in split:
    same = (w["ranked_sha1"] == whole[0]["ranked_sha1"] if args.metric == "knn"
            else abs(w["map"] - whole[0]["map"]) <= 1e-6)
    if not same:
      raise AssertionError(f"{w} split, {whole[0]} whole: other scores")
  ratio = max(w["peak_rss_bytes"] for w in split) / whole[0]["peak_rss_bytes"]
  print(f"gallery {args.gallery:,} × {args.dim}: one process {whole[0]['peak_rss_bytes'] / 2**20:,.0f}"
        f" MiB; {args.processes} processes " + ", ".join(
            f"{w['peak_rss_bytes'] / 2**20:,.0f}" for w in split) + f" MiB ({ratio:.2f}×)")
  return {"metric": args.metric, "gallery": args.gallery, "dim": args.dim,
          "queries": args.memory_queries,
          "whole": whole, "split": split, "ratio": ratio}


def main() -> None:
  args = _FLAGS.parse_args()
  if args.what == "worker":
    return worker(args)
  out = time_sizes(args) if args.what == "time" else memory(args)
  print(json.dumps({"what": args.what, **out, "cpu": cpu_info(),
                    "load_average": os.getloadavg()}))


if __name__ == "__main__":
  main()
