r"""SimCLR + attention heads trained on human maps directly — the paper's
"Contrastive attn. co-train" row.

No teacher and no labelled maps: each training example also brings a random
image of the human-attention set (SALICON, or its synthetic stand-in) with its
human density map, both cropped and flipped together. NT-Xent and the
projection head use the 2N SimCLR views; the attention heads (conv3 and
conv4) learn on the N human images with
L_attn = Σ_i (α·KLD(m'_i ‖ m_i) − β·NSS(m_i, p'_i)), m'_i the human map at
the head's resolution. ``attention.cotrain_bn``: ``separate`` (default) runs
the human images through the encoder in a forward pass of their own, so the
views' BatchNorm statistics, and the running statistics that linear
evaluation uses, come from the pretraining data alone; ``joint`` runs views
and human images as one batch, mixing the two datasets' statistics. One
jitted step either way; the human images cost half a batch of extra
forward/backward work. README ("Recipe fidelity") compares the two.

Synthetic data (default; a 2-core laptop):
  python -m attn_contrastive.main --config=configs/contrastive_attn_cotrain.py \
      --workdir=/tmp/simclr_cotrain
  As ``configs/contrastive.py`` (ResNet-18 width 16, 64-px, batch 256, 3
  epochs) with ``salient_objects/human_attention`` ``train`` (2,000 images)
  as the human set; heads of width 16, host maps at 8×8, α = 1, β = 0.1.

Monitor: the Contrastive row's (online probe on the views, kNN and probe
  top-1 every ``train.eval_every`` steps; see ``configs/contrastive.py``
  for its cost) and the heads' KLD and CC against the human maps of the
  first ``eval.attention_examples`` (64) images of ``attention.human_data``'s
  validation split (``eval/attention/{kld,cc}/<stage>``, ``attention/…`` in
  results.json), with image | human map | head maps strips in TensorBoard
  (``eval/attention_maps``); one jitted forward of 64 images per
  evaluation, measured 0.1 s (5 s the first time, compiling and loading).

ImageNet + SALICON (a TPU v3-32 / v4-32 or 8×A100/H100 host group):
  python -m attn_contrastive.main --config=configs/contrastive_attn_cotrain.py:imagenet \
      --workdir=gs://BUCKET/simclr_cotrain_r50 --jax_distributed \
      --config.data.data_dir=DIR   # holding imagenet2012 and salicon
  ResNet-50, batch 4096, LARS 4.8, temperature 0.1, 300 epochs as the
  Contrastive row; SALICON train (10,000 images) as the human set, heads of
  width 256, host maps at 28×28. Paper: 66.35 ± 0.12 ImageNet top-1, below
  both the 67.61 baseline and the 68.23 of the teacher row.

Arguments: ``synthetic`` (default) or ``imagenet``.
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES})
  c = config_lib.sibling_config(__file__, "contrastive.py", picked["data"])
  c.attention.update(dict(enabled=True, labels="human", stages=("conv3", "conv4"), width=16,
                          alpha=1.0, beta=0.1, fixation_quantile=-1.0, map_size=8,
                          human_data="salient_objects/human_attention", human_split="train"))
  if picked["data"] == "imagenet":
    c.attention.update(dict(width=256, map_size=28, human_data="salicon"))
  return c
