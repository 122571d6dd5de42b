"""The matmul-based convolution gradient equals XLA's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from attn_contrastive.ops import conv as conv_mod
from attn_contrastive.ops.conv import conv_general_dilated_fn

DN = ("NHWC", "HWIO", "NHWC")


def _inputs(n, h, w, c, o, kh, kw=None, dtype=jnp.float32, seed=0):
  kw = kh if kw is None else kw
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, h, w, c)), dtype)
  k = jnp.asarray(rng.standard_normal((kh, kw, c, o)), dtype)
  return x, k


def _grads(conv, x, k, strides, padding, **kw):
  """(output, dx, dk) for a non-linear loss so the cotangent is not constant."""

  def loss(x, k):
    y = conv(x, k, strides, padding, dimension_numbers=DN, **kw)
    return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

  (_, y), (dx, dk) = jax.jit(
      jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, k)
  return y, dx, dk


def _assert_close(got, want, rtol=1e-5):
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  assert got.shape == want.shape
  scale = max(np.abs(want).max(), 1e-30)
  err = np.abs(got - want).max() / scale
  assert err <= rtol, f"max error {err:.3g} relative to magnitude {scale:.3g}"


CASES = [
    # n, h, w, c, o, kernel, stride, padding
    (1, 7, 9, 3, 5, 3, 1, "SAME"),
    (2, 7, 9, 3, 5, 3, 2, "SAME"),
    (2, 11, 13, 3, 5, 3, 1, "VALID"),
    (3, 11, 13, 4, 5, 3, 2, "VALID"),
    (1, 11, 13, 3, 5, 7, 2, "SAME"),
    (2, 11, 13, 3, 8, 7, 2, "VALID"),
    (2, 11, 13, 3, 5, 7, 1, "SAME"),
    (2, 7, 9, 3, 5, 1, 1, "SAME"),
    (1, 7, 9, 3, 5, 1, 2, "SAME"),
    (2, 11, 13, 6, 4, 1, 2, "VALID"),
    (2, 12, 12, 8, 8, 3, 2, "SAME"),
    (2, 11, 13, 3, 5, 3, 2, ((2, 0), (0, 3))),
    (2, 11, 13, 3, 5, 7, 2, ((3, 3), (3, 3))),
    (2, 11, 13, 3, 5, 1, 3, ((1, -1), (-2, 3))),
    (2, 9, 7, 3, 5, 3, 3, "SAME"),
    # Inputs smaller than the kernel (im2col forward, col2im input gradient).
    (2, 2, 2, 8, 8, 3, 1, ((1, 1), (1, 1))),
    (3, 1, 1, 4, 4, 3, 1, "SAME"),
    (2, 3, 4, 5, 6, 5, 1, "SAME"),
    (2, 2, 5, 3, 4, 7, 2, "SAME"),
    (2, 4, 6, 3, 5, 5, 2, ((2, 2), (2, 2))),
    # Strided with more channels (never space-to-depth): col2im dx.
    (2, 9, 11, 6, 5, 3, 2, "VALID"),
    (2, 10, 9, 5, 4, 7, 2, "SAME"),
    (1, 9, 9, 8, 4, 3, 3, ((1, 2), (0, 1))),
]


@pytest.mark.parametrize(
    "case,impl",
    [(c, "cpu_matmul") for c in CASES]
    + [(CASES[i], "auto") for i in (1, 4, 8, 15)], ids=str)
def test_grads_match_xla(monkeypatch, case, impl):
  """Every path but space-to-depth (tested below), so forward is XLA's own."""
  monkeypatch.setattr(conv_mod, "_S2D_MAX_CHANNELS", 0)
  n, h, w, c, o, k, s, padding = case
  x, kern = _inputs(n, h, w, c, o, k)
  y0, dx0, dk0 = _grads(lax.conv_general_dilated, x, kern, (s, s), padding)
  y1, dx1, dk1 = _grads(conv_general_dilated_fn(impl), x, kern, (s, s),
                        padding)
  if conv_mod._small_input(x.shape, kern.shape):
    _assert_close(y1, y0)  # im2col forward: other summation order
  else:
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))
  _assert_close(dx1, dx0)
  _assert_close(dk1, dk0)


@pytest.mark.parametrize("case", [CASES[i] for i in (1, 3, 4, 9, 11)],
                         ids=str)
