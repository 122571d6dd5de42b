r"""Retrieval with a run's embeddings: precision-recall, mAP, P@k, kNN.

Synthetic (default), after a pretraining run in /tmp/simclr:
  python -m attn_contrastive.main --config=configs/retrieval.py \
      --workdir=/tmp/retrieval_simclr --config.run_dir=/tmp/simclr
  ``salient_objects/classification``: the 2,000 validation images as
  queries against the 10,000 training images (centre crops, pooled
  features); class match = relevant. About a minute on 2 cores. Also
  reports the kNN classifier's top-1 (k = 200, T = 0.07) against that
  gallery.

ImageNet (TPU v3-32 / v4-32 or 8×A100/H100):
  python -m attn_contrastive.main --config=configs/retrieval.py:imagenet \
      --workdir=gs://BUCKET/retrieval_simclr_r50 --config.run_dir=gs://BUCKET/simclr_r50 \
      --config.data.data_dir=DIR --jax_distributed
  50,000 validation queries against the 1.28M training images, exact
  search: chunks of 256 queries against the gallery sharded over the
  devices (~160 MB of similarities per device per chunk on 8 devices).

``retrieval.embedding``: ``pooled`` or ``projection`` (pretraining runs);
``query_split`` = ``gallery_split`` ranks a split against itself leaving
each query out. ``results.json``: ``retrieval/map``,
``retrieval/precision@{1,10,100}``, ``retrieval/r_precision``,
``retrieval/pr_curve`` (interpolated precision at recall 0, 0.1, …, 1),
``knn/top1``, ``knn/top5``, with the source run and the dataset.
``retrieval.features_from``: a finished linear evaluation of the same run
(``--config.retrieval.features_from=/tmp/linear_simclr``) whose cached
features are these (pooled, the same checkpoint, view and examples) is
read instead of extracting them again (ImageNet: 1.33M images); otherwise
they are extracted here.

Arguments: ``synthetic`` (default) or ``imagenet``.
"""
import ml_collections

from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES})
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
  return c
