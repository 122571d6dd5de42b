"""Embeddings of a whole split through a frozen model, in split order.

Linear evaluation on cached features, the kNN monitor and retrieval all need
one vector per example of a split. :func:`extract` runs an ``embed`` function
(``(state, uint8 images) -> [B, D]``, jitted over global batches sharded on
the mesh) over the split's evaluation views and returns the features and
labels of every example, in the split's order, on every process.

With ``cache_dir`` the features are written in shards of ``shard_size``
examples (``<cache_dir>/<i:05d>.npz``, by process 0, atomically) and a shard
already on disk is read back instead of recomputed, so a killed extraction
restarted with the same arguments continues where it stopped, and removes
the temporary file a kill during a write left (tested with SIGKILLs at random
moments, ``tests/test_kills.py``). Memory: the
returned arrays hold the whole split on every host (ImageNet's train split
at D = 2048 in float32 is 10.5 GB), unless ``rows`` asks for one block of
them (a retrieval gallery, each process keeping its own rows): with a cache,
a host then holds one cache shard whole at a time and its block.
:func:`extract_block` embeds each process's own block only, on the devices,
for a bank that is not cached (the kNN monitor's).
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import Any, Callable, Iterator

import jax
import numpy as np

from attn_contrastive import paths
from attn_contrastive import progress
from attn_contrastive.evaluators import common
from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train import preemption

#: ``(state, uint8 images [B, H, W, 3]) -> features [B, D]``.
EmbedFn = Callable[[Any, jax.Array], jax.Array]


@functools.lru_cache(maxsize=16)
def _jitted(embed: EmbedFn, sharding: jax.sharding.Sharding):
  """One jitted ``embed`` per function and sharding: repeated extractions (the 95
  conditions of a robustness run) trace and compile it once."""
  return jax.jit(embed, out_shardings=sharding)


def _gather_in_order(local: np.ndarray, positions: np.ndarray, total: int) -> np.ndarray:
  """Every process's rows (at global ``positions``) as one array in split order."""
  rows = np.asarray(common.gather_from_processes(local))
  pos = np.asarray(common.gather_from_processes(positions))
  if rows.ndim == local.ndim + 1:  # one block per process
    rows = rows.reshape(-1, *local.shape[1:])
    pos = pos.reshape(-1)
  out = np.empty((total, *local.shape[1:]), local.dtype)
  keep = pos < total
  out[pos[keep]] = rows[keep]
  return out


