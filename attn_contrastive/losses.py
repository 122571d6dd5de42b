"""Losses: NT-Xent (SimCLR) and softmax cross-entropy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


def nt_xent(z1: jnp.ndarray, z2: jnp.ndarray, temperature: float,
            return_accuracy: bool = False):
  """NT-Xent over the 2N anchors of two views of N images.

  Args:
    z1, z2: ``[N, D]`` embeddings of the two views; row ``i`` of each comes
      from image ``i``. They are L2-normalised here.
    temperature: softmax temperature (0.1 at batch 4096 in SimCLR).
    return_accuracy: also return the share of anchors whose most similar
      other embedding is their positive ("contrastive accuracy").

  Each anchor's positive is the other view of its image and its negatives are
  the remaining 2N-2 embeddings. Under ``jit`` with ``z1``/``z2`` sharded over
  the batch the similarity matrix spans the global batch with no hand-written
  all-gather.
  """
  n = z1.shape[0]
  z = _l2_normalize(jnp.concatenate([z1, z2], 0).astype(jnp.float32))
  logits = z @ z.T / temperature
  # A large finite negative (not -inf) keeps 0·inf out of the gradient.
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -1e9, logits)
  positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, positives).mean()
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
