"""Saliency scoring: a predicted density against human attention, with every MIT metric.

One component for every model whose output is an attention map: the
teacher (its saliency output) and the alignment of a trained run (its heads
or its activation attention). The caller gives ``predict(state, images) ->
density``; the evaluator does the rest. Each image is resized whole to the
model's input (no crop, so the maps align with the originals), the predicted
density is resized to the ground truth's resolution, and NSS, CC, KLD, SIM,
AUC-Judd, AUC-Borji, shuffled AUC and information gain over the centre prior
(:mod:`attn_contrastive.saliency.metrics`) are averaged over the images; a
Gaussian centre-bias map is scored the same way.

Data: a human-attention split whose records hold ``image``, ``saliency_map``
(a grey density map) and ``fixations`` (int32 ``[N, 2]``, 0-based
``(row, col)`` in image pixels). Settings from ``config.eval``: those of
:mod:`attn_contrastive.evaluators.common`, plus ``num_images`` (image /
ground truth / prediction strips logged to TensorBoard),
``center_bias_sigma`` (of the baseline, as a fraction of the image side) and
``shuffle_pool`` / ``shuffle_others`` (shuffled AUC draws its negatives from
the fixations of ``shuffle_others`` images among the first ``shuffle_pool``).
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from attn_contrastive.data import augment
from attn_contrastive.evaluators import common
from attn_contrastive.saliency import metrics
from attn_contrastive.train import mesh as mesh_lib

#: Metric names, in the order they are reported.
METRIC_NAMES = ("nss", "cc", "kld", "sim", "auc_judd", "auc_borji", "auc_shuffled",
                "info_gain")

#: ``(state, uint8 images [B, H, W, 3]) -> non-negative densities [B, h, w]``.
PredictFn = Callable[[Any, jax.Array], jax.Array]


def gray_map(x: np.ndarray) -> np.ndarray:
  """A stored saliency map, ``H×W×1`` or ``H×W``, as ``H×W``."""
  x = np.asarray(x)
  return x[..., 0] if x.ndim == 3 else x


def whole_image(image: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
  """The whole image resized to ``image_hw`` (uint8): its maps stay aligned with it."""
  return np.asarray(augment.crop_resize(np.asarray(image), augment.Box.full(), image_hw),
                    np.uint8)


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
  ``predict`` runs jitted over a global batch; each process scores the
  images of its own slice on the host, and the sums are added across
  processes. ``workdir`` (optional) receives the TensorBoard strips.
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

  def _score_example(self, item: dict[str, Any], pred: np.ndarray
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """(model scores, centre-bias scores) of one image."""
    gt, fix, index = item["gt"], item["fix"], item["index"]
    center = metrics.center_bias_map(*gt.shape,
                                     sigma_fraction=self.eval_cfg.center_bias_sigma)
    other = self._other_fixations(index, gt.shape)
    pred = metrics.resize_to(pred.astype(np.float64), gt.shape)
    model = _score(pred, gt, fix, other, center)
    if index not in self._baseline_scores:
      self._baseline_scores[index] = _score(center, gt, fix, other, center)
    return model, self._baseline_scores[index]

  def __call__(self, state) -> dict[str, float]:
    """Scores every evaluation image; returns flat means for logging."""
    sums = np.zeros((2, len(METRIC_NAMES)))
    counts = np.zeros((2, len(METRIC_NAMES)))
    strips = []
    self._shuffle_pool()  # filled once, before the worker threads read it
    threads = max(int(self.eval_cfg.num_threads), 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      for items, mask in common.split_batches(self._load, self.num_examples,
                                              self.global_batch, pool):
        images = mesh_lib.to_global({"image": np.stack([it["image"] for it in items])},
                                    self.mesh)["image"]
        density = mesh_lib.to_host_local(self._predict(state, images), self.mesh)
        real = [(it, d) for it, d, keep in zip(items, density, mask) if keep]
        for m_scores, b_scores in pool.map(lambda a: self._score_example(*a), real):
          for row, scores in enumerate((m_scores, b_scores)):
            for col, name in enumerate(METRIC_NAMES):
              if name in scores:
                sums[row, col] += scores[name]
                counts[row, col] += 1
        for it, d in real[:max(int(self.eval_cfg.num_images) - len(strips), 0)]:
          strips.append(to_strip(it["image"], it["gt"], d))
    totals = common.sum_over_processes(np.stack([sums, counts]))
    means = np.where(totals[1] > 0, totals[0] / np.maximum(totals[1], 1), np.nan)
    step = int(jax.device_get(state.step))
    self.results = {
        "step": step, "num_images": self.num_examples,
        self.name: {k: float(v) for k, v in zip(METRIC_NAMES, means[0])},
        "center_bias": {k: float(v) for k, v in zip(METRIC_NAMES, means[1])},
    }
    if self._writer is not None and strips:
      self._writer.write_images(step, {"eval/image_gt_prediction": np.stack(strips)})
      self._writer.flush()
    logging.info("%s at step %d: %s", self.name, step, self.results)
    flat = dict(self.results[self.name])
    flat.update({f"center_bias/{k}": v for k, v in self.results["center_bias"].items()})
    return flat
