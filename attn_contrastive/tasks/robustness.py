"""Robustness: a linear evaluation's encoder and classifier under ImageNet-C corruptions.

``config.run_dir`` is the workdir of a finished ``linear_eval`` run. Its
source run's encoder is restored (frozen, as linear evaluation keeps it) with
the classifier that run fitted (``robustness.classifier``: the ``linear``
head, the ``linear_cached`` softmax regression, or ``auto``), and every
corruption × severity of ``robustness.corruptions`` × ``robustness.severities``
is scored:

* ``generate`` (``robustness.source``): the evaluation split's centre crops,
  corrupted on the fly with :mod:`attn_contrastive.data.image_corruptions`
  (ImageNet-C's recipe; the synthetic data, or ImageNet without the release);
* ``released``: the released ImageNet-C images (``imagenet_c/<c>_<s>``,
  built from ``robustness.manual_dir`` on first use), or with
  ``released_dataset="cifar10_c"`` the extracted CIFAR-10-C arrays
  (:mod:`attn_contrastive.data.cifar10_c_release`, read in place), resized
  whole to the model's input.

``robustness.constants`` picks the generated corruptions' parameters:
ImageNet-C's (``imagenet``) or CIFAR-10-C's (``cifar``: as CIFAR-10-C was
made, the whole 32-px image is corrupted, then resized to the model's input).
CIFAR-10-C has no mCE (AlexNet's errors normalise ImageNet-C only): its
``mce`` and ``relative_mce`` are NaN and its summary the accuracies.

The released tree is looked at before anything is computed
(:func:`corruptions_to_score`): a benchmark corruption (one of the 15 of
mCE) it lacks stops the run at once, naming the tar files to extract; the 4
extra ones (``extra.tar``, which many users skip) are left out, and
``results.json`` names them (``robustness/missing``).

Each condition's result is kept in ``<workdir>/conditions/`` as soon as it
is scored, so a killed run restarted with the same command goes on from
there. The summary (:mod:`attn_contrastive.evaluators.corruption_errors`):
category means, the extra corruptions, mCE and relative mCE. With
``robustness.retrieval``, the corrupted images of ``retrieval_severities``
also query the clean training split (the features linear evaluation cached)
by cosine similarity: the CVPR paper's retrieval on ImageNet-C.

Opening the run, ``config.json`` and the outline of ``results.json`` are the
evaluation skeleton's (:mod:`attn_contrastive.tasks.evaluation`); this
module is the scoring.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Sequence

import ml_collections
import numpy as np
from absl import logging

from attn_contrastive import paths, progress, runs
from attn_contrastive.evaluators import corruption_errors, features, results
from attn_contrastive.evaluators import retrieval_metrics as rm
from attn_contrastive.tasks import evaluation
from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train import preemption

class _Scorer:
  """The frozen encoder + the linear evaluation's classifier, and the clean gallery for
  corrupted queries."""

  def __init__(self, config, linear_dir: str, run: runs.Run, mesh):
    self.embed, self.frozen = run.embedding("pooled")
    self.kernel, self.bias, self.protocol = runs.load_classifier(
        linear_dir, config.robustness.classifier)
    self.eval_cfg, self.mesh = config.eval, mesh
    self.gallery = None

  def features(self, source, transform=None, *, eval_cfg=None, cache_dir=None):
    return features.extract(self.embed, self.frozen, source, transform or (lambda ex: ex),
                            eval_cfg or self.eval_cfg, mesh=self.mesh, cache_dir=cache_dir)

  def top1(self, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(x @ self.kernel + self.bias, -1) == y))

  def set_gallery(self, x: np.ndarray, y: np.ndarray) -> None:
    self.gallery = (mesh_lib.rows_on_mesh(x, self.mesh), y)

  def retrieval(self, x: np.ndarray, y: np.ndarray, rc) -> dict[str, Any]:
    n = len(x) if rc.retrieval_max_queries < 0 else min(len(x), rc.retrieval_max_queries)
    out = rm.retrieval_metrics(x[:n], y[:n], self.gallery[0], self.gallery[1],
                               ks=tuple(rc.ks), chunk=rc.chunk)
    return {k: out[k] for k in ("map", "pr_curve", *(f"precision@{k}" for k in rc.ks))}


#: The side of the images CIFAR-10-C's constants are made for.
CIFAR_SIZE = 32


def _condition_source(config, name: str, severity: int, clean_source, view, cache):
  """(source, transform) of one condition's images."""
  rc = config.robustness
  from attn_contrastive.data import pipeline
  if rc.source == "generate":
    from attn_contrastive.data.corrupted_split import CorruptedSplit
    if rc.constants == "cifar":
      # As CIFAR-10-C was made: the whole 32-px image corrupted, then resized to the model's
      # input like the released arrays (an ImageNet encoder reads them upsampled).
      return (CorruptedSplit(clean_source, pipeline.EvalView(CIFAR_SIZE, 1.0), name, severity,
                             rc.seed, cache, rc.constants),
              pipeline.EvalView(view.image_size, 1.0))
    return CorruptedSplit(clean_source, view, name, severity, rc.seed, cache,
                          rc.constants), None
  from attn_contrastive.data import prepare, sources
  if rc.released_dataset == "cifar10_c":
    from attn_contrastive.data import cifar10_c_release
    return (cifar10_c_release.CifarCSource(rc.manual_dir, name, severity),
            pipeline.EvalView(view.image_size, 1.0))
  dataset = f"{rc.released_dataset}/{name}_{severity}"
  if rc.manual_dir:
    prepare.prepare(dataset, config.data.data_dir or None, manual_dir=rc.manual_dir)
  source = sources.open_config_split(config.data, "validation", dataset)
  return source, pipeline.EvalView(view.image_size, 1.0)


