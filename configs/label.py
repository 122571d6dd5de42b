r"""Label: the frozen saliency teacher over every image of a split.

Synthetic (default; a 2-core laptop CPU), after ``configs/teacher.py``:
  python -m attn_contrastive.main --config=configs/label.py \
      --workdir=/tmp/maps_train --config.teacher_checkpoint=/tmp/teacher
  Labels ``salient_objects/classification`` ``train`` (10,000 images) with the
  synthetic teacher (64-px input, the whole image), 64×64 uint8 maps in 16
  shards. Then pretrain with ``--config.attention.maps_dir=/tmp/maps_train``.

ImageNet (one accelerator host per process; any number of processes):
  python -m attn_contrastive.main --config=configs/label.py:imagenet \
      --workdir=gs://BUCKET/maps_train --config.teacher_checkpoint=gs://BUCKET/teacher \
      --config.data.data_dir=DIR
  1,281,167 training images, each resized whole to the SALICON teacher's
  240×320 input, 64×64 maps in 1024 shards dealt round-robin to processes.
  A killed run restarted with the same flags skips finished shards.

``teacher`` holds the teacher run's config (its ``model`` and input size must
match the checkpoint); ``label.map_size`` is the stored map side,
``label.batch_size`` the images per jitted call per process,
``label.num_shards`` the number of shard files and ``label.num_threads`` the
threads per process that decode and resize images.
"""
import ml_collections

from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": config_lib.DATA_CHOICES})
  c = ml_collections.ConfigDict()
  c.task = "label"
  c.teacher_checkpoint = ""
  c.data = ml_collections.ConfigDict(dict(
      name="salient_objects/classification", split="train", data_dir="",
      auto_prepare=True, max_bad_images=100))
  c.label = ml_collections.ConfigDict(dict(map_size=64, batch_size=128, num_shards=16,
                                           num_threads=2))
  if picked["data"] == "imagenet":
    c.teacher = config_lib.sibling_config(__file__, "teacher.py", "salicon")
    c.data.update(dict(name="imagenet2012", auto_prepare=False))
    c.label.update(dict(batch_size=256, num_shards=1024, num_threads=32))
  else:
    c.teacher = config_lib.sibling_config(__file__, "teacher.py", "synthetic")
  return c
