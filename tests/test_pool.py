"""The CPU max-pool gradient equals XLA's and the first-maximum rule."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_contrastive.ops import pool


def _vjp(fn, x, g):
  y, back = jax.vjp(fn, x)
  return y, back(g)[0]


def _reference_grad(x, g, window, stride, pads):
  """Loops: each output's gradient goes to its window's first maximum."""
  n, h, w, c = x.shape
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
  dxp = np.zeros_like(xp)
  for b, p, q, ch in itertools.product(range(n), range(g.shape[1]), range(g.shape[2]), range(c)):
    win = xp[b, p * stride:p * stride + window, q * stride:q * stride + window, ch]
    i, j = np.unravel_index(np.argmax(win), win.shape)  # argmax: first in row-major order
    dxp[b, p * stride + i, q * stride + j, ch] += g[b, p, q, ch]
  return dxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w]


CASES = [
    # h, w, window, stride, pads
    (8, 8, 3, 2, ((1, 1), (1, 1))),    # the ResNet stem's pool
    (9, 7, 3, 2, ((1, 1), (1, 1))),    # odd sizes
    (8, 10, 2, 2, ((0, 0), (0, 0))),
    (7, 9, 3, 1, ((1, 1), (1, 1))),
    (11, 11, 3, 3, ((0, 0), (0, 0))),  # unused trailing rows
    (10, 9, 2, 3, ((0, 1), (1, 0))),   # stride beyond the window, uneven pads
]


@pytest.mark.parametrize("h, w, window, stride, pads", CASES)
def test_gradient_equals_xla_and_reference(h, w, window, stride, pads):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
  want_y = nn.max_pool(jnp.asarray(x), (window,) * 2, (stride,) * 2, padding=pads)
  g = rng.standard_normal(want_y.shape).astype(np.float32)
  y, dx = jax.jit(lambda x, g: _vjp(
      lambda x: pool.max_pool(x, window, stride, pads, "cpu_matmul"), x, g))(x, g)
  _, want_dx = _vjp(lambda x: nn.max_pool(x, (window,) * 2, (stride,) * 2, padding=pads),
                    jnp.asarray(x), jnp.asarray(g))
  np.testing.assert_array_equal(y, want_y)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dx, _reference_grad(x, g, window, stride, pads),
                             rtol=1e-6, atol=1e-6)
  assert np.count_nonzero(dx) > 0


def test_ties_go_to_the_first_maximum():
  """After a ReLU most windows tie at 0: one input of each gets the gradient."""
  rng = np.random.default_rng(1)
  x = np.maximum(rng.standard_normal((2, 9, 9, 2)), 0).astype(np.float32)
  x[0, :4, :4] = 0.0
  pads = ((1, 1), (1, 1))
  g = rng.standard_normal((2, 5, 5, 2)).astype(np.float32)
  _, dx = _vjp(lambda x: pool.max_pool(x, 3, 2, pads, "cpu_matmul"), jnp.asarray(x), g)
  np.testing.assert_allclose(dx, _reference_grad(x, g, 3, 2, pads), rtol=1e-6, atol=1e-6)
  # Gradient mass is conserved: every output sends its gradient to one input.
  np.testing.assert_allclose(np.sum(dx), np.sum(g), rtol=1e-5)


def test_auto_on_cpu_is_the_custom_gradient_and_xla_is_flax():
  x = jnp.ones((1, 4, 4, 1))
  jaxpr = str(jax.make_jaxpr(lambda x: pool.max_pool(x, 3, 2, ((1, 1), (1, 1))))(x))
  assert "custom_vjp" in jaxpr
  jaxpr = str(jax.make_jaxpr(lambda x: pool.max_pool(x, 3, 2, ((1, 1), (1, 1)), "xla"))(x))
  assert "custom_vjp" not in jaxpr and "reduce_window_max" in jaxpr
  with pytest.raises(ValueError, match="pooling impl"):
    pool.max_pool(x, 3, 2, ((1, 1), (1, 1)), "fast")
