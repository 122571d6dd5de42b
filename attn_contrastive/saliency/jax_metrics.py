"""Batched, differentiable saliency metrics in JAX, and map resizing on device.

For training losses and on-device evaluation. Every metric takes maps of
shape ``[B, H, W]`` (a trailing channel axis of size 1, ``[B, H, W, 1]``, is
dropped) and returns one value per image, shape ``[B]``. Prediction and
target must have the same shape: the metrics do not resize; a caller brings
maps to one resolution with :func:`resize_maps`. They agree with the NumPy
versions of :mod:`attn_contrastive.saliency.metrics` up to float32 round-off.

Conventions, chosen so the functions are safe under ``jit`` and ``grad``
(no exceptions on data, no NaN gradients):

* A constant map (standard deviation below ``1e-5`` times its largest
  absolute value, float32 round-off) has z-score 0, so NSS and CC of a
  constant prediction are 0 with zero gradient, as in the NumPy versions.
* NSS with a target of total weight 0 (no fixations) returns 0.
* KLD (:func:`kld_from_logits`): the ground truth is normalised to sum 1
  when its sum is positive (an all-zero ground truth gives 0) and assumed
  non-negative (not checked under ``jit``); the prediction is the
  ``log_softmax`` of logits over the pixels, so no ``eps`` is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

#: Relative standard deviation under which a map counts as constant.
_CONSTANT_RTOL = 1e-5


def _flatten(x: jax.Array, name: str) -> jax.Array:
  """Returns ``[B, H*W]`` from ``[B, H, W]`` or ``[B, H, W, 1]``."""
  x = jnp.asarray(x)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 3:
    raise ValueError(f"{name} must have shape [B, H, W], got {x.shape}")
  return x.reshape(x.shape[0], -1)


def _flatten_pair(a: jax.Array, b: jax.Array, name_a: str,
                  name_b: str) -> tuple[jax.Array, jax.Array]:
  """Flattens two maps and checks that their shapes agree."""
  fa, fb = _flatten(a, name_a), _flatten(b, name_b)
  if fa.shape != fb.shape:
    raise ValueError(f"{name_a} and {name_b} must have the same shape, got "
                     f"{jnp.shape(a)} and {jnp.shape(b)}")
  return fa, fb


def _float(x: jax.Array) -> jax.Array:
  """Casts integer / bool inputs to float32, keeps floating dtypes."""
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _zscore(x: jax.Array) -> jax.Array:
  """Per-row z-score (ddof=0); constant rows map to 0 with finite gradients."""
  x = _float(x)
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
  nonconst = var > jnp.square(_CONSTANT_RTOL * scale)
  # Double `where`: the sqrt never sees 0, so its gradient stays finite.
  std = jnp.sqrt(jnp.where(nonconst, var, 1.0))
  return jnp.where(nonconst, centred / std, 0.0)


def _normalise_sum(x: jax.Array) -> jax.Array:
  """Divides each row by its sum when the sum is positive."""
  x = _float(x)
  total = jnp.sum(x, axis=-1, keepdims=True)
  return jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), x)


def cc(pred: jax.Array, gt: jax.Array) -> jax.Array:
  """Pearson correlation per image, ``[B]``; 0 when either map is constant."""
  p, g = _flatten_pair(pred, gt, "pred", "gt")
  return jnp.mean(_zscore(p) * _zscore(g), axis=-1)


def nss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Normalized scanpath saliency per image, ``[B]``.

  ``target`` is a non-negative weight map: ``sum(w * z(P)) / sum(w)`` with
  ``z(P)`` the per-image z-scored prediction. With a binary fixation map
  this is exactly the usual NSS (mean z-score over fixated pixels); with a
  fixation density (e.g. a blurred fixation map or a teacher's attention
  map) it weights each pixel by the density. A target of total weight 0
  gives 0.
  """
  p, w = _flatten_pair(pred, target, "pred", "target")
  w = _float(w)
  total = jnp.sum(w, axis=-1)
  weighted = jnp.sum(w * _zscore(p), axis=-1)
  return jnp.where(total > 0, weighted / jnp.where(total > 0, total, 1.0), 0.0)


def nss_from_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
  """NSS of the map ``softmax(logits)`` over the pixels of each image, ``[B]``."""
  flat = _flatten(logits, "logits")
  probs = jax.nn.softmax(_float(flat), axis=-1).reshape(jnp.shape(logits)[:3])
  return nss(probs, target)


def kld_from_logits(logits: jax.Array, gt: jax.Array) -> jax.Array:
  """KL(Q || softmax(logits)) per image, ``[B]`` (natural log).

  The predicted density is ``softmax`` over all pixels of an image, taken
  in log space with ``log_softmax`` for stability; ``Q`` is ``gt``
  normalised to sum 1. Terms with ``Q = 0`` contribute 0. Equals the MIT
  ``KLdiv.m`` of ``softmax(logits)`` (:func:`attn_contrastive.saliency.metrics.kld`)
  up to its ``eps``.
  """
  z, q = _flatten_pair(logits, gt, "logits", "gt")
  log_p = jax.nn.log_softmax(_float(z), axis=-1)
  q = _normalise_sum(q)
  return jnp.sum(xlogy(q, q) - q * log_p, axis=-1)


def resize_maps(maps: jax.Array, shape_hw: tuple[int, int]) -> jax.Array:
  """``[B, H, W]`` maps → float32 ``[B, h, w]`` (linear, antialiased when shrinking).

  The device-side resize of attention and saliency maps (loss targets, head
  densities, teacher labels): it runs inside the jitted step or prediction.
  Host-side scoring resizes one float64 map at a time with
  :func:`attn_contrastive.saliency.metrics.resize_to` instead, as the MIT
  benchmark does; the two agree on upsampling (bilinear, edges clamped).
  """
  maps = jnp.asarray(maps).astype(jnp.float32)
  if maps.shape[1:] == tuple(shape_hw):
    return maps
  return jax.image.resize(maps, (maps.shape[0], *shape_hw), method="linear")
