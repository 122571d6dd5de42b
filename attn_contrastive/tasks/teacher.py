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
arrays, so they batch.

Loss, per image, averaged over the batch (the ``loss.*_weight`` are
non-negative; CC and NSS are similarities, so they are subtracted)::

    kld_weight · KLD(Q ‖ P) − cc_weight · CC(P, Q) − nss_weight · NSS(P, F)

where P is the predicted density (``softmax`` of the logits over the pixels),
Q the ground-truth density map and F the binary fixation map. The defaults
(1, 0.2, 0.1) keep SAM's 10 : 2 : 1 ratio (Cornia et al., TIP 2018).

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

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attn_contrastive.data import augment, sources
from attn_contrastive.evaluators import saliency as saliency_eval
from attn_contrastive.models import forward
from attn_contrastive.models.teacher import output_shape, teacher_from_config
from attn_contrastive.saliency import jax_metrics
from attn_contrastive.train import loop

Example = dict[str, Any]

# ---------------------------------------------------------------------------
# Sizes and host-side views.
# ---------------------------------------------------------------------------


def input_hw(config) -> tuple[int, int]:
  """The teacher's input size: ``data.image_size`` × (``data.image_width`` or square)."""
  h = int(config.data.image_size)
  w = int(config.data.get("image_width", 0) or 0)
  return h, (w if w > 0 else h)


def map_hw(config) -> tuple[int, int]:
  """The teacher's output (and training-target) resolution."""
  return output_shape(*input_hw(config), config.model.output_stride)


def rasterize_fixations(fixations: np.ndarray, image_hw: tuple[int, int],
                        box: augment.Box, flip: bool,
                        out_hw: tuple[int, int]) -> np.ndarray:
  """Binary fixation map of the crop ``box`` (and ``flip``) at ``out_hw``.

  A fixation at pixel ``(r, c)`` of an ``image_hw`` image sits at the
  normalised centre ``((r + .5) / H, (c + .5) / W)``, the convention of
  :mod:`attn_contrastive.data.augment`; it lands in the output cell that
  covers that point inside the box, or nowhere if the box excludes it.
  Returns float32 ``out_hw`` in {0, 1}.
  """
  out = np.zeros(out_hw, np.float32)
  fix = np.asarray(fixations).reshape(-1, 2)
  if fix.size == 0:
    return out
  u = (fix[:, 0] + 0.5) / image_hw[0]
  v = (fix[:, 1] + 0.5) / image_hw[1]
  rows = np.floor((u - box.y0) / box.height * out_hw[0]).astype(np.int64)
  cols = np.floor((v - box.x0) / box.width * out_hw[1]).astype(np.int64)
  keep = (rows >= 0) & (rows < out_hw[0]) & (cols >= 0) & (cols < out_hw[1])
  rows, cols = rows[keep], cols[keep]
  if flip:
    cols = out_hw[1] - 1 - cols
  out[rows, cols] = 1.0
  return out


@dataclasses.dataclass(frozen=True)
class TeacherTrainView:
  """Random resized crop + flip of image, density map and fixations.

  Returns ``image`` uint8 ``[H, W, 3]``, ``saliency_map`` float32 (the
  density, scaled to [0, 1], at the map resolution) and ``fixation_map``
  float32 {0, 1} at the map resolution. Random draws, in order: crop box,
  flip (as :func:`augment.supervised_train_view`).
  """
  image_hw: tuple[int, int]
  map_hw: tuple[int, int]
  area_range: tuple[float, float] = (0.5, 1.0)
  hflip: bool = True

  def __call__(self, example: Example, rng: np.random.Generator) -> Example:
    image = np.asarray(example["image"])
    h, w = image.shape[:2]
    ratio = self.image_hw[1] / self.image_hw[0]
    box = augment.sample_crop_box(rng, h, w, self.area_range,
                                  aspect_range=(ratio * 3 / 4, ratio * 4 / 3))
    flip = bool(rng.random() < 0.5) and self.hflip
    view = augment.crop_resize(image, box, self.image_hw, flip=flip)
    sal = saliency_eval.gray_map(example["saliency_map"]).astype(np.float32)
    sal = sal * np.float32(1 / 255)
    sal = np.maximum(augment.crop_resize(sal, box, self.map_hw, flip=flip), 0.0)
    fix = rasterize_fixations(example["fixations"], (h, w), box, flip, self.map_hw)
    return {"image": np.asarray(view, np.uint8), "saliency_map": sal.astype(np.float32),
            "fixation_map": fix}


# ---------------------------------------------------------------------------
# Loss.
# ---------------------------------------------------------------------------


def teacher_loss(logits: jnp.ndarray, saliency_map: jnp.ndarray,
                 fixation_map: jnp.ndarray, kld_weight: float, cc_weight: float,
                 nss_weight: float) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """``mean(kld_w · KLD − cc_w · CC − nss_w · NSS)`` and the three batch means.

  ``logits`` ``[B, h, w]`` define the density ``softmax`` over the pixels;
  ``saliency_map`` is the ground-truth density (any non-negative scale) and
  ``fixation_map`` the binary fixation map, both ``[B, h, w]``.
  """
  kld = jax_metrics.kld_from_logits(logits, saliency_map)
  density = jax.nn.softmax(logits.reshape(logits.shape[0], -1), axis=-1)
  density = density.reshape(logits.shape)
  cc = jax_metrics.cc(density, saliency_map)
  nss = jax_metrics.nss(density, fixation_map)
  loss = jnp.mean(kld_weight * kld - cc_weight * cc - nss_weight * nss)
  return loss, {"kld": jnp.mean(kld), "cc": jnp.mean(cc), "nss": jnp.mean(nss)}


def make_loss_fn(model, config):
  """The loop's ``loss_fn``: teacher forward on the batch, then :func:`teacher_loss`."""
  dtype = jnp.dtype(config.model.dtype)
  weights = dict(kld_weight=config.loss.kld_weight, cc_weight=config.loss.cc_weight,
                 nss_weight=config.loss.nss_weight)

  def loss_fn(params, batch_stats, batch, rng):
    del rng  # augmentation is drawn on the host
    out, updates = forward.apply(model, {"params": params, "batch_stats": batch_stats},
                                 batch["image"], dtype, train=True, mutable=["batch_stats"])
    loss, parts = teacher_loss(out["logits"], batch["saliency_map"],
                               batch["fixation_map"], **weights)
    return loss, (updates["batch_stats"], {f"train_{k}": v for k, v in parts.items()})

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
  transform = TeacherTrainView(
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
