r"""Label-efficient fine-tuning: a SimCLR run's whole network on 1% or 10% of the labels.

SimCLR's protocol (its appendix B.5; ``train_mode=finetune`` in google-research/simclr):
the pretrained encoder under a zero-initialised classifier, every block trained
(``finetune.after_block=-1``; 4 trains the classifier alone), Nesterov momentum 0.9,
lr 0.05 × B/256 without warm-up or weight decay, random crops and flips only.

ImageNet's subsets (SimCLR's own lists, tfds ``imagenet2012_subset``), 8 GPUs or a TPU
v3-32, after configs/contrastive.py:imagenet; no run made, no expected numbers yet:
  python -m attn_contrastive.main --config=configs/finetune.py:imagenet,1pct \
      --workdir=gs://BUCKET/finetune_1pct --config.init_checkpoint=gs://BUCKET/simclr_r50
Synthetic (every training label, 3 epochs; 2 CPU cores), after configs/contrastive.py:
  python -m attn_contrastive.main --config=configs/finetune.py --workdir=/tmp/finetune \
      --config.init_checkpoint=/tmp/simclr
"""
import ml_collections

from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES,
                                      "subset": ("10pct", "1pct")})
  pretrain = config_lib.sibling_config(__file__, "contrastive.py", picked["data"])
  c = config_lib.base_config()
  c.task = "supervised"
  c.model = pretrain.model  # the encoder's layout, so its weights load
  c.finetune = ml_collections.ConfigDict(dict(after_block=-1))
  c.aug.update(dict(area_min=0.08, strength=0.0, p_blur=0.0))
  c.optim.update(dict(name="sgd", base_lr=0.05, lr_scaling="linear", momentum=0.9,
                      nesterov=True, weight_decay=0.0, warmup_epochs=0.0))
  c.train.update(dict(num_epochs={"1pct": 60, "10pct": 30}[picked["subset"]],
                      online_probe=False))
  if picked["data"] == "imagenet":
    config_lib.imagenet_data(c)
    c.model = pretrain.model
    c.data.name = f"imagenet2012_subset/{picked['subset']}"
    c.input.global_batch_size = 4096
    c.train.eval_every = 5000
  else:  # every label of the synthetic training split: its subsets are ImageNet's lists
    c.train.update(dict(num_epochs=3, eval_every=-1))
  return c