def test_matmul_forward_and_col2im_on_all_shapes(monkeypatch, case):
  """The small-input paths (im2col forward, col2im dx), forced everywhere."""
  monkeypatch.setattr(conv_mod, "_small_input", lambda *_: True)
  monkeypatch.setattr(conv_mod, "_FWD_BLOCK_BYTES", 4000)  # several blocks
  n, h, w, c, o, k, s, padding = case
  x, kern = _inputs(n, h, w, c, o, k)
  y0, dx0, dk0 = _grads(lax.conv_general_dilated, x, kern, (s, s), padding)
  y1, dx1, dk1 = _grads(conv_general_dilated_fn("cpu_matmul"), x, kern,
                        (s, s), padding)
  _assert_close(y1, y0)
  _assert_close(dx1, dx0)
  _assert_close(dk1, dk0)


S2D_CASES = [
    # n, h, w, c, (kh, kw), (sh, sw), padding
    (2, 16, 16, 3, (7, 7), (2, 2), "SAME"),       # a ResNet stem
    (2, 11, 13, 3, (7, 7), (2, 2), "VALID"),
    (1, 13, 10, 4, (5, 3), (2, 2), ((3, 0), (1, 2))),
    (2, 9, 11, 1, (7, 5), (3, 3), "SAME"),
    (2, 12, 9, 2, (3, 7), (1, 2), "SAME"),
    (2, 5, 6, 3, (7, 7), (2, 2), "SAME"),         # smaller than the kernel
]


@pytest.mark.parametrize("case", S2D_CASES, ids=str)
def test_space_to_depth_matches_xla(case):
  """Strided convolutions over few channels run after space-to-depth."""
  n, h, w, c, (kh, kw), strides, padding = case
  x, kern = _inputs(n, h, w, c, 5, kh, kw)
  spec = conv_mod._custom_spec(x, kern, strides, padding, None, None, DN, 1, 1,
                               None, None, None, "matmul")
  assert conv_mod._use_space_to_depth(spec, kern.shape)
  y0, dx0, dk0 = _grads(lax.conv_general_dilated, x, kern, strides, padding)
  y1, dx1, dk1 = _grads(conv_general_dilated_fn("cpu_matmul"), x, kern,
                        strides, padding)
  _assert_close(y1, y0)
  _assert_close(dx1, dx0)
  _assert_close(dk1, dk0)


def test_space_to_depth_choice():
  spec = lambda s: conv_mod._ConvSpec((s, s), ((1, 1), (1, 1)), None, None,
                                      "matmul")
  use = conv_mod._use_space_to_depth
  assert use(spec(2), (7, 7, 3, 64)) and use(spec(2), (3, 3, 4, 8))
  assert not use(spec(1), (7, 7, 3, 64))     # stride 1: nothing to gain
  assert not use(spec(2), (3, 3, 16, 32))    # 64 channels after the cut
  assert not use(spec(2), (1, 1, 3, 8))      # 1x1: a subsample already
  assert not use(spec(2), (2, 2, 3, 8))      # kernel no wider than stride


def test_strided_input_gradient_has_no_dilated_convolution():
  """XLA's transposed strided convolution (slow on CPU) is not used."""
  x, kern = _inputs(2, 8, 8, 8, 8, 3)
  conv = conv_general_dilated_fn("cpu_matmul")
  dx = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(conv(
      x, kern, (2, 2), "SAME", dimension_numbers=DN)))))
  hlo = dx.lower(x).as_text()
  assert hlo.count("stablehlo.convolution") == 1         # the forward pass
  assert "lhs_dilate = [2, 2]" not in hlo
  want = jax.grad(lambda x: jnp.sum(jnp.sin(lax.conv_general_dilated(
      x, kern, (2, 2), "SAME", dimension_numbers=DN))))(x)
  _assert_close(dx(x), want)


def test_non_square_kernel_and_strides():
  x, kern = _inputs(2, 11, 13, 3, 5, 3, 5)
  y0, dx0, dk0 = _grads(lax.conv_general_dilated, x, kern, (2, 1), "SAME")
  y1, dx1, dk1 = _grads(conv_general_dilated_fn("cpu_matmul"), x, kern,
                        (2, 1), "SAME")
  _assert_close(y1, y0)  # space-to-depth: another summation order
  _assert_close(dx1, dx0)
  _assert_close(dk1, dk0)


