r"""Attention alignment of a trained run with human attention maps.

Synthetic (default), after a pretraining run in /tmp/simclr_attn:
  python -m attn_contrastive.main --config=configs/alignment.py \
      --workdir=/tmp/align_attn --config.run_dir=/tmp/simclr_attn
  Scores the run's attention on ``salient_objects/human_attention``
  ``validation`` (500 images, 8 simulated observers each) with every MIT
  metric, beside the centre-bias baseline; about a minute on 2 cores.
  Centre bias: NSS 1.10, CC 0.58; the README's "chain on synthetic data"
  table gives every row's scores.

SALICON validation (the paper's attention-alignment numbers):
  python -m attn_contrastive.main --config=configs/alignment.py:salicon \
      --workdir=gs://BUCKET/align_r50 --config.run_dir=gs://BUCKET/simclr_attn_r50 \
      --config.data.data_dir=DIR
  5,000 images resized whole to 224×224 (the run's input size; set
  ``data.image_size``/``data.image_width`` for another).

``alignment.maps``: the kinds of map to score, in one pass over the
images; the first is the primary one (``alignment/model`` in
``results.json``):

* ``auto``: the run's attention heads if it has them, else activation
  attention Σ_c A_c² of ``alignment.stages``;
* ``heads``, ``activations``: either explicitly (compare any two runs on
  the same footing);
* ``gradcam``: Grad-CAM of the predicted class at ``alignment.gradcam_stage``
  (default conv4). It needs logits: a supervised run's own classifier, or,
  for a SimCLR run, the linear classifier that a linear evaluation of it
  trained, read from that workdir (``alignment.classifier``;
  ``alignment.classifier_protocol``: ``linear``, ``linear_cached``, or
  ``auto``: ``linear`` if it ran, else ``linear_cached``).

The default ``("auto", "gradcam")`` skips Grad-CAM (and logs how to enable
it) for a SimCLR run without ``alignment.classifier``; any other tuple that
names ``gradcam`` there is refused. A SimCLR run with Grad-CAM, after
``configs/linear_eval.py`` wrote /tmp/linear_simclr:
  python -m attn_contrastive.main --config=configs/alignment.py \
      --workdir=/tmp/align_simclr --config.run_dir=/tmp/simclr \
      --config.alignment.classifier=/tmp/linear_simclr
Grad-CAM only, at conv5:
  python -m attn_contrastive.main --config=configs/alignment.py \
      --workdir=/tmp/align_simclr_c5 --config.run_dir=/tmp/simclr \
      --config.alignment.classifier=/tmp/linear_simclr \
      --config.alignment.maps=gradcam --config.alignment.gradcam_stage=conv5
(several kinds: ``--config.alignment.maps=activations,gradcam``.)

Outputs: ``results.json`` (the evaluation outline of
``attn_contrastive/evaluators/results.py``: ``alignment/model``,
``alignment/center_bias``, ``alignment/<kind>`` per kind scored,
``alignment/primary``, ``alignment/stages``, ``alignment/classifier``, …)
and ``examples.npz`` (the first ``eval.num_images`` images: ``image``,
``human``, ``index``, ``map/<kind>``). ``eval.*`` as in
``configs/teacher.py``.
"""
import ml_collections

from attn_contrastive import config as config_lib


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"data": ("synthetic", "salicon")})
  c = ml_collections.ConfigDict()
  c.task = "alignment"
  c.run_dir = ""  # the workdir of the run to evaluate
  c.data = ml_collections.ConfigDict(dict(
      name="salient_objects/human_attention", split="validation", data_dir="",
      auto_prepare=True, image_size=0, image_width=0, max_bad_images=100))
  c.alignment = ml_collections.ConfigDict(dict(
      maps=("auto", "gradcam"), stages=("conv3", "conv4"), gradcam_stage="conv4",
      classifier="", classifier_protocol="auto"))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=100, max_examples=-1, num_images=8, center_bias_sigma=0.25,
      shuffle_pool=100, shuffle_others=10, num_threads=2))
  if picked["data"] == "salicon":
    c.data.update(dict(name="salicon", auto_prepare=False))
    c.eval.update(dict(batch_size=256, num_threads=16))
  return c
