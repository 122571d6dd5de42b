r"""Supervised ResNet + attention heads trained on teacher maps — the paper's
"Supervised attn. teacher" rows.

Recipe: the "Supervised" row (``configs/supervised.py``) plus attention heads
on conv3 and conv4, and the loss cross-entropy + Σ_i (α·KLD(m'_i ‖ m_i) −
β·NSS(m_i, p'_i)) in the same jitted step, with m'_i the teacher's map of the
training crop (cropped and flipped with it, resized to each head). Three
stages: ``configs/teacher.py`` → ``configs/label.py`` → this config.

Synthetic data (default; a 2-core laptop), after the teacher and label stages
of ``configs/contrastive_attn_teacher.py``:
  python -m attn_contrastive.main --config=configs/supervised_attn_teacher.py \
      --workdir=/tmp/sup_attn --config.attention.maps_dir=/tmp/maps_train
  As ``configs/supervised.py`` (ResNet-18 width 16, 64-px, batch 256, 6
  epochs); heads of width 16 at 8×8 and 4×4, host maps at 8×8; α = 1,
  β = 0.1. Measured on 2 cores (about 4 min): validation top-1 95.2% /
  87.6% (seeds 0 / 1) against 59.7% / 69.0% for ``configs/supervised.py``.

ImageNet (TPU v3-32 / v4-32 or 8×A100/H100):
  python -m attn_contrastive.main --config=configs/supervised_attn_teacher.py:imagenet,r50 \
      --workdir=gs://BUCKET/sup_attn_r50 --jax_distributed \
      --config.attention.maps_dir=gs://BUCKET/maps_train
  ResNet-50 (or ``r18``), batch 1024, SGD lr 0.4, 90 epochs as the Supervised
  rows; heads of width 256 at 28×28 and 14×14, host maps at 28×28. Paper:
  76.02 ± 0.04 top-1 (R50; 75.91 without), 69.30 ± 0.04 (R18; 69.17 without).

Arguments: ``synthetic`` (default) or ``imagenet``; ``r18`` or ``r50``.
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES,
                                      "depth": ("r18", "r50")})
  c = config_lib.sibling_config(__file__, "supervised.py", f"{picked['data']},{picked['depth']}")
  c.attention.update(dict(enabled=True, stages=("conv3", "conv4"), width=16,
                          alpha=1.0, beta=0.1, fixation_quantile=-1.0, map_size=8))
  if picked["data"] == "imagenet":
    c.attention.update(dict(width=256, map_size=28))
  return c
