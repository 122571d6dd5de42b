r"""Linear evaluation of a pretraining (or supervised) run: the paper's top-1 column.

Synthetic (default), after configs/contrastive.py in /tmp/simclr; 2 CPU cores, 2–4 min:
  python -m attn_contrastive.main --config=configs/linear_eval.py \
      --workdir=/tmp/linear_simclr --config.run_dir=/tmp/simclr
  The run's frozen encoder on ``salient_objects/classification`` under two
  protocols (docs/evaluation.md): ``linear``, SimCLR's, 5 epochs, and
  ``linear_cached``, a softmax regression on cached centre-crop features.
  Expect top-1 ≈ 23% and ≈ 30% for the Contrastive row (chance 10%).

ImageNet (TPU v3-32 / v4-32 or 8 GPUs):
  python -m attn_contrastive.main --config=configs/linear_eval.py:imagenet \
      --workdir=gs://BUCKET/linear_simclr_r50 --config.run_dir=gs://BUCKET/simclr_r50 \
      --config.data.data_dir=DIR --jax_distributed
  ``linear``: batch 4096, 90 epochs; the paper's 67.61 ± 0.04 for the Contrastive row.

CIFAR-10 (one GPU, ≈ 30 min estimated), after configs/contrastive.py:cifar10:
  python -m attn_contrastive.main --config=configs/linear_eval.py:cifar10 \
      --workdir=/tmp/linear_simclr_cifar10 --config.run_dir=/tmp/simclr_cifar10
  Whole 32-px images (no centre crop), scored on the 10,000 test images;
  ``linear``: batch 512, 100 epochs (SimCLR's CIFAR-10 linear protocol). An
  ImageNet encoder reads upsampled images with ``--config.data.image_size=224``.

Arguments: ``synthetic`` (default), ``imagenet`` or ``cifar10``.
"""
import ml_collections

from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.CIFAR10_CHOICES})
  c = ml_collections.ConfigDict()
  c.task = "linear_eval"
  c.run_dir = ""  # the workdir of the run to evaluate
  c.protocols = ("linear", "linear_cached")
  c.seed = 0
  c.init_checkpoint = ""  # read by the shared loop: the head starts from zero
  c.data = ml_collections.ConfigDict(dict(
      name="salient_objects/classification", data_dir="", train_split="train",
      eval_split="validation", image_size=0, num_classes=0, auto_prepare=True,
      max_bad_images=100))
  c.input = ml_collections.ConfigDict(dict(
      global_batch_size=256, num_threads=2, prefetch=4, num_workers=0))
  # ``area_min``: the training crops (SupervisedView); ``eval_crop_fraction``:
  # the centre crop of evaluation and of the cached features.
  c.aug = ml_collections.ConfigDict(dict(area_min=0.08, eval_crop_fraction=0.875))
  c.optim = ml_collections.ConfigDict(dict(
      name="sgd", base_lr=0.1, lr_scaling="linear", weight_decay=0.0, momentum=0.9,
      nesterov=True, trust_coefficient=1e-3, warmup_epochs=0.0))
  c.train = ml_collections.ConfigDict(dict(
      num_epochs=5, num_steps=-1, log_every=10, checkpoint_every=200,
      keep_checkpoints=2, async_checkpoint=True, eval_every=-1, profile=False,
      resume_with_changes=False))
  c.eval = ml_collections.ConfigDict(dict(batch_size=500, max_examples=-1, num_threads=2))
  # The cached-feature probe: L2 strengths tried (on standardised features,
  # objective mean CE + l2/2·||W||²), the held-out tail of the training split
  # that chooses one, L-BFGS's iteration cap and gradient-norm tolerance, and
  # the examples per cached feature shard.
  c.linear_cached = ml_collections.ConfigDict(dict(
      l2_grid=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1), holdout_fraction=0.1, max_iters=500,
      tol=1e-5, shard_size=50_000))
  if picked["data"] == "imagenet":
    c.data.update(dict(name="imagenet2012", auto_prepare=False))
    c.input.update(dict(global_batch_size=4096, num_threads=16, num_workers=8))
    c.train.update(dict(num_epochs=90, log_every=100, checkpoint_every=2000))
    c.eval.update(dict(batch_size=1024, num_threads=16))
  if picked["data"] == "cifar10":
    c.data.update(dict(name="cifar10", eval_split="test", auto_prepare=False))
    c.aug.eval_crop_fraction = 1.0
    c.input.update(dict(global_batch_size=512, num_threads=8, num_workers=4))
    c.train.update(dict(num_epochs=100, log_every=100, checkpoint_every=2000))
    c.eval.update(dict(batch_size=1000, num_threads=8))
  return c
