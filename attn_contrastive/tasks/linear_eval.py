"""Linear evaluation of a pretraining (or supervised) run: the paper's top-1.

The encoder of the run at ``config.run_dir`` is rebuilt from its
``config.json`` and its latest checkpoint is restored into this run's mesh
(replicated), whatever number of devices and processes wrote it. The
encoder stays frozen: BatchNorm runs in inference mode on its running
statistics, and its variables are a frozen input of every step, never
differentiated, updated or checkpointed. Protocols (``config.protocols``):

* ``linear`` (SimCLR's, the paper's): a zero-initialised linear classifier
  on the pooled feature, trained through the shared loop on random-resized
  crops and flips of the training split (SGD, Nesterov momentum, cosine
  decay, no weight decay) in ``<workdir>/linear/`` (its checkpoints, so a
  killed run resumes; its own ``results.json``), scored on centre crops of
  the validation split.
* ``linear_cached``: the pooled features of centre crops of both splits,
  extracted once into ``<workdir>/features/<split>/`` (resumable), and an
  L2-regularised softmax regression fitted on them, its strength chosen on
  the last ``linear_cached.holdout_fraction`` of the training split
  (:mod:`attn_contrastive.evaluators.softmax_regression`). Minutes where
  ``linear`` takes hours, with centre crops instead of augmentation.

A supervised run's own classifier is scored too (``supervised/top1``,
``supervised/top5``). ``results.json`` follows
:mod:`attn_contrastive.evaluators.results`: ``<protocol>/top1``, ``/top5``,
``linear_cached/l2`` (and its grid), ``<protocol>/wall_time_s``.

Opening the run, ``config.json`` and the outline of ``results.json`` are the
evaluation skeleton's (:mod:`attn_contrastive.tasks.evaluation`); this
module is the scoring.
"""
from __future__ import annotations

import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
from absl import logging

from attn_contrastive import config_checks, losses, paths, runs
from attn_contrastive.evaluators import classification, features
from attn_contrastive.evaluators import softmax_regression
from attn_contrastive.models.heads import LinearHead
from attn_contrastive.tasks import evaluation
from attn_contrastive.train import loop

@flax.struct.dataclass
class ProbeState:
  """What the linear protocol's evaluator reads: the head's and the encoder's variables."""
  head: Any
  encoder: Any


class _Probe:
  """The loop's evaluator of the linear protocol: the head with the frozen encoder."""

  def __init__(self, evaluator: classification.ClassificationEvaluator, frozen):
    self.evaluator, self.frozen, self.results = evaluator, frozen, {}

  def __call__(self, state) -> dict[str, float]:
    return self.evaluator(ProbeState(head=state.params, encoder=self.frozen))


def linear_task(config, embed, frozen, splits, num_classes: int, image_size: int,
                mesh) -> loop.TaskSpec:
  """The ``linear`` protocol as a loop task: the head trains, the encoder is ``frozen``."""
  from attn_contrastive.data import pipeline  # the data stack, only when a run is built
  head = LinearHead(num_classes)

  def loss_fn(params, batch_stats, batch, rng, frozen):
    del rng
    feats = jax.lax.stop_gradient(embed(frozen, batch["image"]))
    logits = head.apply({"params": params}, feats)
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return losses.cross_entropy(logits, batch["label"]), (batch_stats, {"train_accuracy": acc})

  def predict(state: ProbeState, images):
    return head.apply({"params": state.head}, embed(state.encoder, images))

  evaluator = classification.ClassificationEvaluator(
      predict, splits[config.data.eval_split],
      pipeline.EvalView(image_size, config.aug.eval_crop_fraction), config.eval, mesh=mesh)
  dim = jax.eval_shape(embed, frozen, jax.ShapeDtypeStruct((1, image_size, image_size, 3),
                                                           jnp.uint8)).shape[-1]
  return loop.TaskSpec(
      model=head, loss_fn=loss_fn, train_source=splits[config.data.train_split],
      train_transform=pipeline.SupervisedView(image_size, config.aug),
      sample_input=jax.ShapeDtypeStruct((1, dim), jnp.float32),
      evaluate=_Probe(evaluator, frozen), frozen=frozen)


