r"""Times the training step of any config on synthetic tensors already on device.

  python benchmarks/train_step.py --config=configs/contrastive.py \
      --config.model.depth=50 --steps=10 --warmup=3

Takes the same ``--config`` flags and overrides as ``attn_contrastive.main``.
The batch is random uint8 images built once and placed on the devices, so
the figure is the step alone (no input pipeline). The last line printed is
one JSON object: ``images_per_s``, ``views_per_s`` (2× images for
contrastive tasks), ``step_ms``, ``devices``, the step's FLOPs and, with
``--peak_tflops``, the model FLOPs utilisation. ``--compare_attention`` times
the step without and with attention heads in one process and reports the ratio.
``--compare_probe=R`` times the SimCLR step without and with the online
linear probe (``train.online_probe``) alternately for R rounds in one
process and reports the median ratio and every round's. With
``--config.aug.views_on=device`` the batch carries each view's drawn colour
parameters and the step applies the colour ops, so its time against the
default's is their share of the step.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.extend  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from attn_contrastive import main as main_lib  # noqa: E402
from attn_contrastive.models.build import build_model  # noqa: E402
from attn_contrastive.tasks import pretrain, supervised  # noqa: E402
from attn_contrastive.train import mesh as mesh_lib, optim, step as step_lib  # noqa: E402
from attn_contrastive.train.state import count_params, create_train_state  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation included).")
_COMPARE = flags.DEFINE_bool(
    "compare_attention", False,
    "Time the config with attention heads off, then on; the last "
    "line adds plain_step_ms and attention_step_ratio.")
_PROBE_ROUNDS = flags.DEFINE_integer(
    "compare_probe", 0,
    "If > 0, rounds of timing the step without and with the online probe, alternately "
    "(--steps each); the last line adds plain_step_ms and probe_step_ratio.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak FLOP/s per device, in TFLOP/s, for MFU.")


def build(config):
  """(model, loss_fn, views per image) for the config's task."""
  if config.task == "pretrain":
    model = build_model(config)
    return model, pretrain.make_loss_fn(model, config), 2
  if config.task == "supervised":
    model = build_model(config)
    return model, supervised.make_loss_fn(model, config), 1
  raise ValueError(f"no benchmark for task {config.task!r}")


def colour_params(config, n: int, rng: np.random.Generator) -> np.ndarray:
  """``n`` views' colour parameters drawn as the pipeline draws them (``aug.views_on =
  "device"``), ``[n, 13]``."""
  from attn_contrastive.data import augment
  tiny = np.zeros((8, 8, 3), np.uint8)
  a = config.aug
  return np.stack([augment.simclr_geometry(
      rng, tiny, out_size=8, strength=a.strength, p_jitter=a.p_jitter, p_gray=a.p_gray,
      p_blur=a.p_blur, area_range=(a.area_min, 1.0), jitter_impl=a.jitter_impl)[2]
      for _ in range(n)])


def make_batch(config) -> dict[str, np.ndarray]:
  """A random host batch with every key the task's loss reads."""
  b, s = config.input.global_batch_size, config.data.image_size
  rng = np.random.default_rng(0)
  images = lambda: rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
  attn = config.get("attention")
  m = attn.map_size if attn is not None and attn.enabled else 0
  if config.task == "pretrain":
    # Labels ride with every batch, as the pipeline sends them (the online probe's).
    batch = {"view1": images(), "view2": images(),
             "label": rng.integers(0, max(config.data.num_classes, 1), (b,), dtype=np.int32)}
    if config.aug.get("views_on", "host") == "device":  # the colour ops run in the step
      batch.update(colour1=colour_params(config, b, rng), colour2=colour_params(config, b, rng))
    if m and attn.labels == "human":  # co-train: one human-attention image per example
      batch.update(human_image=images(), human_map=rng.random((b, m, m), dtype=np.float32))
    elif m:  # teacher maps ride with each view
      batch.update(map1=rng.random((b, m, m), dtype=np.float32),
                   map2=rng.random((b, m, m), dtype=np.float32))
    return batch
  batch = {"image": images(),
           "label": rng.integers(0, config.data.num_classes, (b,), dtype=np.int32)}
  if m:
    batch["map"] = rng.random((b, m, m), dtype=np.float32)
  return batch


