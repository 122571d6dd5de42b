"""The C++ weight-gradient kernel equals XLA's gradient, and is optional."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from attn_contrastive.ops import conv as conv_mod
from attn_contrastive.ops import native
from attn_contrastive.ops.conv import conv_general_dilated_fn
from helpers import zip_leaves

DN = ("NHWC", "HWIO", "NHWC")
pytestmark = pytest.mark.skipif(
    native.unavailable_reason() is not None,
    reason=f"kernel cannot be built here: {native.unavailable_reason()}")


def _rand(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  return np.abs(got - want).max() / np.abs(want).max()


@pytest.mark.parametrize("n,h,w,c,o,kh,kw,sh,sw,threads", [
    (3, 7, 9, 4, 16, 3, 3, 1, 1, 1),
    (5, 7, 9, 4, 16, 3, 3, 1, 1, 2),      # uneven split of images
    (5, 11, 13, 8, 32, 3, 3, 2, 2, 3),
    (2, 9, 8, 4, 16, 5, 3, 2, 1, 2),
    (1, 6, 6, 12, 16, 4, 4, 1, 1, 4),     # more threads than images
    (4, 5, 5, 4, 16, 1, 1, 1, 1, 2),
    (2, 40, 3, 4, 16, 3, 3, 1, 1, 2),     # several pixel blocks per image
])
def test_kernel_equals_xla_weight_gradient(n, h, w, c, o, kh, kw, sh, sw, threads):
  assert native.load()
  x, g_seed = _rand((n, h, w, c), 0), 1
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  g = _rand((n, ho, wo, o), g_seed)
  conv = lambda k: lax.conv_general_dilated(x, k, (sh, sw), "VALID", dimension_numbers=DN)
  _, vjp = jax.vjp(conv, jnp.zeros((kh, kw, c, o)))
  (want,) = vjp(g)
  got = jax.jit(lambda x, g: native.weight_grad(x, g, (kh, kw), (sh, sw), threads))(x, g)
  # Each gradient entry sums K = n·ho·wo products; the kernel and XLA sum them in
  # orders that depend on the host's vector width: about sqrt(K)·eps of the
  # largest entry apart, bounded here with a factor of 8.
  k = n * ho * wo
  assert _rel_err(got, want) < 8 * np.sqrt(k) * np.finfo(np.float32).eps


def _grads(conv, x, k, strides, padding):
  def loss(k):
    return jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=DN)))
  return jax.jit(jax.grad(loss))


@pytest.mark.parametrize("shape,strides,padding", [
    ((2, 16, 16, 3, 7, 7, 16), (2, 2), "SAME"),   # stem: space-to-depth, C=12
    ((3, 9, 11, 16, 3, 3, 16), (1, 1), "SAME"),
    ((2, 12, 10, 16, 3, 3, 32), (2, 2), ((1, 0), (2, 1))),
])
def test_conv_uses_kernel_on_one_device(monkeypatch, shape, strides, padding):
  monkeypatch.setattr(conv_mod, "_device_count", lambda: 1)
  n, h, w, c, kh, kw, o = shape
  x, k = _rand((n, h, w, c), 0), _rand((kh, kw, c, o), 1)
  ours = _grads(conv_general_dilated_fn("cpu_matmul"), x, k, strides, padding)
  assert native.TARGET in ours.lower(k).as_text()
  assert _rel_err(ours(k), _grads(lax.conv_general_dilated, x, k, strides, padding)(k)) < 1e-5


@pytest.mark.parametrize("c,o,devices,dtype", [
    (6, 16, 1, jnp.float32),    # C not a multiple of 4
    (16, 8, 1, jnp.float32),    # O not a multiple of 16
    (16, 16, 8, jnp.float32),   # batch split over devices
    (16, 16, 1, jnp.bfloat16),
    (64, 128, 1, jnp.float32),  # many channels: im2col is as fast
])
def test_other_layers_keep_the_jax_gradient(monkeypatch, c, o, devices, dtype):
  monkeypatch.setattr(conv_mod, "_device_count", lambda: devices)
  x, k = _rand((2, 6, 6, c), 0).astype(dtype), _rand((3, 3, c, o), 1).astype(dtype)
  hlo = _grads(conv_general_dilated_fn("cpu_matmul"), x, k, (1, 1), "SAME").lower(k).as_text()
  assert native.TARGET not in hlo


class _Stem(nn.Module):
  """A ResNet stem and one block's convolution, BatchNorm in training mode."""

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=False, conv_general_dilated=conv_general_dilated_fn("cpu_matmul"))
    x = nn.Conv(16, (7, 7), (2, 2), padding=3, **kw)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=False)(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    x = nn.relu(nn.Conv(16, (3, 3), **kw)(x))
    return nn.Dense(4)(jnp.mean(x, axis=(1, 2)))


def test_train_steps_equal_with_and_without_kernel(monkeypatch):
  """SGD steps of a small ResNet stem: parameters agree with the kernel off."""
  monkeypatch.setattr(conv_mod, "_device_count", lambda: 1)
  x, y = _rand((8, 32, 32, 3), 0), jnp.arange(8) % 4
  model, tx = _Stem(), optax.sgd(0.1, momentum=0.9)
  variables = model.init(jax.random.key(0), x)

  def train(max_co):
    monkeypatch.setattr(conv_mod, "_NATIVE_MAX_CO", max_co)

    def step(state, _):
      params, stats, opt = state
      def loss(p):
        logits, upd = model.apply({"params": p, "batch_stats": stats}, x,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
      (_, upd), grads = jax.value_and_grad(loss, has_aux=True)(params)
      updates, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), upd["batch_stats"], opt), None

    fn = jax.jit(lambda s: lax.scan(step, s, None, length=3)[0])
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    assert (native.TARGET in fn.lower(state).as_text()) == (max_co > 0)
    return fn(state)[0]

  with_kernel, without = train(conv_mod._NATIVE_MAX_CO), train(0)
  for a, b in zip_leaves(with_kernel, without):
    assert _rel_err(a, b) < 1e-4


