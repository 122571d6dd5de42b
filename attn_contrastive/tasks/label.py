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
``.npz`` so that readers can memory-map them.

Each image reaches the teacher at its own aspect ratio, its shorter side at
the teacher's training input's (``label.shape="own"``): padded to one of a
few canvases (``label.canvas_aspects``, :mod:`attn_contrastive.data.canvases`),
batched with the images of its canvas, the padding masked out of the input
and the log-density. ``label.shape="squashed"`` resizes every whole image to
the teacher's input instead, as a comparison. ``eval.num_threads`` threads
decode and place the images; the teacher runs jitted, ``eval.batch_size``
images a call, batch-sharded over this process's devices. ``results.json``
(process 0) counts every process's work.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from attn_contrastive import paths, progress
from attn_contrastive.data import attention_maps as am
from attn_contrastive.data import canvases
from attn_contrastive.data import images as images_lib
from attn_contrastive.evaluators import results as results_lib
from attn_contrastive.models.teacher import (canvas_density, input_hw, inside,
                                             teacher_from_config)
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
      "shape": config.label.shape,
      "canvas_aspects": [float(a) for a in config.label.canvas_aspects],
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
  """Jitted ``(uint8 canvases [B, H, W, 3], int32 image sizes [B, 2]) → uint8 maps
  [B, S, S]``.

  The teacher's density over each image's part of its canvas, the padding
  masked out (:func:`attn_contrastive.models.teacher.canvas_density`), is
  resized to ``map_size`` square (every map covers its whole image) and scaled
  per image so that its maximum is 255 (the scale carries no information:
  maps are renormalised wherever they are used).
  """
  sharding = NamedSharding(mesh, P("data"))

  def predict(images, image_hw):
    density, map_hw = canvas_density(model, variables, images, image_hw)
    mask = inside(map_hw, *density.shape[1:])
    density = jnp.maximum(jax.vmap(_resize_part, (0, 0, 0, None))(
        density, mask.astype(jnp.float32), map_hw, map_size), 0.0)
    peak = jnp.max(density, axis=(1, 2), keepdims=True)
    return jnp.round(255.0 * density / jnp.maximum(peak, 1e-30)).astype(jnp.uint8)

  return jax.jit(predict, in_shardings=(sharding, sharding), out_shardings=sharding)


def _resize_part(density: jax.Array, mask: jax.Array, part_hw: jax.Array,
                 size: int) -> jax.Array:
  """The top-left ``part_hw`` of one ``density`` map resized to ``size`` square.

  Linear, antialiased when shrinking, as :func:`jax_metrics.resize_maps`;
  the mask resized alike divides out the weight that fell on padding, so the
  result is the part's own resize (edges clamped), exactly that of a map
  without padding.
  """
  scale = size / part_hw.astype(jnp.float32)
  resize = lambda m: jax.image.scale_and_translate(  # noqa: E731
      m, (size, size), (0, 1), scale, jnp.zeros(2), method="linear", antialias=True)
  return resize(density) / jnp.maximum(resize(mask), 1e-12)


def placement(config) -> canvases.Placement:
  """Where each image goes for the teacher (``label.shape``, ``label.canvas_aspects``;
  the teacher's input and output stride from ``config.teacher``)."""
  return canvases.Placement(input_hw(config.teacher), tuple(config.label.canvas_aspects),
                            int(config.teacher.model.get("output_stride", 1)),
                            config.label.shape)


def _prepared(source, i: int, place: canvases.Placement
              ) -> tuple[np.ndarray, tuple[int, int], str, bool]:
  """Record ``i``'s image on its canvas, the image's size there, its key, and
  whether its image could not be decoded.

  An undecodable image (counted against ``data.max_bad_images``) is labelled
  from a black stand-in and its map written as zeros: every key keeps exactly
  one map, in order, and training never reads that map, as it replaces the
  whole record (see :mod:`attn_contrastive.data.images`).
  """
  record, bad = images_lib.record_or_blank(source, i)
  canvas, image_hw = place(np.asarray(record["image"]))
  return canvas, image_hw, am.key_str(record["file_name"]), bad


