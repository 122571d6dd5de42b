"""Label: run the frozen teacher over every image of a split → attention maps.

Writes the dataset read by :mod:`attn_contrastive.data.attention_maps` into
the workdir: one uint8 map per image (``label.map_size`` square, over the
whole image), beside its source record's ``file_name``. The split is cut into
``label.num_shards`` contiguous shards, dealt round-robin to processes; each
shard is written atomically (temporary file, then rename), so a killed job
restarted with the same config skips the finished shards and redoes the rest,
and any shard that is not whole (a truncated copy), removing the temporary
file a kill during a write left (tested with SIGKILLs at random moments,
``tests/test_kills.py``). Shards are uncompressed
``.npz`` so that readers can memory-map them. ``label.num_threads`` threads
decode and resize the images; the teacher runs jitted, batch-sharded over this
process's devices. ``results.json`` (process 0) counts every process's work.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from attn_contrastive import paths
from attn_contrastive.data import attention_maps as am
from attn_contrastive.data import augment
from attn_contrastive.data import images as images_lib
from attn_contrastive.data import sources
from attn_contrastive.models.teacher import teacher_from_config
from attn_contrastive.saliency import jax_metrics
from attn_contrastive.tasks import teacher as teacher_task
from attn_contrastive.train import checkpoint as ckpt_lib
from attn_contrastive.train import loop
from attn_contrastive.train import preemption


def metadata(config, num_examples: int) -> dict[str, Any]:
  """What the map dataset records about how it was made."""
  return {
      "teacher_checkpoint": paths.resolve(config.teacher_checkpoint)
                            if config.teacher_checkpoint else "",
      "teacher_config": json.loads(config.teacher.to_json()),
      "source": {"dataset": config.data.name, "split": config.data.split,
                 "num_examples": int(num_examples)},
      "map_size": int(config.label.map_size),
      "num_shards": int(config.label.num_shards),
      "key": "file_name",
      "format": "uint8 maps scaled to a maximum of 255",
  }


def _write_metadata(workdir: str, meta: dict[str, Any]) -> None:
  """Writes ``metadata.json``, or checks that a resumed run matches it."""
  path = os.path.join(workdir, am.METADATA)
  if paths.exists(path):
    old = paths.read_json(path)
    if old != json.loads(json.dumps(meta)):
      raise ValueError(f"{workdir} already holds attention maps made differently "
                       f"({path}); use a fresh workdir")
    return
  if jax.process_index() == 0:
    paths.write_json(path, meta)


def make_predict(model, variables, map_size: int, mesh: Mesh):
  """Jitted ``uint8 images [B, H, W, 3] → uint8 maps [B, S, S]``.

  The teacher's density is resized to ``map_size`` and scaled per image so
  that its maximum is 255 (the scale carries no information: maps are
  renormalised wherever they are used).
  """
  dtype = jnp.dtype(model.dtype)
  sharding = NamedSharding(mesh, P("data"))

  def predict(images):
    density = teacher_task.predict_density(model, variables, images, dtype)
    density = jnp.maximum(jax_metrics.resize_maps(density, (map_size, map_size)), 0.0)
    peak = jnp.max(density, axis=(1, 2), keepdims=True)
    return jnp.round(255.0 * density / jnp.maximum(peak, 1e-30)).astype(jnp.uint8)

  return jax.jit(predict, in_shardings=sharding, out_shardings=sharding)


def _prepared(source, i: int, image_hw) -> tuple[np.ndarray, str, bool]:
  """Record ``i``'s whole image resized to the teacher's input, its key, and whether
  its image could not be decoded.

  An undecodable image (counted against ``data.max_bad_images``) is labelled
  from a black stand-in and its map written as zeros: every key keeps exactly
  one map, in order, and training never reads that map, as it replaces the
  whole record (see :mod:`attn_contrastive.data.images`).
  """
  record, bad = images_lib.record_or_blank(source, i)
  return (augment.whole_image(record["image"], image_hw),
          am.key_str(record["file_name"]), bad)


def _label_shard(source, start: int, stop: int, predict, image_hw, batch: int,
                 num_devices: int, pool: concurrent.futures.Executor
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Maps and keys for records ``[start, stop)``, in batches padded to the devices.

  ``pool``'s threads decode and resize the images (Pillow and OpenCV release the GIL),
  the next batch's while the teacher runs on this one.
  """
  batches = [range(lo, min(lo + batch, stop)) for lo in range(start, stop, batch)]
  submit = lambda idx: [pool.submit(_prepared, source, i, image_hw) for i in idx]
  pending = submit(batches[0]) if batches else []
  maps, keys = [], []
  for k in range(len(batches)):
    done = [f.result() for f in pending]
    pending = submit(batches[k + 1]) if k + 1 < len(batches) else []
    images = np.stack([image for image, _, _ in done])
    n = len(images)
    pad = (-n) % num_devices
    if pad:
      images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
    batch_maps = np.array(jax.device_get(predict(images))[:n])
    batch_maps[[bad for _, _, bad in done]] = 0
    maps.append(batch_maps)
    keys.extend(key for _, key, _ in done)
  return np.concatenate(maps), np.array(keys)


