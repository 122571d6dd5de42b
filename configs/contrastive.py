r"""SimCLR pretraining — the paper's "Contrastive" row (no attention).

Synthetic data (default; a 2-core laptop):
  python -m attn_contrastive.main --config=configs/contrastive.py --workdir=/tmp/simclr
  ResNet-18 layout at width 16 (3×3 stride-2 stem + max-pool), 64-px
  images, batch 256, LARS lr 1.2×B/256 after 0.5 warm-up epochs, crops of
  ≥25% area, colour strength 0.5, temperature 0.2, 3 epochs (117 steps; raise
  ``--config.train.num_epochs`` for better features). The synthetic data is
  built on first use (~1 min). About 5 min on 2 cores: NT-Xent falls from
  ≈5.7 to ≈4.8 and the contrastive accuracy (positive ranked first among the
  2N−1 candidates) rises from <1% to ≈10%.

ImageNet (a TPU v3-32 / v4-32 or 8×A100/H100 host group):
  python -m attn_contrastive.main --config=configs/contrastive.py:imagenet \
      --workdir=gs://BUCKET/simclr_r50 --jax_distributed
  ResNet-50, batch 4096, LARS lr 0.3×B/256 = 4.8, weight decay 1e-6,
  temperature 0.1, 10 warm-up epochs, 300 epochs (≈ 90k steps); about
  24 h on a TPU v3-32. Linear evaluation should give ≈ 67.6% ImageNet top-1,
  the paper's 67.61 ± 0.04 (SimCLR reports 66.5 at 200 and 68.2 at 400 ep).

Recipe fidelity (SimCLR's reference implementation, google-research/simclr):
  * Projection head: ``model.proj_num_layers`` = 2 bias-free dense layers
    (kernels N(0, 0.01)), each followed by BatchNorm: centred + ReLU in the
    middle, no centring on the output (SimCLR v1's 2-layer head; v2 uses 3).
  * Loss: NT-Xent at SimCLR's scale, the sum of both views' mean
    cross-entropies (twice the mean over the 2N anchors). Under LARS this
    scale sets the gradient against weight decay, so 1e-6 means what it
    means in SimCLR.
  * Views: Inception/SimCLR random-resized crop (TensorFlow's sampler: 100
    attempts, at least 10% of the image, whole image as fallback); colour
    jitter with p 0.8 in random order (``aug.jitter_impl`` = ``simclrv1``:
    additive brightness as in the SimCLR paper; ``simclrv2`` multiplies),
    saturation and hue in HSV as TensorFlow's ops; grayscale p 0.2; Gaussian
    blur p 0.5 with a kernel of 10% of the view (23 taps at 224 px) and zero
    padding. Resizing is bilinear with antialiasing (SimCLR: bicubic), and
    each view draws its own blur sigma (SimCLR: one sigma per batch).
  * LARS excludes biases and BatchNorm parameters from weight decay and the
    trust ratio; global BatchNorm over the 2N views.
  * Parameters are initialised from XLA's Philox generator named in the
    program, so a seed gives the same network on CPU, GPU and TPU.

Arguments: ``synthetic`` (default) or ``imagenet``.
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES})
  c = config_lib.base_config()
  c.task = "pretrain"
  c.train.num_epochs = 3
  # A 3-epoch synthetic run needs a short warm-up, a higher rate and gentler
  # views than ImageNet's recipe to learn anything in 117 steps.
  c.optim.update(dict(base_lr=1.2, warmup_epochs=0.5))
  c.aug.update(dict(area_min=0.25, strength=0.5))
  if picked["data"] == "imagenet":
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
  return c