def corruptions_to_score(config) -> tuple[tuple[str, ...], list[str]]:
  """(the corruptions to score, the extra ones left out as the release lacks them).

  Only a released copy (``robustness.manual_dir``) can lack conditions; it is
  looked at before any image is read, so that a missing benchmark corruption
  costs nothing but the error its reader raises.
  """
  rc = config.robustness
  if rc.source != "released" or not rc.manual_dir:
    return tuple(rc.corruptions), []
  missing = (_missing_cifar10_c(rc) if rc.released_dataset == "cifar10_c"
             else _missing_imagenet_c(rc))
  if missing:
    logging.warning("%s's extra corruptions %s are not in %s: scoring the other %d; "
                    "results.json lists them under robustness/missing", rc.released_dataset,
                    ", ".join(missing), rc.manual_dir, len(rc.corruptions) - len(missing))
  return tuple(c for c in rc.corruptions if c not in missing), missing


def _missing_imagenet_c(rc) -> list[str]:
  """The extra corruptions an extracted ImageNet-C tree lacks (any of their severities);
  a missing benchmark condition is refused, naming the tar files to extract."""
  from attn_contrastive.data import image_corruptions, imagenet_c_release
  missing = imagenet_c_release.missing_conditions(rc.manual_dir, rc.corruptions,
                                                  rc.severities)
  benchmark = [(c, s) for c, s in missing if c not in image_corruptions.EXTRA]
  if benchmark:
    tars = sorted({f"{cat}.tar" for cat, names in image_corruptions.CATEGORIES.items()
                   for c, _ in benchmark if c in names})
    listed = ", ".join(f"{c} severity {s}" for c, s in benchmark[:8])
    more = f" and {len(benchmark) - 8} more" if len(benchmark) > 8 else ""
    raise FileNotFoundError(
        f"the ImageNet-C tree at {rc.manual_dir} lacks {len(benchmark)} benchmark "
        f"condition(s): {listed}{more}. Extract {', '.join(tars)} "
        "(https://zenodo.org/record/2235448) into it, or score fewer with "
        "--config.robustness.corruptions=... and --config.robustness.severities=...")
  return sorted({c for c, _ in missing}, key=rc.corruptions.index)


