r"""Label: the frozen saliency teacher over every image of a split → attention-map shards.

Synthetic (default), after configs/teacher.py; 2 CPU cores, about 2 min:
  python -m attn_contrastive.main --config=configs/label.py \
      --workdir=/tmp/maps_train --config.teacher_checkpoint=/tmp/teacher
  10,000 maps of 64×64 in 16 shards; then pretrain with
  ``--config.attention.maps_dir=/tmp/maps_train``.

ImageNet (accelerator hosts, any number of processes): ``:imagenet`` labels
1,281,167 images with the SALICON teacher into 1,024 shards (5.3 GB), each
image at its own aspect ratio, shorter side 240 px; a killed run restarted
with the same flags skips finished shards (docs/chain.md). A smaller run sets
``--config.eval.batch_size`` and ``--config.eval.num_threads``, as every stage.
``:cifar10``: CIFAR-10's 50,000 training images, 32×32 maps (one GPU, minutes).
"""
import ml_collections

from attn_contrastive import config as config_lib
from attn_contrastive.data import canvases


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.CIFAR10_CHOICES})
  c = ml_collections.ConfigDict()
  c.task = "label"
  c.teacher_checkpoint = ""
  c.data = ml_collections.ConfigDict(dict(
      name="salient_objects/classification", split="train", data_dir="",
      auto_prepare=True, max_bad_images=100))
  # `shape`: "own" (each image at its own aspect ratio, shorter side at the
  # teacher's, padded to the smallest canvas of `canvas_aspects`, longer side /
  # shorter side, that holds it) or "squashed" (resized to the teacher's input).
  c.label = ml_collections.ConfigDict(dict(map_size=64, num_shards=16, shape="own",
                                           canvas_aspects=canvases.DEFAULT_ASPECTS))
  # The images a jitted call labels per process, and the threads that decode them.
  c.eval = ml_collections.ConfigDict(dict(batch_size=128, num_threads=2))
  if picked["data"] == "imagenet":
    c.teacher = config_lib.sibling_config(__file__, "teacher.py", "salicon")
    c.data.update(dict(name="imagenet2012", auto_prepare=False))
    c.label.num_shards = 1024
    c.eval.update(dict(batch_size=256, num_threads=32))
  elif picked["data"] == "cifar10":
    c.teacher = config_lib.sibling_config(__file__, "teacher.py", "salicon")
    c.data.update(dict(name="cifar10", auto_prepare=False))
    c.label.map_size = 32
    c.eval.update(dict(batch_size=256, num_threads=8))
  else:
    c.teacher = config_lib.sibling_config(__file__, "teacher.py", "synthetic")
  return c