def _label_shard(prepared: list, predict, batch: int, num_devices: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Maps and keys of a shard's prepared records (futures of :func:`_prepared`), in
  order: batches of one canvas size each, padded with copies of their last image."""
  done = [f.result() for f in prepared]
  by_canvas: dict[tuple[int, ...], list[int]] = {}
  for i, (canvas, _, _, _) in enumerate(done):
    by_canvas.setdefault(canvas.shape, []).append(i)
  maps = [None] * len(done)
  for members in by_canvas.values():
    for lo in range(0, len(members), batch):
      idx = members[lo:lo + batch]
      size = canvases.padded_size(len(idx), batch, num_devices)
      idx_padded = idx + [idx[-1]] * (size - len(idx))
      images = np.stack([done[i][0] for i in idx_padded])
      image_hw = np.array([done[i][1] for i in idx_padded], np.int32)
      batch_maps = np.asarray(jax.device_get(predict(images, image_hw)))
      for i, m in zip(idx, batch_maps):
        maps[i] = np.zeros_like(m) if done[i][3] else m
  return np.stack(maps), np.array([key for _, _, key, _ in done])


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
  """Labels ``config.data.split``; returns what ``results.json`` holds: the maps
  and shards of the folder, and this run's shards written, images labelled
  and images/s, summed over processes.

  ``teacher`` (``(model, variables)``) and ``source`` replace the checkpoint
  and the tfds split (tests); ``stop_after_shards`` stops early, as a killed
  job would.
  """
  paths.makedirs(workdir)
  model, variables = teacher if teacher is not None else load_teacher(config)
  if source is None:
    from attn_contrastive.data import sources  # tfds, only when the split is opened here
    source = sources.open_config_split(config.data, config.data.split)
  meta = metadata(config, len(source))
  _write_metadata(workdir, meta)
  mesh = Mesh(np.array(jax.local_devices()), ("data",))
  predict = make_predict(model, variables, config.label.map_size, mesh)
  place = placement(config)
  num_shards = config.label.num_shards
  ranges = am.shard_ranges(len(source), num_shards)
  map_hw = (config.label.map_size, config.label.map_size)
  todo = []
  for index in range(jax.process_index(), num_shards, jax.process_count()):
    path = am.shard_path(workdir, index, num_shards)
    paths.remove_temporaries(path)  # a half-written file of a killed run
    if not (paths.exists(path) and _is_whole(path, ranges[index][1] - ranges[index][0],
                                             map_hw)):
      todo.append(index)  # else finished by an earlier run
  if stop_after_shards is not None:
    todo = todo[:stop_after_shards]
  written, images, t0 = 0, 0, time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(config.eval.num_threads) as pool:
    # The threads decode and place the next shard's images (Pillow and OpenCV
    # release the GIL) while the teacher runs on this one's.
    submit = lambda k: [pool.submit(_prepared, source, i, place)  # noqa: E731
                        for i in range(*ranges[todo[k]])] if k < len(todo) else []
    pending = submit(0)
    bar = progress.bar(len(todo), "label shards", unit="shard")  # this process's to do
    for k, index in _rounds(todo, num_shards):
      preemption.check()
      if index is None:
        continue
      prepared, pending = pending, submit(k + 1)
      maps, keys = _label_shard(prepared, predict, config.eval.batch_size, mesh.size)
      _save_shard(am.shard_path(workdir, index, num_shards), maps, keys)
      start, stop = ranges[index]
      written, images = written + 1, images + (stop - start)
      rate = images / max(time.perf_counter() - t0, 1e-9)
      logging.info("shard %d/%d done (%d images), %.1f images/s", index + 1, num_shards,
                   stop - start, rate)
      bar.update(1)
    bar.close()
  results = _totals(written, images, time.perf_counter() - t0)
  # The folder's size beside this run's work, which a resumed run makes partial.
  results.update(maps=len(source), shards=num_shards)
  # Undecodable images of this run, over every process (their maps are all zero).
  results["bad_images"] = results_lib.bad_images(
      [source.log] if getattr(source, "log", None) is not None else [])
  loop.write_results(workdir, results)
  return results


def _rounds(todo: list[int], num_shards: int) -> Iterator[tuple[int | None, int | None]]:
  """``(position in todo, shard)`` of this process's shards, one round at a time.

  Every process passes the same number of rounds (``num_shards`` over the
  process count, rounded up), with None where it has no shard to write in a
  round, so that every process meets the same piece boundaries
  (``preemption.check`` agrees on one of them with several processes).
  """
  rounds = -(-num_shards // jax.process_count())
  mine = {index // jax.process_count(): k for k, index in enumerate(todo)}
  for r in range(rounds):
    k = mine.get(r)
    yield k, (None if k is None else todo[k])


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
