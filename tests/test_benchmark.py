"""The benchmark's FLOP count (the numerator of MFU) against hand counts."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import train_step  # noqa: E402


def _conv(x, w, stride):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_forward_flops_match_hand_count():
  x, w, d = jnp.ones((4, 16, 16, 3)), jnp.ones((3, 3, 3, 8)), jnp.ones((8 * 16 * 16, 10))
  f = lambda x, w, d: jnp.sum(_conv(x, w, 1).reshape(4, -1) @ d)
  expected = 2 * 4 * 16 * 16 * 8 * (3 * 3 * 3) + 2 * 4 * (8 * 16 * 16) * 10
  assert train_step.jaxpr_flops(jax.make_jaxpr(f)(x, w, d).jaxpr) == expected


def test_gradient_of_strided_conv_counts_three_passes():
  """Forward, input gradient and weight gradient each cost one forward, even with
  stride 2 (the input gradient's dilation holes are not work)."""
  x, w = jnp.ones((2, 16, 16, 4)), jnp.ones((3, 3, 4, 8))
  f = lambda x, w: jnp.sum(_conv(x, w, 2))
  forward = 2 * 2 * 8 * 8 * 8 * (3 * 3 * 4)
  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, w).jaxpr
  assert train_step.jaxpr_flops(jaxpr) == 3 * forward


def test_scan_body_counted_per_iteration():
  a = jnp.ones((5, 7))
  f = lambda a: jax.lax.scan(lambda c, _: (c @ jnp.ones((7, 7)), None), a, None, length=6)[0]
  assert train_step.jaxpr_flops(jax.make_jaxpr(f)(a).jaxpr) == 6 * 2 * 5 * 7 * 7
  np.testing.assert_array_equal(f(a), a * 7.0 ** 6)
