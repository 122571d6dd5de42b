r"""Supervised ResNet — the paper's "Supervised" rows (no attention).

Synthetic data (default; a 2-core laptop):
  python -m attn_contrastive.main --config=configs/supervised.py --workdir=/tmp/sup
  ResNet-18 layout at width 16 (3×3 stride-2 stem + max-pool), 64-px
  images, batch 256, 6 epochs (234 steps), SGD+Nesterov lr 0.1×B/256.
  Writes ``results.json`` with the validation top-1; chance is 10%.
  Measured on a quiet 2-core x86 VM: about 3.5 min; validation top-1 at
  steps 100 / 200 / 234: 24.3 / 56.6 / 59.7% (seed 0), 26.9 / 65.6 / 69.0%
  (seed 1).

ImageNet (TPU v3-32 / v4-32 or 8×A100/H100):
  python -m attn_contrastive.main --config=configs/supervised.py:imagenet,r50 \
      --workdir=gs://BUCKET/sup_r50 --jax_distributed
  ResNet-50 (or ``r18``), batch 1024, SGD momentum 0.9 (Nesterov), lr
  0.1×B/256 = 0.4, weight decay 1e-4, label smoothing 0.1, 5 warm-up epochs,
  cosine over 90 epochs. Paper: 75.91 ± 0.10 (R50), 69.17 ± 0.07 (R18).

Arguments: ``synthetic`` (default) or ``imagenet``; ``r18`` (synthetic
default layout) or ``r50``.
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES,
                                      "depth": ("r18", "r50")})
  c = config_lib.base_config()
  c.task = "supervised"
  c.model.depth = {"r18": 18, "r50": 50}[picked["depth"]]
  c.optim.update(dict(name="sgd", base_lr=0.1, weight_decay=5e-5, nesterov=True,
                      warmup_epochs=1.0))
  c.train.eval_every = 100
  c.train.num_epochs = 6
  if picked["data"] == "imagenet":
    config_lib.imagenet_data(c)
    c.input.global_batch_size = 1024
    c.optim.update(dict(weight_decay=1e-4, warmup_epochs=5))
    c.loss.label_smoothing = 0.1
    c.train.num_epochs = 90
    c.train.eval_every = 5000
  return c
