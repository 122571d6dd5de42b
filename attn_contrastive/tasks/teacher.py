"""The saliency teacher: trained from scratch on human attention, scored with MIT metrics.

Data: a human-attention dataset (``salient_objects/human_attention`` or
SALICON) with ``image``, ``saliency_map`` (a grey density map) and
``fixations`` (int32 ``[N, 2]``, 0-based ``(row, col)`` in image pixels).

Training view: a random resized crop (area ``aug.area_min``–1, aspect ratio
within 3/4–4/3 of the input's) and a horizontal flip with probability 1/2
(``aug.hflip``). The crop box and flip are applied to the image (resized to
``data.image_size`` × ``data.image_width``), to the density map and to the
fixations, both at the teacher's output resolution. The fixations are mapped
through the box exactly, point by point (a pixel's centre lands in one output
cell), and rasterised to a binary fixation map: unlike resizing a sparse
point map, no fixation can vanish or smear. Both targets are fixed-size
arrays, so they batch.

Loss, per image, averaged over the batch (the ``loss.*_weight`` are
non-negative; CC and NSS are similarities, so they are subtracted)::

    kld_weight · KLD(Q ‖ P) − cc_weight · CC(P, Q) − nss_weight · NSS(P, F)

where P is the predicted density (``softmax`` of the logits over the pixels),
Q the ground-truth density map and F the binary fixation map. The defaults
(1, 0.2, 0.1) keep SAM's 10 : 2 : 1 ratio (Cornia et al., TIP 2018).

Evaluation (after training and every ``train.eval_every`` steps): the whole
image is resized to the input size (no crop, so the maps align with the
originals; for square images this is ``augment.eval_view`` with
``crop_fraction=1``), the predicted density is resized to the ground truth's
resolution, and every MIT metric of :mod:`attn_contrastive.saliency.metrics`
(NSS, CC, KLD, SIM, AUC-Judd, AUC-Borji, shuffled AUC, information gain over
the centre prior) is averaged over the images; a Gaussian centre-bias map
(:func:`~attn_contrastive.saliency.metrics.center_bias_map`) is scored the
same way. Both land in ``results.json`` under ``teacher`` and
``center_bias``; image / ground-truth / prediction strips go to TensorBoard.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from attn_contrastive.data import augment, sources
from attn_contrastive.models.teacher import output_shape, teacher_from_config
from attn_contrastive.saliency import jax_metrics, metrics
from attn_contrastive.train import loop
from attn_contrastive.train import mesh as mesh_lib

Example = dict[str, Any]

#: Metric names in ``results.json``, in the order they are reported.
METRIC_NAMES = ("nss", "cc", "kld", "sim", "auc_judd", "auc_borji", "auc_shuffled",
                "info_gain")
_FIXATION_METRICS = ("nss", "auc_judd", "auc_borji", "auc_shuffled", "info_gain")


# ---------------------------------------------------------------------------
# Sizes and host-side views.
# ---------------------------------------------------------------------------


def input_hw(config) -> tuple[int, int]:
  """The teacher's input size: ``data.image_size`` × (``data.image_width`` or square)."""
  h = int(config.data.image_size)
  w = int(config.data.get("image_width", 0) or 0)
  return h, (w if w > 0 else h)


def map_hw(config) -> tuple[int, int]:
  """The teacher's output (and training-target) resolution."""
  return output_shape(*input_hw(config), config.model.output_stride)


def _gray(x: np.ndarray) -> np.ndarray:
  """``H×W×1`` or ``H×W`` → ``H×W``."""
  x = np.asarray(x)
  return x[..., 0] if x.ndim == 3 else x


def rasterize_fixations(fixations: np.ndarray, image_hw: tuple[int, int],
                        box: augment.Box, flip: bool,
                        out_hw: tuple[int, int]) -> np.ndarray:
  """Binary fixation map of the crop ``box`` (and ``flip``) at ``out_hw``.

  A fixation at pixel ``(r, c)`` of an ``image_hw`` image sits at the
  normalised centre ``((r + .5) / H, (c + .5) / W)``, the convention of
  :mod:`attn_contrastive.data.augment`; it lands in the output cell that
  covers that point inside the box, or nowhere if the box excludes it.
  Returns float32 ``out_hw`` in {0, 1}.
  """
  out = np.zeros(out_hw, np.float32)
  fix = np.asarray(fixations).reshape(-1, 2)
  if fix.size == 0:
    return out
  u = (fix[:, 0] + 0.5) / image_hw[0]
  v = (fix[:, 1] + 0.5) / image_hw[1]
  rows = np.floor((u - box.y0) / box.height * out_hw[0]).astype(np.int64)
  cols = np.floor((v - box.x0) / box.width * out_hw[1]).astype(np.int64)
  keep = (rows >= 0) & (rows < out_hw[0]) & (cols >= 0) & (cols < out_hw[1])
  rows, cols = rows[keep], cols[keep]
  if flip:
    cols = out_hw[1] - 1 - cols
  out[rows, cols] = 1.0
  return out


