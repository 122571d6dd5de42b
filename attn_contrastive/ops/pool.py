"""Max pooling with a fast gradient on the CPU backend.

Why this module exists
----------------------
JAX differentiates ``lax.reduce_window`` max pooling through a variadic
reduce-window that carries four int32 index arrays beside the values, then a
scatter. On XLA:CPU that backward pass (index iotas, the variadic window, the
scatter) is a sizeable part of a small ResNet's training step for its one
pooling layer, more than that layer's BatchNorm (timings in
``benchmarks/README.md``).

How
---
The gradient of max pooling sends each output's gradient to the first input
of its window that equals the output (row-major order; the same rule as
XLA's select-and-scatter and PyTorch). For a ``K×K`` window with stride
``S`` this is computed with elementwise passes only:

1. ``sel``: for every output, the index ``i*K + j`` of the first window
   offset whose (strided) input slice equals the output, an int8 array the
   size of the output.
2. The scatter back is split by the parity of the padded input coordinate
   modulo ``S``: the offsets ``(i, j)`` with ``i ≡ a, j ≡ b (mod S)`` all
   land on the sub-grid ``dx[a::S, b::S]``, each shifted by ``(i//S, j//S)``,
   so every sub-grid is a sum of zero-padded (not interior-padded) copies of
   ``where(sel == i*K + j, g, 0)``. The ``S×S`` sub-grids are interleaved by a
   stack and reshape.

On that layer, forward + backward take a fraction of the time of
``jax.vjp`` of ``flax.linen.max_pool``. Values are identical wherever windows
do not overlap on a selected input; where two windows select the same input
its gradients are summed in another order (float rounding only).

``impl`` follows the convolution switch (``ops.conv``): ``'auto'`` uses
this gradient on the CPU backend and ``flax.linen.max_pool`` (XLA's own)
elsewhere; ``'xla'`` is always flax's; ``'cpu_matmul'`` always this one.
:func:`max_pool_fn` returns a drop-in replacement for ``flax.linen.max_pool``
(what the networks are handed); :func:`max_pool` is the square-window call.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from attn_contrastive.ops import conv as conv_lib

Pads = tuple[tuple[int, int], tuple[int, int]]


def _forward(x: jax.Array, window: int, stride: int, pads: Pads) -> jax.Array:
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max,
                           (1, window, window, 1), (1, stride, stride, 1),
                           ((0, 0), *pads, (0, 0)))


def _offset_dtype(window: int) -> jnp.dtype:
  return jnp.dtype(jnp.int8 if window * window < 127 else jnp.int32)


def _first_max_offset(x: jax.Array, y: jax.Array, window: int, stride: int,
                      pads: Pads) -> jax.Array:
  """Index ``i*K + j`` of each window's first maximum (``K*K`` if none)."""
  n, _, _, c = x.shape
  ho, wo = y.shape[1:3]
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
               ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  dtype = _offset_dtype(window)
  sel = jnp.full(y.shape, window * window, dtype)
  for k in reversed(range(window * window)):  # the lowest matching k wins
    i, j = divmod(k, window)
    xs = lax.slice(xp, (0, i, j, 0),
                   (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                   (1, stride, stride, 1))
    sel = jnp.where(xs == y, jnp.asarray(k, dtype), sel)
  return sel


def _scatter_back(sel: jax.Array, g: jax.Array, x_shape: tuple[int, ...],
                  window: int, stride: int, pads: Pads) -> jax.Array:
  """Adds ``g`` into the selected input of each window (see module doc)."""
  n, h, w, c = x_shape
  ho, wo = g.shape[1:3]
  rows, cols = ho + (window - 1) // stride, wo + (window - 1) // stride
  zero = jnp.zeros((), g.dtype)
  grid = []
  for a in range(stride):
    row = []
    for b in range(stride):
      acc = jnp.zeros((n, rows, cols, c), g.dtype)
      for i in range(a, window, stride):
        for j in range(b, window, stride):
          u, v = i // stride, j // stride
          part = jnp.where(sel == i * window + j, g, zero)
          acc = acc + lax.pad(part, zero, ((0, 0, 0), (u, rows - ho - u, 0),
                                           (v, cols - wo - v, 0), (0, 0, 0)))
      row.append(acc)
    grid.append(jnp.stack(row, axis=3))           # [n, rows, cols, S, c]
  dxp = jnp.stack(grid, axis=2).reshape(n, rows * stride, cols * stride, c)
  # The padded frame may be smaller (unused trailing rows) or larger.
  hp, wp = h + sum(pads[0]), w + sum(pads[1])
  dxp = lax.pad(dxp, zero, ((0, 0, 0), (0, hp - rows * stride, 0),
                            (0, wp - cols * stride, 0), (0, 0, 0)))
  return dxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_cpu(x: jax.Array, window: int, stride: int, pads: Pads,
                  x_shape: tuple[int, ...]) -> jax.Array:
  del x_shape  # static copy of x.shape for the backward pass
  return _forward(x, window, stride, pads)


def _max_pool_cpu_fwd(x, window, stride, pads, x_shape):
  y = _forward(x, window, stride, pads)
  # The int8 offsets are the only residual (a quarter of y's bytes), and
  # they must be materialised: left as a loop fusion, XLA fuses them into
  # the backward scatter and recomputes all K*K comparisons for every term
  # (several times slower; see benchmarks/README.md). XLA:CPU
  # drops optimization barriers before fusion, so the offsets are computed
  # inside a conditional, whose result is always a buffer; its predicate is
  # true for every input (y == y or y != y) but opaque to the compiler.
  first = y.reshape(-1)[0]
  sel = lax.cond((first == first) | (first != first),
                 lambda: _first_max_offset(x, y, window, stride, pads),
                 lambda: jnp.zeros(y.shape, _offset_dtype(window)))
  return y, sel


def _max_pool_cpu_bwd(window, stride, pads, x_shape, sel, g):
  return (_scatter_back(sel, g, x_shape, window, stride, pads),)


_max_pool_cpu.defvjp(_max_pool_cpu_fwd, _max_pool_cpu_bwd)


def max_pool(x: jax.Array, window: int, stride: int, pads: Pads,
             impl: str = "auto") -> jax.Array:
  """Square max pooling of an NHWC batch; see the module doc for ``impl``.

  Args:
    x: ``[N, H, W, C]`` floating array.
    window, stride: the window's side and its stride (both spatial axes).
    pads: ``((top, bottom), (left, right))`` padding with ``-inf``.
    impl: ``'auto'``, ``'xla'`` or ``'cpu_matmul'``; the environment variable
      ``ATTN_CONTRASTIVE_CONV_IMPL`` replaces ``'auto'`` as for convolutions.
  """
  impl = conv_lib.resolve_impl(impl, "pooling")
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if impl == "xla" or (impl == "auto" and jax.default_backend() != "cpu"):
    return nn.max_pool(x, (window, window), (stride, stride), padding=pads)
  return _max_pool_cpu(x, int(window), int(stride), pads, tuple(x.shape))


def max_pool_fn(impl: str = "auto") -> Callable[..., jax.Array]:
  """Returns a drop-in replacement for ``flax.linen.max_pool`` for ``impl``.

  ``'xla'`` is ``flax.linen.max_pool`` itself; otherwise square windows and
  strides with explicit padding over NHWC batches go through
  :func:`max_pool` (the CPU gradient where ``impl`` selects it) and every
  other call to ``flax.linen.max_pool`` unchanged.

  Raises:
    ValueError: for an unknown ``impl``.
  """
  impl = conv_lib.resolve_impl(impl, "pooling")
  if impl == "xla":
    return nn.max_pool

  def pool(inputs: jax.Array, window_shape: Sequence[int],
           strides: Sequence[int] | None = None,
           padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
    strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
    square = (inputs.ndim == 4 and len(window_shape) == len(strides) == 2
              and window_shape[0] == window_shape[1] and strides[0] == strides[1])
    if not square or isinstance(padding, str):
      return nn.max_pool(inputs, window_shape, strides, padding)
    return max_pool(inputs, window_shape[0], strides[0], padding, impl)

  return pool