def _missing_cifar10_c(rc) -> list[str]:
  """The extra corruptions an extracted CIFAR-10-C folder lacks (one file per corruption,
  every severity in it); a missing benchmark file is refused."""
  from attn_contrastive.data import cifar10_c_release, image_corruptions
  missing = cifar10_c_release.missing_corruptions(rc.manual_dir, rc.corruptions)
  benchmark = [c for c in missing if c not in image_corruptions.EXTRA]
  if benchmark:
    files = ", ".join(f"{c}.npy" for c in benchmark)
    raise FileNotFoundError(
        f"the CIFAR-10-C folder {rc.manual_dir} lacks {files}.\n"
        f"{cifar10_c_release.MANUAL_INSTRUCTIONS}Or score fewer with "
        "--config.robustness.corruptions=...")
  return missing


def score_conditions(config, workdir: str, scorer: _Scorer, clean_source, view,
                     corruptions: Sequence[str]) -> dict[str, dict[str, Any]]:
  """``{"<corruption>_<severity>": {"top1", ["retrieval"]}}`` of ``corruptions`` ×
  ``robustness.severities``, resuming finished ones."""
  conditions = [(name, s) for name in corruptions for s in config.robustness.severities]
  out, cache = {}, {}
  with progress.bar(len(conditions), "conditions", unit="cond") as bar:
    for name, severity in conditions:
      preemption.check()
      bar.set_postfix_str(f"{name} {severity}")
      out[f"{name}_{severity}"] = _condition(config, workdir, scorer, clean_source, view,
                                             name, severity, cache)
      bar.update(1)
  return out


def _condition(config, workdir: str, scorer: _Scorer, clean_source, view, name: str,
               severity: int, cache: dict) -> dict[str, Any]:
  """One condition's scores, read back when an earlier run wrote them."""
  rc = config.robustness
  path = os.path.join(workdir, "conditions", f"{name}_{severity}.json")
  if paths.exists(path):
    return paths.read_json(path)
  t0 = time.perf_counter()
  source, transform = _condition_source(config, name, severity, clean_source, view, cache)
  x, y = scorer.features(source, transform)
  result = {"top1": scorer.top1(x, y), "num_images": int(len(y))}
  if rc.retrieval and severity in rc.retrieval_severities:
    result["retrieval"] = scorer.retrieval(x, y, rc)
  result["wall_time_s"] = time.perf_counter() - t0
  results.write_json(path, result)
  logging.info("%s severity %d: top-1 %.4f (%.1f s)", name, severity, result["top1"],
               result["wall_time_s"])
  return result


def is_cifar(rc) -> bool:
  """Whether ``robustness`` scores CIFAR-10-C (released, or generated with its constants)."""
  if rc.source == "released":
    return rc.released_dataset == "cifar10_c"
  return rc.get("constants") == "cifar"


def summarize(config, conditions: dict[str, dict[str, Any]], clean_top1: float,
              clean_retrieval: dict[str, Any] | None) -> dict[str, Any]:
  """The ``robustness/...`` and ``retrieval_c/...`` metrics of ``results.json``, over the
  corruptions of ``conditions``."""
  rc = config.robustness
  names = [c for c in rc.corruptions if f"{c}_{rc.severities[0]}" in conditions]
  top1 = {c: [conditions[f"{c}_{s}"]["top1"] for s in rc.severities] for c in names}
  summary = corruption_errors.summarize(top1, clean_top1)
  if is_cifar(rc):
    # AlexNet's errors normalise ImageNet-C's; CIFAR-10-C is read as its accuracies.
    summary.update(ce={}, relative_ce={}, mce=float("nan"), relative_mce=float("nan"))
  metrics = {"robustness/clean_top1": clean_top1, "robustness/top1": top1,
             "robustness/severities": list(rc.severities)}
  metrics.update({f"robustness/{k}": v for k, v in summary.items()})
  scored = [c["retrieval"] for c in conditions.values() if "retrieval" in c]
  if scored:
    for k in scored[0]:
      metrics[f"retrieval_c/{k}"] = (np.mean([s[k] for s in scored], axis=0).tolist()
                                     if k == "pr_curve" else
                                     float(np.mean([s[k] for s in scored])))
    metrics["retrieval_c/num_conditions"] = len(scored)
    metrics.update({f"retrieval_c/clean_{k}": v for k, v in clean_retrieval.items()})
  return metrics


