r"""Supervised ResNet: the paper's "Supervised" rows.

Synthetic data (default), 2 CPU cores, about 3.5 min:
  python -m attn_contrastive.main --config=configs/supervised.py --workdir=/tmp/sup
  ResNet-18 layout at width 16, 64 px, 6 epochs (234 steps); validation
  top-1 ≈ 54% (chance 10%; docs/results.md).

ImageNet (TPU v3-32 / v4-32 or 8 GPUs; ≈ 0.7 h of steps on 8 H200, estimated):
  python -m attn_contrastive.main --config=configs/supervised.py:imagenet,r50 \
      --workdir=gs://BUCKET/sup_r50 --jax_distributed
  Paper: 75.91 ± 0.10 top-1 (``r50``), 69.17 ± 0.07 (``r18``).
Arguments: ``synthetic`` (default) or ``imagenet``; ``r18`` (default) or ``r50``.
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
