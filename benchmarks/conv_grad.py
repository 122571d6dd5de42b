"""Convolution forward / input-gradient / weight-gradient timings: XLA vs ours.

Compares, on ResNet-typical NHWC/HWIO shapes at small sizes, XLA's own
convolution and its autodiff gradients against the matmul-based backward
pass of ``attn_contrastive.ops.conv`` (impl ``'cpu_matmul'``):

* ``fwd``: the forward convolution (ours is XLA's forward, timed through
  our wrapper to show it adds nothing, except for inputs smaller than the
  kernel, where ours is im2col + matmul),
* ``dx``: gradient with respect to the input only,
* ``dw``: gradient with respect to the kernel only,
* ``step``: forward plus both gradients, as in a training step.

Each function is jitted, warmed up twice, then the implementations are timed
alternately (``--reps`` rounds, ``block_until_ready`` after each call) so
that load from other processes hits all of them alike; the median and the
minimum over rounds are reported in milliseconds. Results also carry the max
gradient difference relative to the gradient's magnitude.

Usage::

    python benchmarks/conv_grad.py [--reps 7] [--only stem,3x3s1_c64]

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attn_contrastive.ops.conv import conv_general_dilated_fn

DN = ("NHWC", "HWIO", "NHWC")

# name: (batch, height, width, in channels, out channels, kernel, stride)
SHAPES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "stem7x7s2_c3": (32, 64, 64, 3, 64, 7, 2),
    "3x3s1_c16_b256": (256, 32, 32, 16, 16, 3, 1),
    "3x3s1_c64": (32, 32, 32, 64, 64, 3, 1),
    "3x3s1_c128": (32, 16, 16, 128, 128, 3, 1),
    "3x3s1_c512": (32, 4, 4, 512, 512, 3, 1),
    "3x3s2_c64": (32, 32, 32, 64, 128, 3, 2),
    "1x1s1_c128": (32, 16, 16, 128, 128, 1, 1),
    "1x1s2_c64": (32, 32, 32, 64, 128, 1, 2),
    # Input smaller than the kernel: conv5 of a ResNet on 64-px images.
    "3x3s1_c512_2x2": (32, 2, 2, 512, 512, 3, 1),
}


def _time_alternating(fns: dict[str, Callable], args: tuple, reps: int
                      ) -> dict[str, dict[str, float]]:
  for f in fns.values():
    jax.block_until_ready(f(*args))
    jax.block_until_ready(f(*args))
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(reps):
    for name, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[name].append((time.perf_counter() - t0) * 1e3)
  return {k: {"median_ms": round(statistics.median(v), 2),
              "min_ms": round(min(v), 2)} for k, v in times.items()}


def _functions(conv: Callable, stride: int) -> dict[str, Callable]:
  def fwd(x, w, g):
    return conv(x, w, (stride, stride), "SAME", dimension_numbers=DN)

  def dx(x, w, g):
    return jax.vjp(lambda x: fwd(x, w, g), x)[1](g)[0]

  def dw(x, w, g):
    return jax.vjp(lambda w: fwd(x, w, g), w)[1](g)[0]

  def step(x, w, g):
    return jax.grad(lambda x, w: jnp.vdot(fwd(x, w, g), g), (0, 1))(x, w)

  return {"fwd": jax.jit(fwd), "dx": jax.jit(dx), "dw": jax.jit(dw),
          "step": jax.jit(step)}


def _rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def bench_shape(shape, reps: int) -> dict:
  n, h, w, c, o, k, s = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
  kern = jnp.asarray(rng.standard_normal((k, k, c, o)) / np.sqrt(k * k * c),
                     jnp.float32)
  ho, wo = -(-h // s), -(-w // s)
  g = jnp.asarray(rng.standard_normal((n, ho, wo, o)), jnp.float32)
  impls = {"xla": _functions(lax.conv_general_dilated, s),
           "ours": _functions(conv_general_dilated_fn("cpu_matmul"), s)}
  result = {"shape": dict(n=n, h=h, w=w, c_in=c, c_out=o, kernel=k, stride=s)}
  for part in ("fwd", "dx", "dw", "step"):
    fns = {name: impls[name][part] for name in impls}
    result[part] = _time_alternating(fns, (x, kern, g), reps)
  args = (x, kern, g)
  result["rel_err"] = {
      "dx": _rel_err(impls["ours"]["dx"](*args), impls["xla"]["dx"](*args)),
      "dw": _rel_err(impls["ours"]["dw"](*args), impls["xla"]["dw"](*args)),
  }
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--only", default="",
                      help="comma-separated substrings of shape names")
  args = parser.parse_args()
  names = [s for s in SHAPES
           if not args.only or any(t in s for t in args.only.split(","))]
  machine = {
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "cpu": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "load_avg_1m": os.getloadavg()[0],
      "jax": jax.__version__,
  }
  print(f"machine: {machine}")
  results = {}
  for name in names:
    r = bench_shape(SHAPES[name], args.reps)
    results[name] = r
    cols = []
    for part in ("fwd", "dx", "dw", "step"):
      xm, om = r[part]["xla"]["median_ms"], r[part]["ours"]["median_ms"]
      cols.append(f"{part} xla {xm:7.1f} ours {om:7.1f} ({xm / om:4.1f}x)")
    print(f"{name:16s} " + " | ".join(cols)
          + f" | err dx {r['rel_err']['dx']:.1e} dw {r['rel_err']['dw']:.1e}",
          flush=True)
  machine["load_avg_1m_end"] = os.getloadavg()[0]
  print(json.dumps({"machine": machine, "reps": args.reps,
                    "results": results}))


if __name__ == "__main__":
  main()
