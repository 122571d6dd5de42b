r"""Supervised ResNet + attention heads on teacher maps: the "Supervised attn. teacher" rows.

After configs/teacher.py and configs/label.py (docs/chain.md); 2 CPU cores, about 4 min:
  python -m attn_contrastive.main --config=configs/supervised_attn_teacher.py \
      --workdir=/tmp/sup_attn --config.attention.maps_dir=/tmp/maps_train
  Validation top-1 ≈ 88% against ≈ 54% without heads (docs/results.md).
``:imagenet,r50`` (TPU v3-32 / 8 GPUs): paper 76.02 ± 0.04 (R50), 69.30 ± 0.04 (R18).
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES,
                                      "depth": ("r18", "r50")})
  c = config_lib.sibling_config(__file__, "supervised.py", f"{picked['data']},{picked['depth']}")
  # The heads and L_attn of configs/contrastive_attn_teacher.py.
  c.attention.update(dict(enabled=True, stages=("conv3", "conv4"), width=16,
                          alpha=1.0, beta=0.1, fixation_quantile=-1.0, map_size=8))
  if picked["data"] == "imagenet":
    c.attention.update(dict(width=256, map_size=28))
  return c
