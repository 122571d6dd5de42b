"""Losses: NT-Xent (SimCLR), softmax cross-entropy, the attention loss L_attn and the
saliency teacher's loss.

Each takes arrays and numbers (temperatures, weights), never a config: a
task reads its config and hands the loss the values.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from attn_contrastive.saliency import jax_metrics


def _l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


def nt_xent(z1: jnp.ndarray, z2: jnp.ndarray, temperature: float,
            return_accuracy: bool = False):
  """NT-Xent over the 2N anchors of two views of N images, at SimCLR's scale.

  Args:
    z1, z2: ``[N, D]`` embeddings of the two views; row ``i`` of each comes
      from image ``i``. They are L2-normalised here.
    temperature: softmax temperature (0.1 at batch 4096 in SimCLR).
    return_accuracy: also return the share of anchors whose most similar
      other embedding is their positive ("contrastive accuracy").

  Each anchor's positive is the other view of its image and its negatives are
  the remaining 2N-2 embeddings. The loss is SimCLR's reference one: the mean
  cross-entropy of the view-1 anchors plus that of the view-2 anchors, i.e.
  twice the mean over all 2N anchors (about ``2 log(2N - 1)`` at
  initialisation). The scale matters: under LARS it sets the gradient's
  size against weight decay, and the attention loss's α and β are weights
  relative to it. Under ``jit`` with ``z1``/``z2`` sharded over the batch the
  similarity matrix spans the global batch with no hand-written all-gather.
  """
  n = z1.shape[0]
  z = _l2_normalize(jnp.concatenate([z1, z2], 0).astype(jnp.float32))
  logits = z @ z.T / temperature
  # A large finite negative (not -inf) keeps 0·inf out of the gradient.
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -1e9, logits)
  positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])
  per_anchor = optax.softmax_cross_entropy_with_integer_labels(logits, positives)
  loss = jnp.sum(jnp.mean(per_anchor.reshape(2, n), axis=1))
  if not return_accuracy:
    return loss
  accuracy = jnp.mean(jnp.argmax(logits, -1) == positives)
  return loss, accuracy


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                  label_smoothing: float = 0.0) -> jnp.ndarray:
  """Mean softmax cross-entropy with integer labels and optional smoothing."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def _sum_to_one(maps: jnp.ndarray) -> jnp.ndarray:
  """Clips ``[B, h, w]`` maps at 0 and normalises each to sum 1 (uniform if empty)."""
  m = jnp.maximum(maps.astype(jnp.float32), 0.0)
  total = jnp.sum(m, axis=(1, 2), keepdims=True)
  uniform = jnp.full_like(m, 1.0 / (m.shape[1] * m.shape[2]))
  return jnp.where(total > 0, m / jnp.where(total > 0, total, 1.0), uniform)


def fixation_target(teacher_map: jnp.ndarray, quantile: float | None = None) -> jnp.ndarray:
  """The NSS target p' from a (sum-1) teacher map ``[B, h, w]``.

  By default the map itself, used as a fixation density: NSS against it is
  the expected NSS over fixations drawn from the teacher. With ``quantile``
  in (0, 1), the binary map of locations at or above that per-image quantile
  (the teacher's top ``1 - quantile`` share), a stand-in for fixations.
  """
  if quantile is None or quantile < 0:
    return teacher_map
  flat = teacher_map.reshape(teacher_map.shape[0], -1)
  thresh = jnp.quantile(flat, quantile, axis=-1)[:, None, None]
  return (teacher_map >= thresh).astype(jnp.float32)


def attention_loss(head_logits: dict[str, jnp.ndarray],
                   teacher_maps: dict[str, jnp.ndarray], alpha: float, beta: float,
                   fixation_quantile: float | None = None
                   ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """``L_attn = Σ_i (α·KLD(m'_i ‖ m_i) − β·NSS(m_i, p'_i))``, batch mean.

  Args:
    head_logits: ``{stage: [B, h, w]}`` logits; m_i is their spatial softmax.
    teacher_maps: ``{stage: [B, h, w]}`` non-negative teacher maps already at
      each head's resolution (any scale; normalised to sum 1 here as m'_i).
    alpha, beta: weights of the KLD and NSS terms.
    fixation_quantile: ``None`` or negative: the NSS target p'_i is the
      teacher density; else the teacher's top-quantile binary map.

  Returns:
    (loss, ``{"attn_kld/<stage>", "attn_nss/<stage>"}`` batch means). The
    teacher maps are constants (``stop_gradient``).
  """
  total, metrics = jnp.zeros((), jnp.float32), {}
  for stage, logits in head_logits.items():
    target = _sum_to_one(jax.lax.stop_gradient(teacher_maps[stage]))
    if target.shape != logits.shape:
      raise ValueError(f"teacher map for {stage} has shape {target.shape}, "
                       f"head logits {logits.shape}")
    kld = jax_metrics.kld_from_logits(logits, target).mean()
    nss = jax_metrics.nss_from_logits(logits, fixation_target(target, fixation_quantile)).mean()
    total = total + alpha * kld - beta * nss
    metrics[f"attn_kld/{stage}"], metrics[f"attn_nss/{stage}"] = kld, nss
  return total, metrics


def attention_loss_on_maps(head_logits: dict[str, jnp.ndarray], maps: jnp.ndarray,
                           alpha: float, beta: float, fixation_quantile: float | None = None
                           ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """L_attn (:func:`attention_loss`) with one host-made map per image ``[B, H, W]``,
  resized to each head's resolution."""
  targets = {s: jax_metrics.resize_maps(maps, l.shape[1:]) for s, l in head_logits.items()}
  return attention_loss(head_logits, targets, alpha, beta, fixation_quantile)


def teacher_loss(logits: jnp.ndarray, saliency_map: jnp.ndarray,
                 fixation_map: jnp.ndarray, kld_weight: float, cc_weight: float,
                 nss_weight: float) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The saliency teacher's loss: ``mean(kld_w · KLD − cc_w · CC − nss_w · NSS)`` and the
  three batch means.

  ``logits`` ``[B, h, w]`` define the density ``softmax`` over the pixels;
  ``saliency_map`` is the ground-truth density (any non-negative scale) and
  ``fixation_map`` the binary fixation map, both ``[B, h, w]``. CC and NSS
  are similarities, so they are subtracted.
  """
  kld = jax_metrics.kld_from_logits(logits, saliency_map)
  density = jax.nn.softmax(logits.reshape(logits.shape[0], -1), axis=-1)
  density = density.reshape(logits.shape)
  cc = jax_metrics.cc(density, saliency_map)
  nss = jax_metrics.nss(density, fixation_map)
  loss = jnp.mean(kld_weight * kld - cc_weight * cc - nss_weight * nss)
  return loss, {"kld": jnp.mean(kld), "cc": jnp.mean(cc), "nss": jnp.mean(nss)}
