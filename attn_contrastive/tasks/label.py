"""Label: run the frozen teacher over every image of a split → attention maps.

Writes the dataset read by :mod:`attn_contrastive.data.attention_maps` into
the workdir: one uint8 map per image (``label.map_size`` square, over the
whole image), beside its source record's ``file_name``. The split is cut into
``label.num_shards`` contiguous shards, dealt round-robin to processes; each
shard is written atomically (temporary file, then rename), so a killed job
restarted with the same config skips the finished shards and redoes only the
rest. The teacher runs jitted, batch-sharded over this process's devices.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from attn_contrastive.data import attention_maps as am
from attn_contrastive.data import sources
from attn_contrastive.evaluators import saliency as saliency_eval
from attn_contrastive.models.teacher import teacher_from_config
from attn_contrastive.saliency import jax_metrics
from attn_contrastive.tasks import teacher as teacher_task
from attn_contrastive.train import checkpoint as ckpt_lib
from attn_contrastive.train import loop


def metadata(config, num_examples: int) -> dict[str, Any]:
  """What the map dataset records about how it was made."""
  return {
      "teacher_checkpoint": os.path.abspath(config.teacher_checkpoint)
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
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != json.loads(json.dumps(meta)):
      raise ValueError(f"{workdir} already holds attention maps made differently "
                       f"({path}); use a fresh workdir")
    return
  if jax.process_index() == 0:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


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


def _label_shard(source, start: int, stop: int, predict, image_hw, batch: int,
                 num_devices: int) -> tuple[np.ndarray, np.ndarray]:
  """Maps and keys for records ``[start, stop)``, in batches padded to the devices."""
  maps, keys = [], []
  for lo in range(start, stop, batch):
    records = [source[i] for i in range(lo, min(lo + batch, stop))]
    images = np.stack([saliency_eval.whole_image(r["image"], image_hw) for r in records])
    n = len(images)
    pad = (-n) % num_devices
    if pad:
      images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
    maps.append(np.asarray(jax.device_get(predict(images)))[:n])
    keys.extend(am.key_str(r["file_name"]) for r in records)
  return np.concatenate(maps), np.array(keys)


def _save_shard(path: str, maps: np.ndarray, keys: np.ndarray) -> None:
  """Writes one shard atomically: a finished file is always complete."""
  tmp = path + f".tmp{os.getpid()}.npz"
  np.savez(tmp, maps=maps, keys=keys)
  os.replace(tmp, path)


def load_teacher(config):
  """The teacher module and its restored (read-only) variables."""
  if not config.teacher_checkpoint:
    raise ValueError("set --config.teacher_checkpoint to the teacher's workdir")
  return teacher_from_config(config.teacher.model), ckpt_lib.load_variables(
      config.teacher_checkpoint)


def train_and_evaluate(config, workdir: str, *, teacher=None, source=None,
                       stop_after_shards: int | None = None) -> dict[str, Any]:
  """Labels ``config.data.split``; returns ``{'shards_written', 'images_per_s'}``.

  ``teacher`` (``(model, variables)``) and ``source`` replace the checkpoint
  and the tfds split (tests); ``stop_after_shards`` stops early, as a killed
  job would.
  """
  os.makedirs(workdir, exist_ok=True)
  model, variables = teacher if teacher is not None else load_teacher(config)
  if source is None:
    source = sources.open_split(config.data.name, config.data.split,
                                config.data.data_dir, config.data.auto_prepare)
  meta = metadata(config, len(source))
  _write_metadata(workdir, meta)
  mesh = Mesh(np.array(jax.local_devices()), ("data",))
  predict = make_predict(model, variables, config.label.map_size, mesh)
  image_hw = teacher_task.input_hw(config.teacher)
  num_shards = config.label.num_shards
  ranges = am.shard_ranges(len(source), num_shards)
  written, images, t0 = 0, 0, time.perf_counter()
  for index in range(jax.process_index(), num_shards, jax.process_count()):
    path = am.shard_path(workdir, index, num_shards)
    if os.path.exists(path):
      continue  # finished by an earlier run
    if stop_after_shards is not None and written >= stop_after_shards:
      break
    start, stop = ranges[index]
    maps, keys = _label_shard(source, start, stop, predict, image_hw,
                              config.label.batch_size, mesh.size)
    _save_shard(path, maps, keys)
    written, images = written + 1, images + (stop - start)
    rate = images / max(time.perf_counter() - t0, 1e-9)
    logging.info("shard %d/%d done (%d images), %.1f images/s", index + 1, num_shards,
                 stop - start, rate)
  rate = images / max(time.perf_counter() - t0, 1e-9)
  loop.write_results(workdir, {"shards_written": written, "images_per_s": rate})
  return {"shards_written": written, "images_per_s": rate}
