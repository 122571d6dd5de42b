r"""Saliency teacher — trained from scratch on human attention (no ImageNet weights).

Synthetic human-attention data (default; a 2-core laptop CPU):
  python -m attn_contrastive.main --config=configs/teacher.py --workdir=/tmp/teacher
  ``salient_objects/human_attention`` (2000 train / 500 validation, 64 px,
  built on first use in a few seconds). ResNet-10 layout at width 16 with a
  3×3 stride-1 stem and max-pool, decoder width 32, 32×32 output maps (output
  stride 2); 370,993 parameters. Batch 64, SGD + Nesterov, lr 0.4×B/256 = 0.1,
  1 warm-up epoch then cosine, 3 epochs (93 steps). Writes a checkpoint and
  ``results.json`` with every MIT metric on the 500 validation images for
  ``teacher`` and ``center_bias`` (Gaussian, sd 0.25 × side).
  Measured on a shared 2-core x86 VM: 3 min 47 s wall (2.5 min CPU), of which
  ~45 s is the final evaluation.

  | metric       | teacher | centre bias |
  |--------------|---------|-------------|
  | NSS          | 2.07    | 1.10        |
  | CC           | 0.936   | 0.581       |
  | KLD          | 0.190   | 0.698       |
  | SIM          | 0.810   | 0.531       |
  | AUC-Judd     | 0.869   | 0.796       |
  | AUC-Borji    | 0.847   | 0.785       |
  | shuffled AUC | 0.744   | 0.526       |
  | info gain    | 0.84    | 0 (bits/fixation, vs the centre prior) |

SALICON (one GPU or a TPU v3-8 / v4-8):
  python -m attn_contrastive.data.prepare --dataset=salicon --data_dir=DIR  # once
  python -m attn_contrastive.main --config=configs/teacher.py:salicon \
      --workdir=gs://BUCKET/teacher --config.data.data_dir=DIR
  10,000 training images at 240×320 (half SALICON's 640×480, aspect kept),
  ResNet-18 encoder (ImageNet stem) trained from scratch, decoder width 64,
  60×80 output maps (output stride 4), bfloat16, batch 64, SGD + Nesterov
  lr 0.1, weight decay 1e-4, 2 warm-up epochs, cosine over 40 epochs (6,240
  steps); scored on the 5,000 validation images at their full 480×640
  resolution after training (for periodic checks on a subset, add
  ``--config.train.eval_every=1000 --config.eval.max_examples=500``; the
  subset then applies to the final evaluation too). Not yet run: no SALICON
  numbers are recorded here. Published ImageNet-pretrained models reach
  CC ≈ 0.9, NSS ≈ 2.0 on SALICON; a from-scratch teacher should land clearly
  above the centre prior but below those (no from-scratch numbers are
  published).

Arguments: ``synthetic`` (default) or ``salicon``.

Teacher-specific fields: ``data.image_width`` (input width; 0 = square
``data.image_size``), ``model.decoder_width``, ``model.output_stride``,
``loss.kld_weight`` / ``cc_weight`` / ``nss_weight`` (the loss is
``kld_w·KLD − cc_w·CC − nss_w·NSS``), ``aug.hflip``, and ``eval.*``:
``batch_size`` (global), ``max_examples`` (-1 = the whole split),
``num_images`` (strips logged to TensorBoard), ``center_bias_sigma`` (of the
baseline, as a fraction of the image side), ``shuffle_pool`` /
``shuffle_others`` (shuffled AUC draws its negatives from the fixations of
``shuffle_others`` images among the first ``shuffle_pool``) and
``num_threads`` (host threads for loading and scoring).
"""
from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": ("synthetic", "salicon")})
  c = config_lib.base_config()
  c.task = "teacher"
  c.data.name = "salient_objects/human_attention"
  c.data.image_width = 0
  c.model.update(dict(depth=10, width=16, stem_kernel=3, stem_stride=1, stem_pool=True,
                      decoder_width=32, output_stride=2))
  c.loss.update(dict(kld_weight=1.0, cc_weight=0.2, nss_weight=0.1))
  c.aug.update(dict(area_min=0.5, hflip=True))
  c.input.global_batch_size = 64
  c.optim.update(dict(name="sgd", base_lr=0.4, lr_scaling="linear", weight_decay=5e-5,
                      momentum=0.9, nesterov=True, warmup_epochs=1.0))
  c.train.update(dict(num_epochs=3.0, eval_every=-1, checkpoint_every=1000, log_every=20))
  c.eval.update(dict(batch_size=128, max_examples=-1, num_images=8, center_bias_sigma=0.25,
                     shuffle_pool=100, shuffle_others=10, num_threads=2))
  if picked["data"] == "salicon":
    c.data.update(dict(name="salicon", image_size=240, image_width=320, auto_prepare=False))
    c.model.update(dict(depth=18, width=64, stem_kernel=7, stem_stride=2, stem_pool=True,
                        decoder_width=64, output_stride=4, dtype="bfloat16"))
    c.input.update(dict(global_batch_size=64, num_threads=16, num_workers=8))
    c.optim.update(dict(weight_decay=1e-4, warmup_epochs=2.0))
    c.train.update(dict(num_epochs=40.0, eval_every=-1, checkpoint_every=1000, log_every=100))
    c.eval.update(dict(batch_size=64, num_threads=16))
  return c
