"""Saliency scoring: a predicted density against human attention, with every MIT metric.

One component for every model whose output is an attention map: the
teacher (its saliency output) and the alignment of a trained run (its heads,
its activation attention, Grad-CAM). The caller gives ``predict(state, images) ->
density``; the evaluator does the rest. Each image is resized whole to the
model's input (no crop, so the maps align with the originals), the predicted
density is resized to the ground truth's resolution, and NSS, CC, KLD, SIM,
AUC-Judd, AUC-Borji, shuffled AUC and information gain over the centre prior
(:mod:`attn_contrastive.saliency.metrics`) are averaged over the images; a
Gaussian centre-bias map is scored the same way.

Several maps of the same images (the alignment task's heads, activation
attention and Grad-CAM) are scored in one pass when ``predict`` returns a
dict ``{name: density}``; the images are loaded and the centre-bias
baseline scored once.

After each call, :attr:`SaliencyEvaluator.examples` holds the first
``eval.num_images`` images of the split for a report's figure (gathered
from every process): ``image`` (uint8, the model's input), ``human`` (the
ground-truth density at its stored resolution, summing to 1; a map stored
at another size than the split's first is resized to that), ``index``
(the examples' indices in the split) and ``map/<name>`` (each predicted
density at the model's resolution); :func:`write_examples` saves them as
``examples.npz``.

Data: a human-attention split whose records hold ``image``, ``saliency_map``
(a grey density map) and ``fixations`` (int32 ``[N, 2]``, 0-based
``(row, col)`` in image pixels). Settings from ``config.eval``: those of
:mod:`attn_contrastive.evaluators.common`, plus ``num_images`` (image /
ground truth / prediction strips logged to TensorBoard, and the examples),
``center_bias_sigma`` (of the baseline, as a fraction of the image side) and
``shuffle_pool`` / ``shuffle_others`` (shuffled AUC draws its negatives from
the fixations of ``shuffle_others`` images among the first ``shuffle_pool``).
"""
from __future__ import annotations

import concurrent.futures
import math
import os
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from attn_contrastive import paths
from attn_contrastive.data.augment import gray_map, whole_image
from attn_contrastive.evaluators import common
from attn_contrastive.saliency import metrics
from attn_contrastive.train import mesh as mesh_lib

#: Metric names, in the order they are reported.
METRIC_NAMES = ("nss", "cc", "kld", "sim", "auc_judd", "auc_borji", "auc_shuffled",
                "info_gain")

#: ``(state, uint8 images [B, H, W, 3]) -> non-negative densities [B, h, w]`` (or a dict
#: ``{name: densities}`` of several maps).
PredictFn = Callable[[Any, jax.Array], "jax.Array | dict[str, jax.Array]"]

#: The example maps of an evaluation, in its workdir (:func:`write_examples`).
EXAMPLES_FILE = "examples.npz"


def _score(pred: np.ndarray, gt: np.ndarray, fix: np.ndarray, other: np.ndarray | None,
          baseline: np.ndarray) -> dict[str, float]:
  """Every MIT metric for one image (the fixation metrics only if it has fixations)."""
  if fix.any():
    return metrics.evaluate_all(pred, gt, fix, other if other is not None and other.any()
                                else None, baseline)
  scores = {"cc": metrics.cc(pred, gt), "sim": metrics.sim(pred, gt)}
  if gt.sum() > 0:
    scores["kld"] = metrics.kld(pred, gt)
  return scores


