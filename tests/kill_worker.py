"""A resumable job run as its own process, for the tests that kill it.

  python tests/kill_worker.py {label,features} WORKDIR [--slow_write=S] [--read_s=S]

``label`` labels an in-memory split with a tiny teacher into WORKDIR;
``features`` extracts a tiny encoder's features of an in-memory split into
the cache WORKDIR. Both build their model and split deterministically (no
random initialiser: the same variables in every process), in 8 shards read
slowly (``--read_s`` seconds a record), so that a kill lands between, inside
or during the writing of shards. ``ready`` is printed when the job's work
begins (after the imports), so that a test can time its kill from there.
``--slow_write`` stands for a slow disk: every ``.npz`` is written half, then,
after that many seconds, whole, so that a test can kill the job while a
shard's temporary file is half written.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np

NUM_IMAGES = 64
NUM_SHARDS = 8
IMAGE_SIZE = 16
#: Seconds per record read in a worker: 8 records, about 40 ms, per shard.
READ_S = 0.005


def images(read_s: float = 0.0):
  """The split: random 20-px images keyed ``img_XXX.png``, label = index.

  Each read takes ``read_s`` seconds (a slow decoder), so that the work, not
  only the start, lasts long enough to be killed in.
  """
  from fakes import random_images
  return random_images(NUM_IMAGES, keys=True, read_s=read_s)


def label_config():
  """The label config of a tiny teacher (as tests/test_label.py's), 8 shards."""
  from helpers import tiny_label_config
  c = tiny_label_config(num_shards=NUM_SHARDS, num_threads=1)
  c.teacher.data.image_size = IMAGE_SIZE
  return c


def teacher(config):
  """The tiny teacher and its deterministic variables."""
  from helpers import filled_variables
  from attn_contrastive.models.teacher import teacher_from_config
  model = teacher_from_config(config.teacher.model)
  return model, filled_variables(model, (1, IMAGE_SIZE, IMAGE_SIZE, 3))


def run_label(workdir: str, read_s: float = 0.0) -> None:
  from attn_contrastive.tasks import label
  c = label_config()
  label.write_maps(c, workdir, teacher=teacher(c), source=images(read_s))


def encoder():
  """A tiny ResNet encoder, its deterministic variables and its ``embed`` function."""
  import jax.numpy as jnp
  from helpers import filled_variables, tiny_config
  from attn_contrastive.models.resnet import resnet_from_config
  model = resnet_from_config(tiny_config().model, num_classes=None)
  variables = filled_variables(model, (1, IMAGE_SIZE, IMAGE_SIZE, 3))

  def embed(state, images):
    return model.apply(state, images.astype(jnp.float32) / 255.0, train=False)["pooled"]

  return variables, embed


def eval_view(example: dict) -> dict:
  """The centre 16-px crop of a record, with its label."""
  return {"image": example["image"][2:2 + IMAGE_SIZE, 2:2 + IMAGE_SIZE],
          "label": example["label"]}


def extract_features(cache_dir: str | None, read_s: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray]:
  """The split's features and labels, cached in ``cache_dir`` (8 shards) when given."""
  import ml_collections
  from attn_contrastive.evaluators import features
  from attn_contrastive.train import mesh as mesh_lib
  variables, embed = encoder()
  eval_cfg = ml_collections.ConfigDict(dict(batch_size=8, max_examples=-1, num_threads=1))
  return features.extract(embed, variables, images(read_s), eval_view, eval_cfg,
                          mesh=mesh_lib.make_mesh(1), cache_dir=cache_dir,
                          shard_size=NUM_IMAGES // NUM_SHARDS)


def slow_savez(seconds: float) -> None:
  """Makes ``np.savez`` to an open file write half its bytes, wait, then the rest."""
  real = np.savez

  def savez(file, *args, **kwargs):
    if isinstance(file, (str, os.PathLike)):
      return real(file, *args, **kwargs)
    buffer = io.BytesIO()
    real(buffer, *args, **kwargs)
    data = buffer.getvalue()
    file.write(data[:len(data) // 2])
    file.flush()
    time.sleep(seconds)
    file.write(data[len(data) // 2:])

  np.savez = savez


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("job", choices=("label", "features"))
  parser.add_argument("workdir")
  parser.add_argument("--slow_write", type=float, default=0.0)
  parser.add_argument("--read_s", type=float, default=READ_S)
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  # Imported before "ready", so that the kills are timed from the work, not the imports.
  import helpers  # noqa: F401
  if args.job == "label":
    import attn_contrastive.tasks.label  # noqa: F401
  else:
    import attn_contrastive.evaluators.features  # noqa: F401
  if args.slow_write:
    slow_savez(args.slow_write)
  print("ready", flush=True)
  if args.job == "label":
    run_label(args.workdir, args.read_s)
  else:
    extract_features(args.workdir, args.read_s)
  print("done", flush=True)


if __name__ == "__main__":
  main()
