r"""Saliency teacher, trained from scratch on human attention (no ImageNet weights).

Synthetic human attention (default), 2 CPU cores, about 4 min:
  python -m attn_contrastive.main --config=configs/teacher.py --workdir=/tmp/teacher
  ResNet-10 encoder-decoder, 64 px, 3 epochs (93 steps). Expect NSS ≈ 2.07 and
  CC ≈ 0.94 on the 500 validation images, against the centre bias's 1.10 and
  0.58 (every metric: docs/results.md).

SALICON (one GPU or a TPU v3-8 / v4-8; prepare it first, docs/datasets.md):
  python -m attn_contrastive.main --config=configs/teacher.py:salicon \
      --workdir=gs://BUCKET/teacher --config.data.data_dir=DIR
  ResNet-18 encoder-decoder, 240×320, 40 epochs (6,240 steps). Not run yet:
  expect clearly above the centre prior and below ImageNet-pretrained models'
  CC ≈ 0.9, NSS ≈ 2.0 (docs/chain.md).

Arguments: ``synthetic`` (default) or ``salicon``.
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
