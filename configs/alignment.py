r"""Alignment of a trained run's attention with human attention maps (MIT metrics).

Synthetic (default), after configs/contrastive_attn_teacher.py in /tmp/simclr_attn;
2 CPU cores, under a minute:
  python -m attn_contrastive.main --config=configs/alignment.py \
      --workdir=/tmp/align_attn --config.run_dir=/tmp/simclr_attn
  The 500 validation images of ``salient_objects/human_attention``: heads NSS
  ≈ 1.6 against the centre bias's 1.10 (docs/results.md). Grad-CAM of a SimCLR
  run needs ``--config.alignment.classifier=`` its linear evaluation's workdir
  (docs/evaluation.md).

SALICON validation (5,000 images; one accelerator host): ``:salicon``.

Arguments: ``synthetic`` (default) or ``salicon``.
"""
import ml_collections

from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": ("synthetic", "salicon")})
  c = ml_collections.ConfigDict()
  c.task = "alignment"
  c.run_dir = ""  # the workdir of the run to evaluate
  c.data = ml_collections.ConfigDict(dict(
      name="salient_objects/human_attention", split="validation", data_dir="",
      auto_prepare=True, image_size=0, image_width=0, max_bad_images=100))
  c.alignment = ml_collections.ConfigDict(dict(
      maps=("auto", "gradcam"), stages=("conv3", "conv4"), gradcam_stage="conv4",
      classifier="", classifier_protocol="auto"))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=100, max_examples=-1, num_images=8, center_bias_sigma=0.25,
      shuffle_pool=100, shuffle_others=10, num_threads=2))
  if picked["data"] == "salicon":
    c.data.update(dict(name="salicon", auto_prepare=False))
    c.eval.update(dict(batch_size=256, num_threads=16))
  return c
