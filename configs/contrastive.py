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

Monitor (``train.online_probe``, ``train.eval_every``, ``eval.knn_*``): an
  online linear probe (SimCLR's ``lineareval_while_pretraining``) learns on
  the stop-gradient pooled features inside the step, from the labels that
  ride with the batch (``probe_loss``, ``probe_accuracy`` in the training
  metrics; ``loss`` is NT-Xent + the probe's cross-entropy, ``nt_xent`` the
  first; the encoder's updates are those without the probe, tested). Its
  cost is within the noise of the step's time (0.01% of its FLOPs;
  benchmarks/README.md). At steps 40, 80 and the end, the probe's top-1 on
  the 2,000 validation images (centre crops) and a kNN classifier's (k 200,
  votes exp(cos/0.07), bank: the first 2,000 training images) go to
  TensorBoard (``eval/online_probe/top1``, ``eval/knn/top1``) and the last
  ones to results.json (``online_probe/top1``, ``knn/top1``). Measured on
  the 2-core VM while other runs shared it (load 6–9): one evaluation took
  15–16 s the first time (compiling, decoding the views, which are then
  kept in memory) and 5–11 s after, 25–36 s of the 6–7 min run; probe /
  kNN top-1 9.9 / 16.0% at step 40, 14.1 / 18.4% at step 80, 18.9 / 18.6%
  at the end (chance 10%). The whole training split as the bank
  (``--config.eval.knn_bank_size=-1``, 10,000 images) gives a kNN top-1 of
  24.8% instead of 18.6% at the end, at 3.2× the cost (14.7 s instead of
  4.6 s per evaluation, same load).

ImageNet (a TPU v3-32 / v4-32 or 8×A100/H100 host group):
  python -m attn_contrastive.main --config=configs/contrastive.py:imagenet \
      --workdir=gs://BUCKET/simclr_r50 --jax_distributed
  ResNet-50, batch 4096, LARS lr 0.3×B/256 = 4.8, weight decay 1e-6,
  temperature 0.1, 10 warm-up epochs, 300 epochs (≈ 90k steps); about
  24 h on a TPU v3-32. Linear evaluation should give ≈ 67.6% ImageNet top-1,
  the paper's 67.61 ± 0.04 (SimCLR reports 66.5 at 200 and 68.2 at 400 ep).
  Monitor every 5,000 steps (≈ 19 times) and at the end: kNN with a bank of
  the first 128,000 training images (tfds stores the split shuffled; 1 GB
  of features on every host at D = 2048; -1 would take all 1.28M, 10.5 GB)
  and the 50,000 validation images as queries, 178k centre crops through
  the encoder per evaluation. Not measured: at a few tens of thousands of
  images/s of forward passes and host decoding, well under a minute each,
  a few tenths of a percent of the run.

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
  * Online probe: as SimCLR's supervised head, excluded from LARS's weight
    decay and trust ratio (momentum SGD at the schedule's rate; SimCLR's
    1e-6 L2 on its kernel is left out). SimCLR's head sees the raw features;
    here they are standardised and divided by √D first
    (``models/simclr.py``, ``LinearProbe``): on raw features the probe
    diverged at lr 1.2 (cross-entropy ≈ 300, chance accuracy).
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
  # The monitor (see the docstring): the online probe, and kNN / probe top-1
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
  return c
