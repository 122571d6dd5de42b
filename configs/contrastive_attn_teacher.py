r"""SimCLR + attention heads trained on teacher maps — the paper's
"Contrastive attn. teacher" row.

Recipe: the "Contrastive" row (``configs/contrastive.py``) plus attention heads
on conv3 and conv4 (1×1 conv → BN → ReLU → 1×1 conv, spatial softmax), and the
loss NT-Xent + Σ_i (α·KLD(m'_i ‖ m_i) − β·NSS(m_i, p'_i)), where m'_i is the
teacher's map for the view (cropped and flipped with it, resized to each
head) and p'_i the teacher map used as a fixation density. Three stages:
``configs/teacher.py`` → ``configs/label.py`` → this config.

Synthetic data (default; a 2-core laptop):
  python -m attn_contrastive.main --config=configs/teacher.py --workdir=/tmp/teacher
  python -m attn_contrastive.main --config=configs/label.py --workdir=/tmp/maps_train \
      --config.teacher_checkpoint=/tmp/teacher
  python -m attn_contrastive.main --config=configs/contrastive_attn_teacher.py \
      --workdir=/tmp/simclr_attn --config.attention.maps_dir=/tmp/maps_train
  As ``configs/contrastive.py`` (ResNet-18 width 16, 64-px images, batch
  256, 3 epochs); heads of width 16 at 8×8 (conv3) and 4×4 (conv4), host
  maps at 8×8. α = 1, β = 0.1 (not tuned; the paper gives no values).
  Measured on 2 cores (seeds 0, 1): 4.4 min; the heads' maps score NSS
  1.689 / 1.681 and CC 0.837 / 0.833 on the synthetic human-attention
  validation split (``configs/alignment.py``), against 1.503 / 1.583 and
  0.739 / 0.775 for the plain SimCLR encoder's activation attention.

Monitor: the Contrastive row's (online probe, kNN and probe top-1 every
  ``train.eval_every`` steps; see ``configs/contrastive.py`` for its cost)
  and, with ``attention.eval_maps_dir`` set to teacher maps of the
  validation split, the heads' KLD and CC against them on its first
  ``eval.attention_examples`` (64) images (``eval/attention/{kld,cc}/<stage>``,
  ``attention/…`` in results.json) with image | teacher map | head maps
  strips in TensorBoard (``eval/attention_maps``); one jitted forward of 64
  images, well under a second per evaluation here. Make the maps with
    python -m attn_contrastive.main --config=configs/label.py \
        --workdir=/tmp/maps_val --config.teacher_checkpoint=/tmp/teacher \
        --config.data.split=validation
  and add ``--config.attention.eval_maps_dir=/tmp/maps_val``; without it
  the heads are not monitored (their alignment is the alignment task's).

ImageNet (a TPU v3-32 / v4-32 or 8×A100/H100 host group):
  python -m attn_contrastive.main --config=configs/label.py:imagenet \
      --workdir=gs://BUCKET/maps_train --config.teacher_checkpoint=gs://BUCKET/teacher
  python -m attn_contrastive.main --config=configs/contrastive_attn_teacher.py:imagenet \
      --workdir=gs://BUCKET/simclr_attn_r50 --jax_distributed \
      --config.attention.maps_dir=gs://BUCKET/maps_train
  ResNet-50, batch 4096, LARS 4.8, temperature 0.1, 300 epochs as the
  Contrastive row; heads of width 256 at 28×28 (conv3) and 14×14 (conv4),
  host maps at 28×28. Linear evaluation should give the paper's
  68.23 ± 0.08 ImageNet top-1 (vs 67.61 ± 0.04 without attention).

Arguments: ``synthetic`` (default) or ``imagenet``.
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES})
  c = config_lib.sibling_config(__file__, "contrastive.py", picked["data"])
  c.attention.update(dict(enabled=True, stages=("conv3", "conv4"), width=16,
                          alpha=1.0, beta=0.1, fixation_quantile=-1.0, map_size=8))
  if picked["data"] == "imagenet":
    c.attention.update(dict(width=256, map_size=28))
  return c