def _run(code, **env):
  env = {**os.environ, "ATTN_CONTRASTIVE_HOST_DEFAULTS": "0", **env}
  return subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                        capture_output=True, text=True, timeout=300, check=False)


_CHECK = """
import jax, jax.numpy as jnp
from jax import lax
from attn_contrastive.ops import native
from attn_contrastive.ops.conv import conv_general_dilated_fn
x = jnp.ones((2, 8, 8, 16)); k = jnp.ones((3, 3, 16, 16)) / 9
f = lambda conv: jax.grad(lambda k: jnp.sum(jnp.sin(conv(
    x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))))(k)
err = float(jnp.abs(f(conv_general_dilated_fn('cpu_matmul')) - f(lax.conv_general_dilated)).max())
print('LOADED', native.load(), 'ERR', err)
"""


def test_failed_build_warns_and_keeps_the_jax_gradient(tmp_path):
  done = _run(_CHECK, CXX="false", ATTN_CONTRASTIVE_CACHE=str(tmp_path),
              XLA_FLAGS="")
  assert done.returncode == 0, done.stderr
  assert "LOADED False" in done.stdout
  assert float(done.stdout.split("ERR")[1]) < 1e-3
  assert "weight-gradient kernel is not used (build or load failed" in done.stderr


def test_disabled_by_environment_is_silent(tmp_path):
  done = _run(_CHECK, ATTN_CONTRASTIVE_NATIVE="0", ATTN_CONTRASTIVE_CACHE=str(tmp_path),
              XLA_FLAGS="")
  assert done.returncode == 0, done.stderr
  assert "LOADED False" in done.stdout and "kernel is not used" not in done.stderr
  assert not any(tmp_path.iterdir())


def test_auto_traced_on_cpu_lowered_for_tpu_has_no_kernel(monkeypatch):
  monkeypatch.setattr(conv_mod, "_device_count", lambda: 1)
  conv = conv_general_dilated_fn("auto")
  x, k = _rand((2, 8, 8, 16), 0), _rand((3, 3, 16, 16), 1)
  traced = _grads(conv, x, k, (1, 1), "SAME").trace(k)
  assert native.TARGET in traced.lower(lowering_platforms=("cpu",)).as_text()
  assert native.TARGET not in traced.lower(lowering_platforms=("tpu",)).as_text()


def test_per_example_gradients_under_vmap(monkeypatch):
  monkeypatch.setattr(conv_mod, "_device_count", lambda: 1)
  conv = conv_general_dilated_fn("cpu_matmul")
  x, k = _rand((3, 6, 6, 4), 0), _rand((3, 3, 4, 16), 1)

  def per_example(conv):
    def loss(k, xi):
      return jnp.sum(jnp.sin(conv(xi[None], k, (1, 1), "SAME", dimension_numbers=DN)))
    return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))

  got = per_example(conv)
  assert native.TARGET in got.lower(k, x).as_text()
  assert _rel_err(got(k, x), per_example(lax.conv_general_dilated)(k, x)) < 1e-5
