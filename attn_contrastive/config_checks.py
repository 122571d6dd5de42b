"""Values a config must have, checked before anything is built.

ml_collections refuses unknown keys and wrong types; what it cannot know is
which values make sense: a negative batch, a temperature of 0, a negative α,
an attention row without its maps, an evaluation without the run to
evaluate. :func:`problems` lists every such value of a config (and of the
stage configs a study embeds), each with the key, what is wrong and what to
set instead, so ``main`` refuses the run at once instead of hours in.

:func:`layout_problems` does the same for the devices a run is given: every
batch the run will use (training, each evaluation, a study's every stage)
that its devices and processes cannot split into equal shares, with the
nearest batches that they can. ``main`` runs it as soon as JAX knows the
layout, before any data is read.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import ml_collections

from attn_contrastive import config as config_lib

Check = tuple[str, Callable[[Any], bool], str]


def _positive(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def _non_negative(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0


def _fraction(x) -> bool:  # (0, 1]
  return _positive(x) and x <= 1


def _probability(x) -> bool:  # [0, 1]
  return _non_negative(x) and x <= 1


def _one_of(*allowed) -> Callable[[Any], bool]:
  return lambda x: x in allowed


def _subset_of(*allowed) -> Callable[[Any], bool]:  # a non-empty tuple of them
  return lambda x: isinstance(x, (tuple, list)) and bool(x) and set(x) <= set(allowed)


def _tuple_of(*allowed) -> Callable[[Any], bool]:  # a tuple of them, perhaps empty
  return lambda x: isinstance(x, (tuple, list)) and set(x) <= set(allowed)


def _names(values: Iterable[Any]) -> str:
  return ", ".join(repr(v) for v in values)


# The values a key may take, declared here once: the tasks read these names.

#: ``model.depth``: the ResNets of ``models/resnet.py`` (its ``STAGE_SIZES``, one
#: entry per depth; tests/test_config.py checks that the two agree).
RESNET_DEPTHS = (10, 18, 34, 50, 101)
#: ``model.dtype``: the encoder's computation dtype.
DTYPES = ("float32", "bfloat16", "float16")
#: ``optim.name`` (``train/optim.py``).
OPTIMIZERS = ("lars", "sgd")
#: ``aug.jitter_impl``: SimCLR v1's or v2's colour jitter (``data/augment.py``).
JITTER_IMPLS = ("simclrv1", "simclrv2")
#: ``aug.views_on``: where a SimCLR view's colour ops run: in the host pipeline with
#: the crop, or in the jitted step (``data/device_colour.py``), the host cropping only.
VIEWS_ON = ("host", "device")

#: ``attention.labels``: maps of the label task (``attention.maps_dir``), or human maps
#: that the co-train row's heads learn on directly.
ATTENTION_LABELS = ("teacher", "human")
#: ``attention.cotrain_bn``: the co-train row's human images in a forward pass of their
#: own (the encoder's BatchNorm statistics stay the views'), or in one with the views.
COTRAIN_BN = ("separate", "joint")
#: ``label.shape``: each image at its own aspect ratio on a padded canvas, or resized
#: whole to the teacher's input (``data/canvases.py``).
LABEL_SHAPES = ("own", "squashed")
#: A linear evaluation's protocols (``protocols``, ``tasks/linear_eval.py``).
LINEAR_PROTOCOLS = ("linear", "linear_cached")
#: The classifier a stage reads from a linear evaluation: ``auto`` is ``linear`` if
#: that protocol ran, else ``linear_cached``.
CLASSIFIER_PROTOCOLS = ("auto", *LINEAR_PROTOCOLS)
#: ``retrieval.embedding``: the encoder's pooled feature or SimCLR's projection.
EMBEDDINGS = ("pooled", "projection")
#: ``alignment.maps``' kinds (``tasks/alignment.py``).
ALIGNMENT_MAPS = ("auto", "heads", "activations", "gradcam")
#: Where the robustness stage's corrupted images come from (``tasks/robustness.py``).
ROBUSTNESS_SOURCES = ("generate", "released")
#: The released corrupted copies it reads (``robustness.released_dataset``).
RELEASED_CORRUPTED = ("imagenet_c", "cifar10_c")
#: The generated corruptions' parameters (``image_corruptions.CONSTANTS``).
CORRUPTION_CONSTANTS = ("imagenet", "cifar")
#: The stages of a study (``tasks/study.py``), in the order they run.
STUDY_STAGES = ("teacher", "label", "train", "linear_eval", "robustness", "retrieval",
                "alignment", "report")
#: The tasks whose networks later stages evaluate.
TRAINED_TASKS = ("pretrain", "supervised")
#: The tasks that evaluate another run, in the order a study runs them for each row,
#: and the tasks of the runs their ``run_dir`` may name.
EVALUATES = {
    "linear_eval": TRAINED_TASKS,
    "robustness": ("linear_eval",),
    "retrieval": TRAINED_TASKS,
    "alignment": TRAINED_TASKS,
    "shift": ("linear_eval",),
}
#: The evaluations a study runs for each row (``shift`` reads ImageNet's shifted test
#: sets: run on its own after an ImageNet linear evaluation).
EVALUATIONS = ("linear_eval", "robustness", "retrieval", "alignment")
#: ``shift.datasets``: ImageNet's shifted test sets (``data/imagenet_shifts.SHIFTS``).
SHIFT_DATASETS = ("imagenet_v2", "imagenet_a", "imagenet_r", "imagenet_sketch", "real")
#: The evaluations that score against the dataset's class labels.
LABELLED_EVALUATIONS = ("linear_eval", "robustness", "retrieval")

#: (dotted key, test, what it must be); a key the config lacks is not checked.
#: ``init_checkpoint=torchvision:PATH``: a torchvision ResNet state_dict (``.pth`` or
#: safetensors) as the encoder's start, for these tasks (``train/torchvision_init.py``).
TORCHVISION_INIT = "torchvision:"
TORCHVISION_INIT_TASKS = ("supervised", "teacher")

CHECKS: tuple[Check, ...] = (
    ("input.global_batch_size", _positive, "a positive number of examples"),
    ("input.num_threads", _positive, "at least 1"),
    ("input.num_workers", _non_negative, "0 (threads only) or more worker processes"),
    ("eval.batch_size", _positive, "a positive number of examples"),
    ("eval.max_examples", lambda x: x == -1 or _positive(x), "-1 (all) or a positive count"),
    ("eval.num_threads", _positive, "at least 1"),
    ("data.image_size", _non_negative, "a size in pixels (0: the evaluated run's)"),
    ("data.max_bad_images", _non_negative,
     "0 (stop at the first undecodable image) or more records to skip"),
    ("model.depth", _one_of(*RESNET_DEPTHS), f"one of {_names(RESNET_DEPTHS)}"),
    ("model.width", _positive, "a positive channel count"),
    ("model.dtype", _one_of(*DTYPES), f"one of {_names(DTYPES)}"),
    ("loss.temperature", _positive, "positive (NT-Xent divides by it; SimCLR uses 0.1-0.5)"),
    ("loss.label_smoothing", lambda x: _probability(x) and x < 1, "in [0, 1)"),
    ("optim.name", _one_of(*OPTIMIZERS), f"one of {_names(OPTIMIZERS)}"),
    ("optim.base_lr", _positive, "a positive learning rate"),
    ("optim.weight_decay", _non_negative, "0 or more"),
    ("optim.momentum", lambda x: _probability(x) and x < 1, "in [0, 1)"),
    ("optim.warmup_epochs", _non_negative, "0 or more epochs"),
    ("train.num_epochs", _non_negative, "0 or more (with train.num_steps > 0) epochs"),
    ("train.log_every", _positive, "a positive number of steps"),
    ("train.checkpoint_every", _positive, "a positive number of steps"),
    ("train.keep_checkpoints", _positive, "at least 1"),
    ("aug.area_min", _fraction, "a fraction of the image in (0, 1]"),
    ("aug.eval_crop_fraction", _fraction, "a fraction of the image side in (0, 1]"),
    ("aug.strength", _non_negative, "0 (no colour jitter) or more"),
    ("aug.p_jitter", _probability, "a probability in [0, 1]"),
    ("aug.p_gray", _probability, "a probability in [0, 1]"),
    ("aug.p_blur", _probability, "a probability in [0, 1]"),
    ("aug.jitter_impl", _one_of(*JITTER_IMPLS), f"one of {_names(JITTER_IMPLS)}"),
    ("aug.views_on", _one_of(*VIEWS_ON), f"one of {_names(VIEWS_ON)}"),
    ("attention.alpha", _non_negative, "0 or more (the weight of KLD in L_attn)"),
    ("attention.beta", _non_negative, "0 or more (the weight of NSS in L_attn)"),
    ("attention.width", _positive, "a positive channel count"),
    ("attention.map_size", _positive, "a positive map side in pixels"),
    ("attention.labels", _one_of(*ATTENTION_LABELS),
     f"one of {_names(ATTENTION_LABELS)} (the co-train row)"),
    ("attention.cotrain_bn", _one_of(*COTRAIN_BN), f"one of {_names(COTRAIN_BN)}"),
    ("label.num_shards", _positive, "at least 1"),
    ("label.map_size", _positive, "a positive map side in pixels"),
    ("label.shape", _one_of(*LABEL_SHAPES), f"one of {_names(LABEL_SHAPES)}"),
    ("label.canvas_aspects", lambda x: isinstance(x, (tuple, list)) and bool(x)
     and all(_positive(a) and a >= 1 for a in x),
     "a tuple of aspect ratios (longer side / shorter side), each at least 1"),
    ("protocols", _tuple_of(*LINEAR_PROTOCOLS),
     f"a tuple of {_names(LINEAR_PROTOCOLS)} (empty: a supervised run's own classifier "
     "only)"),
    ("retrieval.embedding", _one_of(*EMBEDDINGS), f"one of {_names(EMBEDDINGS)}"),
    ("robustness.classifier", _one_of(*CLASSIFIER_PROTOCOLS),
     f"one of {_names(CLASSIFIER_PROTOCOLS)}"),
    ("finetune.after_block", lambda x: x in (-1, 0, 1, 2, 3, 4),
     "-1 (every block trained), 0 (after the stem) … 4 (the classifier alone)"),
    ("shift.classifier", _one_of(*CLASSIFIER_PROTOCOLS),
     f"one of {_names(CLASSIFIER_PROTOCOLS)}"),
    ("shift.datasets", lambda x: isinstance(x, (tuple, list)) and bool(x)
     and all(d in SHIFT_DATASETS for d in x), f"a tuple of {_names(SHIFT_DATASETS)}"),
    ("robustness.source", _one_of(*ROBUSTNESS_SOURCES), f"one of {_names(ROBUSTNESS_SOURCES)}"),
    ("robustness.released_dataset", _one_of(*RELEASED_CORRUPTED),
     f"one of {_names(RELEASED_CORRUPTED)}"),
    ("robustness.constants", _one_of(*CORRUPTION_CONSTANTS),
     f"one of {_names(CORRUPTION_CONSTANTS)}"),
    ("alignment.classifier_protocol", _one_of(*CLASSIFIER_PROTOCOLS),
     f"one of {_names(CLASSIFIER_PROTOCOLS)}"),
)


def evaluated_run(task: str) -> str:
  """What the ``run_dir`` of evaluation ``task`` must name, in words."""
  return f"the workdir of a {' or '.join(EVALUATES[task])} run"


def _get(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
  node: Any = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _values(config, prefix: str) -> Iterable[str]:
  for key, test, must in CHECKS:
    found, value = _get(config, key)
    if found and not test(value):
      yield f"{prefix}{key}={value!r}: must be {must}"


def _links(config, prefix: str) -> Iterable[str]:
  """The paths a stage needs from an earlier one (the study fills these itself)."""
  task = config.get("task")
  if task in EVALUATES and not config.get("run_dir"):
    yield (f"{prefix}run_dir is empty: set --config.{prefix}run_dir to "
           f"{evaluated_run(task)}")
  if task == "label" and not config.get("teacher_checkpoint"):
    yield (f"{prefix}teacher_checkpoint is empty: set it to the workdir of a teacher run "
           "(configs/teacher.py)")
  attn = config.get("attention")
  if (task in ("pretrain", "supervised") and attn is not None and attn.get("enabled")
      and attn.get("labels") == "teacher" and not attn.get("maps_dir")):
    yield (f"{prefix}attention.maps_dir is empty but attention is on with teacher labels: "
           f"set it to the label task's workdir (configs/label.py), or turn "
           f"{prefix}attention.enabled off")


def _renamed(config, prefix: str) -> Iterable[str]:
  """Keys of a config written for an earlier version, under the names they have now."""
  for old, new in config_lib.RENAMED_KEYS.items():
    if _get(config, old)[0]:
      yield f"{prefix}{old} is now {prefix}{new}: set {prefix}{new} instead"


def _consistency(config, prefix: str) -> Iterable[str]:
  train = config.get("train")
  if (train is not None and "num_steps" in train and train.num_steps <= 0
      and train.get("num_epochs", 1) <= 0):
    yield (f"{prefix}train.num_epochs={train.num_epochs!r} and "
           f"train.num_steps={train.num_steps!r}: set one of them above 0")
  attn = config.get("attention")
  if (config.get("task") == "supervised" and attn is not None and attn.get("enabled")
      and attn.get("labels") != "teacher"):
    yield (f"{prefix}attention.labels={attn.labels!r}: supervised rows learn from teacher "
           f"maps only; set {prefix}attention.labels='teacher' and attention.maps_dir")
  init = str(config.get("init_checkpoint", "") or "")
  if init.startswith(TORCHVISION_INIT) and config.get("task") not in TORCHVISION_INIT_TASKS:
    yield (f"{prefix}init_checkpoint={init!r}: torchvision weights start the encoder of "
           f"{' or '.join(TORCHVISION_INIT_TASKS)} runs only; leave it empty to train "
           "from scratch")
  if config.get("task") == "study":
    yield from study_problems(config, prefix)
  if config.get("task") == "robustness":
    yield from _robustness(config.robustness, prefix)


def study_problems(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """The stages and rows a study config asks for that do not exist."""
  study, rows = config.study, config.get("rows", {})
  found = []
  unknown = sorted(set(study.stages) - set(STUDY_STAGES))
  if unknown:
    found.append(f"{prefix}study.stages has {unknown}: choose from {STUDY_STAGES}")
  missing = sorted(set(study.rows) - set(rows))
  if missing:
    found.append(f"{prefix}study.rows has {missing}, which config.rows does not define; "
                 f"defined: {sorted(rows)}")
  return found


def _robustness(rc, prefix: str) -> Iterable[str]:
  from attn_contrastive.data import image_corruptions  # NumPy and OpenCV only, no JAX
  bad = sorted(set(rc.severities) - {1, 2, 3, 4, 5})
  if bad:
    yield f"{prefix}robustness.severities has {bad}: ImageNet-C's severities are 1 to 5"
  unknown = sorted(set(rc.corruptions) - set(image_corruptions.ALL))
  if unknown:
    yield f"{prefix}robustness.corruptions has {unknown}: choose from {image_corruptions.ALL}"
  if (rc.get("source") == "released" and rc.get("released_dataset") == "cifar10_c"
      and not rc.get("manual_dir")):
    yield (f"{prefix}robustness.manual_dir is empty: set it to the extracted CIFAR-10-C "
           f"folder (labels.npy, <corruption>.npy), or set {prefix}robustness.source="
           "'generate' to corrupt the test images with CIFAR-10-C's constants")


def problems(config: ml_collections.ConfigDict, prefix: str = "",
             linked: bool = False) -> list[str]:
  """Every bad value of ``config`` as ``"key=value: must be …"`` lines (none: it is fine).

  A study's stage configs are checked too (their keys prefixed with the
  stage's path); their links to earlier stages are not, as the study fills
  them in. ``linked`` skips those links for ``config`` itself.
  """
  found = [*_values(config, prefix), *_renamed(config, prefix), *_consistency(config, prefix)]
  if not linked:
    found += list(_links(config, prefix))
  if config.get("task") == "study":
    for name in ("teacher", "label", *EVALUATIONS):
      if name in config:
        found += problems(config[name], f"{prefix}{name}.", linked=True)
    for name, row in config.get("rows", {}).items():
      found += problems(row, f"{prefix}rows.{name}.", linked=True)
  return found


# Layouts: which batches the devices can split.
#
# Every global batch a task uses is cut into equal shares, one per device of
# every process: training (``train/loop.py``: ``mesh.check_batch_divisible``,
# then each process loads ``batch / processes`` examples that
# ``jax.make_array_from_process_local_data`` splits over its own devices) and
# every evaluation pass (``evaluators/common.split_batches``, under the
# classification, saliency, kNN and feature evaluators). An evaluation pads
# its last global batch (with masked copies of example 0), so the size of a
# split never matters, only the batch. The label task runs each process on
# its own devices and pads every batch to them, so its ``eval.batch_size``
# has no constraint. A robustness run also embeds the training split with the
# ``eval.batch_size`` of the linear evaluation it scores; that run's own
# check covered it on its layout (a study's is checked here).


def _task_batches(config) -> list[str]:
  """The dotted keys of the global batches that ``config``'s task splits over the devices."""
  task = config.get("task")
  keys = []
  trains = task in ("pretrain", "supervised", "teacher")
  if trains or (task == "linear_eval" and "linear" in config.get("protocols", ())):
    keys.append("input.global_batch_size")
  # A pretraining run's monitor embeds images only for its kNN (labelled data);
  # its attention-heads monitor keeps one replicated batch.
  evaluates = task in ("supervised", "teacher", *EVALUATES) or (
      task == "pretrain" and int(config.data.get("num_classes", 0) or 0) > 0)
  if evaluates:
    keys.append("eval.batch_size")
  return [key for key in keys if _get(config, key)[0]]