def run_linear_cached(config, workdir: str, embed, frozen, splits, num_classes: int,
                      image_size: int, source: dict[str, Any], mesh) -> dict[str, Any]:
  """The ``linear_cached`` protocol: cached centre-crop features, softmax regression."""
  from attn_contrastive.data import pipeline
  cache_root = os.path.join(workdir, "features")
  features.check_cache_source(cache_root, dict(source, image_size=image_size,
                                              crop_fraction=config.aug.eval_crop_fraction))
  transform = pipeline.EvalView(image_size, config.aug.eval_crop_fraction)
  t0 = time.perf_counter()
  (train_x, train_y), (val_x, val_y) = (
      features.extract(embed, frozen, splits[split], transform, config.eval, mesh=mesh,
                       cache_dir=os.path.join(cache_root, split),
                       shard_size=config.linear_cached.shard_size)
      for split in (config.data.train_split, config.data.eval_split))
  logging.info("Features of %d + %d examples (D = %d) in %.1f s, cached in %s",
               len(train_x), len(val_x), train_x.shape[1], time.perf_counter() - t0, cache_root)
  t0 = time.perf_counter()
  lc = config.linear_cached
  fit = softmax_regression.fit_and_evaluate(
      train_x, train_y, val_x, val_y, num_classes, l2_grid=tuple(lc.l2_grid),
      holdout_fraction=lc.holdout_fraction, max_iters=lc.max_iters, tol=lc.tol, mesh=mesh)
  logging.info("Softmax regression: l2 %g chosen from %s, fitted in %.1f s", fit["l2"],
               tuple(lc.l2_grid), time.perf_counter() - t0)
  fit["num_images"] = int(len(val_y))  # the validation images scored
  if jax.process_index() == 0:
    paths.save_npz_atomic(os.path.join(workdir, runs.CACHED_CLASSIFIER), **fit["classifier"])
  return fit


def evaluate_supervised(config, run: runs.Run, split, image_size: int,
                        mesh) -> dict[str, float]:
  """A supervised run's own classifier on centre crops of ``split``."""
  from attn_contrastive.data import pipeline
  evaluator = classification.ClassificationEvaluator(
      run.predict("logits"), split,
      pipeline.EvalView(image_size, config.aug.eval_crop_fraction), config.eval, mesh=mesh)
  return evaluator(run.state())


def _num_classes(config) -> int:
  if config.data.num_classes > 0:
    return int(config.data.num_classes)
  from attn_contrastive.data import sources
  return int(sources.get_builder(config.data.name, config.data.data_dir)
             .info.features["label"].num_classes)


def score(ev: evaluation.Evaluation) -> dict[str, Any]:
  """Every protocol of ``config.protocols`` (and a supervised run's own classifier)."""
  config, run, mesh = ev.config, ev.run, ev.mesh
  embed, frozen = run.embedding("pooled")
  splits = {s: ev.split(s) for s in (config.data.train_split, config.data.eval_split)}
  num_classes = _num_classes(config)
  if run.task != "supervised" and not config.protocols:
    raise ValueError(f"{run.run_dir} is a {run.task} run, which has no classifier of its "
                     "own: set --config.protocols to one or more of "
                     f"{config_checks.LINEAR_PROTOCOLS}")
  metrics = {}
  if run.task == "supervised":
    t0 = time.perf_counter()
    scores = evaluate_supervised(config, run, splits[config.data.eval_split], ev.image_size,
                                 mesh)
    metrics.update({"supervised/top1": scores["accuracy"], "supervised/top5": scores["top5"],
                    "supervised/wall_time_s": time.perf_counter() - t0})
  if "linear" in config.protocols:
    t0 = time.perf_counter()
    task = linear_task(config, embed, frozen, splits, num_classes, ev.image_size, mesh)
    _, last = loop.run(config, os.path.join(ev.workdir, "linear"), task, mesh=mesh)
    metrics.update({"linear/top1": last["eval/accuracy"], "linear/top5": last["eval/top5"],
                    "linear/wall_time_s": time.perf_counter() - t0})
  if "linear_cached" in config.protocols:
    t0 = time.perf_counter()
    source = {"checkpoint": run.run_dir, "step": run.step}
    fit = run_linear_cached(config, ev.workdir, embed, frozen, splits, num_classes,
                            ev.image_size, source, mesh)
    metrics.update({f"linear_cached/{k}": fit[k] for k in ("top1", "top5", "l2", "grid",
                                                            "num_images")})
    metrics["linear_cached/wall_time_s"] = time.perf_counter() - t0
  for name in ("supervised", *config.protocols):
    if f"{name}/top1" in metrics:
      logging.info("%s: top-1 %.4f, top-5 %.4f (%.1f s)", name, metrics[f"{name}/top1"],
                   metrics[f"{name}/top5"], metrics[f"{name}/wall_time_s"])
  return metrics


def evaluate(config, workdir: str, **kwargs) -> dict[str, Any]:
  """Runs ``config.protocols`` on the run at ``config.run_dir``; writes ``results.json``.

  ``kwargs``: those of :func:`~attn_contrastive.tasks.evaluation.run_evaluation`
  (``splits``, ``dataset_version``, ``mesh``). Returns the results' dict.
  """
  return evaluation.run_evaluation(
      config, workdir, score,
      split_names=[config.data.train_split, config.data.eval_split], **kwargs)
