"""Optimisers and learning-rate schedules, built from ``config.optim``.

LARS (SimCLR) and SGD with Nesterov momentum (supervised, linear eval) come
from optax; biases and BatchNorm parameters (every 1-D leaf) are masked out
of weight decay and of LARS's trust ratio, as in SimCLR. So is the online
linear probe (``models/simclr.py``), as SimCLR excludes its supervised head:
it learns by plain momentum SGD at the schedule's rate. (SimCLR adds
``weight_decay × ½|W|²`` of that head's kernel to its loss instead; at 1e-6
it is left out here.)
"""
from __future__ import annotations

import jax
import optax

from attn_contrastive import config_checks
from attn_contrastive.models.simclr import PROBE


def _in_probe(path) -> bool:
  return any(getattr(k, "key", None) == PROBE for k in path)


def decay_mask(params):
  """True for weight matrices and conv kernels, False for biases, BN and the probe."""
  return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim > 1 and not _in_probe(path),
                                          params)


def peak_learning_rate(optim_cfg, global_batch: int) -> float:
  """``base_lr × batch / 256`` (linear scaling) or ``base_lr × √batch``."""
  if optim_cfg.lr_scaling == "linear":
    return optim_cfg.base_lr * global_batch / 256
  if optim_cfg.lr_scaling == "sqrt":
    return optim_cfg.base_lr * global_batch ** 0.5
  if optim_cfg.lr_scaling == "none":
    return optim_cfg.base_lr
  raise ValueError(f"optim.lr_scaling={optim_cfg.lr_scaling!r}: use linear, sqrt or none")


def make_schedule(optim_cfg, global_batch: int, total_steps: int,
                  steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up over ``warmup_epochs`` then cosine decay to zero."""
  peak = peak_learning_rate(optim_cfg, global_batch)
  warmup = min(int(round(optim_cfg.warmup_epochs * steps_per_epoch)), total_steps - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=max(warmup, 0),
      decay_steps=max(total_steps, 1), end_value=0.0)


def make_optimizer(optim_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  """LARS or SGD (momentum, optional Nesterov) with masked weight decay."""
  name = optim_cfg.name
  if name == "lars":
    return optax.lars(schedule, weight_decay=optim_cfg.weight_decay,
                      weight_decay_mask=decay_mask, trust_coefficient=optim_cfg.trust_coefficient,
                      eps=0.0, trust_ratio_mask=decay_mask, momentum=optim_cfg.momentum,
                      nesterov=False)
  if name == "sgd":
    return optax.chain(
        optax.add_decayed_weights(optim_cfg.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov))
  raise ValueError(f"optim.name={name!r}: use one of {config_checks.OPTIMIZERS}")


#: SimCLR's ``fine_tune_after_block``: the blocks of a ResNet by the name its parameters
#: start with (the stem 0, conv2 … conv5 1 … 4); the classifier is always trained.
FINETUNE_BLOCKS = {"stem": 0, "conv2": 1, "conv3": 2, "conv4": 3, "conv5": 4}


def frozen_labels(params, after_block: int):
  """``"frozen"`` for each parameter of a block up to ``after_block`` (-1: none),
  ``"trained"`` for the others."""
  def label(path, _):
    block = FINETUNE_BLOCKS.get(str(getattr(path[0], "key", path[0])).split("_")[0])
    return "frozen" if block is not None and block <= after_block else "trained"
  return jax.tree_util.tree_map_with_path(label, params)


def freeze_through(tx: optax.GradientTransformation, after_block: int
                   ) -> optax.GradientTransformation:
  """``tx`` on the blocks after ``after_block`` only (SimCLR's fine-tuning: -1 trains
  every block, 4 the classifier alone); the frozen blocks get no update."""
  if after_block < 0:
    return tx
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                               lambda params: frozen_labels(params, after_block))