def _conv_flops(eqn) -> int:
  out, rhs = eqn.outvars[0].aval, eqn.invars[1].aval
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, *spatial)
  per_output = np.prod([rhs.shape[d] for d in rhs_spec[1:]])
  # An input gradient of a strided convolution runs on an lhs-dilated input whose
  # inserted zeros are no work: count the real products only.
  holes = int(np.prod(eqn.params["lhs_dilation"]))
  return 2 * int(np.prod(out.shape)) * int(per_output) // (eqn.params["batch_group_count"] * holes)


def _dot_flops(eqn) -> int:
  (contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval
  k = int(np.prod([lhs.shape[d] for d in contract]))
  return 2 * int(np.prod(eqn.outvars[0].aval.shape)) * k


def jaxpr_flops(jaxpr) -> int:
  """Multiply-add FLOPs (2 per MAC) of every convolution and matmul in a jaxpr.

  Model FLOPs in the MFU sense, counted from the program itself rather than
  from a backend's cost model: XLA's GPU analysis counts cuDNN convolutions as
  zero, and its CPU analysis would count the project's CPU convolution path.
  Sub-programs (jit, custom derivatives, remat, cond) are walked; a scan counts
  its body ``length`` times.
  """
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "dot_general":
      total += _dot_flops(eqn)
    counts = [jaxpr_flops(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)]
    if name == "cond" and counts:
      total += max(counts)
    else:
      total += sum(counts) * int(eqn.params.get("length", 1))
  return total


def step_flops(config, state, batch, rng, schedule) -> float:
  """The step's model FLOPs, traced with XLA's convolutions (``conv_impl='xla'``)."""
  cfg = config.copy_and_resolve_references()
  cfg.model.conv_impl = "xla"
  _, loss_fn, _ = build(cfg)
  step = step_lib.make_train_step(loss_fn, schedule)
  return float(jaxpr_flops(jax.make_jaxpr(step)(state, batch, rng).jaxpr))


def time_calls(fns: dict[str, Callable[[], Any]], steps: int,
               sync: Callable[[Any], Any] = lambda r: r) -> dict[str, float]:
  """Seconds per call of each function, after one untimed call.

  ``sync`` waits for a result (``jax.block_until_ready`` for asynchronous
  dispatch); the last result of each loop is waited for before the clock stops.
  """
  out = {}
  for name, fn in fns.items():
    sync(fn())
    r, t0 = None, time.perf_counter()
    for _ in range(steps):
      r = fn()
    sync(r)
    out[name] = (time.perf_counter() - t0) / max(steps, 1)
  return out


class StepRunner:
  """The config's compiled step on a fixed device batch; ``run(n)`` → s/step.

  Kept as an object so that another benchmark (``torch_reference.py``) can
  interleave its own steps with these in one process.
  """

  def __init__(self, config):
    self.config = config
    mesh = mesh_lib.make_mesh()
    model, loss_fn, self.views = build(config)
    schedule = optim.make_schedule(config.optim, config.input.global_batch_size, 10_000, 100)
    tx = optim.make_optimizer(config.optim, schedule)
    s = config.data.image_size
    self.state = create_train_state(model, tx, jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32),
                                    0, mesh_lib.replicated(mesh))
    self.batch = mesh_lib.to_global(make_batch(config), mesh)
    self.rng = jax.device_put(jax.random.PRNGKey(1), mesh_lib.replicated(mesh))
    step = step_lib.jit_train_step(step_lib.make_train_step(loss_fn, schedule), mesh)
    self.flops = step_flops(config, self.state, self.batch, self.rng, schedule)
    self.compiled = step.lower(self.state, self.batch, self.rng).compile()
    self.metrics = None
    self.loss_fn = loss_fn

  def time_parts(self, steps: int) -> dict[str, float]:
    """Seconds per call of the forward pass alone and of forward + backward."""
    loss = lambda p, s, b: self.loss_fn(p, s, b, self.rng)[0]
    args = (self.state.params, self.state.batch_stats, self.batch)
    parts = {"forward": jax.jit(loss), "forward_backward": jax.jit(jax.grad(loss))}
    return time_calls({name: functools.partial(fn, *args) for name, fn in parts.items()},
                      steps, jax.block_until_ready)

  def run(self, steps: int) -> float:
    """Runs ``steps`` steps; returns the mean wall time per step in seconds."""
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, self.metrics = self.compiled(self.state, self.batch, self.rng)
    jax.block_until_ready(self.metrics)
    return (time.perf_counter() - t0) / max(steps, 1)

  def report(self, dt: float, peak_tflops: float = 0.0) -> dict:
    """The JSON fields for a measured step time ``dt``."""
    c, b = self.config, self.config.input.global_batch_size
    out = {
        "task": c.task, "attention": bool(c.get("attention") and c.attention.enabled),
        "depth": c.model.depth, "width": c.model.width,
        "image_size": c.data.image_size, "global_batch": b, "dtype": c.model.dtype,
        "conv_impl": c.model.conv_impl, "backend": jax.default_backend(),
        "devices": jax.device_count(), "params": count_params(self.state.params),
        "step_ms": 1e3 * dt, "images_per_s": b / dt, "views_per_s": self.views * b / dt,
        "step_tflop": self.flops / 1e12, "loss": float(self.metrics["loss"]),
    }
    if peak_tflops > 0 and self.flops > 0:
      out["mfu"] = self.flops / dt / (peak_tflops * 1e12 * jax.device_count())
    return out


