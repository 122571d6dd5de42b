"""The network a training run's config describes, and the encoder inside it.

A run's ``config.json`` is all a later stage needs to rebuild its network:
:func:`build_model` turns the config of a ``pretrain`` run into its SimCLR
model, that of a ``supervised`` run into its ResNet classifier (and that of
a ``teacher`` run into the saliency teacher), each with
the attention heads and online probe the config enables, exactly as the run
trained them, so a checkpoint's variables fit the rebuilt network.
:func:`encoder_of` finds the ResNet encoder inside either, for evaluations
that read the pooled feature beneath every head.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn

from attn_contrastive.models.attention import WithAttention, attention_heads_from_config
from attn_contrastive.models.resnet import ResNet, resnet_from_config
from attn_contrastive.models.simclr import SimCLR, simclr_from_config
from attn_contrastive.models.teacher import teacher_from_config


def probe_classes(config) -> int:
  """Classes of the online linear probe: ``data.num_classes`` if it is on, else 0."""
  if not config.train.get("online_probe", False):
    return 0
  return max(int(config.data.get("num_classes", 0) or 0), 0)


def build_model(config) -> nn.Module:
  """The network of a ``pretrain``, ``supervised`` or ``teacher`` config.

  ``pretrain``: SimCLR, with attention heads if ``config.attention`` enables
  them and the online probe if ``config.train.online_probe`` is on.
  ``supervised``: a ResNet with a classifier, wrapped with attention heads if
  they are enabled; a fine-tuning run's blocks up to ``finetune.after_block``
  frozen (their BatchNorm statistics too). ``teacher``: the saliency teacher (read by inference on a
  folder and by export; no evaluation task reads a teacher run).
  """
  attn = config.get("attention")
  if config.task == "pretrain":
    return simclr_from_config(config.model, attn, probe_classes(config))
  if config.task == "supervised":
    finetune = config.get("finetune")
    model = resnet_from_config(config.model, num_classes=config.data.num_classes,
                               frozen_through=int(finetune.after_block) if finetune else -1)
    if attn is not None and attn.enabled:
      model = WithAttention(model, attention_heads_from_config(attn, config.model))
    return model
  if config.task == "teacher":
    return teacher_from_config(config.model)
  raise ValueError(f"a run of task {config.task!r} has no network to rebuild here: "
                   "point at the workdir of a pretrain, supervised or teacher run")


def encoder_of(model: nn.Module, variables: dict[str, Any]) -> tuple[ResNet, dict[str, Any]]:
  """The ResNet encoder of a pretrain or supervised model, and its part of ``variables``.

  SimCLR's ``encoder``; a supervised ResNet without its classifier; the
  network inside :class:`WithAttention`. The variables are the same arrays,
  not copies.
  """
  def part(name):
    return {k: v[name] for k, v in variables.items() if name in v}

  if isinstance(model, SimCLR):
    return model.encoder, part("encoder")
  if isinstance(model, WithAttention):
    return encoder_of(model.network, part("network"))
  if isinstance(model, ResNet):
    trunk = {k: {n: x for n, x in v.items() if n != "classifier"} for k, v in variables.items()}
    return model.clone(num_classes=None), trunk
  raise TypeError(f"no ResNet encoder in {type(model).__name__}")
