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


def build_model(config):
  """SimCLR network; with attention heads if ``config.attention`` enables them."""
  return simclr_from_config(config.model, config.get("attention"))


def make_loss_fn(model, config):
  """NT-Xent on both views (+ L_attn), all images through the network as one batch.

  Concatenating the views makes BatchNorm see all 2N images at once, as in
  SimCLR's global BatchNorm. With teacher maps (``map1``/``map2``) the heads
  learn on the views themselves; in the co-train row the batch also holds N
  human-attention images (``human_image``/``human_map``), which join the same
  forward pass and train the heads, while NT-Xent uses the 2N views only.
  """
  dtype = jnp.dtype(config.model.dtype)

  def loss_fn(params, batch_stats, batch, rng):
    del rng  # augmentation is drawn on the host
    images = [batch["view1"], batch["view2"]]
    if "human_image" in batch:
      images.append(batch["human_image"])
    x = step_lib.normalize_images(jnp.concatenate(images), dtype)
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                               train=True, mutable=["batch_stats"])
    n2 = 2 * batch["view1"].shape[0]
    z1, z2 = jnp.split(out["embedding"][:n2], 2)
    loss, acc = losses.nt_xent(z1, z2, config.loss.temperature, return_accuracy=True)
    metrics = {"contrastive_accuracy": acc}
    if "attention_logits" in out:
      if "human_image" in batch:
        logits = {s: l[n2:] for s, l in out["attention_logits"].items()}
        maps = batch["human_map"]
      else:
        logits = out["attention_logits"]
        maps = jnp.concatenate([batch["map1"], batch["map2"]])
      attn, attn_metrics = losses.attention_loss_on_maps(logits, maps, config.attention)
      metrics.update(attn_metrics, nt_xent=loss, attn_loss=attn)
      loss = loss + attn
    return loss, (updates["batch_stats"], metrics)

  return loss_fn


def build_task(config) -> loop.TaskSpec:
  """Model, loss and data of a SimCLR run (teacher maps or co-train if attention is on)."""
  # The data stack (grain, tfds, clu) is imported only when a run is built, so
  # the model and loss load where only jax/flax/optax are installed.
  from attn_contrastive.data import pipeline, sources
  from attn_contrastive.train import loop
  attn = config.get("attention")
  model = build_model(config)
  source = sources.open_split(config.data.name, config.data.train_split,
                              config.data.data_dir, config.data.auto_prepare)
  size = config.data.image_size
  transform = pipeline.ContrastiveViews(size, config.aug)
  if attn is not None and attn.enabled:
    if attn.labels == "teacher":
      # Imported here: only attention runs need the map dataset reader.
      from attn_contrastive.data import attention_maps
      source = attention_maps.with_attention_maps(
          source, attn.maps_dir, dataset=config.data.name, split=config.data.train_split)
      transform = pipeline.ContrastiveViews(size, config.aug, attn.map_size)
    elif attn.labels == "human":
      human = sources.open_split(attn.human_data, attn.human_split, config.data.data_dir,
                                 config.data.auto_prepare)
      transform = pipeline.CoTrainViews(size, config.aug, attn.map_size, human)
    else:
      raise ValueError(f"attention.labels={attn.labels!r}: choose 'teacher' (maps from "
                       "attention.maps_dir) or 'human' (co-train on attention.human_data)")
  return loop.TaskSpec(
      model=model, loss_fn=make_loss_fn(model, config), train_source=source,
      train_transform=transform,
      sample_input=jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


def train_and_evaluate(config, workdir: str, **kwargs):
  from attn_contrastive.train import loop
  return loop.run(config, workdir, build_task(config), **kwargs)
