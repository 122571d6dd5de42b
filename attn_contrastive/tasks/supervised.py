"""Supervised training: ResNet + linear classifier, cross-entropy.

With ``config.attention.enabled`` the ResNet also has attention heads, each
training crop carries its teacher map (``map``, cropped and flipped with the
image on the host), and the loss is cross-entropy + L_attn in one jitted step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from attn_contrastive import losses
from attn_contrastive.evaluators.classification import ClassificationEvaluator
from attn_contrastive.models import forward
from attn_contrastive.models.build import build_model

if TYPE_CHECKING:
  from attn_contrastive.train import loop


def make_loss_fn(model, config):
  """The loop's ``loss_fn``: cross-entropy (+ L_attn on the crop's map with heads)."""
  dtype = jnp.dtype(config.model.dtype)

  def loss_fn(params, batch_stats, batch, rng):
    del rng
    out, batch_stats = forward.apply_train(model, params, batch_stats, batch["image"], dtype)
    loss = losses.cross_entropy(out["logits"], batch["label"],
                                config.loss.label_smoothing)
    acc = jnp.mean(jnp.argmax(out["logits"], -1) == batch["label"])
    metrics = {"train_accuracy": acc}
    if "attention_logits" in out:
      attn = config.attention
      attn_loss, attn_metrics = losses.attention_loss_on_maps(
          out["attention_logits"], batch["map"], attn.alpha, attn.beta, attn.fixation_quantile)
      metrics.update(attn_metrics, cross_entropy=loss, attn_loss=attn_loss)
      loss = loss + attn_loss
    return loss, (batch_stats, metrics)

  return loss_fn


def make_evaluator(model, config, mesh=None) -> ClassificationEvaluator:
  """Top-1 accuracy and loss of the classifier over ``data.eval_split``."""
  from attn_contrastive.data import pipeline, sources  # the data stack: see build_task
  source = sources.open_config_split(config.data, config.data.eval_split)
  transform = pipeline.EvalView(config.data.image_size, config.aug.eval_crop_fraction)
  predict = forward.predict(model, jnp.dtype(config.model.dtype), "logits")
  return ClassificationEvaluator(predict, source, transform, config.eval, mesh=mesh)


def build_task(config) -> loop.TaskSpec:
  """Model, loss, data and evaluator of a supervised run."""
  # The data stack (grain, tfds, clu) is imported only when a run is built, so
  # the model and loss load where only jax/flax/optax are installed.
  from attn_contrastive.data import pipeline, sources
  from attn_contrastive.train import loop
  model = build_model(config)
  source = sources.open_config_split(config.data, config.data.train_split)
  attn, map_size = config.get("attention"), None
  if attn is not None and attn.enabled:
    if attn.labels != "teacher":
      raise ValueError(f"attention.labels={attn.labels!r}: supervised rows learn from "
                       "teacher maps only; set attention.labels='teacher' and maps_dir")
    from attn_contrastive.data import attention_maps
    source = attention_maps.with_config_maps(source, config, config.data.train_split,
                                             attn.maps_dir)
    map_size = attn.map_size
  size = config.data.image_size
  return loop.TaskSpec(
      model=model, loss_fn=make_loss_fn(model, config), train_source=source,
      train_transform=pipeline.SupervisedView(size, config.aug, map_size),
      sample_input=jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
      evaluate=make_evaluator(model, config))


def train_and_evaluate(config, workdir: str, **kwargs):
  """Trains through the shared loop; ``results.json`` gets the validation top-1."""
  from attn_contrastive.train import loop
  return loop.run(config, workdir, build_task(config), **kwargs)
