"""Attention alignment: a trained encoder's spatial attention against human maps.

The paper's question is whether training with teacher attention makes the
model look where people look. This task restores a finished pretraining (or
supervised) run from its workdir (``config.json`` + checkpoint), runs it over
a human-attention split (the synthetic ``human_attention`` validation split
or SALICON's) and scores one attention map per image with every MIT metric,
beside the centre-bias baseline, exactly as the teacher is scored.

The map of a model:

* ``heads``: the attention heads' spatial softmax, one density per head;
* ``activations``: for a model without heads (the baseline rows), the
  activation-based attention of each stage, Σ_c A_c² over the channels
  normalised to sum 1 (Zagoruyko & Komodakis, ICLR 2017), which is what a
  plain encoder "attends to";
* ``auto`` (default): heads if the run has them, else activations.

The densities of the chosen stages are resized to the finest stage's
resolution and averaged. Results go to ``results.json`` under ``alignment``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from attn_contrastive.data import sources
from attn_contrastive.evaluators import saliency as saliency_eval
from attn_contrastive.models.attention import spatial_softmax
from attn_contrastive.saliency import jax_metrics
from attn_contrastive.tasks import pretrain, supervised
from attn_contrastive.train import checkpoint as ckpt_lib
from attn_contrastive.train import loop
from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train import step as step_lib

MAP_KINDS = ("auto", "heads", "activations")


@flax.struct.dataclass
class EvalState:
  """The parts of a train state the evaluator reads."""
  params: Any
  batch_stats: Any
  step: Any


def load_run_config(run_dir: str) -> ml_collections.ConfigDict:
  """The ``config.json`` that a training run wrote into its workdir."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: --config.checkpoint must be the workdir of a pretrain or "
        "supervised run (it holds config.json and checkpoints/)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


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


def build_model(run: ml_collections.ConfigDict):
  """The run's network, rebuilt from its config."""
  if run.task == "pretrain":
    return pretrain.build_model(run)
  if run.task == "supervised":
    return supervised.build_model(run)
  raise ValueError(f"alignment needs a pretrain or supervised run, not task {run.task!r}")


def resolve_maps(config, run) -> tuple[str, tuple[str, ...]]:
  """(map kind, stages) from ``config.alignment`` and what the run has."""
  kind = config.alignment.maps
  if kind not in MAP_KINDS:
    raise ValueError(f"alignment.maps={kind!r}: choose one of {MAP_KINDS}")
  attn = run.get("attention")
  has_heads = attn is not None and bool(attn.enabled)
  if kind == "auto":
    kind = "heads" if has_heads else "activations"
  if kind == "heads":
    if not has_heads:
      raise ValueError("alignment.maps='heads' but the run has no attention heads; "
                       "use 'activations'")
    return kind, tuple(attn.stages)
  return kind, tuple(config.alignment.stages)


def input_hw(config, run) -> tuple[int, int]:
  """The model's input: ``data.image_size`` × ``data.image_width``; 0 = the run's, square."""
  h = int(config.data.image_size or run.data.image_size)
  return h, int(config.data.image_width or h)


def make_evaluator(model, config, run, source, kind: str, stages: tuple[str, ...],
                   workdir: str | None = None, mesh=None) -> saliency_eval.SaliencyEvaluator:
  """The run's attention density (``kind`` of ``stages``) scored as the teacher's is."""
  dtype = jnp.dtype(run.model.dtype)

  def predict(state, images):
    x = step_lib.normalize_images(images, dtype)
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                      train=False)
    return model_density(out, stages, kind)

  return saliency_eval.SaliencyEvaluator(predict, source, config.eval, input_hw(config, run),
                                         name="model", mesh=mesh, workdir=workdir)


def train_and_evaluate(config, workdir: str, *, source=None, mesh=None) -> dict[str, Any]:
  """Scores the run at ``config.checkpoint``; writes ``results.json`` to ``workdir``."""
  os.makedirs(workdir, exist_ok=True)
  run = load_run_config(config.checkpoint)
  kind, stages = resolve_maps(config, run)
  model = build_model(run)
  mesh = mesh or mesh_lib.make_mesh()
  variables = ckpt_lib.load_variables(config.checkpoint, sharding=mesh_lib.replicated(mesh))
  if source is None:
    source = sources.open_split(config.data.name, config.data.split, config.data.data_dir,
                                config.data.auto_prepare)
  evaluator = make_evaluator(model, config, run, source, kind, stages, workdir, mesh)
  state = jax.device_put(EvalState(variables["params"], variables["batch_stats"],
                                   np.int32(0)), mesh_lib.replicated(mesh))
  evaluator(state)
  result = dict(evaluator.results, checkpoint=config.checkpoint, maps=kind,
                stages=list(stages), dataset=f"{config.data.name}/{config.data.split}")
  result.pop("step")
  loop.write_results(workdir, {"alignment": result})
  logging.info("Alignment of %s (%s %s): NSS %.3f CC %.3f (centre bias NSS %.3f CC %.3f)",
               config.checkpoint, kind, stages, result["model"]["nss"], result["model"]["cc"],
               result["center_bias"]["nss"], result["center_bias"]["cc"])
  return result
