"""Retrieval: a run's embeddings of a query split ranked against a gallery split.

The CVPR paper reports precision-recall retrieval on ImageNet (and on
corrupted queries, which the robustness stage adds). Every query's
L2-normalised embedding is compared with every gallery embedding by cosine
similarity, exactly (chunked matrix products on device, the gallery sharded
over the mesh, each process extracting or reading only its own block of it,
and no ranking sorted); a gallery item is relevant when it has the query's class,
and when the query split is the gallery split the query itself is left out
of its own ranking. Reported (``retrieval/...`` in ``results.json``): mAP,
precision@k, R-precision and the 11-point interpolated precision-recall
curve; with a gallery of another split, also the kNN classifier's top-1
and top-5 (k = ``retrieval.knn_k``, votes exp(sim / T)), the monitor of
pretraining applied to the whole gallery.

Embeddings (``retrieval.embedding``): ``pooled`` (the encoder's pooled
feature, what linear evaluation reads) or ``projection`` (SimCLR's projection
head output, pretraining runs only). Both splits' embeddings are cached in
``<workdir>/features/<split>/`` (resumable).

Opening the run, ``config.json`` and the outline of ``results.json`` are the
evaluation skeleton's (:mod:`attn_contrastive.tasks.evaluation`); this
module is the scoring.
"""
from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from attn_contrastive import paths
from attn_contrastive.evaluators import common, features
from attn_contrastive.evaluators import retrieval_metrics as rm
from attn_contrastive.tasks import evaluation
from attn_contrastive.train import mesh as mesh_lib


def linear_eval_cache(config, run_dir: str, step: int, image_size: int, split_name: str,
                      max_examples: int) -> str | None:
  """The features folder of ``retrieval.features_from`` for ``split_name``, if it holds
  exactly these features (same checkpoint and step, pooled, same view, same
  examples); None otherwise (they are then extracted here)."""
  linear_dir = config.retrieval.get("features_from", "")
  if not linear_dir or config.retrieval.embedding != "pooled":
    return None
  root = os.path.join(linear_dir, "features")
  try:
    source = paths.read_json(os.path.join(root, "source.json"))
    linear = paths.read_json(os.path.join(linear_dir, "config.json"))
  except FileNotFoundError:
    return None
  same = (source.get("checkpoint") == run_dir
          and source.get("step") == step and source.get("image_size") == image_size
          and source.get("crop_fraction") == config.eval.crop_fraction
          and linear["eval"]["max_examples"] == max_examples
          and linear["linear_cached"]["shard_size"] == config.retrieval.shard_size
          and paths.exists(os.path.join(linear_dir, "results.json")))
  return os.path.join(root, split_name) if same else None


def _eval_cfg(config, split_name: str):
  """``config.eval`` with the gallery's own cap on examples when ``split_name`` is it."""
  eval_cfg = config.eval.copy_and_resolve_references()
  if split_name == config.retrieval.gallery_split:
    eval_cfg.max_examples = config.retrieval.gallery_max_examples
  return eval_cfg


def _embeddings(ev: evaluation.Evaluation, embed, variables, split_name: str,
                rows: slice | None = None):
  """Features and labels of one split (centre crops), cached under the workdir (or read
  from a finished linear evaluation's cache of the same features); ``rows``: only those."""
  from attn_contrastive.data import pipeline  # the data stack, only when there is data
  config = ev.config
  eval_cfg = _eval_cfg(config, split_name)
  cache = (linear_eval_cache(config, ev.run.run_dir, ev.run.step, ev.image_size, split_name,
                             eval_cfg.max_examples)
           or os.path.join(ev.workdir, "features",
                           f"{config.retrieval.embedding}_{split_name}"))
  logging.info("Features of %s: %s", split_name, cache)
  return features.extract(embed, variables, ev.split(split_name),
                          pipeline.EvalView(ev.image_size, config.eval.crop_fraction), eval_cfg,
                          mesh=ev.mesh, cache_dir=cache, shard_size=config.retrieval.shard_size,
                          rows=rows)


class Gallery(NamedTuple):
  """A gallery on the mesh: ``[N', D]`` features and ``[N']`` labels sharded by rows, each
  process holding its own block only, the rows from ``num_items`` on padding."""
  features: jax.Array
  labels: jax.Array
  num_items: int