def _save_shard(path: str, maps: np.ndarray, keys: np.ndarray) -> None:
  """Writes one shard atomically: a finished file is always complete. Uncompressed
  (``np.savez``): each array lies contiguous in the file, so a reader can map it.
  On a bucket the shard is one upload (see :mod:`attn_contrastive.paths`)."""
  paths.save_npz_atomic(path, maps=maps, keys=keys)


def load_teacher(config):
  """The teacher module and its restored (read-only) variables."""
  if not config.teacher_checkpoint:
    raise ValueError("set --config.teacher_checkpoint to the teacher's workdir")
  return teacher_from_config(config.teacher.model), ckpt_lib.load_variables(
      config.teacher_checkpoint)


def write_maps(config, workdir: str, *, teacher=None, source=None,
               stop_after_shards: int | None = None) -> dict[str, Any]:
  """Labels ``config.data.split``; returns what ``results.json`` holds: shards
  written, images labelled and images/s, summed over processes.

  ``teacher`` (``(model, variables)``) and ``source`` replace the checkpoint
  and the tfds split (tests); ``stop_after_shards`` stops early, as a killed
  job would.
  """
  paths.makedirs(workdir)
  model, variables = teacher if teacher is not None else load_teacher(config)
  if source is None:
    source = sources.open_config_split(config.data, config.data.split)
  meta = metadata(config, len(source))
  _write_metadata(workdir, meta)
  mesh = Mesh(np.array(jax.local_devices()), ("data",))
  predict = make_predict(model, variables, config.label.map_size, mesh)
  image_hw = teacher_task.input_hw(config.teacher)
  num_shards = config.label.num_shards
  ranges = am.shard_ranges(len(source), num_shards)
  written, images, t0 = 0, 0, time.perf_counter()
  map_hw = (config.label.map_size, config.label.map_size)
  with concurrent.futures.ThreadPoolExecutor(config.label.get("num_threads", 8)) as pool:
    for index in range(jax.process_index(), num_shards, jax.process_count()):
      preemption.check()
      path = am.shard_path(workdir, index, num_shards)
      start, stop = ranges[index]
      paths.remove_temporaries(path)  # a half-written file of a killed run
      if paths.exists(path) and _is_whole(path, stop - start, map_hw):
        continue  # finished by an earlier run
      if stop_after_shards is not None and written >= stop_after_shards:
        break
      maps, keys = _label_shard(source, start, stop, predict, image_hw,
                                config.label.batch_size, mesh.size, pool)
      _save_shard(path, maps, keys)
      written, images = written + 1, images + (stop - start)
      rate = images / max(time.perf_counter() - t0, 1e-9)
      logging.info("shard %d/%d done (%d images), %.1f images/s", index + 1, num_shards,
                   stop - start, rate)
  results = _totals(written, images, time.perf_counter() - t0)
  loop.write_results(workdir, results)
  return results


def _is_whole(path: str, num_maps: int, map_hw: tuple[int, int]) -> bool:
  """Whether an existing shard is whole; a broken one is logged, to be redone."""
  try:
    am.inspect_shard(path, num_maps, map_hw)
    return True
  except am.ShardError as e:
    logging.warning("redoing a broken shard: %s", e)
    return False


def _totals(written: int, images: int, seconds: float) -> dict[str, Any]:
  """This run's work summed over every process (each labels its own shards).

  A collective: every process calls it. The rate is all images over the
  slowest process's time.
  """
  mine = np.array([written, images, round(seconds * 1000)], np.int32)
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 3)
  seconds = max(int(every[:, 2].max()), 1) / 1000
  return {"shards_written": int(every[:, 0].sum()), "images_labelled": int(every[:, 1].sum()),
          "images_per_s": float(every[:, 1].sum()) / seconds, "processes": len(every)}
