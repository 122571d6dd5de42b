"""Attention alignment: a trained encoder's spatial attention against human maps.

The paper's question is whether training with teacher attention makes the
model look where people look. This task restores a finished pretraining (or
supervised) run from its workdir (``config.json`` + checkpoint), runs it over
a human-attention split (the synthetic ``human_attention`` validation split
or SALICON's) and scores attention maps of each image with every MIT metric,
beside the centre-bias baseline, exactly as the teacher is scored.

The maps of a model (``alignment.maps``, a tuple of these kinds, all scored
in one pass over the images):

* ``heads``: the attention heads' spatial softmax, one density per head;
* ``activations``: the activation-based attention of each stage, Σ_c A_c²
  over the channels normalised to sum 1 (Zagoruyko & Komodakis, ICLR 2017),
  which is what a plain encoder "attends to";
* ``gradcam``: Grad-CAM of the predicted class at ``alignment.gradcam_stage``
  (:mod:`attn_contrastive.evaluators.gradcam`), which puts a run with heads
  and a baseline without them on the same footing. It needs logits: a
  supervised run's own classifier, or the linear classifier of the pooled
  feature that a linear evaluation of the run trained
  (``alignment.classifier``, its workdir; ``alignment.classifier_protocol``);
* ``auto``: heads if the run has them, else activations.

The default, ``("auto", "gradcam")``, scores Grad-CAM only where there are
logits (it says how to get them when there are none); a ``gradcam`` asked
for in any other tuple without logits is refused. The first kind is the
primary one (``alignment/model``). The densities of a kind's stages are
resized to the finest stage's resolution and averaged.

``results.json`` follows :mod:`attn_contrastive.evaluators.results` (task
``alignment``): ``alignment/model`` (the primary kind's NSS, CC, KLD, SIM,
AUC-Judd, AUC-Borji, shuffled AUC, information gain),
``alignment/center_bias``, ``alignment/<kind>`` for each kind scored,
``alignment/primary``, ``alignment/kinds``, ``alignment/stages`` (per kind),
``alignment/gradcam_stage``, ``alignment/num_images`` and
``alignment/classifier`` (``{"workdir", "protocol"}`` of the logits, or
None). ``examples.npz`` holds the first ``eval.num_images`` images, their
human densities and every kind's maps (``map/<kind>``), for the report's
figure.

Opening the run, ``config.json`` and the outline of ``results.json`` are the
evaluation skeleton's (:mod:`attn_contrastive.tasks.evaluation`); this
module is the scoring.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from attn_contrastive import config_checks, paths, runs
from attn_contrastive.evaluators import gradcam, results
from attn_contrastive.evaluators import saliency as saliency_eval
from attn_contrastive.models import forward
from attn_contrastive.models.attention import spatial_softmax
from attn_contrastive.models.build import encoder_of
from attn_contrastive.models.resnet import stage_output_block
from attn_contrastive.saliency import jax_metrics
from attn_contrastive.tasks import evaluation
from attn_contrastive.train import mesh as mesh_lib

#: ``alignment.maps``'s default: Grad-CAM is skipped, not refused, where there are no logits.
DEFAULT_MAPS = ("auto", "gradcam")


def activation_density(features: jnp.ndarray) -> jnp.ndarray:
  """``[B, h, w, C]`` activations → ``[B, h, w]`` Σ_c A_c², summing to 1 per image."""
  energy = jnp.sum(jnp.square(features.astype(jnp.float32)), axis=-1)
  return energy / jnp.maximum(jnp.sum(energy, axis=(1, 2), keepdims=True), 1e-12)


def mean_density(maps: list[jnp.ndarray]) -> jnp.ndarray:
  """Densities of several resolutions → their mean at the finest one (sums to 1)."""
  h = max(m.shape[1] for m in maps)
  w = max(m.shape[2] for m in maps)
  out = 0.0
  for m in maps:
    m = jax_metrics.resize_maps(m, (h, w))
    out = out + m / jnp.maximum(jnp.sum(m, axis=(1, 2), keepdims=True), 1e-12)
  return out / len(maps)


def model_density(out: dict[str, Any], stages: tuple[str, ...], kind: str) -> jnp.ndarray:
  """The model's attention density from its outputs (see the module docstring)."""
  if kind == "heads":
    return mean_density([spatial_softmax(out["attention_logits"][s]) for s in stages])
  return mean_density([activation_density(out[s]) for s in stages])


