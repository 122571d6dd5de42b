"""A network on uint8 images: normalised on the device, then applied.

Images cross to the device as uint8 (a quarter of float32's bytes) and are
normalised there, with ImageNet's mean and standard deviation, in the
network's compute dtype. Every task runs its networks through
:func:`apply_train` (training losses: BatchNorm on the batch, its running
statistics updated) or :func:`predict` (evaluators, in inference mode), both
on :func:`apply`, so a network is evaluated on exactly the input it was
trained on.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255

#: ``(state or variables, uint8 images [B, H, W, 3], **rows) -> outputs``.
PredictFn = Callable[..., Any]


def normalize_images(images: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
  """uint8 images → mean/std-normalised floats, on device."""
  return ((images.astype(jnp.float32) - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)


def variables_of(state: Any) -> Mapping[str, Any]:
  """``{"params", "batch_stats"}`` of a train or evaluation state; a variables dict as is."""
  if isinstance(state, Mapping):
    return state
  return {"params": state.params, "batch_stats": state.batch_stats}


def apply(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, dtype,
          **kwargs) -> Any:
  """``model.apply`` on uint8 ``images`` normalised in ``dtype``; ``kwargs`` go to apply
  (``train``, ``mutable``, a model's row selections)."""
  return model.apply(variables, normalize_images(images, dtype), **kwargs)


def apply_train(model: nn.Module, params: Any, batch_stats: Any, images: jax.Array, dtype,
                **rows) -> tuple[Any, Any]:
  """``(outputs, updated batch_stats)`` of ``model`` in training mode on uint8 ``images``
  (BatchNorm on the batch's statistics); ``rows`` go to the model."""
  out, updates = apply(model, {"params": params, "batch_stats": batch_stats}, images, dtype,
                       train=True, mutable=["batch_stats"], **rows)
  return out, updates["batch_stats"]


def predict(model: nn.Module, dtype, output: str | None = None, **fixed) -> PredictFn:
  """``predict(state, images, **rows)``: ``model`` in inference mode on uint8 images.

  ``state`` is a train or evaluation state (its ``params`` and
  ``batch_stats``) or a variables dict; ``output`` picks one entry of the
  network's output dict (all of it when None); ``fixed`` keyword arguments go
  to every call, ``rows`` to this one.
  """

  def run(state, images, **rows):
    out = apply(model, variables_of(state), images, dtype, train=False, **fixed, **rows)
    return out if output is None else out[output]

  return run