def benchmark(config, steps: int, warmup: int, peak_tflops: float = 0.0) -> dict:
  """Compiles, runs ``warmup`` steps, then times ``steps`` steps."""
  runner = StepRunner(config)
  runner.run(warmup)
  return runner.report(runner.run(steps), peak_tflops)


def compare_attention(config, steps: int, warmup: int, peak_tflops: float = 0.0) -> dict:
  """The attention-guided step against the same step without heads, one process."""
  plain, guided = config.copy_and_resolve_references(), config.copy_and_resolve_references()
  plain.attention.enabled, guided.attention.enabled = False, True
  base = benchmark(plain, steps, warmup, peak_tflops)
  print(json.dumps(base))
  out = benchmark(guided, steps, warmup, peak_tflops)
  out.update(plain_step_ms=base["step_ms"], attention_step_ratio=out["step_ms"] / base["step_ms"],
             attention_flop_ratio=out["step_tflop"] / max(base["step_tflop"], 1e-30))
  return out


def compare_probe(config, rounds: int, steps: int, warmup: int, peak_tflops: float = 0.0
                  ) -> dict:
  """The SimCLR step with the online probe against the same step without, alternating.

  Both steps are compiled in one process; each round times ``steps`` steps
  of each, in ABBA order (the first of a round alternates), so that drifts
  of a shared machine's speed fall on both alike.
  """
  runners = {}
  for name, on in (("plain", False), ("probe", True)):
    cfg = config.copy_and_resolve_references()
    cfg.train.online_probe = on
    runners[name] = StepRunner(cfg)
    runners[name].run(warmup)
  times = {name: [] for name in runners}
  for i in range(rounds):
    for name in (("plain", "probe") if i % 2 == 0 else ("probe", "plain")):
      times[name].append(runners[name].run(steps))
  ratios = [p / b for p, b in zip(times["probe"], times["plain"])]
  out = runners["probe"].report(float(np.median(times["probe"])), peak_tflops)
  out.update(plain_step_ms=1e3 * float(np.median(times["plain"])),
             probe_step_ratio=float(np.median(ratios)),
             probe_step_ratios=[round(r, 4) for r in ratios],
             probe_flop_ratio=runners["probe"].flops / max(runners["plain"].flops, 1e-30))
  return out


def main(argv):
  del argv
  config = main_lib._CONFIG.value
  if _PROBE_ROUNDS.value > 0:
    out = compare_probe(config, _PROBE_ROUNDS.value, _STEPS.value, _WARMUP.value, _PEAK.value)
  else:
    run = compare_attention if _COMPARE.value else benchmark
    out = run(config, _STEPS.value, _WARMUP.value, _PEAK.value)
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main, flags_parser=main_lib.parse_flags)