def requested_kinds(config) -> tuple[str, ...]:
  """``alignment.maps`` as a tuple of known kinds.

  Comma-separated strings are split (``--config.alignment.maps=heads,gradcam``
  arrives as ``("heads,gradcam",)``).
  """
  maps = config.alignment.maps
  maps = (maps,) if isinstance(maps, str) else tuple(maps)
  kinds = tuple(k.strip() for m in maps for k in m.split(","))
  unknown = [k for k in kinds if k not in config_checks.ALIGNMENT_MAPS]
  if unknown or not kinds:
    raise ValueError(f"alignment.maps={maps!r}: choose kinds among "
                     f"{config_checks.ALIGNMENT_MAPS}")
  return kinds


def resolve_maps(config, run_config, has_logits: bool
                 ) -> tuple[tuple[str, ...], dict[str, tuple]]:
  """(kinds to score, primary first; ``{kind: stages}``) from ``config.alignment`` and the
  evaluated run's config.

  ``has_logits``: whether Grad-CAM has a classifier (see :func:`load_logits`).
  """
  requested = requested_kinds(config)
  attn = run_config.get("attention")
  has_heads = attn is not None and bool(attn.enabled)
  kinds = []
  for kind in requested:
    if kind == "auto":
      kind = "heads" if has_heads else "activations"
    if kind == "heads" and not has_heads:
      raise ValueError("alignment.maps asks for 'heads' but the run has no attention heads; "
                       "use 'activations' or 'gradcam'")
    if kind == "gradcam" and not has_logits:
      hint = ("Grad-CAM needs logits: set --config.alignment.classifier to the workdir of "
              "a linear_eval run of this checkpoint")
      if requested != DEFAULT_MAPS:
        raise ValueError(f"alignment.maps asks for 'gradcam' but {config.run_dir} is a "
                         f"{run_config.task} run without a classifier. {hint}")
      logging.info("Grad-CAM skipped: %s is a %s run without a classifier. %s",
                   config.run_dir, run_config.task, hint)
      continue
    if kind not in kinds:
      kinds.append(kind)
  stages = {"heads": tuple(attn.stages) if has_heads else (),
            "activations": tuple(config.alignment.stages),
            "gradcam": (config.alignment.gradcam_stage,)}
  return tuple(kinds), {k: stages[k] for k in kinds}


def _warn_if_other_run(classifier_dir: str, run_dir: str) -> None:
  """A warning when the linear evaluation at ``classifier_dir`` evaluated another run."""
  path = os.path.join(classifier_dir, results.FILE)
  if not paths.exists(path):
    return
  source = paths.read_json(path).get("source_workdir")
  if source and paths.resolve(source) != paths.resolve(run_dir):
    logging.warning("alignment.classifier=%s is a linear evaluation of %s, not of %s",
                    classifier_dir, source, run_dir)


def load_logits(config, run: runs.Run) -> tuple[dict[str, np.ndarray] | None, dict | None]:
  """(classifier arrays for :class:`~attn_contrastive.runs.EvalState`, ``{"workdir",
  "protocol"}``) of Grad-CAM.

  ``alignment.classifier`` set: the linear evaluation's classifier of the
  pooled feature (an unreadable one is an error). Otherwise a supervised
  run's own classifier (arrays None, protocol ``supervised``), or no logits
  at all: ``(None, None)``.
  """
  where = config.alignment.classifier
  if not where:
    if run.task == "supervised":
      return None, {"workdir": run.run_dir, "protocol": "supervised"}
    return None, None
  try:
    kernel, bias, protocol = runs.load_classifier(where, config.alignment.classifier_protocol)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"alignment.classifier={where!r}: {e}") from e
  dim = encoder_of(run.model, {})[0].feature_dim
  if kernel.shape[0] != dim:
    raise ValueError(f"alignment.classifier={where!r} classifies {kernel.shape[0]}-d "
                     f"features; the run's pooled feature has {dim}: a classifier of "
                     "another run?")
  _warn_if_other_run(where, run.run_dir)
  classifier = {"kernel": np.asarray(kernel, np.float32), "bias": np.asarray(bias, np.float32)}
  return classifier, {"workdir": paths.resolve(where), "protocol": protocol}


def input_hw(config, run: runs.Run) -> tuple[int, int]:
  """The model's input: ``data.image_size`` × ``data.image_width``; 0 = the run's, square."""
  h = int(config.data.image_size or run.image_size)
  return h, int(config.data.image_width or h)


