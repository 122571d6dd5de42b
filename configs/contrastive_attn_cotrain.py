r"""SimCLR + attention heads on human maps directly: the "Contrastive attn. co-train" row.

No teacher: each example also brings a human-attention image and map; 2 CPU cores, ~5 min:
  python -m attn_contrastive.main --config=configs/contrastive_attn_cotrain.py \
      --workdir=/tmp/simclr_cotrain
  Heads NSS ≈ 1.67 on the human maps, cached linear top-1 ≈ 36% (docs/results.md).
``:imagenet`` (with SALICON; 8 GPUs, ≈ 6 h of steps on 8 H200): paper 66.35 ± 0.12.
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES})
  c = config_lib.sibling_config(__file__, "contrastive.py", picked["data"])
  # The heads learn on the human images only; they get their own forward pass
  # (attention.cotrain_bn="separate"), so BatchNorm statistics stay the views'.
  c.attention.update(dict(enabled=True, labels="human", stages=("conv3", "conv4"), width=16,
                          alpha=1.0, beta=0.1, fixation_quantile=-1.0, map_size=8,
                          human_data="salient_objects/human_attention", human_split="train"))
  if picked["data"] == "imagenet":
    c.attention.update(dict(width=256, map_size=28, human_data="salicon"))
  return c