def _study_batches(config) -> list[str]:
  """The batch keys of every stage a study runs (``rows.<row>.…``, ``<stage>.…``)."""
  stages = set(config.study.stages)
  parts: list[tuple[str, ml_collections.ConfigDict]] = []
  if "teacher" in stages:
    parts.append(("teacher.", config.teacher))
  if "train" in stages:
    parts += [(f"rows.{name}.", config.rows[name]) for name in config.study.rows
              if name in config.rows]
  parts += [(f"{name}.", config[name]) for name in EVALUATIONS
            if name in stages and name in config]
  keys = [prefix + key for prefix, stage in parts for key in _task_batches(stage)]
  robustness = config.get("robustness")
  if ("robustness" in stages and robustness is not None
      and robustness.robustness.get("retrieval") and "linear_eval" in config):
    keys.append("linear_eval.eval.batch_size")  # the robustness stage's gallery pass
  return list(dict.fromkeys(keys))


def batch_keys(config: ml_collections.ConfigDict) -> list[str]:
  """Every global batch ``config`` will split over the devices, as dotted keys."""
  if config.get("task") == "study":
    return _study_batches(config)
  return _task_batches(config)


def _describe(num_devices: int, num_processes: int) -> str:
  if num_processes == 1:
    return f"{num_devices} device{'s' if num_devices != 1 else ''} in 1 process"
  return f"{num_devices} devices in {num_processes} processes"


