"""The train state: parameters, BatchNorm statistics and optimiser state."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax import lax
from jax.extend import random as jex_random


def _philox_bits(key: jax.Array, bit_width: int, shape) -> jax.Array:
  _, bits = lax.rng_bit_generator(key, tuple(shape), dtype=jnp.dtype(f"uint{bit_width}"),
                                  algorithm=lax.RandomAlgorithm.RNG_PHILOX)
  return bits


# JAX's `rbg` key with XLA's bit generator pinned to Philox. `rbg` leaves the
# algorithm to the backend (Philox on CPU and GPU, another on TPU), so the
# same seed would give other parameters on a TPU; naming it keeps them equal
# everywhere. Threefry keys would too, but XLA:CPU compiles a network's
# initialisation several times slower with them. Seeding, splitting and
# folding are rbg's own (threefry-based, the same on every backend).
INIT_PRNG = jex_random.define_prng_impl(
    key_shape=(4,), seed=jex_random.rbg_prng_impl.seed, split=jex_random.rbg_prng_impl.split,
    random_bits=_philox_bits, fold_in=jex_random.rbg_prng_impl.fold_in, name="rbg_philox")


def init_key(seed: int) -> jax.Array:
  """The key that initialises a model's parameters from ``seed``."""
  return jax.random.key(seed, impl=INIT_PRNG)


class TrainState(train_state.TrainState):
  """``flax`` TrainState plus the BatchNorm running statistics."""
  batch_stats: Any = None


def create_train_state(model: flax.linen.Module, tx: optax.GradientTransformation,
                       sample_input: jax.ShapeDtypeStruct, seed: int | jax.Array,
                       sharding: jax.sharding.Sharding) -> TrainState:
  """Initialises the model and optimiser directly into ``sharding``.

  An integer seed draws from :func:`init_key` (the same parameters on CPU,
  GPU and TPU); an explicit key may be passed instead. The step is a strong
  int32, as a checkpoint restores it (flax's weakly typed 0 would not be): a
  resumed run then steps with the program a fresh run compiled, found in the
  persistent compilation cache, rather than compiling another.
  """
  rng = init_key(seed) if isinstance(seed, int) else seed

  def init(rng):
    variables = model.init(rng, jnp.zeros(sample_input.shape, sample_input.dtype),
                           train=False)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                              batch_stats=variables.get("batch_stats", {}), tx=tx)
    return state.replace(step=jnp.zeros((), jnp.int32))

  return jax.jit(init, out_shardings=sharding)(rng)


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
