"""The saliency teacher: trained from scratch on human attention, scored with MIT metrics.

Data: a human-attention dataset (``salient_objects/human_attention`` or
SALICON) with ``image``, ``saliency_map`` (a grey density map) and
``fixations`` (int32 ``[N, 2]``, 0-based ``(row, col)`` in image pixels).

Training view: a random resized crop (area ``aug.area_min``–1, aspect ratio
within 3/4–4/3 of the input's) and a horizontal flip with probability 1/2
(``aug.hflip``). The crop box and flip are applied to the image (resized to
``data.image_size`` × ``data.image_width``), to the density map and to the
fixations, both at the teacher's output resolution. The fixations are mapped
through the box exactly, point by point (a pixel's centre lands in one output
cell), and rasterised to a binary fixation map: unlike resizing a sparse
point map, no fixation can vanish or smear. Both targets are fixed-size
arrays, so they batch (:class:`~attn_contrastive.data.pipeline.TeacherTrainView`).

Loss, per image, averaged over the batch (the ``loss.*_weight`` are
non-negative; CC and NSS are similarities, so they are subtracted)::

    kld_weight · KLD(Q ‖ P) − cc_weight · CC(P, Q) − nss_weight · NSS(P, F)

where P is the predicted density (``softmax`` of the logits over the pixels),
Q the ground-truth density map and F the binary fixation map
(:func:`~attn_contrastive.losses.teacher_loss`). The defaults (1, 0.2, 0.1)
keep SAM's 10 : 2 : 1 ratio (Cornia et al., TIP 2018).

Evaluation (after training and every ``train.eval_every`` steps):
:class:`~attn_contrastive.evaluators.saliency.SaliencyEvaluator` with the
teacher's density as the prediction: the whole images of
``data.eval_split`` (no crop, so the maps align with the originals), every
MIT metric, and a Gaussian centre-bias baseline scored the same way. Both
land in ``results.json`` under ``teacher`` and ``center_bias``; image /
ground-truth / prediction strips go to TensorBoard, and after the final
evaluation ``examples.npz`` keeps the first ``eval.num_images`` images of
the split with their human densities and the teacher's (``map/teacher``),
the same images and layout as the alignment task's, for the report's figure.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_contrastive import losses
from attn_contrastive.data import pipeline, sources
from attn_contrastive.evaluators import saliency as saliency_eval
from attn_contrastive.models import forward
from attn_contrastive.models.teacher import input_hw, map_hw, teacher_from_config
from attn_contrastive.train import loop

# ---------------------------------------------------------------------------
# Sizes.
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Loss.
# ---------------------------------------------------------------------------


def make_loss_fn(model, config):
  """The loop's ``loss_fn``: teacher forward on the batch, then
  :func:`~attn_contrastive.losses.teacher_loss`."""
  dtype = jnp.dtype(config.model.dtype)
  weights = dict(kld_weight=config.loss.kld_weight, cc_weight=config.loss.cc_weight,
                 nss_weight=config.loss.nss_weight)

  def loss_fn(params, batch_stats, batch, rng):
    del rng  # augmentation is drawn on the host
    out, batch_stats = forward.apply_train(model, params, batch_stats, batch["image"], dtype)
    loss, parts = losses.teacher_loss(out["logits"], batch["saliency_map"],
                                      batch["fixation_map"], **weights)
    return loss, (batch_stats, {f"train_{k}": v for k, v in parts.items()})

  return loss_fn


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


def predict_density(model, variables, images: jnp.ndarray, dtype) -> jnp.ndarray:
  """The teacher's predicted density (eval mode) of uint8 images ``[B, H, W, 3]``."""
  return jnp.exp(forward.apply(model, variables, images, dtype, train=False)["log_density"])


def make_evaluator(model, config, source, workdir: str | None = None,
                   mesh=None) -> saliency_eval.SaliencyEvaluator:
  """The teacher's density and the centre-bias baseline scored on ``source``."""
  dtype = jnp.dtype(config.model.dtype)

  def predict(state, images):
    return predict_density(model, forward.variables_of(state), images, dtype)

  return saliency_eval.SaliencyEvaluator(predict, source, config.eval, input_hw(config),
                                         name="teacher", mesh=mesh, workdir=workdir)


# ---------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------


def open_source(config, split: str):
  """A random-access source over ``split`` of ``config.data.name``."""
  return sources.open_config_split(config.data, split)


def build_task(config, workdir: str | None = None, *, train_source=None,
               eval_source=None, mesh=None) -> loop.TaskSpec:
  """The loop's task, its evaluator included (sources default to the configured splits)."""
  model = teacher_from_config(config.model)
  train_source = train_source if train_source is not None else open_source(
      config, config.data.train_split)
  eval_source = eval_source if eval_source is not None else open_source(
      config, config.data.eval_split)
  h, w = input_hw(config)
  transform = pipeline.TeacherTrainView(
      (h, w), map_hw(config), area_range=(float(config.aug.area_min), 1.0),
      hflip=bool(config.aug.hflip))
  return loop.TaskSpec(
      model=model, loss_fn=make_loss_fn(model, config), train_source=train_source,
      train_transform=transform,
      sample_input=jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32),
      evaluate=make_evaluator(model, config, eval_source, workdir, mesh))


def train_and_evaluate(config, workdir: str, *, train_source=None, eval_source=None,
                       mesh=None, **kwargs):
  """Trains the teacher through the shared loop; ``results.json`` gets its scores.

  The nested ``teacher`` / ``center_bias`` metrics of the final evaluation
  sit beside the loop's own keys, and its example maps go to
  ``examples.npz`` (neither on a run stopped early with ``stop_at``).
  """
  task = build_task(config, workdir, train_source=train_source, eval_source=eval_source,
                    mesh=mesh)
  state, last = loop.run(config, workdir, task, mesh=mesh, **kwargs)
  evaluator = task.evaluate
  if kwargs.get("stop_at") is None and evaluator.results.get("step") == int(state.step):
    saliency_eval.write_examples(workdir, evaluator.examples)
  return state, last
