"""SimCLR pretraining: two views per image, NT-Xent over the global batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_contrastive import losses
from attn_contrastive.data import pipeline, sources
from attn_contrastive.models.simclr import simclr_from_config
from attn_contrastive.train import loop


def make_loss_fn(model, config):
  """NT-Xent on both views, passed through the network as one batch.

  Concatenating the views makes BatchNorm see all 2N images at once, as in
  SimCLR's global BatchNorm.
  """
  dtype = jnp.dtype(config.model.dtype)

  def loss_fn(params, batch_stats, batch, rng):
    del rng  # augmentation is drawn on the host
    x = loop.normalize_images(jnp.concatenate([batch["view1"], batch["view2"]]), dtype)
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                               train=True, mutable=["batch_stats"])
    z1, z2 = jnp.split(out["embedding"], 2)
    loss, acc = losses.nt_xent(z1, z2, config.loss.temperature, return_accuracy=True)
    return loss, (updates["batch_stats"], {"contrastive_accuracy": acc})

  return loss_fn


def build_task(config) -> loop.TaskSpec:
  model = simclr_from_config(config.model)
  source = sources.open_split(config.data.name, config.data.train_split,
                              config.data.data_dir, config.data.auto_prepare)
  size = config.data.image_size
  return loop.TaskSpec(
      model=model, loss_fn=make_loss_fn(model, config), train_source=source,
      train_transform=pipeline.ContrastiveViews(size, config.aug),
      sample_input=jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


def train_and_evaluate(config, workdir: str, **kwargs):
  return loop.run(config, workdir, build_task(config), **kwargs)