def nearest_multiples(value: int, multiple: int) -> list[int]:
  """The multiples of ``multiple`` on either side of ``value`` (only positive ones)."""
  below = value // multiple * multiple
  return [m for m in (below, below + multiple) if m > 0]


def layout_problems(config: ml_collections.ConfigDict, num_devices: int,
                    num_processes: int) -> list[str]:
  """Every batch of ``config`` that ``num_devices`` devices in ``num_processes``
  processes cannot split, as ``"key=value: …"`` lines naming the layout and the
  nearest batches that it can (none: every batch splits).

  A global batch must be a multiple of the device count (an equal share per
  device) and of the process count (an equal share per process, which its
  own ``num_devices / num_processes`` devices then split). Pure: the layout
  is given, so this runs without JAX (``jax.device_count()`` and
  ``jax.process_count()`` in ``main``).
  """
  if num_devices < 1 or num_processes < 1:
    raise ValueError(f"a layout needs devices and processes, got {num_devices} devices "
                     f"in {num_processes} processes")
  multiple = math.lcm(num_devices, num_processes)
  layout = _describe(num_devices, num_processes)
  found = []
  for key in batch_keys(config):
    value = _get(config, key)[1]
    if not _positive(value) or value % multiple == 0:
      continue  # a bad value is problems()' to report
    nearest = " or ".join(str(m) for m in nearest_multiples(int(value), multiple))
    found.append(f"{key}={value!r}: {layout} cannot split it into equal shares; set "
                 f"--config.{key} to a multiple of {multiple}: {nearest}")
  return found
