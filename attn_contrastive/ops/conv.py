"""Convolution with a fast hand-written gradient for the CPU backend.

Why this module exists
----------------------
XLA:CPU computes the *weight* gradient of a convolution with a generic
convolution kernel that is several times slower than the forward pass (and
than the same arithmetic as matmuls), so training a ResNet on CPU is
dominated by weight gradients. It also has a pathological case: when the
input is smaller than the kernel (a 3x3 convolution over the 2x2 maps of a
ResNet's last stage on 64-px images) its forward pass and input gradient are
many times slower than the same arithmetic as a matmul. Timings per layer
shape (``benchmarks/conv_grad.py``) and per training step are in
``benchmarks/README.md``.

Under Eigen's threaded convolutions (which ``attn_contrastive.xla_cpu_flags`` selects
instead of YNNPACK's), XLA's own 3x3 weight gradient is faster than this one
in isolation on some shapes, but not within a whole training step, so
``'auto'`` keeps this path; 1x1 kernels and inputs smaller than the kernel
gain most.

How
---
The weight gradient of ``y = conv(x, w)`` is

    dw[i, j, c, o] = sum_{n, p, q} x_pad[n, p*s + i, q*s + j, c] * g[n, p, q, o]

i.e. for every kernel offset ``(i, j)`` a plain matrix product
``shifted_slice(x)(M, C)^T @ g(M, O)`` with ``M = N*Ho*Wo``. Stacking the
``kh*kw`` shifted slices turns this into one ``(kh*kw*C, M) @ (M, O)``
matmul (im2col), which XLA:CPU runs near its matmul throughput. The
choices, each against its alternatives (``benchmarks/README.md``):

* Patches are built channel-major, ``(kh*kw*C, M)``, so the matmul contracts
  the minor axis of its left operand, which XLA:CPU does faster than the
  major axis of an ``(M, K)`` patch matrix (the obvious NHWC layout).
* One matmul per tile: ``kh*kw`` separate per-offset matmuls, one matmul per
  kernel row, or a batched ``dot_general`` over offsets are no faster (the
  batched form is slower).
* Materialising the patches for the whole batch is memory-bound, so the
  batch is cut into tiles of about ``_TILE_BYTES`` of patches (whole images,
  or bands of output rows of large images) processed by a ``lax.scan`` that
  accumulates the result in fp32. Tile sizes of 1-4 MiB perform alike.
* 3x3 patches are cut with ``kh*kw`` strided slices; larger kernels with
  ``kw`` column slices then ``kh`` row slices of those, which compiles a 7x7
  stem's gradient several times faster and runs it at the same speed.
* 1x1 kernels need no patches: a single matmul (after subsampling for
  stride > 1).
* Layers with few channels (``C*O <= _NATIVE_MAX_CO``) on a single CPU
  device use a C++ kernel instead (``conv_wgrad.cc``, built on first use by
  ``native.py``), faster there than any XLA formulation; without a compiler
  or AVX2 the matmul path above is used.

The forward pass is XLA's convolution and the input gradient of a stride-1
convolution XLA's transposed convolution: both are fast on CPU (an im2col
matmul forward and a matmul + col2im input gradient are no faster
overall), except in these cases:

* 1x1 kernels: the input gradient is one matmul and a strided zero-pad
  (faster).
* Strided kernels: XLA's transposed convolution dilates the gradient with
  zeros and runs a stride-1 convolution over it; the col2im input gradient
  (matmul, then each kernel offset's slab added at its strided positions)
  is faster on most stride-2 ResNet shapes, by far on small maps such as
  4x4 inputs.
* Strided convolutions over few channels (a 7x7 stride-2 stem over RGB):
  space-to-depth turns them into stride-1 convolutions over ``s*s`` times
  the channels (:func:`_space_to_depth`), forward and both gradients, which
  XLA:CPU runs faster than the strided convolution over few channels.
* Inputs smaller than the kernel: the forward pass is im2col + matmul and
  the input gradient matmul + col2im.

Public API
----------
``conv_general_dilated_fn(impl)`` returns a drop-in replacement for
``jax.lax.conv_general_dilated`` suitable for
``flax.linen.Conv(conv_general_dilated=...)``:

* ``'auto'`` (default): on the CPU backend the custom path, on TPU and GPU
  plain ``lax.conv_general_dilated`` (what flax does by default). See
  :func:`conv_general_dilated_fn` for how the platform is chosen.
* ``'xla'``: always ``lax.conv_general_dilated``.
* ``'cpu_matmul'``: always the custom path (on any backend; used by tests).

The custom path covers 2-D NHWC/HWIO convolutions with any strides, any
``'SAME'``/``'VALID'``/explicit padding, any kernel size,
``feature_group_count == batch_group_count == 1`` and no dilation, for
floating inputs of one dtype (bf16 is accumulated in fp32). Every other call
falls back to ``lax.conv_general_dilated`` unchanged.

Caveats: it is a ``jax.custom_vjp``, so forward-mode differentiation
(``jax.jvp``, ``jax.jacfwd``) of the custom path is not supported (use
``impl='xla'``); compiling a program with it takes longer (see
``benchmarks/README.md``); gradients agree with XLA's to ~1e-6 relative to
their magnitude, not bit for bit. When the batch is sharded over several
devices (data parallelism under ``jit``), the tiles are sized per device
(``jax.device_count()``) so each device keeps to its own images; for a batch
that is not a multiple of the device count, or with row bands, the
partitioner may gather the batch instead (still correct).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from attn_contrastive.ops import native

__all__ = ["conv_general_dilated_fn", "conv_general_dilated_cpu_matmul", "resolve_impl", "IMPLS"]

IMPLS: tuple[str, ...] = ("auto", "xla", "cpu_matmul")

# NHWC / HWIO / NHWC, as canonicalised by lax.conv_dimension_numbers.
_NHWC_SPECS = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))

# Bytes of im2col patches per tile (per device) of the weight-gradient scan:
# 1-4 MiB perform alike; whole-batch patches and tiles of a few hundred
# output pixels or fewer are slower (benchmarks/README.md).
_TILE_BYTES = 2 * 1024 * 1024
# Images whose patches exceed this many tiles are cut into bands of rows.
_BAND_FACTOR = 4
# Minimum output pixels (matmul contraction length) per scan step.
_MIN_TILE_ROWS = 256
# lax.scan unroll factor for the weight-gradient tiles.
_SCAN_UNROLL = 1
# Bytes of im2col patches per block of the matmul forward / col2im paths.
_FWD_BLOCK_BYTES = 8 * 1024 * 1024
# How im2col tiles are built: 'flat' (kh*kw slices), 'two_stage' (kw + kh
# slices) or 'auto' (flat up to 3x3, where it runs faster; two-stage above,
# where it compiles a 7x7 stem's gradient several times faster).
_PATCH_MODE = "auto"
# Strided convolutions whose input has at most this many channels times
# stride*stride run as a stride-1 convolution after space-to-depth.
_S2D_MAX_CHANNELS = 16
# Weight gradients of layers with at most this many input x output channels
# use the C++ kernel (native.py) on a single CPU device: the kernel beats the
# im2col path on layers with few channels and loses on wide ones; 4096
# performs like 1024 on whole steps (per-layer timings in benchmarks/README.md).
_NATIVE_MAX_CO = 4096


@dataclasses.dataclass(frozen=True)
class _ConvSpec:
  """Static description of one NHWC/HWIO convolution (hashable)."""

  strides: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]
  precision: Any
  preferred_element_type: Any
  # 'matmul': matmul-based backward always; 'auto': matmul on CPU, XLA's own
  # transpose elsewhere (resolved at lowering time by lax.platform_dependent).
  backward: str

  def xla_conv(self, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(
        lhs,
        rhs,
        self.strides,
        self.pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=self.precision,
        preferred_element_type=self.preferred_element_type,
    )


def _pad(x: jax.Array, config: Sequence[tuple[int, int, int]]) -> jax.Array:
  """lax.pad with zeros; negative entries crop."""
  return lax.pad(x, jnp.zeros((), x.dtype), tuple(config))


def _pad_to_windows(x: jax.Array, spec: _ConvSpec, rows: int,
                    cols: int) -> jax.Array:
  """``x`` with the spec's leading padding, padded or cropped to rows x cols.

  ``rows = (Ho-1)*sh + kh`` (likewise cols) are exactly the padded-input
  rows that the windows touch.
  """
  (plh, _), (plw, _) = spec.pads
  h, w = x.shape[1], x.shape[2]
  return _pad(x, ((0, 0, 0), (plh, rows - h - plh, 0), (plw, cols - w - plw, 0),
                  (0, 0, 0)))


def _dot_t(a: jax.Array, b: jax.Array, precision: Any) -> jax.Array:
  """``a^T @ b`` for 2-D ``a (M, K)``, ``b (M, O)``, accumulated in fp32."""
  return lax.dot_general(
      a, b, (((0,), (0,)), ((), ())), precision=precision,
      preferred_element_type=jnp.float32)


def _patches_cm(xt: jax.Array, kh: int, kw: int, sh: int, sw: int, ho: int,
                wo: int) -> jax.Array:
  """Channel-major im2col of a padded ``(C, n, H, W)`` block: ``(kh*kw*C, M)``.

  Row order is (i, j, c), matching a row-major reshape of an HWIO kernel;
  ``M = n*ho*wo`` runs over (image, row, column) like a reshaped NHWC
  gradient, so the weight gradient is the plain ``(K, M) @ (M, O)`` product
  (the contraction on the minor axis of the left operand is the fastest
  layout for XLA:CPU's matmul: faster than ``(M, K)^T @ (M, O)``).
  """
  c, n = xt.shape[0], xt.shape[1]
  mode = _PATCH_MODE
  if mode == "auto":
    mode = "flat" if kh * kw <= 9 else "two_stage"
  if mode == "two_stage":
    # kw column shifts, then kh row shifts of that: kh + kw slices instead
    # of kh * kw, which keeps 7x7 kernels quick to compile.
    cols = [lax.slice_in_dim(xt, j, j + (wo - 1) * sw + 1, sw, axis=3)
            for j in range(kw)]
    xw = jnp.stack(cols, axis=0) if kw > 1 else cols[0][None]
    rows = [lax.slice_in_dim(xw, i, i + (ho - 1) * sh + 1, sh, axis=3)
            for i in range(kh)]
    p = jnp.stack(rows, axis=0) if kh > 1 else rows[0][None]
    return p.reshape(kh * kw * c, n * ho * wo)
  cols = [
      lax.slice(xt, (0, 0, i, j),
                (c, n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1),
                (1, 1, sh, sw))
      for i in range(kh) for j in range(kw)
  ]
  p = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=0)
  return p.reshape(kh * kw * c, n * ho * wo)


def _tiling(n: int, ho: int, wo: int, k_cols: int, itemsize: int,
            devices: int = 1) -> tuple[int, int, int]:
  """(output rows per tile, steps, tiles per step) for the weight gradient.

  A scan step holds about ``_TILE_BYTES`` of patches per device but at least
  ``_MIN_TILE_ROWS`` output pixels (the matmul's contraction length), so that
  deep layers with tiny images still get an efficient matmul. On a single
  device, images whose patches exceed ``_BAND_FACTOR * _TILE_BYTES`` are cut
  into bands of output rows (a band is then one tile).

  With ``devices > 1`` the batch is assumed to be split over that many
  devices (data parallelism): each step then takes ``devices`` times as many
  whole images, a multiple of ``devices`` when ``n`` allows, so that every
  device keeps working on its own shard of the batch.
  """
  row_bytes = wo * k_cols * itemsize
  image_bytes = ho * row_bytes
  if devices == 1 and image_bytes > _BAND_FACTOR * _TILE_BYTES:
    rows_max = max(1, _TILE_BYTES // row_bytes, -(-_MIN_TILE_ROWS // wo))
    chunks = -(-ho // rows_max)
    return -(-ho // chunks), n * chunks, 1
  per_dev = max(1, _TILE_BYTES // image_bytes,
                -(-_MIN_TILE_ROWS // (ho * wo)))
  if devices > 1 and n % devices == 0:
    steps, per_dev = _split(n // devices, min(per_dev, n // devices))
    return ho, steps, per_dev * devices
  steps, per_step = _split(n, min(n, per_dev))
  return ho, steps, per_step


def _device_count() -> int:
  """Devices a batch may be split over (a tiling hint; tests override it)."""
  return jax.device_count()


def _split(tiles: int, per_step: int) -> tuple[int, int]:
  """(steps, tiles per step) with about ``per_step`` tiles per step.

  Prefers an exact factorisation of ``tiles`` (no padding, which keeps a
  sharded batch axis aligned); otherwise pads to ``steps * per_step``.
  """
  for p in range(per_step, max(1, per_step // 2) - 1, -1):
    if tiles % p == 0:
      return tiles // p, p
  steps = -(-tiles // per_step)
  return steps, -(-tiles // steps)


def _weight_grad(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...],
                 spec: _ConvSpec) -> jax.Array:
  """dL/dw for ``y = conv(x, w)``; returns fp32 ``(kh, kw, C, O)``."""
  kh, kw, c, o = kernel_shape
  sh, sw = spec.strides
  n, ho, wo, _ = g.shape
  (plh, _), (plw, _) = spec.pads
  h, w = x.shape[1], x.shape[2]
  g = g.astype(x.dtype) if g.dtype != x.dtype else g
  # Rows/columns of the padded input that the windows touch.
  hn, wn = (ho - 1) * sh + kh, (wo - 1) * sw + kw

  if kh == kw == 1:
    # One matmul; for stride > 1 the strided slice is a cheap subsample.
    xp = _pad_to_windows(x, spec, hn, wn)
    if sh > 1 or sw > 1:
      xp = xp[:, ::sh, ::sw]
    dw = _dot_t(xp.reshape(-1, c), g.reshape(-1, o), spec.precision)
    return dw.reshape(kh, kw, c, o)

  k_cols = kh * kw * c
  rows, steps, per_step = _tiling(n, ho, wo, k_cols, x.dtype.itemsize,
                                  _device_count())
  chunks = -(-ho // rows)
  # Zero images/rows pad the batch to whole tiles and steps; their gradient
  # rows are zero, so they add nothing.
  n_pad = -(-steps * per_step // chunks) - n if chunks > 1 else (
      steps * per_step - n)
  rows_in = (rows - 1) * sh + kh
  need = (chunks * rows - 1) * sh + kh
  # Pad (and crop) the input in one op.
  xp = _pad(x, ((0, n_pad, 0), (plh, need - h - plh, 0),
                (plw, wn - w - plw, 0), (0, 0, 0)))
  g = _pad(g, ((0, n_pad, 0), (0, chunks * rows - ho, 0), (0, 0, 0),
               (0, 0, 0)))
  if chunks > 1:
    # Bands of `rows` output rows (input bands overlap by kh - sh rows);
    # each band becomes a pseudo-image.
    xp = jnp.stack([xp[:, t * rows * sh:t * rows * sh + rows_in]
                    for t in range(chunks)], axis=1)
    xp = xp.reshape(-1, rows_in, wn, c)
    g = g.reshape(-1, rows, wo, o)
  xp, g = xp[:steps * per_step], g[:steps * per_step]
  # Step t takes tiles t, t + steps, t + 2*steps, ...: the batch axis stays
  # the major axis of each step's tile, so when the batch is sharded over
  # devices (jit with a data-parallel sharding) every device works on its
  # own images instead of gathering the whole batch. One transpose makes
  # the channel-major tiles (steps, C, b, H, W).
  xs = xp.reshape(per_step, steps, rows_in, wn, c).transpose(1, 4, 0, 2, 3)
  gs = g.reshape(per_step, steps, rows * wo, o).transpose(1, 0, 2, 3)
  gs = gs.reshape(steps, per_step * rows * wo, o)

  def block(xt: jax.Array, gb: jax.Array) -> jax.Array:
    # xt: (C, b, rows_in, wn) channel-major tile; gb: (b*rows*wo, O).
    p = _patches_cm(xt, kh, kw, sh, sw, rows, wo)
    return lax.dot_general(p, gb, (((1,), (0,)), ((), ())),
                           precision=spec.precision,
                           preferred_element_type=jnp.float32)

  if steps == 1:
    dw = block(xs[0], gs[0])
  else:

    def body(acc, xg):
      return acc + block(*xg), None

    dw, _ = lax.scan(body, jnp.zeros((k_cols, o), jnp.float32), (xs, gs),
                     unroll=_SCAN_UNROLL)
  return dw.reshape(kh, kw, c, o)


def _native_weight_grad(x: jax.Array, g: jax.Array,
                        kernel_shape: tuple[int, ...],
                        spec: _ConvSpec) -> jax.Array | None:
  """dL/dw by the C++ kernel (``native.py``), or None where it does not apply.

  Used for layers with few channels (``C*O <= _NATIVE_MAX_CO``), where it
  beats the im2col path, on a single CPU device: the custom call has
  no sharding rule, so with the batch split over several devices the
  partitioner would gather it (the im2col path keeps each device's images).
  """
  kh, kw, c, o = kernel_shape
  if (kh * kw == 1 or c * o > _NATIVE_MAX_CO or _device_count() > 1
      or jax.default_backend() != "cpu" or not native.supports(c, o, x.dtype)
      or not native.load()):
    return None
  (sh, sw), (ho, wo) = spec.strides, g.shape[1:3]
  xp = _pad_to_windows(x, spec, (ho - 1) * sh + kh, (wo - 1) * sw + kw)
  return native.weight_grad(xp, g.astype(jnp.float32), (kh, kw), (sh, sw))


def _small_input(x_shape: Sequence[int], w_shape: Sequence[int]) -> bool:
  """True when the input is smaller than the kernel along a spatial axis.

  XLA:CPU's convolution (forward and input gradient) is pathologically slow
  there, e.g. a 3x3 convolution over 2x2 feature maps (the last stage of a
  ResNet on 64-px images), many times slower than im2col + matmul (see
  benchmarks/README.md). Those maps are tiny, so im2col costs nothing.
  """
  return x_shape[1] < w_shape[0] or x_shape[2] < w_shape[1]


def _batch_blocks(n: int, per_image_bytes: int) -> tuple[int, int]:
  """(steps, images per step) covering ``n`` images, ~_FWD_BLOCK_BYTES each."""
  per_step = max(1, min(n, _FWD_BLOCK_BYTES // max(per_image_bytes, 1)))
  steps = -(-n // per_step)
  return steps, -(-n // steps)


def _map_batch(fn: Callable[[jax.Array], jax.Array], xs: jax.Array,
               steps: int, per_step: int) -> jax.Array:
  """``fn`` over ``steps`` blocks of ``per_step`` images (zero-padded)."""
  n = xs.shape[0]
  xs = _pad(xs, ((0, steps * per_step - n, 0),) + ((0, 0, 0),) * (xs.ndim - 1))
  if steps == 1:
    return fn(xs)[:n]
  ys = lax.map(fn, xs.reshape(steps, per_step, *xs.shape[1:]))
  return ys.reshape(steps * per_step, *ys.shape[2:])[:n]


def _matmul_forward(spec: _ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
  """The convolution as im2col + one matmul per block of images."""
  kh, kw, c, o = w.shape
  n, h, wd, _ = x.shape
  sh, sw = spec.strides
  (plh, phh), (plw, phw) = spec.pads
  ho, wo = (h + plh + phh - kh) // sh + 1, (wd + plw + phw - kw) // sw + 1
  hn, wn = (ho - 1) * sh + kh, (wo - 1) * sw + kw
  k_cols = kh * kw * c
  out_dtype = spec.preferred_element_type or x.dtype
  xp = _pad_to_windows(x, spec, hn, wn)
  w2 = w.reshape(k_cols, o)

  def block(xb: jax.Array) -> jax.Array:
    cols = [lax.slice_in_dim(xb, j, j + (wo - 1) * sw + 1, sw, axis=2)
            for j in range(kw)]
    xw = jnp.concatenate(cols, axis=-1) if kw > 1 else cols[0]
    rows = [lax.slice_in_dim(xw, i, i + (ho - 1) * sh + 1, sh, axis=1)
            for i in range(kh)]
    p = jnp.concatenate(rows, axis=-1) if kh > 1 else rows[0]
    y = lax.dot_general(p.reshape(-1, k_cols), w2, (((1,), (0,)), ((), ())),
                        precision=spec.precision,
                        preferred_element_type=jnp.float32)
    return y.reshape(xb.shape[0], ho, wo, o).astype(out_dtype)

  steps, per_step = _batch_blocks(n, ho * wo * k_cols * x.dtype.itemsize)
  return _map_batch(block, xp, steps, per_step)


def _input_grad_col2im(g: jax.Array, w: jax.Array, x_shape: tuple[int, ...],
                       x_dtype: Any, spec: _ConvSpec) -> jax.Array:
  """dL/dx as ``g @ w^T`` (one matmul) followed by col2im.

  col2im adds each kernel offset's ``(n, ho, wo, C)`` slab at its (strided)
  input positions with a zero interior pad; XLA fuses the kh*kw pads and
  adds into one loop. For 1x1 kernels this is a single matmul and pad.
  """
  kh, kw, c, o = w.shape
  n, ho, wo, _ = g.shape
  h, wd = x_shape[1], x_shape[2]
  sh, sw = spec.strides
  (plh, _), (plw, _) = spec.pads
  hn, wn = (ho - 1) * sh + kh, (wo - 1) * sw + kw
  w2 = w.reshape(kh * kw * c, o).astype(g.dtype)

  def block(gb: jax.Array) -> jax.Array:
    dp = lax.dot_general(gb, w2, (((3,), (1,)), ((), ())),
                         precision=spec.precision,
                         preferred_element_type=jnp.float32)
    dp = dp.reshape(gb.shape[0], ho, wo, kh, kw, c)
    acc = None
    for i in range(kh):
      for j in range(kw):
        t = _pad(dp[:, :, :, i, j, :],
                 ((0, 0, 0), (i, hn - i - (ho - 1) * sh - 1, sh - 1),
                  (j, wn - j - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))
        acc = t if acc is None else acc + t
    # Padded-input coordinates -> input coordinates.
    return _pad(acc.astype(x_dtype),
                ((0, 0, 0), (-plh, h + plh - hn, 0), (-plw, wd + plw - wn, 0),
                 (0, 0, 0)))

  if kh == kw == 1:
    return block(g)
  steps, per_step = _batch_blocks(n, ho * wo * kh * kw * c * 4)
  return _map_batch(block, g, steps, per_step)


def _input_grad(g: jax.Array, w: jax.Array, x_shape: tuple[int, ...],
                x_dtype: Any, spec: _ConvSpec) -> jax.Array:
  """dL/dx for ``y = conv(x, w)``."""
  kh, kw = w.shape[0], w.shape[1]
  # Strided: XLA's transposed convolution dilates the gradient and is slow
  # (most on small inputs); col2im scatters the strided slabs directly.
  strided = max(spec.strides) > 1
  if (kh == kw == 1) or strided or _small_input(x_shape, w.shape):
    return _input_grad_col2im(g, w, x_shape, x_dtype, spec)
  # XLA's transposed convolution: as fast as its forward pass on CPU.
  x_aval = jax.ShapeDtypeStruct(x_shape, x_dtype)
  transpose = jax.linear_transpose(lambda x: spec.xla_conv(x, w), x_aval)
  (dx,) = transpose(g)
  return dx


def _matmul_backward(spec: _ConvSpec, x: jax.Array, w: jax.Array,
                     g: jax.Array) -> tuple[jax.Array, jax.Array]:
  dx = _input_grad(g, w, x.shape, x.dtype, spec)
  dw = _native_weight_grad(x, g, w.shape, spec)
  if dw is None:
    dw = _weight_grad(x, g, w.shape, spec)
  return dx.astype(x.dtype), dw.astype(w.dtype)


def _xla_backward(spec: _ConvSpec, x: jax.Array, w: jax.Array,
                  g: jax.Array) -> tuple[jax.Array, jax.Array]:
  _, vjp = jax.vjp(spec.xla_conv, x, w)
  return vjp(g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(spec: _ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
  return _forward(spec, x, w)


def _forward(spec: _ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
  """XLA's convolution, except for inputs smaller than the kernel."""
  if not _small_input(x.shape, w.shape):
    return spec.xla_conv(x, w)
  if spec.backward == "matmul":
    return _matmul_forward(spec, x, w)
  return lax.platform_dependent(
      x, w, cpu=functools.partial(_matmul_forward, spec),
      default=spec.xla_conv)


def _conv_fwd(spec: _ConvSpec, x: jax.Array, w: jax.Array):
  return _forward(spec, x, w), (x, w)


def _conv_bwd(spec: _ConvSpec, res, g: jax.Array):
  x, w = res
  if spec.backward == "matmul":
    return _matmul_backward(spec, x, w, g)
  return lax.platform_dependent(
      x, w, g,
      cpu=functools.partial(_matmul_backward, spec),
      default=functools.partial(_xla_backward, spec))


_conv.defvjp(_conv_fwd, _conv_bwd)


def _custom_spec(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                 dimension_numbers, feature_group_count, batch_group_count,
                 precision, preferred_element_type, out_sharding,
                 backward) -> _ConvSpec | None:
  """The static spec if the custom path supports this call, else None."""
  if lhs.ndim != 4 or rhs.ndim != 4 or out_sharding is not None:
    return None
  if feature_group_count != 1 or batch_group_count != 1:
    return None
  if any(d != 1 for d in (lhs_dilation or (1, 1))):
    return None
  if any(d != 1 for d in (rhs_dilation or (1, 1))):
    return None
  if lhs.dtype != rhs.dtype or not jnp.issubdtype(lhs.dtype, jnp.floating):
    return None
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) != _NHWC_SPECS:
    return None
  strides = tuple(int(s) for s in window_strides)
  if len(strides) != 2:
    return None
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[0:2], strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if len(pads) != 2:
    return None
  for size, k, s, (lo, hi) in zip(lhs.shape[1:3], rhs.shape[0:2], strides, pads):
    if s < 1 or size + lo + hi < k:  # empty output: let XLA handle/report it
      return None
  return _ConvSpec(strides, pads, precision, preferred_element_type, backward)


def _space_to_depth(spec: _ConvSpec, x: jax.Array, w: jax.Array
                    ) -> tuple[_ConvSpec, jax.Array, jax.Array]:
  """The same strided convolution as a stride-1 one on ``s*s``-times the channels.

  Pixel ``(s*p + a, s*q + b)`` of the padded input becomes channel
  ``(a, b, c)`` of pixel ``(p, q)``, and the kernel, zero-padded to a
  multiple of the stride, is cut the same way: ``ceil(k/s)`` taps of
  ``s*s*C`` channels instead of ``k`` taps of ``C``. For a 7x7 stride-2
  stem over RGB that is a 4x4 convolution over 12 channels (30% more
  multiply-adds), which XLA:CPU runs much faster than the strided 3-channel
  one, and its weight gradient needs no strided slices.
  """
  n, h, wd, c = x.shape
  kh, kw, _, o = w.shape
  (sh, sw), ((plh, phh), (plw, phw)) = spec.strides, spec.pads
  ho, wo = (h + plh + phh - kh) // sh + 1, (wd + plw + phw - kw) // sw + 1
  th, tw = -(-kh // sh), -(-kw // sw)          # taps per axis after the cut
  hn, wn = (ho - 1 + th) * sh, (wo - 1 + tw) * sw
  xp = _pad_to_windows(x, spec, hn, wn)
  xs = xp.reshape(n, hn // sh, sh, wn // sw, sw, c).transpose(0, 1, 3, 2, 4, 5)
  wp = _pad(w, ((0, th * sh - kh, 0), (0, tw * sw - kw, 0), (0, 0, 0), (0, 0, 0)))
  ws = wp.reshape(th, sh, tw, sw, c, o).transpose(0, 2, 1, 3, 4, 5)
  spec1 = dataclasses.replace(spec, strides=(1, 1), pads=((0, 0), (0, 0)))
  return (spec1, xs.reshape(n, hn // sh, wn // sw, sh * sw * c),
          ws.reshape(th, tw, sh * sw * c, o))


def _use_space_to_depth(spec: _ConvSpec, w_shape: Sequence[int]) -> bool:
  """Strided convolutions over few channels with kernels wider than the stride."""
  (sh, sw), (kh, kw, c, _) = spec.strides, w_shape
  return (sh > 1 or sw > 1) and kh > sh and kw > sw and c * sh * sw <= _S2D_MAX_CHANNELS


def _make(backward: str) -> Callable[..., jax.Array]:
  def conv_general_dilated(
      lhs: jax.Array,
      rhs: jax.Array,
      window_strides: Sequence[int],
      padding: str | Sequence[tuple[int, int]],
      lhs_dilation: Sequence[int] | None = None,
      rhs_dilation: Sequence[int] | None = None,
      dimension_numbers: Any = None,
      feature_group_count: int = 1,
      batch_group_count: int = 1,
      precision: Any = None,
      preferred_element_type: Any = None,
      out_sharding: Any = None,
  ) -> jax.Array:
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    spec = _custom_spec(lhs, rhs, window_strides, padding, lhs_dilation,
                        rhs_dilation, dimension_numbers, feature_group_count,
                        batch_group_count, precision, preferred_element_type,
                        out_sharding, backward)
    if spec is None:
      return lax.conv_general_dilated(
          lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
          rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
          feature_group_count=feature_group_count,
          batch_group_count=batch_group_count, precision=precision,
          preferred_element_type=preferred_element_type,
          out_sharding=out_sharding)
    if _use_space_to_depth(spec, rhs.shape):
      return _conv(*_space_to_depth(spec, lhs, rhs))
    return _conv(spec, lhs, rhs)

  return conv_general_dilated


conv_general_dilated_cpu_matmul: Callable[..., jax.Array] = _make("matmul")
conv_general_dilated_cpu_matmul.__doc__ = (
    "``lax.conv_general_dilated`` with the matmul-based backward pass (and "
    "im2col forward for inputs smaller than the kernel) on every backend; "
    "falls back to XLA for unsupported configurations.")
_conv_general_dilated_cpu_auto = _make("auto")


def _conv_general_dilated_auto(lhs, rhs, *args, **kwargs) -> jax.Array:
  if jax.default_backend() == "cpu":
    return _conv_general_dilated_cpu_auto(lhs, rhs, *args, **kwargs)
  return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def conv_general_dilated_fn(impl: str = "auto") -> Callable[..., jax.Array]:
  """Returns a drop-in replacement for ``jax.lax.conv_general_dilated``.

  Pass the result as ``flax.linen.Conv(conv_general_dilated=...)``.

  Args:
    impl: ``'auto'``, ``'xla'`` or ``'cpu_matmul'``.

      * ``'xla'``: ``lax.conv_general_dilated`` itself.
      * ``'cpu_matmul'``: the custom path on every backend: forward is XLA's
        convolution (im2col + matmul for inputs smaller than the kernel,
        after space-to-depth for strided convolutions over few channels),
        the backward pass the matmul formulation described in the module
        docstring. Meant for CPU and for tests.
      * ``'auto'``: the custom gradient where it helps (the CPU backend), XLA
        untouched elsewhere. The platform is decided in two places:

        1. At trace time, ``jax.default_backend()``: when it is not ``'cpu'``
           (a TPU/GPU host) the call is exactly ``lax.conv_general_dilated``,
           so TPU/GPU programs are unchanged (same HLO, forward-mode AD
           works).
        2. On a CPU host the custom VJP is used, and inside its backward pass
           (and its forward pass, for inputs smaller than the kernel)
           ``lax.platform_dependent`` picks the matmul code for CPU and XLA's
           own convolution and gradient for any other platform. That choice is made
           when the program is lowered for its actual target, so a function
           traced on a CPU host but lowered/exported for TPU or GPU (AOT,
           ``jax.export``, multi-platform lowering) still gets XLA's native
           gradient there. A trace-time check alone could not guarantee
           that; ``platform_dependent`` alone would wrap TPU/GPU convolutions
           in a ``custom_vjp`` for no benefit.
           The space-to-depth rewrite of strided few-channel convolutions is
           made at trace time, so such a program lowered for TPU/GPU runs
           the stem as the equivalent stride-1 convolution (with XLA's
           gradient there): same result, another kernel.

  Returns:
    A callable with the signature of ``lax.conv_general_dilated``.

  The environment variable ``ATTN_CONTRASTIVE_CONV_IMPL`` (``xla`` or
  ``cpu_matmul``), when set, replaces ``'auto'`` everywhere, e.g. to time the
  whole test suite or a run with XLA's own gradient without editing configs.

  Raises:
    ValueError: for an unknown ``impl``.
  """
  impl = resolve_impl(impl)
  if impl == "auto":
    return _conv_general_dilated_auto
  if impl == "xla":
    return lax.conv_general_dilated
  return conv_general_dilated_cpu_matmul


def resolve_impl(impl: str, what: str = "conv") -> str:
  """``impl`` checked, with ``'auto'`` replaced by ``ATTN_CONTRASTIVE_CONV_IMPL`` if set.

  Shared by the convolution and max-pooling switches (``ops.pool``).
  """
  if impl == "auto":
    impl = os.environ.get("ATTN_CONTRASTIVE_CONV_IMPL", "auto") or "auto"
    if impl not in IMPLS:
      raise ValueError(f"ATTN_CONTRASTIVE_CONV_IMPL={impl!r}: choose one of {IMPLS}")
  if impl not in IMPLS:
    raise ValueError(
        f"Unknown {what} impl {impl!r}; valid values are {', '.join(map(repr, IMPLS))}.")
  if impl == "auto" and jax.process_count() > 1:
    # A batch split over processes: the custom gradients' tile loops then
    # hold cross-process collectives, which XLA:CPU's gloo runs in an order
    # that can differ between processes (seen: a 2-process SimCLR step
    # aborted with gloo's "Received data size doesn't match expected size";
    # with XLA's own gradient the same run matches one process). Multi-process
    # runs are pods and clusters, where 'auto' means XLA's convolution anyway.
    impl = "xla"
  return impl
