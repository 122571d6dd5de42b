"""SimCLR pretraining: two views per image, NT-Xent over the global batch.

With ``config.attention.enabled`` the model also has attention heads, each
view carries its teacher map (``map1``/``map2``, cropped and flipped with the
view on the host), and the loss is NT-Xent + L_attn in the same jitted step.

With ``config.train.online_probe`` (and labelled data) a linear classifier
learns on the frozen pooled features of the views in the same step, from
the labels that ride with the batch (SimCLR's
``lineareval_while_pretraining``); its cross-entropy is added to the loss
but reaches only the probe. Every ``train.eval_every`` steps and at the end,
the monitor reports the probe's validation top-1 and a kNN classifier's
(:mod:`attn_contrastive.evaluators.knn`), and for a run with attention heads
their KLD and CC against validation maps
(:mod:`attn_contrastive.evaluators.attention_heads`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from attn_contrastive import config_checks, losses
from attn_contrastive.models import forward
from attn_contrastive.models.build import build_model
from attn_contrastive.models.simclr import PROBE

if TYPE_CHECKING:
  from attn_contrastive.evaluators import attention_heads, common, knn
  from attn_contrastive.train import loop


def probe_loss(logits: jnp.ndarray, labels: jnp.ndarray
               ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The online probe's cross-entropy over both views' logits ``[2N, C]``."""
  labels = jnp.concatenate([labels, labels])
  loss = losses.cross_entropy(logits, labels)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, {"probe_loss": loss, "probe_accuracy": accuracy}


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

  A model with the online probe also needs ``label``: the probe's
  cross-entropy (both views) is added to the loss, behind a
  ``stop_gradient``, so the encoder's and heads' gradients are those of the
  run without it. ``loss`` is then the sum, ``nt_xent`` the contrastive part.
  """
  from attn_contrastive.data import device_colour  # the colour ops of aug.views_on=device
  dtype = jnp.dtype(config.model.dtype)
  attn = config.get("attention")
  cotrain_bn = attn.get("cotrain_bn", "separate") if attn is not None else "separate"
  if cotrain_bn not in config_checks.COTRAIN_BN:
    raise ValueError(f"attention.cotrain_bn={cotrain_bn!r}: choose one of "
                     f"{config_checks.COTRAIN_BN}")

  def train_forward(params, batch_stats, images, **rows):
    return forward.apply_train(model, params, batch_stats, images, dtype, **rows)

  def cotrain_forward(params, batch_stats, views, human):
    """(outputs with the views' embedding, head logits on the human images, stats)."""
    n2 = views.shape[0]
    if cotrain_bn == "joint":
      out, stats = train_forward(params, batch_stats, jnp.concatenate([views, human]),
                                 project=slice(0, n2), attend=slice(n2, None))
      return out, out["attention_logits"], stats
    out, stats = train_forward(params, batch_stats, views, attend=None)
    human_out, human_stats = train_forward(params, batch_stats, human, project=None)
    # Running statistics: the encoder's and projection head's from the views,
    # the attention heads' from the human images they learn on.
    return out, human_out["attention_logits"], dict(stats, attention=human_stats["attention"])

  def loss_fn(params, batch_stats, batch, rng):
    del rng  # augmentation is drawn on the host
    views = jnp.concatenate([batch["view1"], batch["view2"]])
    if "colour1" in batch:  # aug.views_on = "device": the drawn colour ops, here
      views = device_colour.as_uint8_levels(device_colour.colour_views(
          views, jnp.concatenate([batch["colour1"], batch["colour2"]])))
    if "human_image" in batch:
      out, logits, stats = cotrain_forward(params, batch_stats, views, batch["human_image"])
      maps = batch["human_map"]
    else:
      out, stats = train_forward(params, batch_stats, views)
      logits = out.get("attention_logits")
      maps = jnp.concatenate([batch["map1"], batch["map2"]]) if logits is not None else None
    z1, z2 = jnp.split(out["embedding"], 2)
    loss, acc = losses.nt_xent(z1, z2, config.loss.temperature, return_accuracy=True)
    metrics = {"contrastive_accuracy": acc}
    if logits is not None:
      attn_loss, attn_metrics = losses.attention_loss_on_maps(
          logits, maps, attn.alpha, attn.beta, attn.fixation_quantile)
      metrics.update(attn_metrics, nt_xent=loss, attn_loss=attn_loss)
      loss = loss + attn_loss
    if "probe_logits" in out:
      if "label" not in batch:
        raise ValueError("the online probe needs labelled data (a 'label' in the batch); "
                         "set --config.train.online_probe=False")
      probe, probe_metrics = probe_loss(out["probe_logits"], batch["label"])
      metrics.update(probe_metrics, nt_xent=metrics.get("nt_xent", loss))
      loss = loss + probe
    return loss, (stats, metrics)

  return loss_fn


def make_knn_evaluator(model, config, bank_source, query_source,
                       mesh=None) -> knn.KnnEvaluator:
  """The kNN monitor on pooled features, with the online probe's top-1 if there is one."""
  from attn_contrastive.data import pipeline
  from attn_contrastive.evaluators import knn
  embed = forward.predict(model, jnp.dtype(config.model.dtype), "pooled", project=None,
                          attend=None)
  classifiers = {}
  if model.probe is not None:
    classifiers["online_probe"] = lambda state, feats: model.probe.apply(
        {"params": state.params[PROBE], "batch_stats": state.batch_stats[PROBE]}, feats,
        train=False)
  transform = pipeline.EvalView(config.data.image_size, config.aug.eval_crop_fraction)
  return knn.KnnEvaluator(embed, bank_source, query_source, transform, config.eval,
                          num_classes=config.data.num_classes, classifiers=classifiers,
                          mesh=mesh)


def attention_targets(config) -> tuple[Any, str, str] | None:
  """(source, its map key, a name) of the heads' monitor; None without targets.

  The co-train row: ``attention.human_data``'s validation split (human maps).
  A teacher row: the image split ``data.eval_split`` joined to the label
  task's maps of it in ``attention.eval_maps_dir``, if one is given.
  """
  from attn_contrastive.data import sources
  attn = config.attention
  if attn.labels == "human":
    return (sources.open_config_split(config.data, "validation", attn.human_data),
            "saliency_map", f"{attn.human_data}/validation")
  if not attn.get("eval_maps_dir"):
    return None
  from attn_contrastive.data import attention_maps
  images = sources.open_config_split(config.data, config.data.eval_split)
  source = attention_maps.with_config_maps(images, config, config.data.eval_split,
                                           attn.eval_maps_dir)
  return source, "attention_map", attn.eval_maps_dir


def make_attention_monitor(model, config, source, map_key: str, name: str,
                           workdir: str | None = None,
                           mesh=None) -> attention_heads.AttentionHeadsMonitor:
  """The attention heads' KLD and CC on the first ``eval.attention_examples`` images."""
  from attn_contrastive.evaluators import attention_heads
  size = config.data.image_size
  images, targets = attention_heads.fixed_batch(source, config.eval.attention_examples,
                                                (size, size), map_key)
  return attention_heads.AttentionHeadsMonitor(
      forward.predict(model, jnp.dtype(config.model.dtype), "attention_logits", project=None),
      images, targets, config.eval, targets_name=name, mesh=mesh, workdir=workdir)


def make_evaluator(model, config, train_images, workdir: str | None = None,
                   mesh=None) -> common.Combined | None:
  """The monitor of a run: kNN (+ probe) on labelled data, the heads if they have targets."""
  from attn_contrastive.data import sources
  from attn_contrastive.evaluators import common
  parts = []
  if int(config.data.get("num_classes", 0) or 0) > 0:
    sources.require_labels(config.data, "the kNN monitor (data.num_classes > 0; set it "
                           "to 0 and train.online_probe to False for unlabelled images)")
    val = sources.open_config_split(config.data, config.data.eval_split)
    parts.append(make_knn_evaluator(model, config, train_images, val, mesh))
  attn = config.get("attention")
  if attn is not None and attn.enabled and (targets := attention_targets(config)):
    parts.append(make_attention_monitor(model, config, *targets, workdir=workdir, mesh=mesh))
  return common.Combined(*parts) if parts else None


def build_task(config, workdir: str | None = None) -> loop.TaskSpec:
  """Model, loss, data and monitor of a SimCLR run (teacher maps or co-train if
  attention is on); ``workdir`` receives the monitor's TensorBoard images."""
  # The data stack (grain, tfds, clu) is imported only when a run is built, so
  # the model and loss load where only jax/flax/optax are installed.
  from attn_contrastive.data import pipeline, sources
  from attn_contrastive.train import loop
  attn = config.get("attention")
  model = build_model(config)
  source = sources.open_config_split(config.data, config.data.train_split)
  images = source
  size = config.data.image_size
  transform = pipeline.ContrastiveViews(size, config.aug)
  if attn is not None and attn.enabled:
    if attn.labels == "teacher":
      # Imported here: only attention runs need the map dataset reader.
      from attn_contrastive.data import attention_maps
      source = attention_maps.with_config_maps(source, config, config.data.train_split,
                                               attn.maps_dir)
      transform = pipeline.ContrastiveViews(size, config.aug, attn.map_size)
    elif attn.labels == "human":
      human = sources.open_config_split(config.data, attn.human_split, attn.human_data)
      transform = pipeline.CoTrainViews(size, config.aug, attn.map_size, human)
    else:
      raise ValueError(f"attention.labels={attn.labels!r}: choose one of "
                       f"{config_checks.ATTENTION_LABELS} (maps from attention.maps_dir, or "
                       "co-train on attention.human_data)")
  return loop.TaskSpec(
      model=model, loss_fn=make_loss_fn(model, config), train_source=source,
      train_transform=transform,
      sample_input=jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
      evaluate=make_evaluator(model, config, images, workdir))


def train_and_evaluate(config, workdir: str, **kwargs):
  """Trains through the shared loop; ``results.json`` gets the monitor's last values
  (``online_probe/top1``, ``knn/top1``, with heads ``attention/…``)."""
  from attn_contrastive.train import loop
  return loop.run(config, workdir, build_task(config, workdir), **kwargs)
