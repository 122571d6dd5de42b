r"""SimCLR + attention heads on teacher maps: the paper's "Contrastive attn. teacher" row.

After configs/teacher.py and configs/label.py (docs/chain.md); 2 CPU cores, about 4 min:
  python -m attn_contrastive.main --config=configs/contrastive_attn_teacher.py \
      --workdir=/tmp/simclr_attn --config.attention.maps_dir=/tmp/maps_train
  Heads NSS ≈ 1.6 on the human maps, cached linear top-1 ≈ 37% (docs/results.md).
``:imagenet`` (TPU v3-32 / 8 GPUs, ≈ 4 h of steps on 8 H200): paper 68.23 ± 0.08.
``:cifar10``: SimCLR's CIFAR-10 recipe plus heads at 16×16 (conv3) and 8×8 (conv4).
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.CIFAR10_CHOICES})
  c = config_lib.sibling_config(__file__, "contrastive.py", picked["data"])
  # α, β: the weights of KLD and NSS in L_attn (not tuned; the paper gives none).
  # Heads at 8×8 (conv3) and 4×4 (conv4) of 64-px views; 28×28, 14×14 at 224 px.
  c.attention.update(dict(enabled=True, stages=("conv3", "conv4"), width=16,
                          alpha=1.0, beta=0.1, fixation_quantile=-1.0, map_size=8))
  if picked["data"] == "imagenet":
    c.attention.update(dict(width=256, map_size=28))
  if picked["data"] == "cifar10":
    c.attention.update(dict(width=64, map_size=16))
  return c
