"""Grad-CAM (Selvaraju et al., ICCV 2017): where a classifier finds the evidence for its answer.

A network without attention heads has no map of its own to compare with
human attention. Activation attention (Σ_c A_c²) says where the features
are strong, whatever they mean; Grad-CAM says where the features that
raise the *predicted* class are, which is the usual map of a classifier
and a fair footing for a baseline beside a run with heads. With ``A`` the
activation of a stage (``[h, w, C]``) and ``S`` the logit of the predicted
class (argmax of the logits)::

    w_k = mean_{i,j} ∂S/∂A[i, j, k]        map = ReLU(Σ_k w_k A[:, :, k])

normalised here to a density that sums to 1 per image (a map that is zero
everywhere, when no channel speaks for the class, becomes uniform).

The gradient with respect to a stage's activation is taken without
changing the network: a zero offset is added to the output of the block
that ends the stage (a flax method interceptor) and the score is
differentiated with respect to that offset. The scores of a batch are
summed before differentiating: with BatchNorm in inference mode the
examples do not interact, so one backward pass gives every example's
gradient.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Outputs = dict[str, Any]


def predicted_class_score(logits: jax.Array) -> jax.Array:
  """``[B, K]`` logits → ``[B]``: each example's logit of its argmax class."""
  cls = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1))
  return jnp.take_along_axis(logits, cls[:, None], axis=-1)[:, 0]


def channel_weights(grad: jax.Array) -> jax.Array:
  """``[B, h, w, C]`` gradients → ``[B, C]`` Grad-CAM weights (their spatial means)."""
  return jnp.mean(grad.astype(jnp.float32), axis=(1, 2))


def cam(activation: jax.Array, grad: jax.Array) -> jax.Array:
  """``ReLU(Σ_k w_k A_k)``, ``[B, h, w]``, from the activation and the score's gradient."""
  weights = channel_weights(grad)
  return jax.nn.relu(jnp.einsum("bhwc,bc->bhw", activation.astype(jnp.float32), weights))


def to_density(maps: jax.Array) -> jax.Array:
  """Non-negative ``[B, h, w]`` maps → densities summing to 1 (an all-zero map → uniform)."""
  total = jnp.sum(maps, axis=(1, 2), keepdims=True)
  uniform = jnp.full_like(maps, 1.0 / (maps.shape[1] * maps.shape[2]))
  return jnp.where(total > 0, maps / jnp.where(total > 0, total, 1.0), uniform)


def _offset_at(block: str, offset: jax.Array, hits: list[str]):
  """An interceptor that adds ``offset`` to the output of the module named ``block``."""

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.name == block:
      hits.append("/".join(context.module.path))
      return out + offset.astype(out.dtype)
    return out

  return interceptor


def stage_gradient(forward: Callable[[], Outputs], stage: str, block: str,
                   logits_fn: Callable[[Outputs], jax.Array]) -> tuple[jax.Array, Outputs]:
  """``(∂S/∂A, outputs)``: the gradient of the predicted class's score w.r.t. ``stage``.

  ``forward()`` runs the network (``apply`` with its variables and inputs
  bound) and returns its outputs, ``stage`` among them; ``block`` names the
  submodule whose output is that stage's activation (exactly one module of
  that name must run); ``logits_fn(outputs)`` gives ``[B, K]`` logits. The
  gradient is float32 ``[B, h, w, C]``; ``outputs`` are the forward pass's.
  """
  shape = jax.eval_shape(forward)[stage].shape

  def score(offset):
    hits: list[str] = []
    with nn.intercept_methods(_offset_at(block, offset, hits)):
      out = forward()
    if len(hits) != 1:
      raise ValueError(f"Grad-CAM needs exactly one module named {block!r} for stage "
                       f"{stage!r}; found {hits or 'none'}")
    return jnp.sum(predicted_class_score(logits_fn(out))), out

  return jax.grad(score, has_aux=True)(jnp.zeros(shape, jnp.float32))


def gradcam(forward: Callable[[], Outputs], stage: str, block: str,
            logits_fn: Callable[[Outputs], jax.Array]) -> tuple[jax.Array, Outputs]:
  """``(densities [B, h, w], outputs)``: Grad-CAM of ``stage`` (see :func:`stage_gradient`)."""
  grad, out = stage_gradient(forward, stage, block, logits_fn)
  return to_density(cam(out[stage], grad)), out
