r"""Robustness of a linear evaluation to ImageNet-C's corruptions: the paper's robustness table.

Synthetic (default), after configs/linear_eval.py in /tmp/linear_simclr; 2 CPU cores, ~8 min:
  python -m attn_contrastive.main --config=configs/robustness.py \
      --workdir=/tmp/robust_simclr --config.run_dir=/tmp/linear_simclr
  The 2,000 validation images corrupted on the fly by all 19 corruptions × 5
  severities; with its ``linear`` head (23% clean) the Contrastive row keeps
  ≈ 17% mean top-1 over the 15 (docs/robustness.md, docs/results.md).

ImageNet, the released ImageNet-C (TPU v3-32 / v4-32 or 8 GPUs):
  python -m attn_contrastive.main --config=configs/robustness.py:imagenet \
      --workdir=gs://BUCKET/robust_simclr_r50 --config.run_dir=gs://BUCKET/linear_simclr_r50 \
      --config.robustness.manual_dir=DIR_WITH_EXTRACTED_IMAGENET_C --config.data.data_dir=DIR
  Paper (noise / blur / weather / digital): 28.23 / 26.16 / 43.08 / 60.42.

CIFAR-10-C (one GPU, ≈ 15 min estimated), after configs/linear_eval.py:cifar10:
  python -m attn_contrastive.main --config=configs/robustness.py:cifar10 \
      --workdir=/tmp/robust_simclr_cifar10 --config.run_dir=/tmp/linear_simclr_cifar10 \
      --config.robustness.manual_dir=DIR_WITH_EXTRACTED_CIFAR_10_C
  The release read in place; ``--config.robustness.source=generate`` without it
  (CIFAR-10-C's constants; docs/datasets.md).

Arguments: ``synthetic`` (default), ``imagenet`` or ``cifar10``.
"""
import ml_collections

from attn_contrastive import config as config_lib
from attn_contrastive.data import image_corruptions


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.CIFAR10_CHOICES})
  c = ml_collections.ConfigDict()
  c.task = "robustness"
  c.run_dir = ""  # the workdir of the linear_eval run to score
  c.data = ml_collections.ConfigDict(dict(
      name="salient_objects/classification", data_dir="", train_split="train",
      eval_split="validation", image_size=0, auto_prepare=True, max_bad_images=100))
  # `source`: "generate" (corrupt the evaluation crops on the fly, seeded by
  # `seed`, with `constants`: "imagenet" ImageNet-C's or "cifar" CIFAR-10-C's) or
  # "released" (`released_dataset`: "imagenet_c", whose <c>_<s> configs are built
  # from `manual_dir`, or "cifar10_c", its extracted .npy files read in place).
  # Retrieval: the corrupted images of `retrieval_severities` (the first
  # `retrieval_max_queries` of each; -1 all) rank the clean training split.
  c.robustness = ml_collections.ConfigDict(dict(
      corruptions=image_corruptions.ALL, severities=(1, 2, 3, 4, 5), source="generate",
      released_dataset="imagenet_c", manual_dir="", seed=0, constants="imagenet",
      classifier="auto",
      retrieval=True, retrieval_severities=(3,), retrieval_max_queries=-1,
      ks=(1, 10, 100), chunk=256))
  c.eval = ml_collections.ConfigDict(dict(batch_size=500, max_examples=-1, num_threads=2))
  if picked["data"] == "imagenet":
    c.data.update(dict(name="imagenet2012", auto_prepare=False))
    c.robustness.update(dict(source="released", retrieval_max_queries=10_000))
    c.eval.update(dict(batch_size=1024, num_threads=16))
  if picked["data"] == "cifar10":
    c.data.update(dict(name="cifar10", eval_split="test", auto_prepare=False))
    c.robustness.update(dict(source="released", released_dataset="cifar10_c",
                             constants="cifar"))
    c.eval.update(dict(batch_size=1000, num_threads=8))
  return c
