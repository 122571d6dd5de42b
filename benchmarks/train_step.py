r"""Times the training step of any config on synthetic tensors already on device.

  python benchmarks/train_step.py --config=configs/contrastive.py \
      --config.model.depth=50 --steps=10 --warmup=3

Takes the same ``--config`` flags and overrides as ``attn_contrastive.main``.
The batch is random uint8 images built once and placed on the devices, so
the figure is the step alone (no input pipeline). The last line printed is
one JSON object: ``images_per_s``, ``views_per_s`` (2× images for
contrastive tasks), ``step_ms``, ``devices``, the compiled step's FLOPs and,
with ``--peak_tflops``, the model FLOPs utilisation.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from attn_contrastive import main as main_lib  # noqa: E402
from attn_contrastive.models.resnet import resnet_from_config  # noqa: E402
from attn_contrastive.models.simclr import simclr_from_config  # noqa: E402
from attn_contrastive.tasks import pretrain, supervised  # noqa: E402
from attn_contrastive.train import loop, mesh as mesh_lib, optim  # noqa: E402
from attn_contrastive.train.state import count_params, create_train_state  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation included).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak FLOP/s per device, in TFLOP/s, for MFU.")


def build(config):
  """(model, loss_fn, host batch, views per image) for the config's task."""
  b, s = config.input.global_batch_size, config.data.image_size
  rng = np.random.default_rng(0)
  images = lambda: rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
  if config.task == "pretrain":
    model = simclr_from_config(config.model)
    return model, pretrain.make_loss_fn(model, config), {"view1": images(), "view2": images()}, 2
  if config.task == "supervised":
    model = resnet_from_config(config.model, num_classes=config.data.num_classes)
    labels = rng.integers(0, config.data.num_classes, (b,), dtype=np.int32)
    return model, supervised.make_loss_fn(model, config), {"image": images(), "label": labels}, 1
  raise ValueError(f"no benchmark for task {config.task!r}")


def benchmark(config, steps: int, warmup: int, peak_tflops: float = 0.0) -> dict:
  mesh = mesh_lib.make_mesh()
  model, loss_fn, host_batch, views = build(config)
  schedule = optim.make_schedule(config.optim, config.input.global_batch_size, 10_000, 100)
  tx = optim.make_optimizer(config.optim, schedule)
  s = config.data.image_size
  state = create_train_state(model, tx, jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32),
                             0, mesh_lib.replicated(mesh))
  batch = mesh_lib.to_global(host_batch, mesh)
  rng = jax.device_put(jax.random.PRNGKey(1), mesh_lib.replicated(mesh))
  step = loop.jit_train_step(loop.make_train_step(loss_fn, schedule), mesh)
  compiled = step.lower(state, batch, rng).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  for _ in range(warmup):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  dt = (time.perf_counter() - t0) / steps
  b = config.input.global_batch_size
  out = {
      "task": config.task, "depth": config.model.depth, "width": config.model.width,
      "image_size": s, "global_batch": b, "dtype": config.model.dtype,
      "conv_impl": config.model.conv_impl, "backend": jax.default_backend(),
      "devices": jax.device_count(), "params": count_params(state.params),
      "step_ms": 1e3 * dt, "images_per_s": b / dt, "views_per_s": views * b / dt,
      "step_tflop": flops / 1e12, "loss": float(metrics["loss"]),
  }
  if peak_tflops > 0 and flops > 0:
    out["mfu"] = flops / dt / (peak_tflops * 1e12 * jax.device_count())
  return out


def main(argv):
  del argv
  config = main_lib._CONFIG.value
  print(json.dumps(benchmark(config, _STEPS.value, _WARMUP.value, _PEAK.value)))


if __name__ == "__main__":
  app.run(main, flags_parser=main_lib.parse_flags)