def _gallery(ev: evaluation.Evaluation, embed, variables, query) -> Gallery:
  """The gallery split's features, this process extracting or reading its block only
  (the query split's, already here, when the gallery is the query split)."""
  rc, mesh = ev.config.retrieval, ev.mesh
  n = common.num_examples(ev.split(rc.gallery_split),
                          _eval_cfg(ev.config, rc.gallery_split).max_examples)
  padded = -(-n // mesh.size) * mesh.size
  rows = mesh_lib.process_rows(padded, mesh)
  rows = slice(min(rows.start, n), min(rows.stop, n))
  x, y = ((query[0][rows], query[1][rows]) if rc.gallery_split == rc.query_split
          else _embeddings(ev, embed, variables, rc.gallery_split, rows))
  return Gallery(mesh_lib.rows_from_processes(x, padded, mesh),
                 mesh_lib.rows_from_processes(y.astype(np.int32), padded, mesh), n)


def score_embeddings(config, query, gallery: Gallery, same_split: bool,
                     num_classes: int) -> dict[str, Any]:
  """The ``retrieval/...`` (and ``knn/...``) metrics of query vs gallery embeddings."""
  qx, qy = query
  rc = config.retrieval
  out = rm.retrieval_metrics(qx, qy, gallery.features, gallery.labels, ks=tuple(rc.ks),
                             exclude_self=same_split, chunk=rc.chunk,
                             num_items=gallery.num_items)
  metrics = {f"retrieval/{k}": v for k, v in out.items()}
  if not same_split:
    ranked = rm.knn_classify(qx, gallery.features, gallery.labels, num_classes=num_classes,
                             k=rc.knn_k, temperature=rc.knn_temperature, chunk=rc.chunk,
                             num_items=gallery.num_items)
    metrics.update({f"knn/{k}": v for k, v in rm.topk_accuracy(ranked, qy).items()})
  return metrics


def split_names(config) -> list[str]:
  """The query split, then the gallery split if it is another."""
  return list(dict.fromkeys((config.retrieval.query_split, config.retrieval.gallery_split)))


def score(ev: evaluation.Evaluation) -> dict[str, Any]:
  """The run's embeddings of the query split ranked against the gallery split."""
  config, run, rc = ev.config, ev.run, ev.config.retrieval
  embed, variables = run.embedding(rc.embedding)
  features.check_cache_source(os.path.join(ev.workdir, "features"), {
      "checkpoint": run.run_dir, "step": run.step, "embedding": rc.embedding,
      "image_size": ev.image_size, "crop_fraction": config.eval.crop_fraction})
  t0 = time.perf_counter()
  query = _embeddings(ev, embed, variables, rc.query_split)
  gallery = _gallery(ev, embed, variables, query)
  extract_s = time.perf_counter() - t0
  same_split = rc.query_split == rc.gallery_split
  n_images = len(query[0]) + (0 if same_split else gallery.num_items)
  t0 = time.perf_counter()
  num_classes = max(int(np.max(query[1])), int(jax.jit(jnp.max)(gallery.labels))) + 1
  metrics = score_embeddings(config, query, gallery, same_split, num_classes)
  metrics.update({
      "retrieval/embedding": rc.embedding,
      "retrieval/num_gallery": gallery.num_items,
      "retrieval/extract_images_per_s": n_images / max(extract_s, 1e-9),
      "retrieval/search_s": time.perf_counter() - t0})
  logging.info("Retrieval of %s (%s, %s vs %s): mAP %.4f, P@1 %.4f", run.run_dir,
               rc.embedding, rc.query_split, rc.gallery_split, metrics["retrieval/map"],
               metrics["retrieval/precision@1"])
  return metrics


def evaluate(config, workdir: str, **kwargs) -> dict[str, Any]:
  """Scores the run at ``config.run_dir``; writes ``results.json`` to ``workdir``.

  ``kwargs``: those of :func:`~attn_contrastive.tasks.evaluation.run_evaluation`
  (``splits``, ``dataset_version``, ``mesh``). Returns the results' dict.
  """
  return evaluation.run_evaluation(config, workdir, score, split_names=split_names(config),
                                   **kwargs)