def clean_retrieval(ev: evaluation.Evaluation, scorer: _Scorer, linear, view,
                    clean_x: np.ndarray, clean_y: np.ndarray) -> dict[str, Any]:
  """Clean queries against the clean training split, which becomes the scorer's gallery
  (embedded as the linear evaluation did: its cached features when it kept them)."""
  train_split = ev.config.data.train_split
  linear_cache = os.path.join(ev.config.run_dir, "features", train_split)
  cache = linear_cache if paths.isdir(linear_cache) else os.path.join(
      ev.workdir, "features", train_split)
  scorer.set_gallery(*scorer.features(ev.split(train_split), view, eval_cfg=linear.eval,
                                      cache_dir=cache))
  return scorer.retrieval(clean_x, clean_y, ev.config.robustness)


def score(ev: evaluation.Evaluation, linear: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every condition scored with the linear evaluation at ``config.run_dir`` (``linear``:
  its config); the summary of :func:`summarize`."""
  from attn_contrastive.data import pipeline
  config, rc, data = ev.config, ev.config.robustness, ev.config.data
  linear_dir = config.run_dir
  corruptions, missing = corruptions_to_score(config)
  scorer = _Scorer(config, linear_dir, ev.run, ev.mesh)
  image_size = int(data.image_size or linear.data.image_size or ev.run.image_size)
  view = pipeline.EvalView(image_size, linear.aug.eval_crop_fraction)
  features.check_cache_source(os.path.join(ev.workdir, "conditions"), {
      "linear_eval": paths.resolve(linear_dir), "step": ev.run.step,
      "classifier": scorer.protocol, "source": rc.source, "seed": rc.seed,
      "image_size": image_size, "max_examples": config.eval.max_examples})
  clean = ev.split(data.eval_split)
  clean_x, clean_y = scorer.features(clean, view)
  clean_top1 = scorer.top1(clean_x, clean_y)
  retrieval = (clean_retrieval(ev, scorer, linear, view, clean_x, clean_y)
               if rc.retrieval else None)
  conditions = score_conditions(config, ev.workdir, scorer, clean, view, corruptions)
  metrics = summarize(config, conditions, clean_top1, retrieval)
  metrics.update({"robustness/classifier": {"workdir": paths.resolve(linear_dir),
                                            "protocol": scorer.protocol},
                  "robustness/source": rc.source, "robustness/seed": rc.seed,
                  "robustness/num_images": int(len(clean_y)),
                  "robustness/missing": missing})
  logging.info("Robustness of %s (%s classifier): clean %.4f, mean %.4f, mCE %.3f", linear_dir,
               scorer.protocol, clean_top1, metrics["robustness/mean"],
               metrics["robustness/mce"])
  return metrics


def evaluate(config, workdir: str, **kwargs) -> dict[str, Any]:
  """Scores the linear evaluation at ``config.run_dir``; writes ``results.json``.

  ``results.json`` names the run that linear evaluation evaluated as its
  source. ``kwargs``: those of
  :func:`~attn_contrastive.tasks.evaluation.run_evaluation` (``splits``,
  ``dataset_version``, ``mesh``). Returns the results' dict.
  """
  linear = runs.read_config(config.run_dir, reader=config.task)
  return evaluation.run_evaluation(
      config, workdir, functools.partial(score, linear=linear),
      split_names=[config.data.eval_split], run_dir=runs.evaluated_run_dir(linear),
      reader=linear.task, **kwargs)