def map_to_rgb(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """A map resized to ``hw`` and stretched to [0, 255], as RGB uint8 (for image strips)."""
  m = metrics.resize_to(np.asarray(m, np.float64), hw)
  span = m.max() - m.min()
  m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
  return np.repeat((m * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def to_strip(image: np.ndarray, *maps: np.ndarray) -> np.ndarray:
  """``[image | map | map …]`` as one uint8 RGB strip, maps at the image's size."""
  hw = image.shape[:2]
  return np.concatenate([image] + [map_to_rgb(m, hw) for m in maps], axis=1)


class SaliencyEvaluator:
  """Scores ``predict``'s densities and the centre-bias baseline on a split.

  Calling it with a state returns flat means (``nss``, …,
  ``center_bias/nss``, …) and keeps in :attr:`results` ``{"step",
  "num_images", <name>: {metric: mean}, "center_bias": {metric: mean}}``.
  A ``predict`` that returns ``{name: densities}`` is scored per name: one
  entry per name in :attr:`results`, flat means ``<name>/nss``, … (the
  ``name`` argument is then unused). ``predict`` runs jitted over a global
  batch; each process scores the images of its own slice on the host, and
  the sums are added across processes. :attr:`examples` holds the first
  ``eval.num_images`` images and maps (see the module docstring);
  ``workdir`` (optional) receives their TensorBoard strips.
  """

  def __init__(self, predict: PredictFn, source, eval_cfg, image_hw: tuple[int, int], *,
               name: str, mesh=None, workdir: str | None = None):
    self.source, self.eval_cfg, self.image_hw, self.name = source, eval_cfg, image_hw, name
    self.mesh = mesh or mesh_lib.make_mesh()
    self.global_batch = int(eval_cfg.batch_size)
    mesh_lib.check_batch_divisible(self.global_batch, self.mesh)
    self.num_examples = common.num_examples(source, eval_cfg.max_examples)
    self.results: dict[str, Any] = {}
    self._predict = jax.jit(predict, out_shardings=mesh_lib.data_sharding(self.mesh))
    self._baseline_scores: dict[int, dict[str, float]] = {}
    self.examples: dict[str, np.ndarray] = {}
    self._examples_hw: tuple[int, int] | None = None
    self._pool: list[np.ndarray] | None = None
    self._writer = (metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0) if workdir else None)

  # -- data -----------------------------------------------------------------

  def _load(self, index: int) -> dict[str, Any]:
    """One example: the input image and the original-resolution ground truth."""
    ex = self.source[index]
    gt = gray_map(ex["saliency_map"]).astype(np.float64)
    fix = metrics.fixations_to_map(np.asarray(ex["fixations"]).reshape(-1, 2), *gt.shape)
    return {"index": index, "image": whole_image(ex["image"], self.image_hw), "gt": gt,
            "fix": fix}

  def _shuffle_pool(self) -> list[np.ndarray]:
    """Fixations of the first ``eval.shuffle_pool`` images, normalised to [0, 1)."""
    if self._pool is None:
      pool = []
      for i in range(min(int(self.eval_cfg.shuffle_pool), self.num_examples)):
        ex = self.source[i]
        h, w = gray_map(ex["saliency_map"]).shape
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
    k = min(int(self.eval_cfg.shuffle_others), len(candidates))
    picks = rng.choice(len(candidates), size=k, replace=False)
    pts = np.concatenate([pool[candidates[p]] for p in picks])
    rows = np.clip(np.floor(pts[:, 0] * shape[0]), 0, shape[0] - 1).astype(np.int64)
    cols = np.clip(np.floor(pts[:, 1] * shape[1]), 0, shape[1] - 1).astype(np.int64)
    out = np.zeros(shape, bool)
    out[rows, cols] = True
    return out

  # -- scoring --------------------------------------------------------------

  def _score_example(self, item: dict[str, Any], preds: dict[str, np.ndarray]
                     ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """({name: scores} of the predictions, centre-bias scores) of one image."""
    gt, fix, index = item["gt"], item["fix"], item["index"]
    center = metrics.center_bias_map(*gt.shape,
                                     sigma_fraction=self.eval_cfg.center_bias_sigma)
    other = self._other_fixations(index, gt.shape)
    scores = {name: _score(metrics.resize_to(p.astype(np.float64), gt.shape), gt, fix, other,
                           center)
              for name, p in preds.items()}
    if index not in self._baseline_scores:
      self._baseline_scores[index] = _score(center, gt, fix, other, center)
    return scores, self._baseline_scores[index]

  def _batches(self, state, pool):
    """Per global batch: ``[(item, {name: density})]`` of this process's real
    examples, and ``{name: density shape}``."""
    for items, mask in common.split_batches(self._load, self.num_examples,
                                            self.global_batch, pool):
      images = mesh_lib.to_global({"image": np.stack([it["image"] for it in items])},
                                  self.mesh)["image"]
      out = self._predict(state, images)
      if not isinstance(out, dict):
        out = {self.name: out}
      preds = {k: mesh_lib.to_host_local(v, self.mesh) for k, v in out.items()}
      real = [(it, {k: p[i] for k, p in preds.items()})
              for i, (it, keep) in enumerate(zip(items, mask)) if keep]
      yield real, {k: p.shape[1:] for k, p in preds.items()}

  def __call__(self, state) -> dict[str, float]:
    """Scores every evaluation image; returns flat means for logging."""
    shapes: dict[str, tuple[int, ...]] = {}
    sums = counts = None
    shown = min(int(self.eval_cfg.num_images), self.num_examples)
    kept = []
    self._shuffle_pool()  # filled once, before the worker threads read it
    threads = max(int(self.eval_cfg.num_threads), 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      for real, shapes in self._batches(state, pool):
        if sums is None:
          sums = np.zeros((len(shapes) + 1, len(METRIC_NAMES)))
          counts = np.zeros_like(sums)
        for m_scores, b_scores in pool.map(lambda a: self._score_example(*a), real):
          for row, scores in enumerate([*m_scores.values(), b_scores]):
            for col, metric in enumerate(METRIC_NAMES):
              if metric in scores:
                sums[row, col] += scores[metric]
                counts[row, col] += 1
        kept += [(it, p) for it, p in real if it["index"] < shown]
    names = list(shapes)
    totals = common.sum_over_processes(np.stack([sums, counts]))
    means = np.where(totals[1] > 0, totals[0] / np.maximum(totals[1], 1), np.nan)
    step = int(jax.device_get(state.step))
    self.results = {"step": step, "num_images": self.num_examples}
    for row, name in enumerate(names + ["center_bias"]):
      self.results[name] = {k: float(v) for k, v in zip(METRIC_NAMES, means[row])}
    self.examples = self._gather_examples(kept, shapes, shown)
    self._write_strips(step, names)
    logging.info("%s at step %d: %s", ", ".join(names), step, self.results)
    if names == [self.name]:
      flat = dict(self.results[self.name])
    else:
      flat = {f"{n}/{k}": v for n in names for k, v in self.results[n].items()}
    flat.update({f"center_bias/{k}": v for k, v in self.results["center_bias"].items()})
    return flat

  # -- example maps ---------------------------------------------------------

  def _human_hw(self) -> tuple[int, int]:
    """The stored resolution of the first example's ground truth, the one of every
    ``human`` map in :attr:`examples` (the same on every process)."""
    if self._examples_hw is None:
      self._examples_hw = gray_map(self.source[0]["saliency_map"]).shape
    return self._examples_hw

  def _gather_examples(self, kept: list[tuple[dict[str, Any], dict[str, np.ndarray]]],
                       shapes: dict[str, tuple[int, ...]], shown: int
                       ) -> dict[str, np.ndarray]:
    """:attr:`examples`: every process's share of the first ``shown`` images, in order.

    Each process pads its share to the same length (index -1) so that the
    shares can be gathered as arrays.
    """
    if shown < 1:
      return {}
    hw = self._human_hw()
    per = math.ceil(shown / jax.process_count())  # the most any process holds
    pad = per - len(kept)
    local = {
        "index": np.array([it["index"] for it, _ in kept] + [-1] * pad, np.int64),
        "image": np.stack([it["image"] for it, _ in kept]
                          + [np.zeros((*self.image_hw, 3), np.uint8)] * pad),
        "human": np.stack([_density(it["gt"], hw) for it, _ in kept]
                          + [np.zeros(hw, np.float32)] * pad),
    }
    for name, shape in shapes.items():
      local[f"map/{name}"] = np.stack([p[name] for _, p in kept]
                                      + [np.zeros(shape)] * pad).astype(np.float32)
    if jax.process_count() > 1:
      local = {k: common.gather_from_processes(v).reshape(-1, *v.shape[1:])
               for k, v in local.items()}
    order = np.argsort(local["index"], kind="stable")
    order = order[local["index"][order] >= 0]
    return {k: v[order] for k, v in local.items()}

  def _write_strips(self, step: int, names: list[str]) -> None:
    """Image | ground truth | each prediction, for the first images, to TensorBoard."""
    if self._writer is None or not self.examples:
      return
    ex = self.examples
    strips = [to_strip(ex["image"][i], ex["human"][i], *(ex[f"map/{n}"][i] for n in names))
              for i in range(len(ex["index"]))]
    self._writer.write_images(step, {"eval/image_gt_prediction": np.stack(strips)})
    self._writer.flush()


def _density(gt: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """A ground-truth map at ``hw`` (resized if it is stored at another size), summing to 1."""
  gt = np.asarray(gt, np.float64)
  if gt.shape != tuple(hw):
    gt = np.maximum(metrics.resize_to(gt, hw), 0.0)
  total = gt.sum()
  return (gt / total if total > 0 else gt).astype(np.float32)


def write_examples(workdir: str, examples: dict[str, np.ndarray]) -> str | None:
  """Writes ``examples`` as ``<workdir>/examples.npz`` (process 0, atomically); its path.

  Nothing is written (``None``) when there are no examples (``eval.num_images`` 0).
  """
  if not examples:
    return None
  path = os.path.join(workdir, EXAMPLES_FILE)
  if jax.process_index() == 0:
    paths.save_npz_atomic(path, **examples)
  return path
