"""Export of a ResNet-50 run: seconds per format, and the ONNX file's images/s on the CPU.

Writes a supervised ResNet-50 run (ImageNet layout, 1000 classes, filled
variables: the numbers do not depend on training) into a temporary workdir,
then times ``python -m attn_contrastive.export``'s work for
``--format=torchvision`` and ``--format=onnx`` (opening the run, converting,
tracing, writing), each once after an untimed export of the same format, so
imports and first-call costs stay out. The ONNX file then runs in
onnxruntime's CPU provider on random uint8 images of ``--image_size`` px
(batches of ``--batch``, ``--threads`` intra-op threads, 0 = onnxruntime's
default), ``--repeats`` timed batches after two untimed ones.

Usage::

    python benchmarks/export.py [--batch 32] [--image_size 224] [--repeats 5] [--threads 0]

The last line printed is one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

import machine


def write_resnet50_run(workdir: str, image_size: int) -> None:
  """A supervised ResNet-50 run's workdir (config.json, a checkpoint) without training."""
  import jax  # pylint: disable=g-import-not-at-top
  from attn_contrastive import config as config_lib  # pylint: disable=g-import-not-at-top
  from attn_contrastive.models.build import build_model  # pylint: disable=g-import-not-at-top
  from attn_contrastive.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from attn_contrastive.train import loop  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.task = "supervised"
  c.data.image_size, c.data.num_classes = image_size, 1000
  c.model.update(dict(depth=50, width=64, stem_kernel=7, stem_stride=2, stem_pool=True))
  model = build_model(c)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             np.zeros((1, image_size, image_size, 3)),
                                             train=False))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32) + (
      1.0 if len(s.shape) == 1 else 0.0), shapes)
  os.makedirs(workdir)
  loop.write_config(workdir, c)
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  ckpt.save(1, {"params": variables["params"], "batch_stats": variables["batch_stats"],
                "step": np.int32(1)})
  ckpt.close()


def timed_export(run_dir: str, fmt: str, out: str) -> float:
  from attn_contrastive.export import formats  # pylint: disable=g-import-not-at-top
  formats.export(run_dir, fmt, os.path.join(out, "warm"))
  start = time.perf_counter()
  formats.export(run_dir, fmt, os.path.join(out, "timed"))
  return time.perf_counter() - start


def onnx_images_per_s(path: str, batch: int, size: int, repeats: int, threads: int) -> float:
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
  session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  for _ in range(2):
    session.run(None, {"images": images})
  start = time.perf_counter()
  for _ in range(repeats):
    session.run(None, {"images": images})
  return batch * repeats / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=0)
  args = parser.parse_args()
  result = {"cpu": machine.cpu_info(), **vars(args)}
  with tempfile.TemporaryDirectory() as tmp:
    run_dir = os.path.join(tmp, "r50")
    write_resnet50_run(run_dir, args.image_size)
    for fmt in ("torchvision", "onnx"):
      result[f"{fmt}_s"] = timed_export(run_dir, fmt, os.path.join(tmp, fmt))
      print(f"export --format={fmt}: {result[f'{fmt}_s']:.2f} s")
    result["onnx_images_per_s"] = onnx_images_per_s(
        os.path.join(tmp, "onnx", "timed", "model.onnx"), args.batch, args.image_size,
        args.repeats, args.threads)
  print(f"onnxruntime CPU, batch {args.batch} at {args.image_size} px: "
        f"{result['onnx_images_per_s']:.1f} images/s")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
