"""Retrieval: a run's embeddings of a query split ranked against a gallery split.

The CVPR paper reports precision-recall retrieval on ImageNet (and on
corrupted queries, which the robustness stage adds). Every query's
L2-normalised embedding is compared with every gallery embedding by cosine
similarity, exactly (chunked matrix products on device, the gallery sharded
over the mesh); a gallery item is relevant when it has the query's class,
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
"""
from __future__ import annotations

import os
import time
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from attn_contrastive import paths
from attn_contrastive.evaluators import features, results
from attn_contrastive.evaluators import retrieval_metrics as rm
from attn_contrastive.tasks import alignment, linear_eval
from attn_contrastive.train import checkpoint as ckpt_lib
from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train import step as step_lib

EMBEDDINGS = ("pooled", "projection")


def make_embed(model, run, embedding: str, variables) -> tuple[features.EmbedFn, Any]:
  """``(embed, its variables)``: the run's chosen embedding in inference mode.

  ``pooled`` runs the encoder alone (as linear evaluation does), so heads a
  run has beyond it do not matter; ``projection`` runs the whole SimCLR model.
  """
  if embedding not in EMBEDDINGS:
    raise ValueError(f"retrieval.embedding={embedding!r}: choose one of {EMBEDDINGS}")
  dtype = jnp.dtype(run.model.dtype)
  if embedding == "pooled":
    encoder, encoder_vars = linear_eval.encoder_of(model, variables)
    return linear_eval.make_embed(encoder, dtype), encoder_vars
  if run.task != "pretrain":
    raise ValueError(f"retrieval.embedding='projection' needs a pretraining run; "
                     f"{run.task!r} runs have no projection head: use 'pooled'")

  def embed(variables, images):
    x = step_lib.normalize_images(images, dtype)
    return model.apply(variables, x, train=False, attend=None)["embedding"]

  return embed, variables


def linear_eval_cache(config, step: int, image_size: int, split_name: str,
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
  same = (source.get("checkpoint") == paths.resolve(config.checkpoint)
          and source.get("step") == step and source.get("image_size") == image_size
          and source.get("crop_fraction") == config.eval.crop_fraction
          and linear["eval"]["max_examples"] == max_examples
          and linear["linear_cached"]["shard_size"] == config.retrieval.shard_size
          and paths.exists(os.path.join(linear_dir, "results.json")))
  return os.path.join(root, split_name) if same else None


def _embeddings(config, workdir, embed, variables, split_name, source, image_size, mesh,
                step: int):
  """Features and labels of one split (centre crops), cached under the workdir (or read
  from a finished linear evaluation's cache of the same features)."""
  from attn_contrastive.data import pipeline  # the data stack, only when there is data
  eval_cfg = config.eval.copy_and_resolve_references()
  if split_name == config.retrieval.gallery_split:
    eval_cfg.max_examples = config.retrieval.gallery_max_examples
  cache = (linear_eval_cache(config, step, image_size, split_name, eval_cfg.max_examples)
           or os.path.join(workdir, "features", f"{config.retrieval.embedding}_{split_name}"))
  logging.info("Features of %s: %s", split_name, cache)
  return features.extract(embed, variables, source,
                          pipeline.EvalView(image_size, config.eval.crop_fraction), eval_cfg,
                          mesh=mesh, cache_dir=cache, shard_size=config.retrieval.shard_size)


def score(config, query, gallery, mesh, same_split: bool,
          num_classes: int) -> dict[str, Any]:
  """The ``retrieval/...`` (and ``knn/...``) metrics of query vs gallery embeddings."""
  (qx, qy), (gx, gy) = query, gallery
  rc = config.retrieval
  gallery_x = mesh_lib.rows_on_mesh(gx, mesh)
  out = rm.retrieval_metrics(qx, qy, gallery_x, gy, ks=tuple(rc.ks), exclude_self=same_split,
                             chunk=rc.chunk)
  metrics = {f"retrieval/{k}": v for k, v in out.items()}
  if not same_split:
    ranked = rm.knn_classify(qx, gallery_x, gy, num_classes=num_classes, k=rc.knn_k,
                             temperature=rc.knn_temperature, chunk=rc.chunk)
    metrics.update({f"knn/{k}": v for k, v in rm.topk_accuracy(ranked, qy).items()})
  return metrics


def train_and_evaluate(config, workdir: str, *, splits: dict[str, Any] | None = None,
                       dataset_version: str | None = None, mesh=None) -> dict[str, Any]:
  """Scores the run at ``config.checkpoint``; writes ``results.json`` to ``workdir``.

  ``splits`` (``{split name: source}``) and ``dataset_version`` replace the
  tfds dataset (tests).
  """
  start = time.perf_counter()
  paths.makedirs(workdir)
  run = alignment.load_run_config(config.checkpoint)
  model = alignment.build_model(run)
  mesh = mesh or mesh_lib.make_mesh()
  variables = ckpt_lib.load_variables(config.checkpoint, sharding=mesh_lib.replicated(mesh))
  step = ckpt_lib.latest_step(config.checkpoint)
  embed, variables = make_embed(model, run, config.retrieval.embedding, variables)
  image_size = int(config.data.image_size or run.data.image_size)
  rc = config.retrieval
  names = list(dict.fromkeys((rc.query_split, rc.gallery_split)))
  if splits is None:
    from attn_contrastive.data import sources
    splits = {s: sources.open_config_split(config.data, s) for s in names}
  features.check_cache_source(os.path.join(workdir, "features"), {
      "checkpoint": paths.resolve(config.checkpoint), "step": step,
      "embedding": rc.embedding, "image_size": image_size,
      "crop_fraction": config.eval.crop_fraction})
  t0 = time.perf_counter()
  emb = {s: _embeddings(config, workdir, embed, variables, s, splits[s], image_size, mesh,
                        step)
         for s in names}
  extract_s = time.perf_counter() - t0
  n_images = sum(len(e[0]) for e in emb.values())
  t0 = time.perf_counter()
  num_classes = int(max(int(np.max(e[1])) for e in emb.values()) + 1)
  metrics = score(config, emb[rc.query_split], emb[rc.gallery_split], mesh,
                  rc.query_split == rc.gallery_split, num_classes)
  metrics.update({
      "retrieval/embedding": rc.embedding,
      "retrieval/num_gallery": int(len(emb[rc.gallery_split][0])),
      "retrieval/extract_images_per_s": n_images / max(extract_s, 1e-9),
      "retrieval/search_s": time.perf_counter() - t0})
  dataset = results.dataset_entry(config.data.name, names, data_dir=config.data.data_dir,
                                  version=dataset_version)
  out = results.write(workdir, task="retrieval", source_workdir=config.checkpoint,
                      source_step=step, source_config=run, dataset=dataset, metrics=metrics,
                      wall_time_s=time.perf_counter() - start)
  logging.info("Retrieval of %s (%s, %s vs %s): mAP %.4f, P@1 %.4f", config.checkpoint,
               rc.embedding, rc.query_split, rc.gallery_split, metrics["retrieval/map"],
               metrics["retrieval/precision@1"])
  return out
