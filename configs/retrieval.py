r"""Retrieval with a run's embeddings: mAP, P@k, precision-recall and kNN top-1.

Synthetic (default), after configs/contrastive.py in /tmp/simclr; 2 CPU cores, 1–2 min:
  python -m attn_contrastive.main --config=configs/retrieval.py \
      --workdir=/tmp/retrieval_simclr --config.run_dir=/tmp/simclr
  2,000 validation queries against 10,000 training images: the Contrastive
  row gives P@10 ≈ 18%, kNN top-1 ≈ 23%, mAP ≈ 10.5% (chance 10%; docs/evaluation.md).

ImageNet (TPU v3-32 / v4-32 or 8 GPUs): ``:imagenet``, 50,000 queries against
1.28M images, exact; ``--config.retrieval.features_from=`` a linear
evaluation's workdir reuses its cached features.

CIFAR-10 (one GPU, minutes): ``:cifar10``, 10,000 test queries against 50,000
training images (ImageNet encoders: ``--config.data.image_size=224``, upsampled).

Arguments: ``synthetic`` (default), ``imagenet`` or ``cifar10``.
"""
import ml_collections

from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.CIFAR10_CHOICES})
  c = ml_collections.ConfigDict()
  c.task = "retrieval"
  c.run_dir = ""  # the workdir of the run to evaluate
  c.data = ml_collections.ConfigDict(dict(
      name="salient_objects/classification", data_dir="", image_size=0, auto_prepare=True,
      max_bad_images=100))
  c.retrieval = ml_collections.ConfigDict(dict(
      embedding="pooled", query_split="validation", gallery_split="train",
      gallery_max_examples=-1, ks=(1, 10, 100), chunk=256, knn_k=200, knn_temperature=0.07,
      shard_size=50_000, features_from=""))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=500, max_examples=-1, num_threads=2, crop_fraction=0.875))
  if picked["data"] == "imagenet":
    c.data.update(dict(name="imagenet2012", auto_prepare=False))
    c.eval.update(dict(batch_size=1024, num_threads=16))
  if picked["data"] == "cifar10":
    c.data.update(dict(name="cifar10", auto_prepare=False))
    c.retrieval.query_split = "test"
    c.eval.update(dict(batch_size=1000, num_threads=8, crop_fraction=1.0))
  return c
