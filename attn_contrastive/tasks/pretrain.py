"""SimCLR pretraining: two views per image, NT-Xent over the global batch.

With ``config.attention.enabled`` the model also has attention heads, each
view carries its teacher map (``map1``/``map2``, cropped and flipped with the
view on the host), and the loss is NT-Xent + L_attn in the same jitted step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from attn_contrastive import losses
from attn_contrastive.models.simclr import simclr_from_config
from attn_contrastive.train import step as step_lib

if TYPE_CHECKING:
  from attn_contrastive.train import loop


def make_loss_fn(model, config):
  """NT-Xent on both views, passed through the network as one batch.

  Concatenating the views makes BatchNorm see all 2N images at once, as in
  SimCLR's global BatchNorm.
  """
  dtype = jnp.dtype(config.model.dtype)

  def loss_fn(params, batch_stats, batch, rng):
    del rng  # augmentation is drawn on the host
    x = step_lib.normalize_images(jnp.concatenate([batch["view1"], batch["view2"]]), dtype)
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                               train=True, mutable=["batch_stats"])
    z1, z2 = jnp.split(out["embedding"], 2)
    loss, acc = losses.nt_xent(z1, z2, config.loss.temperature, return_accuracy=True)
    metrics = {"contrastive_accuracy": acc}
    if "attention_logits" in out:
      maps = jnp.concatenate([batch["map1"], batch["map2"]])
      attn, attn_metrics = attention_loss_on_maps(out["attention_logits"], maps,
                                                  config.attention)
      metrics.update(attn_metrics, nt_xent=loss, attn_loss=attn)
      loss = loss + attn
    return loss, (updates["batch_stats"], metrics)

  return loss_fn


def resize_maps(maps: jnp.ndarray, shape_hw: tuple[int, int]) -> jnp.ndarray:
  """``[B, H, W]`` maps → ``[B, h, w]`` (linear, antialiased when shrinking)."""
  maps = maps.astype(jnp.float32)
  if maps.shape[1:] == tuple(shape_hw):
    return maps
  return jax.image.resize(maps, (maps.shape[0], *shape_hw), method="linear")


def attention_loss_on_maps(head_logits: dict[str, jnp.ndarray], maps: jnp.ndarray,
                           attn_cfg) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """L_attn with one host-made map per image resized to each head's resolution."""
  targets = {s: resize_maps(maps, l.shape[1:]) for s, l in head_logits.items()}
  quantile = attn_cfg.fixation_quantile
  return losses.attention_loss(head_logits, targets, attn_cfg.alpha, attn_cfg.beta,
                               None if quantile < 0 else quantile)


def build_task(config) -> loop.TaskSpec:
  """Model, loss and data of a SimCLR run (with teacher maps if attention is on)."""
  # The data stack (grain, tfds, clu) is imported only when a run is built, so
  # the model and loss load where only jax/flax/optax are installed.
  from attn_contrastive.data import pipeline, sources
  from attn_contrastive.train import loop
  attn = config.get("attention")
  model = simclr_from_config(config.model, attn)
  source = sources.open_split(config.data.name, config.data.train_split,
                              config.data.data_dir, config.data.auto_prepare)
  map_size = None
  if attn is not None and attn.enabled:
    # Imported here: only attention runs need the map dataset reader.
    from attn_contrastive.data import attention_maps
    source = attention_maps.with_attention_maps(
        source, attn.maps_dir, dataset=config.data.name, split=config.data.train_split)
    map_size = attn.map_size
  size = config.data.image_size
  return loop.TaskSpec(
      model=model, loss_fn=make_loss_fn(model, config), train_source=source,
      train_transform=pipeline.ContrastiveViews(size, config.aug, map_size),
      sample_input=jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


def train_and_evaluate(config, workdir: str, **kwargs):
  from attn_contrastive.train import loop
  return loop.run(config, workdir, build_task(config), **kwargs)
