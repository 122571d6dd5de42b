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


COTRAIN_BN = ("separate", "joint")


def make_loss_fn(model, config):
  """NT-Xent on both views (+ L_attn) in one differentiable function.

  The 2N views go through the network as one batch, so BatchNorm sees all of
  them at once, as in SimCLR's global BatchNorm. With teacher maps
  (``map1``/``map2``) the heads learn on the views themselves. In the
  co-train row the batch also holds N human-attention images
  (``human_image``/``human_map``) that train the heads; NT-Xent and the
  projection head use the views only. ``attention.cotrain_bn`` says how the
  human images meet the encoder's BatchNorm: ``separate`` (default) runs
  them in a forward pass of their own, so the views' batch statistics, and
  the running statistics that linear evaluation uses, come from the
  pretraining data alone; ``joint`` runs views and human images as one batch
  (cheaper by one pass over the parameters, statistics mixed).
  """
  dtype = jnp.dtype(config.model.dtype)
  attn = config.get("attention")
  cotrain_bn = attn.get("cotrain_bn", "separate") if attn is not None else "separate"
  if cotrain_bn not in COTRAIN_BN:
    raise ValueError(f"attention.cotrain_bn={cotrain_bn!r}: choose one of {COTRAIN_BN}")

  def forward(params, batch_stats, images, **rows):
    x = step_lib.normalize_images(images, dtype)
    out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                               mutable=["batch_stats"], **rows)
    return out, updates["batch_stats"]

  def cotrain_forward(params, batch_stats, views, human):
    """(outputs with the views' embedding, head logits on the human images, stats)."""
    n2 = views.shape[0]
    if cotrain_bn == "joint":
      out, stats = forward(params, batch_stats, jnp.concatenate([views, human]),
                           project=slice(0, n2), attend=slice(n2, None))
      return out, out["attention_logits"], stats
    out, stats = forward(params, batch_stats, views, attend=None)
    human_out, human_stats = forward(params, batch_stats, human, project=None)
    # Running statistics: the encoder's and projection head's from the views,
    # the attention heads' from the human images they learn on.
    return out, human_out["attention_logits"], dict(stats, attention=human_stats["attention"])

  def loss_fn(params, batch_stats, batch, rng):
    del rng  # augmentation is drawn on the host
    views = jnp.concatenate([batch["view1"], batch["view2"]])
    if "human_image" in batch:
      out, logits, stats = cotrain_forward(params, batch_stats, views, batch["human_image"])
      maps = batch["human_map"]
    else:
      out, stats = forward(params, batch_stats, views)
      logits = out.get("attention_logits")
      maps = jnp.concatenate([batch["map1"], batch["map2"]]) if logits is not None else None
    z1, z2 = jnp.split(out["embedding"], 2)
    loss, acc = losses.nt_xent(z1, z2, config.loss.temperature, return_accuracy=True)
    metrics = {"contrastive_accuracy": acc}
    if logits is not None:
      attn_loss, attn_metrics = losses.attention_loss_on_maps(logits, maps, config.attention)
      metrics.update(attn_metrics, nt_xent=loss, attn_loss=attn_loss)
      loss = loss + attn_loss
    return loss, (stats, metrics)

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
  """Trains through the shared loop (no evaluation yet: linear evaluation is to come)."""
  from attn_contrastive.train import loop
  return loop.run(config, workdir, build_task(config), **kwargs)