@dataclasses.dataclass(frozen=True)
class TeacherTrainView:
  """Random resized crop + flip of image, density map and fixations.

  Returns ``image`` uint8 ``[H, W, 3]``, ``saliency_map`` float32 (the
  density, scaled to [0, 1], at the map resolution) and ``fixation_map``
  float32 {0, 1} at the map resolution. Random draws, in order: crop box,
  flip (as :func:`augment.supervised_train_view`).
  """
  image_hw: tuple[int, int]
  map_hw: tuple[int, int]
  area_range: tuple[float, float] = (0.5, 1.0)
  hflip: bool = True

  def __call__(self, example: Example, rng: np.random.Generator) -> Example:
    image = np.asarray(example["image"])
    h, w = image.shape[:2]
    ratio = self.image_hw[1] / self.image_hw[0]
    box = augment.sample_crop_box(rng, h, w, self.area_range,
                                  aspect_range=(ratio * 3 / 4, ratio * 4 / 3))
    flip = bool(rng.random() < 0.5) and self.hflip
    view = augment.crop_resize(image, box, self.image_hw, flip=flip)
    sal = _gray(example["saliency_map"]).astype(np.float32) * np.float32(1 / 255)
    sal = np.maximum(augment.crop_resize(sal, box, self.map_hw, flip=flip), 0.0)
    fix = rasterize_fixations(example["fixations"], (h, w), box, flip, self.map_hw)
    return {"image": np.asarray(view, np.uint8), "saliency_map": sal.astype(np.float32),
            "fixation_map": fix}


def eval_image(image: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
  """The whole image resized to ``image_hw`` (uint8): maps stay aligned."""
  return np.asarray(augment.crop_resize(np.asarray(image), augment.Box.full(), image_hw),
                    np.uint8)


# ---------------------------------------------------------------------------
# Loss.
# ---------------------------------------------------------------------------


def teacher_loss(logits: jnp.ndarray, saliency_map: jnp.ndarray,
                 fixation_map: jnp.ndarray, kld_weight: float, cc_weight: float,
                 nss_weight: float) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """``mean(kld_w · KLD − cc_w · CC − nss_w · NSS)`` and the three batch means.

  ``logits`` ``[B, h, w]`` define the density ``softmax`` over the pixels;
  ``saliency_map`` is the ground-truth density (any non-negative scale) and
  ``fixation_map`` the binary fixation map, both ``[B, h, w]``.
  """
  kld = jax_metrics.kld_from_logits(logits, saliency_map)
  density = jax.nn.softmax(logits.reshape(logits.shape[0], -1), axis=-1)
  density = density.reshape(logits.shape)
  cc = jax_metrics.cc(density, saliency_map)
  nss = jax_metrics.nss(density, fixation_map)
  loss = jnp.mean(kld_weight * kld - cc_weight * cc - nss_weight * nss)
  return loss, {"kld": jnp.mean(kld), "cc": jnp.mean(cc), "nss": jnp.mean(nss)}


def make_loss_fn(model, config):
  """The loop's ``loss_fn``: teacher forward on the batch, then :func:`teacher_loss`."""
  dtype = jnp.dtype(config.model.dtype)
  weights = dict(kld_weight=config.loss.kld_weight, cc_weight=config.loss.cc_weight,
                 nss_weight=config.loss.nss_weight)

  def loss_fn(params, batch_stats, batch, rng):
    del rng  # augmentation is drawn on the host
    x = loop.normalize_images(batch["image"], dtype)
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                               train=True, mutable=["batch_stats"])
    loss, parts = teacher_loss(out["logits"], batch["saliency_map"],
                               batch["fixation_map"], **weights)
    return loss, (updates["batch_stats"], {f"train_{k}": v for k, v in parts.items()})

  return loss_fn


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


def _score(pred: np.ndarray, gt: np.ndarray, fix: np.ndarray, other: np.ndarray | None,
           baseline: np.ndarray) -> dict[str, float]:
  """Every MIT metric for one image (fixation metrics only if it has fixations)."""
  if fix.any():
    scores = metrics.evaluate_all(pred, gt, fix, other if other is not None and other.any()
                                  else None, baseline)
  else:
    scores = {"cc": metrics.cc(pred, gt), "sim": metrics.sim(pred, gt)}
    if gt.sum() > 0:
      scores["kld"] = metrics.kld(pred, gt)
  return scores