def _extract_range(embed_step, state, source, transform, start: int, stop: int,
                   global_batch: int, pool, mesh, bar) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of examples ``start … stop-1`` (gathered, in order); ``bar``
  counts the images embedded."""
  load = lambda i: transform(source[start + i])  # noqa: E731
  feats, labels, positions = [], [], []
  n_proc, p = jax.process_count(), jax.process_index()
  for k, (examples, mask) in enumerate(
      common.split_batches(load, stop - start, global_batch, pool)):
    images = np.stack([ex["image"] for ex in examples])
    out = embed_step(state, mesh_lib.to_global({"x": images}, mesh)["x"])
    feats.append(mesh_lib.to_host_local(out, mesh))
    labels.append(np.array([ex.get("label", -1) for ex in examples], np.int64))
    pos = k * global_batch + p + n_proc * np.arange(len(examples))
    positions.append(np.where(mask, pos, stop - start))
    bar.update(min(global_batch, stop - start - k * global_batch))
  local_f = np.concatenate(feats).astype(np.float32)
  local_l = np.concatenate(labels)
  local_p = np.concatenate(positions)
  return (_gather_in_order(local_f, local_p, stop - start),
          _gather_in_order(local_l, local_p, stop - start))


def extract(embed: EmbedFn, state, source, transform: Callable[[Any], common.Example],
            eval_cfg, *, mesh=None, cache_dir: str | None = None,
            shard_size: int = 50_000, rows: slice | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
  """``(features [n, D] float32, labels [n] int64)`` of the split's first n examples.

  ``n`` is ``eval_cfg.max_examples`` or the whole split; ``transform(record)``
  makes the example (``image``, and ``label`` if the split has one: -1
  otherwise). ``eval_cfg.batch_size`` is the global batch. With ``rows``
  (a ``slice`` of ``[0, n)``, without step) only those examples' rows are
  returned; every process still computes every shard it does not find cached.
  """
  mesh = mesh or mesh_lib.make_mesh()
  global_batch = int(eval_cfg.batch_size)
  mesh_lib.check_batch_divisible(global_batch, mesh)
  total = common.num_examples(source, eval_cfg.max_examples)
  embed_step = _jitted(embed, mesh_lib.data_sharding(mesh))
  threads = max(int(eval_cfg.num_threads), 1)
  parts_f, parts_l = [], []
  with (concurrent.futures.ThreadPoolExecutor(threads) as pool,
        progress.bar(total, "features", unit="img") as bar):
    for start in range(0, total, shard_size if cache_dir else total):
      preemption.check()
      stop = min(start + (shard_size if cache_dir else total), total)
      keep = _overlap(rows, start, stop)
      path = cache_dir and os.path.join(cache_dir, f"{start // shard_size:05d}.npz")
      if path and jax.process_index() == 0:
        paths.remove_temporaries(path)  # a half-written file of a killed run
      if path and paths.exists(path):
        if keep.start == keep.stop and (parts_f or stop < total):
          continue  # cached, and none of its rows is asked for here (the last gives D)
        cached = paths.load_npz(path)
        f, lab = cached["features"], cached["labels"]
        if len(f) != stop - start:
          raise ValueError(f"{path} holds {len(f)} features, expected {stop - start}: it "
                           "comes from another split or shard size; delete the folder")
        bar.update(stop - start)
      else:
        f, lab = _extract_range(embed_step, state, source, transform, start, stop,
                                global_batch, pool, mesh, bar)
        if path and jax.process_index() == 0:
          paths.save_npz_atomic(path, features=f, labels=lab)
      parts_f.append(f if rows is None else f[keep].copy())
      parts_l.append(lab if rows is None else lab[keep].copy())
  return np.concatenate(parts_f), np.concatenate(parts_l)


def _block_batches(load: Callable[[int], common.Example], rows: slice, num_examples: int,
                   local_batch: int, pool
                   ) -> Iterator[tuple[list[common.Example], np.ndarray]]:
  """This process's examples ``rows`` (those below ``num_examples``), ``local_batch`` at a
  time: ``(examples, mask)``, the missing places filled with the block's first example
  (or example 0) where ``mask`` is False, so that every process runs as many batches."""
  fill = rows.start if rows.start < num_examples else 0
  for start in range(rows.start, rows.stop, local_batch):
    index = np.arange(start, start + local_batch)
    mask = (index < rows.stop) & (index < num_examples)
    yield list(pool.map(load, np.where(mask, index, fill).tolist())), mask


def extract_block(embed: EmbedFn, state, source, transform: Callable[[Any], common.Example],
                  eval_cfg, *, mesh=None, columns: int | None = None
                  ) -> tuple[jax.Array, jax.Array, int]:
  """``(features [R, D], labels [R], n)``: the split's first ``n`` examples as global arrays
  sharded by rows on the mesh, each process embedding and holding only its own block.

  ``n`` is as in :func:`extract`; ``R`` is ``n`` padded to a multiple of the
  mesh size, the rows from ``n`` on zeros (labels 0), to be left out by
  ``num_items`` (:mod:`attn_contrastive.evaluators.retrieval_metrics`).
  Process ``p`` embeds the contiguous rows :func:`mesh.process_rows` gives it
  (``eval_cfg.batch_size / num_processes`` at a time, as many batches on every
  process) and its devices keep their outputs: nothing is gathered, so a
  host holds ``R / num_processes`` rows of the bank (a kNN bank at ImageNet
  size, which :func:`extract` would return whole on every host). The rows
  are in split order, so a ranking breaks ties as the whole array's would.
  ``columns``: only the first that many of ``embed``'s output columns are kept
  (the rest computed beside the features, as the kNN monitor's classifiers).
  """
  mesh = mesh or mesh_lib.make_mesh()
  global_batch = int(eval_cfg.batch_size)
  mesh_lib.check_batch_divisible(global_batch, mesh)
  n = common.num_examples(source, eval_cfg.max_examples)
  padded = -(-n // mesh.size) * mesh.size
  rows = mesh_lib.process_rows(padded, mesh)
  embed_step = _jitted(embed, mesh_lib.data_sharding(mesh))
  load = lambda i: transform(source[i])  # noqa: E731
  feats, labels = [], []
  preemption.check()
  with (concurrent.futures.ThreadPoolExecutor(max(int(eval_cfg.num_threads), 1)) as pool,
        progress.bar(min(rows.stop, n) - min(rows.start, n), "features", unit="img") as bar):
    for examples, mask in _block_batches(load, rows, n, global_batch // jax.process_count(),
                                         pool):
      out = embed_step(state, mesh_lib.to_global(
          {"x": np.stack([ex["image"] for ex in examples])}, mesh)["x"])
      feats.append(mesh_lib.to_host_local(out, mesh)[mask, :columns].astype(np.float32))
      labels.append(np.array([ex.get("label", -1) for ex in examples], np.int32)[mask])
      bar.update(int(mask.sum()))
  return (mesh_lib.rows_from_processes(np.concatenate(feats), padded, mesh),
          mesh_lib.rows_from_processes(np.concatenate(labels), padded, mesh), n)


def _overlap(rows: slice | None, start: int, stop: int) -> slice:
  """The part of ``rows`` inside ``[start, stop)``, relative to ``start``."""
  if rows is None:
    return slice(0, stop - start)
  lo = min(max(rows.start - start, 0), stop - start)
  return slice(lo, max(min(rows.stop - start, stop - start), lo))


def check_cache_source(cache_root: str, source: dict[str, Any]) -> None:
  """Refuses a features folder made from another checkpoint or view; records this one's.

  ``source`` names what the features are of (checkpoint, step, embedding,
  view); it is kept in ``<cache_root>/source.json`` by the first run.
  """
  path = os.path.join(cache_root, "source.json")
  if paths.exists(path):
    cached = paths.read_json(path)
    if cached != source:
      raise ValueError(f"{cache_root} holds features of {cached}, not {source}; delete it "
                       "or choose another workdir")
  elif jax.process_index() == 0:
    paths.makedirs(cache_root)
    paths.write_json(path, source, sort_keys=False)
