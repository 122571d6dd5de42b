"""The attention heads' monitor: their maps against target maps on a fixed batch.

During an attention-guided pretraining run, the training metrics show L_attn
on the training views; this shows whether the heads generalise. A fixed
batch of validation images, each resized whole to the model's input (as the
alignment task and the label task see them), goes through the heads; each
head's spatial softmax is scored against the image's target map, resized on
device to the head's resolution as the training targets are, with the KLD
and CC of :mod:`attn_contrastive.saliency.jax_metrics`. The first few
images are also logged to TensorBoard as ``image | target | one map per
head`` strips.

Targets: human maps (the co-train row: the human-attention set's validation
split, ``saliency_map``) or teacher maps (a teacher row: the label task's
maps of the validation split, ``attention_map``). The full MIT scoring of a
finished run is the alignment task's.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

from attn_contrastive.data import augment
from attn_contrastive.evaluators import saliency as saliency_eval
from attn_contrastive.models.attention import spatial_softmax
from attn_contrastive.saliency import jax_metrics, metrics
from attn_contrastive.train import mesh as mesh_lib

#: ``(state, uint8 images [B, H, W, 3]) -> {stage: head logits [B, h, w]}``.
HeadsFn = Callable[[Any, jax.Array], dict[str, jax.Array]]


def fixed_batch(source, num_examples: int, image_hw: tuple[int, int], map_key: str
                ) -> tuple[np.ndarray, np.ndarray]:
  """The first ``num_examples`` records: whole images and their maps at ``image_hw``."""
  n = min(int(num_examples), len(source))
  if n < 1:
    raise ValueError("the attention monitor's split is empty")
  records = [source[i] for i in range(n)]
  images = np.stack([augment.whole_image(r["image"], image_hw) for r in records])
  maps = np.stack([metrics.resize_to(augment.gray_map(r[map_key]).astype(np.float64),
                                     image_hw) for r in records]).astype(np.float32)
  return images, np.maximum(maps, 0.0)


class AttentionHeadsMonitor:
  """KLD and CC of each head on a fixed batch; strips to TensorBoard.

  Returns ``attention/kld/<stage>`` and ``attention/cc/<stage>`` (batch
  means); :attr:`results` adds ``attention/num_images`` and
  ``attention/targets`` (what the maps are). The batch is
  replicated on the mesh (the same on every process). ``workdir``
  (optional) receives ``eval/attention_maps``: ``eval_cfg.attention_images``
  strips.
  """

  def __init__(self, heads: HeadsFn, images: np.ndarray, targets: np.ndarray, eval_cfg, *,
               targets_name: str, mesh=None, workdir: str | None = None):
    self.mesh = mesh or mesh_lib.make_mesh()
    rep = mesh_lib.replicated(self.mesh)
    self.images, self.targets, self.targets_name = images, targets, targets_name
    self.num_strips = int(eval_cfg.attention_images)
    self._images = jax.make_array_from_callback(images.shape, rep, lambda i: images[i])
    self._targets = jax.make_array_from_callback(targets.shape, rep, lambda i: targets[i])
    self.results: dict[str, Any] = {}

    def score(state, images, targets):
      logits = heads(state, images)
      out = {}
      for stage, z in logits.items():
        target = jax_metrics.resize_maps(targets, z.shape[1:])
        density = spatial_softmax(z)
        out[stage] = (jnp.mean(jax_metrics.kld_from_logits(z, target)),
                      jnp.mean(jax_metrics.cc(density, target)), density)
      return out

    self._score = jax.jit(score, out_shardings=rep)
    self._writer = (metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0) if workdir else None)

  def __call__(self, state) -> dict[str, float]:
    """Scores the heads on the fixed batch; logs the strips."""
    scored = jax.device_get(self._score(state, self._images, self._targets))
    step = int(jax.device_get(state.step))
    kld = {s: float(v[0]) for s, v in scored.items()}
    cc = {s: float(v[1]) for s, v in scored.items()}
    flat = {**{f"attention/kld/{s}": v for s, v in kld.items()},
            **{f"attention/cc/{s}": v for s, v in cc.items()}}
    self.results = {**flat, "attention/num_images": len(self.images),
                    "attention/targets": self.targets_name}
    if self._writer is not None and self.num_strips > 0:
      strips = [saliency_eval.to_strip(self.images[i], self.targets[i],
                                       *(v[2][i] for v in scored.values()))
                for i in range(min(self.num_strips, len(self.images)))]
      self._writer.write_images(step, {"eval/attention_maps": np.stack(strips)})
      self._writer.flush()
    logging.info("Attention heads at step %d on %s: KLD %s, CC %s", step, self.targets_name,
                 kld, cc)
    return flat
