"""The jitted data-parallel train step, without the data stack.

Everything a step needs (gradients, optimiser update, shardings; a task's
loss normalises its images with :mod:`attn_contrastive.models.forward`) and
nothing the input pipeline needs (grain, tfds, clu), so models and losses
can be compiled and timed on a machine that has only jax/flax/optax, as ``benchmarks/train_step.py`` does on accelerators.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train.state import TrainState

# (params, batch_stats, batch, rng[, frozen]) -> (loss, (new_batch_stats, metrics))
LossFn = Callable[..., tuple[jnp.ndarray, tuple[Any, dict[str, jnp.ndarray]]]]


def make_train_step(loss_fn: LossFn, schedule: optax.Schedule, *,
                    skip_nonfinite: bool = False):
  """The step: gradients of ``loss_fn``, optimiser update, metrics.

  ``train_step(state, batch, rng, frozen=None)``: ``frozen`` (a task's fixed
  inputs, e.g. a pretrained encoder's variables under linear evaluation) is
  handed to ``loss_fn`` as a fifth argument when given; it is read, never
  differentiated or updated, and stays out of the train state.

  ``skip_nonfinite`` (the optimiser wrapped in ``optax.apply_if_finite``,
  which skips an update whose gradients are not finite and counts it): the
  BatchNorm statistics of such a step are dropped too, so a skipped step
  leaves the parameters, the optimiser's moments and the statistics as they
  were; only the step counter moves on, with the data.
  """

  def train_step(state: TrainState, batch, rng, frozen=None):
    rng = jax.random.fold_in(rng, state.step)
    extra = () if frozen is None else (frozen,)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (new_stats, metrics)), grads = grad_fn(state.params, state.batch_stats,
                                                  batch, rng, *extra)
    if skip_nonfinite:
      finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
      new_stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_stats,
                               state.batch_stats)
    new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
    metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step),
                   grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(new_state.params))
    return new_state, metrics

  return train_step


def jit_train_step(train_step, mesh, *, with_frozen: bool = False) -> Callable:
  """``jax.jit`` with the state donated and replicated, the batch sharded.

  ``with_frozen``: the step takes a fourth argument, the frozen inputs,
  replicated and not donated (they are the caller's to keep), and passed as
  an argument rather than closed over, so a ResNet-50 is not baked into the
  program as constants.
  """
  rep, data = mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh)
  in_shardings = (rep, data, rep) + ((rep,) if with_frozen else ())
  return jax.jit(train_step, donate_argnums=(0,), in_shardings=in_shardings,
                 out_shardings=(rep, rep))