@pytest.mark.parametrize("k,s,tile_bytes,mode,devices", [
    (3, 1, 1, "flat", 1), (3, 2, 3000, "flat", 1), (3, 1, 20000, "two_stage", 1),
    (7, 2, 1, "two_stage", 1), (7, 2, 3000, "flat", 1),
    (7, 2, 20000, "two_stage", 1), (3, 1, 3000, "flat", 2),
])
def test_tiling_paths(monkeypatch, tile_bytes, k, s, mode, devices):
  """Row bands, multi-step scans and batch padding give the same gradient."""
  monkeypatch.setattr(conv_mod, "_TILE_BYTES", tile_bytes)
  monkeypatch.setattr(conv_mod, "_MIN_TILE_ROWS", 1)
  monkeypatch.setattr(conv_mod, "_PATCH_MODE", mode)
  monkeypatch.setattr(conv_mod, "_device_count", lambda: devices)
  monkeypatch.setattr(conv_mod, "_S2D_MAX_CHANNELS", 0)  # strided patches
  x, kern = _inputs(6 if devices > 1 else 5, 13, 11, 3, 4, k)
  _, dx0, dk0 = _grads(lax.conv_general_dilated, x, kern, (s, s), "SAME")
  _, dx1, dk1 = _grads(conv_general_dilated_fn("cpu_matmul"), x, kern,
                       (s, s), "SAME")
  _assert_close(dx1, dx0)
  _assert_close(dk1, dk0)


def test_tiling_choice():
  rows, steps, per_step = conv_mod._tiling(64, 32, 32, 9 * 16, 4)
  assert rows == 32 and per_step > 1 and steps * per_step == 64
  rows, steps, per_step = conv_mod._tiling(2, 224, 224, 7 * 7 * 3, 4)
  assert rows < 224 and per_step == 1 and steps > 2
  # Data-parallel: whole images, a multiple of the device count per step.
  rows, steps, per_step = conv_mod._tiling(64, 32, 32, 9 * 64, 4, devices=8)
  assert rows == 32 and per_step % 8 == 0 and steps * per_step == 64
  rows, steps, per_step = conv_mod._tiling(2, 224, 224, 7 * 7 * 3, 4, 2)
  assert rows == 224 and steps * per_step == 2


