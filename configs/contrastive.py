r"""SimCLR pretraining: the paper's "Contrastive" row (no attention).

Synthetic data (default), 2 CPU cores, about 3.5 min (docs/performance.md):
  python -m attn_contrastive.main --config=configs/contrastive.py --workdir=/tmp/simclr
  ResNet-18 layout at width 16, 64 px, batch 256, 3 epochs (117 steps). Expect
  a contrastive accuracy of ≈ 9% and, from configs/linear_eval.py, cached
  linear top-1 ≈ 30% (chance 10%; docs/results.md).

ImageNet, a TPU v3-32 / v4-32 or 8 GPUs (≈ 4 h of steps on 8 H200, estimated):
  python -m attn_contrastive.main --config=configs/contrastive.py:imagenet \
      --workdir=gs://BUCKET/simclr_r50 --jax_distributed
  ResNet-50, batch 4096, LARS 4.8, temperature 0.1, 300 epochs; the paper's
  linear top-1 is 67.61 ± 0.04. The recipe and its fidelity to SimCLR:
  docs/chain.md, docs/results.md.

CIFAR-10, SimCLR's one-GPU recipe (its README; appendix B.9), one H100 ≈ 8 h (estimated):
  python -m attn_contrastive.data.prepare --dataset=cifar10
  python -m attn_contrastive.main --config=configs/contrastive.py:cifar10 \
      --workdir=/tmp/simclr_cifar10
  ResNet-18 (width 64) with a 3×3 stride-1 stem and no max pooling, 32 px,
  batch 512, LARS 1.0, weight decay 1e-4, temperature 0.5, colour strength 0.5,
  no blur, 1000 epochs. Then configs/linear_eval.py:cifar10.

Arguments: ``synthetic`` (default), ``imagenet`` or ``cifar10``.
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.CIFAR10_CHOICES})
  c = config_lib.base_config()
  c.task = "pretrain"
  c.train.num_epochs = 3
  # A 3-epoch synthetic run needs a short warm-up, a higher rate and gentler
  # views than ImageNet's recipe to learn anything in 117 steps.
  c.optim.update(dict(base_lr=1.2, warmup_epochs=0.5))
  c.aug.update(dict(area_min=0.25, strength=0.5))
  # The monitor (docs/evaluation.md): the online probe, and kNN / probe top-1
  # at steps 40, 80 and the end, the kNN bank the first 2,000 training images.
  c.train.update(dict(online_probe=True, eval_every=40))
  c.eval.knn_bank_size = 2000
  if picked["data"] == "imagenet":
    c.train.eval_every = 5000
    c.eval.knn_bank_size = 128_000
    c.optim.update(dict(base_lr=0.3))
    c.aug.update(dict(area_min=0.08, strength=1.0))
    config_lib.imagenet_data(c)
    c.model.depth = 50
    c.model.proj_hidden_dim = 2048
    c.model.proj_out_dim = 128
    c.input.global_batch_size = 4096
    c.loss.temperature = 0.1
    c.optim.warmup_epochs = 10
    c.train.num_epochs = 300
  if picked["data"] == "cifar10":
    config_lib.cifar10_data(c)
    c.train.update(dict(num_epochs=1000, eval_every=5000, log_every=100,
                        checkpoint_every=2000))
    c.eval.knn_bank_size = -1
    c.optim.update(dict(base_lr=1.0, weight_decay=1e-4, warmup_epochs=10))
    c.aug.update(dict(area_min=0.08, strength=0.5, p_blur=0.0))
    c.model.update(dict(proj_hidden_dim=512, proj_out_dim=128))
    c.input.global_batch_size = 512
    c.loss.temperature = 0.5
  return c