def _to_strip(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """``[image | ground truth | prediction]`` as one uint8 RGB strip."""
  h, w = image.shape[:2]

  def gray(m):
    m = metrics.resize_to(m, (h, w))
    span = m.max() - m.min()
    m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
    return np.repeat((m * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)

  return np.concatenate([image, gray(gt), gray(pred)], axis=1)


class Evaluator:
  """Scores the teacher and the centre-bias baseline on the evaluation split.

  Calling it with a train state returns flat scalars (``nss``, …,
  ``center_bias/nss``, …) for the loop's logs and keeps the nested result
  in :attr:`latest` for ``results.json``. The forward pass is one jitted
  function over a global batch; each process scores the images of its own
  slice on the host, and the sums are gathered across processes.
  """

  name = "teacher"  # the key of the scored model's metrics in ``latest``

  def __init__(self, model, config, source, workdir: str | None = None, mesh=None):
    self.model, self.config, self.source = model, config, source
    self.mesh = mesh or mesh_lib.make_mesh()
    self.image_hw = input_hw(config)
    self.global_batch = int(config.train.eval_batch_size)
    mesh_lib.check_batch_divisible(self.global_batch, self.mesh)
    n = len(source)
    limit = int(config.eval.max_examples)
    self.num_examples = min(n, limit) if limit > 0 else n
    if self.num_examples < 1:
      raise ValueError("the evaluation split is empty")
    self.latest: dict[str, Any] | None = None
    self._baseline_scores: dict[int, dict[str, float]] = {}
    self._pool: list[np.ndarray] | None = None
    self._writer = (metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0) if workdir else None)
    self._predict = self._make_predict()

  def _make_predict(self):
    """Jitted ``(state, images) -> predicted density``, batch-sharded."""
    dtype = jnp.dtype(self.config.model.dtype)
    model = self.model

    def predict(state, images):
      x = loop.normalize_images(images, dtype)
      out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                        train=False)
      return jnp.exp(out["log_density"])

    return jax.jit(predict, out_shardings=mesh_lib.data_sharding(self.mesh))

  # -- data -----------------------------------------------------------------

  def _load(self, index: int) -> dict[str, Any]:
    """One example: the input view and the original-resolution ground truth."""
    ex = self.source[index]
    image = np.asarray(ex["image"])
    gt = _gray(ex["saliency_map"]).astype(np.float64)
    fix = metrics.fixations_to_map(np.asarray(ex["fixations"]).reshape(-1, 2),
                                   *gt.shape)
    return {"index": index, "image": eval_image(image, self.image_hw), "gt": gt,
            "fix": fix}

  def _shuffle_pool(self) -> list[np.ndarray]:
    """Fixations of the first ``eval.shuffle_pool`` images, normalised to [0, 1)."""
    if self._pool is None:
      pool = []
      for i in range(min(int(self.config.eval.shuffle_pool), self.num_examples)):
        ex = self.source[i]
        h, w = _gray(ex["saliency_map"]).shape
        fix = np.asarray(ex["fixations"], np.float64).reshape(-1, 2)
        pool.append((fix + 0.5) / np.array([h, w]))
      self._pool = pool
    return self._pool

  def _other_fixations(self, index: int, shape: tuple[int, int]) -> np.ndarray | None:
    """Union of fixations of ``eval.shuffle_others`` other images, at ``shape``.

    The other images are drawn from the pool with a generator seeded by the
    image index, so the negatives do not depend on the process count.
    """
    pool = self._shuffle_pool()
    candidates = [i for i in range(len(pool)) if i != index and len(pool[i])]
    if not candidates:
      return None
    rng = np.random.default_rng(index)
    k = min(int(self.config.eval.shuffle_others), len(candidates))
    picks = rng.choice(len(candidates), size=k, replace=False)
    pts = np.concatenate([pool[candidates[p]] for p in picks])
    rows = np.clip(np.floor(pts[:, 0] * shape[0]), 0, shape[0] - 1).astype(np.int64)
    cols = np.clip(np.floor(pts[:, 1] * shape[1]), 0, shape[1] - 1).astype(np.int64)
    out = np.zeros(shape, bool)
    out[rows, cols] = True
    return out

  def _local_positions(self) -> list[list[int]]:
    """This process's example indices, one list per global batch (-1 = padding)."""
    padded = math.ceil(self.num_examples / self.global_batch) * self.global_batch
    p, n_proc = jax.process_index(), jax.process_count()
    local = [i if i < self.num_examples else -1 for i in range(p, padded, n_proc)]
    per = self.global_batch // n_proc
    return [local[k:k + per] for k in range(0, len(local), per)]

  # -- scoring --------------------------------------------------------------

  def _score_example(self, item: dict[str, Any], pred: np.ndarray
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """(teacher scores, centre-bias scores) of one image."""
    gt, fix, index = item["gt"], item["fix"], item["index"]
    center = metrics.center_bias_map(*gt.shape,
                                     sigma_fraction=self.config.eval.center_bias_sigma)
    other = self._other_fixations(index, gt.shape)
    pred = metrics.resize_to(pred.astype(np.float64), gt.shape)
    teacher = _score(pred, gt, fix, other, center)
    if index not in self._baseline_scores:
      self._baseline_scores[index] = _score(center, gt, fix, other, center)
    return teacher, self._baseline_scores[index]

  def __call__(self, state) -> dict[str, float]:
    """Scores every evaluation image; returns flat means for logging."""
    sums = np.zeros((2, len(METRIC_NAMES)))
    counts = np.zeros((2, len(METRIC_NAMES)))
    strips = []
    threads = max(int(self.config.eval.num_threads), 1)
    self._shuffle_pool()  # filled once, before the worker threads read it
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      for positions in self._local_positions():
        items = list(pool.map(lambda i: self._load(max(i, 0)), positions))
        images = np.stack([it["image"] for it in items])
        density = self._predict(state, mesh_lib.to_global({"x": images}, self.mesh)["x"])
        density = np.asarray(multihost_utils.global_array_to_host_local_array(
            density, self.mesh, P(mesh_lib.DATA_AXIS)))
        real = [(it, d) for pos, it, d in zip(positions, items, density) if pos >= 0]
        for t_scores, b_scores in pool.map(lambda a: self._score_example(*a), real):
          for row, scores in enumerate((t_scores, b_scores)):
            for col, name in enumerate(METRIC_NAMES):
              if name in scores:
                sums[row, col] += scores[name]
                counts[row, col] += 1
        n_strips = int(self.config.eval.num_images)
        for it, d in real[:max(n_strips - len(strips), 0)]:
          strips.append(_to_strip(it["image"], it["gt"], d))
    totals = np.asarray(multihost_utils.process_allgather(np.stack([sums, counts])))
    if totals.ndim == 4:  # one row per process
      totals = totals.sum(axis=0)
    means = np.where(totals[1] > 0, totals[0] / np.maximum(totals[1], 1), np.nan)
    step = int(jax.device_get(state.step))
    self.latest = {
        "step": step, "num_images": self.num_examples,
        self.name: {k: float(v) for k, v in zip(METRIC_NAMES, means[0])},
        "center_bias": {k: float(v) for k, v in zip(METRIC_NAMES, means[1])},
    }
    if self._writer is not None and strips:
      self._writer.write_images(step, {"eval/image_gt_prediction": np.stack(strips)})
      self._writer.flush()
    logging.info("%s at step %d: %s", self.name, step, self.latest)
    flat = dict(self.latest[self.name])
    flat.update({f"center_bias/{k}": v for k, v in self.latest["center_bias"].items()})
    return flat


# ---------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------


def open_source(config, split: str):
  """A random-access source over ``split`` of ``config.data.name``."""
  return sources.open_split(config.data.name, split, config.data.data_dir,
                            config.data.auto_prepare)


def build_task(config, workdir: str | None = None, *, train_source=None,
               eval_source=None, mesh=None) -> tuple[loop.TaskSpec, Evaluator]:
  """The loop's task and its evaluator (sources default to the configured splits)."""
  model = teacher_from_config(config.model)
  train_source = train_source if train_source is not None else open_source(
      config, config.data.train_split)
  eval_source = eval_source if eval_source is not None else open_source(
      config, config.data.eval_split)
  evaluator = Evaluator(model, config, eval_source, workdir, mesh)
  h, w = input_hw(config)
  transform = TeacherTrainView(
      (h, w), map_hw(config), area_range=(float(config.aug.area_min), 1.0),
      hflip=bool(config.aug.hflip))
  task = loop.TaskSpec(
      model=model, loss_fn=make_loss_fn(model, config), train_source=train_source,
      train_transform=transform,
      sample_input=jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32),
      evaluate=evaluator)
  return task, evaluator


def write_teacher_results(workdir: str, evaluation: dict[str, Any]) -> None:
  """Adds the nested teacher / centre-bias metrics to the loop's ``results.json``."""
  path = os.path.join(workdir, "results.json")
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
  results.update(evaluation)
  loop.write_results(workdir, results)


def train_and_evaluate(config, workdir: str, *, train_source=None, eval_source=None,
                       mesh=None, **kwargs):
  """Trains the teacher through the shared loop, then writes its scores.

  The loop writes ``results.json`` when it finishes; the nested
  ``teacher`` / ``center_bias`` metrics are added to it afterwards (not on a
  run stopped early with ``stop_at``).
  """
  task, evaluator = build_task(config, workdir, train_source=train_source,
                               eval_source=eval_source, mesh=mesh)
  state, last = loop.run(config, workdir, task, mesh=mesh, **kwargs)
  if kwargs.get("stop_at") is None and evaluator.latest is not None:
    write_teacher_results(workdir, evaluator.latest)
  return state, last
