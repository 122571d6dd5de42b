r"""Robustness to ImageNet-C corruptions of a linear evaluation (encoder + classifier).

Synthetic (default), after ``configs/linear_eval.py`` in /tmp/linear_simclr:
  python -m attn_contrastive.main --config=configs/robustness.py \
      --workdir=/tmp/robust_simclr --config.run_dir=/tmp/linear_simclr
  The validation split's centre crops corrupted on the fly by all 19
  corruptions (the 15 of the benchmark and the 4 extra) at severities 1-5,
  each image with its own seeded draws; the classifier is the linear
  evaluation's (``robustness.classifier``: ``auto`` takes the ``linear``
  head if that protocol ran, else the ``linear_cached`` one). The corrupted
  images of severity 3 also query the clean training split (retrieval mAP,
  P@k, precision-recall). Results per condition are kept as they finish
  (``<workdir>/conditions/``), so a killed run resumes. Timing on the 2-core
  VM: see the README's study section.

ImageNet, released ImageNet-C (the paper's robustness table):
  python -m attn_contrastive.main --config=configs/robustness.py:imagenet \
      --workdir=gs://BUCKET/robust_simclr_r50 --config.run_dir=gs://BUCKET/linear_simclr_r50 \
      --config.robustness.manual_dir=DIR_WITH_EXTRACTED_IMAGENET_C --config.data.data_dir=DIR
  Each ``imagenet_c/<corruption>_<severity>`` config is built from the
  extracted tar files on first use (``data/imagenet_c_release.py``) and read with
  ``imagenet2012``'s labels; 95 × 50,000 images. ``robustness.source=generate``
  corrupts ImageNet's validation crops on the fly instead (no download; see
  benchmarks/README.md for the cost per corruption).

Reported (``results.json``): ``robustness/top1`` per corruption and
severity, ``robustness/{noise,blur,weather,digital}`` (the category means;
the paper's four ImageNet-C columns, our reading), ``robustness/extra``,
``robustness/mean`` (over the 15), ``robustness/by_severity``,
``robustness/{mce,relative_mce}`` (AlexNet-normalised, as Hendrycks &
Dietterich), ``robustness/clean_top1``; ``retrieval_c/{map,precision@k,pr_curve}``
(means over the corrupted conditions queried) beside ``retrieval_c/clean_*``.

Arguments: ``synthetic`` (default) or ``imagenet``.
"""
import ml_collections

from attn_contrastive import config as config_lib
from attn_contrastive.data import image_corruptions


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES})
  c = ml_collections.ConfigDict()
  c.task = "robustness"
  c.run_dir = ""  # the workdir of the linear_eval run to score
  c.data = ml_collections.ConfigDict(dict(
      name="salient_objects/classification", data_dir="", train_split="train",
      eval_split="validation", image_size=0, auto_prepare=True, max_bad_images=100))
  # `source`: "generate" (corrupt the evaluation crops on the fly, seeded by
  # `seed`) or "released" (`released_dataset`/<c>_<s>, built from `manual_dir`).
  # Retrieval: the corrupted images of `retrieval_severities` (the first
  # `retrieval_max_queries` of each; -1 all) rank the clean training split.
  c.robustness = ml_collections.ConfigDict(dict(
      corruptions=image_corruptions.ALL, severities=(1, 2, 3, 4, 5), source="generate",
      released_dataset="imagenet_c", manual_dir="", seed=0, classifier="auto",
      retrieval=True, retrieval_severities=(3,), retrieval_max_queries=-1,
      ks=(1, 10, 100), chunk=256))
  c.eval = ml_collections.ConfigDict(dict(batch_size=500, max_examples=-1, num_threads=2))
  if picked["data"] == "imagenet":
    c.data.update(dict(name="imagenet2012", auto_prepare=False))
    c.robustness.update(dict(source="released", retrieval_max_queries=10_000))
    c.eval.update(dict(batch_size=1024, num_threads=16))
  return c
