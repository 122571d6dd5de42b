"""The kNN monitor: how well a frozen encoder's features classify, while it trains.

A weighted kNN classifier (InstDisc, DINO) needs no training of its own, so
it can score a pretraining run at any step: the features of a *bank* of
training images vote for their labels on each *query* image of the
validation split, each of a query's ``k`` most cosine-similar bank images
with weight ``exp(cosine / temperature)``
(:func:`attn_contrastive.evaluators.retrieval_metrics.knn_classify`; the
cosine divides by the norms, so the features are compared L2-normalised).
Both splits go through :func:`attn_contrastive.evaluators.features.extract`
with the same evaluation view (centre crops).

Linear classifiers of the same features (the online probe of a SimCLR run)
are scored on the same pass over the queries: each one's prediction is
computed on device beside the features, so no second pass is made.

Settings from ``config.eval``: those of
:mod:`attn_contrastive.evaluators.common` (``max_examples`` caps the
queries), ``knn_k``, ``knn_temperature`` and ``knn_bank_size`` (the first
that many training images; -1: the whole split).

The bank is sharded by rows over the devices of every process
(:func:`features.extract_block`): each process embeds and holds only its
own block, ``bank / num_processes × D × 4`` bytes, padded to whole rows per
device (the padding is in no ranking). Each device ranks its own rows and
only each query's ``k`` best per device meet for the global ``k``
(:func:`~attn_contrastive.evaluators.retrieval_metrics.knn_classify`), so the
scores are those of the whole bank on one device, ties broken by bank order
alike. The queries are gathered whole on every process (``queries × D × 4``
bytes).

Cost: the evaluation views of both splits are the same at every evaluation,
so when they fit in ``VIEW_CACHE_BYTES`` they are decoded once and kept in
host memory; later evaluations cost the forward passes and the kNN only.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from attn_contrastive.evaluators import common, features, retrieval_metrics
from attn_contrastive.train import mesh as mesh_lib

#: ``(state, features [B, D]) -> logits [B, num_classes]``.
ClassifyFn = Callable[[Any, jax.Array], jax.Array]

#: Host memory the evaluation views of bank and queries may keep between evaluations,
#: per process.
VIEW_CACHE_BYTES = 1 << 30


class _Views:
  """``transform(source[i])``, kept after the first read when ``keep``."""

  def __init__(self, source, transform: Callable[[Any], common.Example], keep: bool):
    self.source, self.transform, self.keep = source, transform, keep
    self._kept: dict[int, common.Example] = {}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> common.Example:
    if i in self._kept:
      return self._kept[i]
    example = self.transform(self.source[i])
    if self.keep:
      self._kept[i] = example
    return example


def _global(x: np.ndarray, sharding) -> jax.Array:
  """A host array that every process holds whole, as a global array of ``sharding``."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


class KnnEvaluator:
  """kNN top-1 / top-5 of ``embed``'s features, and the top-1 of ``classifiers``.

  Calling it with a train state extracts the bank and the queries, and
  returns the scores (``knn/top1``, ``knn/top5``, ``<classifier>/top1``);
  :attr:`results` adds the settings (``knn/k``, ``knn/temperature``,
  ``knn/bank_size``, ``knn/num_queries``), keys ``<protocol>/<metric>`` as in
  :mod:`attn_contrastive.evaluators.results`.

  Args:
    embed: ``(state, uint8 images) -> features [B, D]``.
    bank_source, query_source: labelled splits (the training and validation split).
    transform: ``record -> {"image", "label"}``, the evaluation view.
    eval_cfg: ``config.eval``.
    num_classes: of the labels.
    classifiers: ``{name: classify}``, each scored by its top-1 on the queries.
    mesh: the devices (default: all).
  """

  def __init__(self, embed: features.EmbedFn, bank_source, query_source,
               transform: Callable[[Any], common.Example], eval_cfg, *, num_classes: int,
               classifiers: dict[str, ClassifyFn] | None = None, mesh=None):
    self.eval_cfg, self.num_classes = eval_cfg, int(num_classes)
    self.classifiers = dict(classifiers or {})
    self.mesh = mesh or mesh_lib.make_mesh()
    self.bank_cfg = eval_cfg.copy_and_resolve_references()
    self.bank_cfg.max_examples = int(eval_cfg.knn_bank_size)
    self.results: dict[str, Any] = {}
    #: The bank rows this process held at the last call (its block, padding included).
    self.bank_rows = 0
    n_bank = common.num_examples(bank_source, self.bank_cfg.max_examples)
    n_query = common.num_examples(query_source, eval_cfg.max_examples)
    view_bytes = transform(query_source[0])["image"].nbytes
    # Each process reads its own block of the bank and its share of the queries only.
    keep = (n_bank + n_query) * view_bytes <= VIEW_CACHE_BYTES * jax.process_count()
    self.bank = _Views(bank_source, transform, keep)
    self.queries = _Views(query_source, transform, keep)

    def embed_with_predictions(state, images):
      """The features, then one column per classifier: its predicted class."""
      feats = embed(state, images).astype(jnp.float32)
      preds = [jnp.argmax(c(state, feats), -1).astype(jnp.float32)[:, None]
               for c in self.classifiers.values()]
      return jnp.concatenate([feats, *preds], axis=1)

    # One function for bank and queries, so that they share a compiled program.
    self._embed = embed_with_predictions

  def _knn(self, queries: np.ndarray, bank: jax.Array, bank_labels: jax.Array,
           num_items: int) -> np.ndarray:
    """Ranked classes ``[Q, 5]`` of the queries against a bank sharded by rows, its
    rows from ``num_items`` on padding."""
    ranked = retrieval_metrics.knn_classify(
        _global(queries, mesh_lib.replicated(self.mesh)), bank, bank_labels,
        num_classes=self.num_classes, k=int(self.eval_cfg.knn_k),
        temperature=float(self.eval_cfg.knn_temperature), num_top=5, num_items=num_items)
    return np.asarray(jax.device_get(ranked))

  def __call__(self, state) -> dict[str, float]:
    """kNN and classifier accuracy of the state's features."""
    t0 = time.perf_counter()
    same = lambda example: example  # noqa: E731  (the views are made by _Views)
    queries, labels = features.extract(self._embed, state, self.queries, same, self.eval_cfg,
                                       mesh=self.mesh)
    dim = queries.shape[1] - len(self.classifiers)
    t1 = time.perf_counter()
    bank, bank_labels, n = features.extract_block(self._embed, state, self.bank, same,
                                                  self.bank_cfg, mesh=self.mesh, columns=dim)
    self.bank_rows = sum(s.data.shape[0] for s in bank.addressable_shards)
    t2 = time.perf_counter()
    ranked = self._knn(queries[:, :dim], bank, bank_labels, n)
    scores = {f"knn/{k}": v
              for k, v in retrieval_metrics.topk_accuracy(ranked, labels, (1, 5)).items()}
    for i, name in enumerate(self.classifiers):
      predicted = queries[:, dim + i].astype(np.int64)
      scores[f"{name}/top1"] = float(np.mean(predicted == labels))
    self.results = {**scores, "knn/k": int(self.eval_cfg.knn_k),
                    "knn/temperature": float(self.eval_cfg.knn_temperature),
                    "knn/bank_size": n, "knn/num_queries": len(labels)}
    logging.info("kNN monitor at step %d: %s (queries %.1f s, bank %.1f s, kNN %.1f s)",
                 int(jax.device_get(state.step)), self.results, t1 - t0, t2 - t1,
                 time.perf_counter() - t2)
    return scores