def test_data_parallel_sharding_keeps_batch_local():
  """With the batch sharded over devices, no device gathers the batch."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  devices = jax.devices()
  mesh = Mesh(np.asarray(devices), ("data",))
  data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  x, kern = _inputs(2 * len(devices), 12, 12, 8, 8, 3)
  x, kern = jax.device_put(x, data), jax.device_put(kern, rep)

  def grad_fn(conv):
    def loss(k, x):
      return jnp.sum(jnp.sin(conv(x, k, (1, 1), "SAME", dimension_numbers=DN)))
    return jax.jit(jax.grad(loss), in_shardings=(rep, data),
                   out_shardings=rep)

  ours = grad_fn(conv_general_dilated_fn("cpu_matmul"))
  if len(devices) > 1:
    assert "all-gather" not in ours.lower(kern, x).compile().as_text()
  _assert_close(ours(kern, x), grad_fn(lax.conv_general_dilated)(kern, x))


def test_bf16_accumulates_in_fp32():
  x, kern = _inputs(2, 12, 12, 16, 8, 3, dtype=jnp.bfloat16)
  xf, kf = x.astype(jnp.float32), kern.astype(jnp.float32)
  _, dx0, dk0 = _grads(lax.conv_general_dilated, xf, kf, (1, 1), "SAME")
  y1, dx1, dk1 = _grads(conv_general_dilated_fn("cpu_matmul"), x, kern,
                        (1, 1), "SAME")
  assert y1.dtype == dx1.dtype == dk1.dtype == jnp.bfloat16
  _assert_close(dx1, dx0, rtol=3e-2)
  _assert_close(dk1, dk0, rtol=3e-2)


def test_preferred_element_type():
  x, kern = _inputs(2, 9, 9, 4, 6, 3, dtype=jnp.bfloat16)
  kw = dict(preferred_element_type=jnp.float32)
  y0, dx0, dk0 = _grads(lax.conv_general_dilated, x, kern, (2, 2), "SAME",
                        **kw)
  y1, dx1, dk1 = _grads(conv_general_dilated_fn("cpu_matmul"), x, kern,
                        (2, 2), "SAME", **kw)
  assert y1.dtype == jnp.float32
  assert dx1.dtype == dk1.dtype == jnp.bfloat16
  _assert_close(y1, y0)  # space-to-depth: another summation order
  _assert_close(dx1, dx0, rtol=3e-2)
  _assert_close(dk1, dk0, rtol=3e-2)


def test_jit_and_grad_of_small_function():
  conv = conv_general_dilated_fn("cpu_matmul")
  x, k1 = _inputs(2, 10, 10, 3, 6, 3)
  _, k2 = _inputs(2, 10, 10, 6, 4, 1, seed=1)

  def net(conv, params, x):
    k1, k2 = params
    h = jax.nn.relu(conv(x, k1, (2, 2), "SAME", dimension_numbers=DN))
    return jnp.mean(conv(h, k2, (1, 1), "VALID", dimension_numbers=DN) ** 2)

  ref = jax.jit(jax.grad(lambda p: net(lax.conv_general_dilated, p, x)))
  got = jax.jit(jax.grad(lambda p: net(conv, p, x)))
  for a, b in zip(got((k1, k2)), ref((k1, k2))):
    _assert_close(a, b)
  # Also without jit around the gradient.
  for a, b in zip(jax.grad(lambda p: net(conv, p, x))((k1, k2)),
                  ref((k1, k2))):
    _assert_close(a, b)


@pytest.mark.parametrize(
    "features,kernel,strides,padding",
    [(5, (3, 3), 1, "SAME"), (4, (7, 7), 2, 3), (6, (1, 1), 2, "VALID")])
def test_flax_conv_equivalent(features, kernel, strides, padding):
  x, _ = _inputs(2, 11, 13, 3, 1, 1)
  kwargs = dict(features=features, kernel_size=kernel, strides=strides,
                padding=padding)
  ref_mod = nn.Conv(**kwargs)
  mod = nn.Conv(**kwargs,
                conv_general_dilated=conv_general_dilated_fn("cpu_matmul"))
  params = ref_mod.init(jax.random.key(0), x)

  def loss(mod, params):
    y = mod.apply(params, x)
    return jnp.sum(jnp.tanh(y) * jnp.arange(y.size).reshape(y.shape) / y.size)

  _assert_close(mod.apply(params, x), ref_mod.apply(params, x))
  g_ref = jax.jit(jax.grad(lambda p: loss(ref_mod, p)))(params)
  g = jax.jit(jax.grad(lambda p: loss(mod, p)))(params)
  jax.tree.map(_assert_close, g, g_ref)


@pytest.mark.parametrize("kwargs", [
    dict(feature_group_count=3),
    dict(rhs_dilation=(2, 2)),
    dict(lhs_dilation=(2, 1), padding=((1, 1), (1, 1))),
])
def test_unsupported_configurations_fall_back_to_xla(kwargs):
  c = 3 if "feature_group_count" not in kwargs else 6
  x, kern = _inputs(2, 9, 9, c, 6, 3)
  if "feature_group_count" in kwargs:
    kern = kern[:, :, :2]
  kwargs = dict(kwargs)
  padding = kwargs.pop("padding", "SAME")
  y0, dx0, dk0 = _grads(lax.conv_general_dilated, x, kern, (1, 1), padding,
                        **kwargs)
  y1, dx1, dk1 = _grads(conv_general_dilated_fn("cpu_matmul"), x, kern,
                        (1, 1), padding, **kwargs)
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))
  np.testing.assert_array_equal(np.asarray(dx1), np.asarray(dx0))
  np.testing.assert_array_equal(np.asarray(dk1), np.asarray(dk0))


def test_nchw_falls_back_to_xla():
  x = jnp.ones((2, 3, 8, 8))
  k = jnp.ones((4, 3, 3, 3))
  got = conv_general_dilated_fn("cpu_matmul")(x, k, (1, 1), "SAME")
  np.testing.assert_array_equal(
      np.asarray(got), np.asarray(lax.conv_general_dilated(x, k, (1, 1),
                                                           "SAME")))


@pytest.mark.parametrize("size", [8, 2])
def test_auto_lowered_for_other_platforms_keeps_xla_gradient(size):
  """'auto' traced on CPU, lowered for TPU: no matmul in the HLO."""
  conv = conv_general_dilated_fn("auto")
  x, kern = _inputs(2, size, size, 4, 4, 3)

  def grad_fn(x, k):
    return jax.grad(lambda k: jnp.sum(
        conv(x, k, (1, 1), "SAME", dimension_numbers=DN) ** 2))(k)

  traced = jax.jit(grad_fn).trace(x, kern)
  cpu_hlo = traced.lower(lowering_platforms=("cpu",)).as_text()
  tpu_hlo = traced.lower(lowering_platforms=("tpu",)).as_text()
  assert "dot_general" in cpu_hlo
  assert "dot_general" not in tpu_hlo
  assert tpu_hlo.count("convolution") >= 2


def test_xla_impl_is_lax():
  assert conv_general_dilated_fn("xla") is lax.conv_general_dilated


def test_unknown_impl():
  with pytest.raises(ValueError, match="auto.*xla.*cpu_matmul"):
    conv_general_dilated_fn("cudnn")
