"""L2-regularised softmax regression on fixed features: the cached-feature linear probe.

Linear evaluation by SGD over augmented crops costs as much as a short
training run; on features extracted once (centre crops, see
:mod:`attn_contrastive.evaluators.features`) a full-batch convex fit takes
minutes. :func:`fit_and_evaluate` standardises the features with the
training split's mean and standard deviation, fits ``W``, ``b`` from zero by
L-BFGS (optax, zoom line search) on

    mean_i CE(softmax(z_i W + b), y_i) + l2 / 2 · ||W||²,

for each strength of ``l2_grid`` on the training split less its last
``holdout_fraction``, keeps the strength with the best top-1 on that
held-out slice (ties: the lower held-out cross-entropy), refits on the whole
training split with it, and scores top-1 and top-5 on the validation split.

Everything runs on device under ``jax.jit``: the features are global arrays
with their rows split over the mesh (padding rows weigh 0), the
parameters are replicated, so ImageNet's 1.28M × 2048 training features are
spread over the accelerators. The standardisation is folded into ``W`` and
``b`` instead of copying the features.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn_contrastive.evaluators import classification
from attn_contrastive.train import mesh as mesh_lib

Params = dict[str, jax.Array]


def _to_device(x: np.ndarray, mesh) -> jax.Array:
  """A host array (the same on every process) as a global array, rows over ``data``.

  Rows are padded with zeros to a multiple of the mesh size.
  """
  pad = -len(x) % mesh.size
  x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
  return jax.make_array_from_callback(x.shape, mesh_lib.data_sharding(mesh), lambda i: x[i])


def _logits(params: Params, stats: Params, x: jax.Array) -> jax.Array:
  """``((x - mean) / std) W + b`` without materialising the standardised features."""
  w = params["w"] / stats["std"][:, None]
  b = params["b"] - stats["mean"] @ w
  return jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST) + b


@jax.jit
def _standardisation(x: jax.Array, weight: jax.Array) -> Params:
  """Weighted per-feature mean and standard deviation (floored at 1e-6)."""
  total = jnp.sum(weight)
  mean = jnp.sum(x * weight[:, None], 0) / total
  var = jnp.sum(jnp.square(x - mean) * weight[:, None], 0) / total
  return {"mean": mean, "std": jnp.maximum(jnp.sqrt(var), 1e-6)}


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iters"))
def _fit(x: jax.Array, y: jax.Array, weight: jax.Array, stats: Params, l2: jax.Array,
         tol: jax.Array, *, num_classes: int, max_iters: int) -> tuple[Params, jax.Array]:
  """L-BFGS from zero on the rows where ``weight`` is 1; returns (params, iterations)."""

  def objective(params):
    nll = optax.softmax_cross_entropy_with_integer_labels(_logits(params, stats, x), y)
    return jnp.sum(nll * weight) / jnp.sum(weight) + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                value_fn=objective)
    return optax.apply_updates(params, updates), state

  def not_done(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (count == 0) | ((count < max_iters) & (grad_norm >= tol))

  init = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32),
          "b": jnp.zeros((num_classes,), jnp.float32)}
  params, state = jax.lax.while_loop(not_done, step, (init, opt.init(init)))
  return params, optax.tree.get(state, "count")


@jax.jit
def _scores(params: Params, stats: Params, x: jax.Array, y: jax.Array,
            weight: jax.Array) -> jax.Array:
  """Weighted sums of (top-1 hits, top-5 hits, cross-entropy) and the weight."""
  logits = _logits(params, stats, x)
  top1, top5 = classification.top_k_correct(logits, y)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return jnp.stack([jnp.sum(v * weight) for v in (top1, top5, nll, jnp.ones_like(nll))])


def _mean_scores(params, stats, x, y, weight) -> dict[str, float]:
  top1, top5, nll, n = np.asarray(jax.device_get(_scores(params, stats, x, y, weight)))
  return {"top1": float(top1 / n), "top5": float(top5 / n), "loss": float(nll / n)}


def fit_and_evaluate(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                     val_y: np.ndarray, num_classes: int, *, l2_grid: Sequence[float],
                     holdout_fraction: float = 0.1, max_iters: int = 500, tol: float = 1e-5,
                     mesh=None) -> dict[str, Any]:
  """Chooses ``l2`` on a held-out slice, refits, scores the validation split.

  Features are ``[n, D]`` (the same on every process), labels ``[n]`` ints.
  Returns ``{"top1", "top5", "l2", "grid": [{"l2", "heldout_top1",
  "heldout_loss", "iterations"}, …], "iterations", "classifier"}``
  (``iterations``: L-BFGS steps of the final fit; a fit stops at
  ``max_iters`` or when the gradient's norm falls below ``tol``;
  ``classifier``: ``{"kernel" [D, C], "bias" [C]}`` NumPy arrays acting on
  the raw features, the standardisation folded in).
  """
  mesh = mesh or mesh_lib.make_mesh()
  n = len(train_x)
  n_fit = n - int(round(n * holdout_fraction))
  if not 0 < n_fit < n:
    raise ValueError(f"holdout_fraction={holdout_fraction} leaves no held-out or no fitting "
                     f"examples of {n}")
  x, y = _to_device(train_x.astype(np.float32), mesh), _to_device(train_y.astype(np.int32), mesh)
  rows = np.arange(x.shape[0])
  fit_w, held_w, all_w = (_to_device(((lo <= rows) & (rows < hi)).astype(np.float32), mesh)
                          for lo, hi in ((0, n_fit), (n_fit, n), (0, n)))
  stats = _standardisation(x, all_w)
  fit = functools.partial(_fit, x, y, stats=stats, tol=jnp.float32(tol),
                          num_classes=num_classes, max_iters=max_iters)
  grid = []
  for l2 in l2_grid:
    params, iters = fit(weight=fit_w, l2=jnp.float32(l2))
    held = _mean_scores(params, stats, x, y, held_w)
    grid.append({"l2": float(l2), "heldout_top1": held["top1"], "heldout_loss": held["loss"],
                 "iterations": int(iters)})
  best = max(grid, key=lambda g: (g["heldout_top1"], -g["heldout_loss"]))
  params, iters = fit(weight=all_w, l2=jnp.float32(best["l2"]))
  vx, vy = _to_device(val_x.astype(np.float32), mesh), _to_device(val_y.astype(np.int32), mesh)
  val_w = _to_device((np.arange(vx.shape[0]) < len(val_x)).astype(np.float32), mesh)
  val = _mean_scores(params, stats, vx, vy, val_w)
  return {"top1": val["top1"], "top5": val["top5"], "l2": best["l2"], "grid": grid,
          "iterations": int(iters), "classifier": folded_classifier(params, stats)}


def folded_classifier(params: Params, stats: Params) -> dict[str, np.ndarray]:
  """``{"kernel", "bias"}`` with ``x @ kernel + bias`` = the fitted logits of raw ``x``."""
  w = np.asarray(params["w"], np.float64) / np.asarray(stats["std"], np.float64)[:, None]
  b = np.asarray(params["b"], np.float64) - np.asarray(stats["mean"], np.float64) @ w
  return {"kernel": w.astype(np.float32), "bias": b.astype(np.float32)}