def logits_of(classifier: dict[str, jax.Array] | None, out: dict[str, Any]) -> jax.Array:
  """Grad-CAM's logits: the linear ``classifier`` of the pooled feature, or the run's own."""
  if classifier is None:
    return out["logits"]
  return out["pooled"].astype(jnp.float32) @ classifier["kernel"] + classifier["bias"]


def make_predict(model, run_config, kinds: tuple[str, ...], stages: dict[str, tuple]):
  """``predict(state, images) -> {kind: density}``: one forward pass (and, for
  Grad-CAM, one backward pass) gives every kind's maps. ``run_config``: the
  config of the run whose ``model`` it is."""
  dtype = jnp.dtype(run_config.model.dtype)
  if "gradcam" in kinds:
    (stage,) = stages["gradcam"]
    block = stage_output_block(int(run_config.model.depth), stage)

  def predict(state, images):
    def outputs():
      return forward.apply(model, forward.variables_of(state), images, dtype, train=False)

    maps = {}
    if "gradcam" in kinds:
      maps["gradcam"], out = gradcam.gradcam(outputs, stage, block,
                                             lambda o: logits_of(state.classifier, o))
    else:
      out = outputs()
    for kind in kinds:
      if kind != "gradcam":
        maps[kind] = model_density(out, stages[kind], kind)
    return maps

  return predict


def make_evaluator(config, run: runs.Run, source, kinds: tuple[str, ...],
                   stages: dict[str, tuple], workdir: str | None = None,
                   mesh=None) -> saliency_eval.SaliencyEvaluator:
  """The run's attention densities (``kinds``) scored as the teacher's is, in one pass."""
  return saliency_eval.SaliencyEvaluator(make_predict(run.model, run.config, kinds, stages),
                                         source, config.eval, input_hw(config, run),
                                         name="model", mesh=mesh, workdir=workdir)


def alignment_metrics(config, scores: dict[str, Any], kinds: tuple[str, ...],
                      stages: dict[str, tuple], classifier: dict | None) -> dict[str, Any]:
  """``results.json``'s ``alignment/*`` keys from the evaluator's results."""
  metrics = {"alignment/model": scores[kinds[0]], "alignment/center_bias": scores["center_bias"]}
  metrics.update({f"alignment/{k}": scores[k] for k in kinds})
  metrics.update({
      "alignment/primary": kinds[0], "alignment/kinds": list(kinds),
      "alignment/stages": {k: list(stages[k]) for k in kinds},
      "alignment/gradcam_stage": config.alignment.gradcam_stage,
      "alignment/num_images": scores["num_images"], "alignment/classifier": classifier})
  return metrics


def score(ev: evaluation.Evaluation) -> dict[str, Any]:
  """Every kind's maps of the run scored on ``data.split``; ``examples.npz`` written."""
  config, run = ev.config, ev.run
  classifier, classifier_info = load_logits(config, run)
  kinds, stages = resolve_maps(config, run.config, classifier_info is not None)
  evaluator = make_evaluator(config, run, ev.split(config.data.split), kinds, stages,
                             ev.workdir, ev.mesh)
  evaluator(jax.device_put(run.state(classifier), mesh_lib.replicated(ev.mesh)))
  metrics = alignment_metrics(config, evaluator.results, kinds, stages, classifier_info)
  saliency_eval.write_examples(ev.workdir, evaluator.examples)
  for kind in kinds:
    logging.info("Alignment of %s, %s %s: NSS %.3f CC %.3f", run.run_dir, kind,
                 stages[kind], metrics[f"alignment/{kind}"]["nss"],
                 metrics[f"alignment/{kind}"]["cc"])
  logging.info("Centre bias: NSS %.3f CC %.3f", metrics["alignment/center_bias"]["nss"],
               metrics["alignment/center_bias"]["cc"])
  return metrics


def evaluate(config, workdir: str, **kwargs) -> dict[str, Any]:
  """Scores the run at ``config.run_dir``; writes ``results.json`` and ``examples.npz``.

  ``kwargs``: those of :func:`~attn_contrastive.tasks.evaluation.run_evaluation`
  (``splits``, ``dataset_version``, ``mesh``). Returns the results' dict.
  """
  return evaluation.run_evaluation(config, workdir, score, split_names=[config.data.split],
                                   **kwargs)
