r"""Distribution shift: a linear evaluation's classifier on ImageNet-V2, -A, -R, -Sketch, ReaL.

ImageNet, after configs/linear_eval.py:imagenet (8 GPUs or a TPU v3-8, ≈ 30 min estimated),
each set prepared first (docs/datasets.md); no run made yet, no expected numbers:
  python -m attn_contrastive.main --config=configs/shift.py --workdir=gs://BUCKET/shift_r50 \
      --config.run_dir=gs://BUCKET/linear_simclr_r50 --config.data.data_dir=DIR
"""
import ml_collections

from attn_contrastive import config as config_lib
from attn_contrastive import config_checks


def get_config(arg: str | None = None):
  config_lib.parse_arg(arg, {"data": ("imagenet",)})  # ImageNet's shifts only
  c = ml_collections.ConfigDict()
  c.task = "shift"
  c.run_dir = ""  # the workdir of the linear_eval run to score
  c.data = ml_collections.ConfigDict(dict(
      name="imagenet2012", data_dir="", image_size=0, auto_prepare=False,
      max_bad_images=100))
  c.shift = ml_collections.ConfigDict(dict(
      datasets=config_checks.SHIFT_DATASETS, classifier="auto"))
  c.eval = ml_collections.ConfigDict(dict(batch_size=1024, max_examples=-1, num_threads=16))
  return c
