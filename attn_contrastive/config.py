"""Shared config pieces and the checks that guard them.

Each file in ``configs/`` is one experiment with ``get_config(arg)``; the
pieces here keep their common defaults in one place. ``check_overrides``
turns a mistyped ``--config.key=value`` into a message naming the key and
the nearest valid ones.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Iterable

import ml_collections

DATA_CHOICES = ("synthetic", "imagenet")

#: Keys that were renamed, ``{old name: new name}``, each the end of a dotted key
#: (``checkpoint`` anywhere, ``label.batch_size`` in a label config, also inside a
#: study's ``label`` stage): a config given the old one is refused with the new
#: one's name. The label task's batch and threads are named as every other
#: stage's, so the keys a smaller run overrides are the same everywhere.
RENAMED_KEYS = {"checkpoint": "run_dir", "label.batch_size": "eval.batch_size",
                "label.num_threads": "eval.num_threads"}


def renamed_key(key: str) -> str | None:
  """``key`` (dotted) under its new name if it ends with a renamed key, else None."""
  for old, new in RENAMED_KEYS.items():
    if key == old or key.endswith("." + old):
      return key[:len(key) - len(old)] + new
  return None


def parse_arg(arg: str | None, choices: dict[str, Iterable[str]]) -> dict[str, str]:
  """Parses a ``:a,b`` config argument into ``{group: choice}``.

  ``choices`` maps a group name to its allowed values, the first being the
  default. Unknown words are refused with the allowed ones listed.
  """
  picked = {group: tuple(vals)[0] for group, vals in choices.items()}
  for word in filter(None, (arg or "").split(",")):
    groups = [g for g, vals in choices.items() if word in vals]
    if not groups:
      allowed = sorted(v for vals in choices.values() for v in vals)
      raise ValueError(f"unknown config argument {word!r}; choose from {allowed}")
    picked[groups[0]] = word
  return picked


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file named as ``path.py[:arg]``.

  The one way a config file is read outside ``--config`` (which
  ml_collections parses itself): by :func:`sibling_config`, by ``main`` to
  name a mistyped key, by the tests and the benchmarks.
  """
  path, _, arg = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def sibling_config(config_file: str, name: str, arg: str | None = None
                   ) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of the config file ``name`` beside ``config_file``.

  A table row that is another row plus attention (or a stage that embeds
  another run's recipe) builds on that file's config instead of copying it.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
  return load_config_file(f"{path}:{arg}" if arg else path)


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every training task (synthetic-data sizes)."""
  c = ml_collections.ConfigDict()
  c.task = "pretrain"
  c.seed = 0
  c.init_checkpoint = ""

  # `max_bad_images`: records of a split whose image cannot be decoded that a
  # run may skip (each replaced by the next record, logged with its file name);
  # one more stops the run naming them (attn_contrastive/data/images.py).
  c.data = ml_collections.ConfigDict(dict(
      name="salient_objects/classification", data_dir="", train_split="train",
      eval_split="validation", image_size=64, num_classes=10, auto_prepare=True,
      max_bad_images=100))
  c.input = ml_collections.ConfigDict(dict(
      global_batch_size=256, num_threads=2, prefetch=4, num_workers=0))
  # SimCLR's views: random resized crop (TF's sampler, area `area_min`-1,
  # at least 10% of the image), flip, colour jitter (p_jitter; brightness as
  # `jitter_impl`: "simclrv1", the SimCLR paper's additive offset, or
  # "simclrv2", a factor), grayscale (p_gray), blur (p_blur, kernel 10% of
  # the view, zero padding). `views_on`: "host" makes whole SimCLR views in the
  # input pipeline; "device" crops there and runs the colour ops in the step.
  c.aug = ml_collections.ConfigDict(dict(
      strength=1.0, p_jitter=0.8, p_gray=0.2, p_blur=0.5, area_min=0.08,
      jitter_impl="simclrv1", eval_crop_fraction=0.875, views_on="host"))
  c.model = ml_collections.ConfigDict(dict(
      depth=18, width=16, stem_kernel=3, stem_stride=2, stem_pool=True,
      dtype="float32", conv_impl="auto", bn_momentum=0.9,
      proj_hidden_dim=256, proj_out_dim=64, proj_num_layers=2))
  c.loss = ml_collections.ConfigDict(dict(temperature=0.2, label_smoothing=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
      momentum=0.9, nesterov=False, trust_coefficient=1e-3, warmup_epochs=2.0))
  # `online_probe` (SimCLR runs with labelled data): a linear classifier on the
  # frozen pooled features, trained in the same step (SimCLR's
  # lineareval_while_pretraining); it does not change the encoder's training.
  # `skip_nonfinite_steps`: 0 stops the run at the first non-finite loss; N > 0
  # skips up to N steps whose loss or gradient is not finite (no update, the
  # BatchNorm statistics kept; counted in the optimiser state, logged as
  # skipped_steps), and stops past N. `resume_with_changes`: resume a workdir's
  # checkpoint although the config differs from the one that wrote it (refused
  # otherwise, naming the differing keys).
  c.train = ml_collections.ConfigDict(dict(
      num_epochs=10.0, num_steps=-1, log_every=10, checkpoint_every=200,
      keep_checkpoints=3, async_checkpoint=True, eval_every=-1, profile=False,
      online_probe=False, skip_nonfinite_steps=0, resume_with_changes=False))
  # Every evaluator (see attn_contrastive.evaluators.common): the global batch,
  # the first `max_examples` of the split (-1: all) and the host threads.
  # The pretraining monitor (evaluators/knn.py): a weighted kNN classifier,
  # `knn_k` neighbours voting exp(cosine / `knn_temperature`), whose bank is
  # the first `knn_bank_size` training images (-1: all); with attention heads,
  # their KLD and CC on the first `attention_examples` validation images, and
  # `attention_images` image | target | head strips in TensorBoard.
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=500, max_examples=-1, num_threads=2, knn_k=200, knn_temperature=0.07,
      knn_bank_size=-1, attention_examples=64, attention_images=4))
  # Attention heads trained towards teacher maps (L_attn); off by default.
  # `map_size`: side of the per-view map made on the host (the largest head's
  # resolution); it is resized on device to each head. `fixation_quantile` < 0
  # uses the teacher map as the NSS fixation density. `labels`: "teacher"
  # (maps from `maps_dir`, the label task's output for the training split) or
  # "human" (the co-train row: each example also brings a random image and
  # human map of `human_data`/`human_split`, and the heads learn on those).
  # `cotrain_bn`: "separate" (the human images get a forward pass of their
  # own, so the encoder's BatchNorm statistics are the views' alone) or
  # "joint" (one batch of views and human images). α and β weigh the
  # per-image KLD and NSS, averaged over the batch, against NT-Xent at
  # SimCLR's scale (the sum of both views' mean cross-entropies).
  # `eval_maps_dir` (optional, teacher rows): the label task's maps of
  # `data.eval_split`, the targets of the heads' monitor during pretraining
  # (the co-train row uses `human_data`'s "validation" split instead).
  # `teacher_checkpoint` (optional): the teacher that must have made those
  # maps (their metadata.json names it); empty accepts any teacher's maps.
  c.attention = ml_collections.ConfigDict(dict(
      enabled=False, stages=("conv3", "conv4"), width=64, alpha=1.0, beta=0.1,
      fixation_quantile=-1.0, map_size=16, maps_dir="", labels="teacher",
      human_data="salient_objects/human_attention", human_split="train",
      cotrain_bn="separate", eval_maps_dir="", teacher_checkpoint=""))
  return c


def imagenet_data(c: ml_collections.ConfigDict) -> None:
  """Switches ``c`` to ImageNet (tfds ``imagenet2012``) at 224 px, ResNet stem."""
  c.data.name = "imagenet2012"
  c.data.image_size = 224
  c.data.num_classes = 1000
  c.data.auto_prepare = False
  c.input.num_threads = 16
  c.input.num_workers = 8
  c.model.update(dict(width=64, stem_kernel=7, stem_stride=2, stem_pool=True,
                      dtype="bfloat16"))
  # On an accelerator the colour ops are a sliver of a ResNet-50 step, and moving
  # them off the host cuts its CPU per view by 1.7x (benchmarks/README.md).
  c.aug.views_on = "device"
  c.train.log_every = 100
  c.train.checkpoint_every = 2000
  # A multiple of 256, so that every pod slice up to a v5e-256 and any number
  # of 8-GPU nodes splits it (config_checks.layout_problems).
  c.eval.update(dict(batch_size=1024, num_threads=16))


#: The ``:cifar10`` argument of the configs that read CIFAR-10 (tfds ``cifar10``).
CIFAR10_CHOICES = (*DATA_CHOICES, "cifar10")


def cifar10_data(c: ml_collections.ConfigDict) -> None:
  """Switches a training config ``c`` to CIFAR-10 (tfds ``cifar10``) at 32 px.

  SimCLR's CIFAR stem (its appendix B.9): a 3×3 stride-1 convolution and no
  max pooling, so the last stage still sees 4×4. The held-out split is
  ``test`` (CIFAR-10 has no validation split).
  """
  c.data.update(dict(name="cifar10", image_size=32, num_classes=10, auto_prepare=False,
                     eval_split="test"))
  c.input.update(dict(num_threads=8, num_workers=4))
  c.model.update(dict(width=64, stem_kernel=3, stem_stride=1, stem_pool=False))
  c.eval.update(dict(batch_size=1000, num_threads=8))


def flatten(tree: dict, sep: str = ".", prefix: str = "") -> dict:
  """A nested dict as ``{"a<sep>b": leaf}`` (configs' dotted keys, results' metric paths)."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      flat.update(flatten(v, sep, f"{prefix}{k}{sep}"))
    else:
      flat[f"{prefix}{k}"] = v
  return flat


def _flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in cfg.items():
    path = f"{prefix}{k}"
    keys.append(path)
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(_flat_keys(v, path + "."))
  return keys


def unknown_key_message(key: str, cfg: ml_collections.ConfigDict) -> str | None:
  """A helpful refusal for ``key`` if ``cfg`` has no such (dotted) key."""
  valid = _flat_keys(cfg)
  if key in valid:
    return None
  renamed = renamed_key(key)
  if renamed in valid:
    return f"config key {key!r} is now {renamed!r}: pass --config.{renamed}=... instead"
  near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
  parent = key.rpartition(".")[0]
  siblings = [k for k in valid if k.rpartition(".")[0] == parent]
  msg = f"unknown config key {key!r}."
  if near:
    msg += f" Did you mean {', '.join(repr(n) for n in near)}?"
  msg += f" Valid keys at that level: {', '.join(sorted(siblings)) or '(none)'}"
  return msg


def check_overrides(argv: list[str], cfg: ml_collections.ConfigDict,
                    flag: str = "config") -> None:
  """Raises ``KeyError`` with a helpful message for any unknown override."""
  for arg in argv:
    if arg.startswith(f"--{flag}."):
      key = arg[len(flag) + 3:].split("=", 1)[0]
      msg = unknown_key_message(key, cfg)
      if msg:
        raise KeyError(msg)
