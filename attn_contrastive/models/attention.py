"""Attention heads: one saliency logit per location of chosen ResNet stages.

Each head is a small 1×1-conv network on a stage's output (conv3 and conv4 by
default, where attention modules sit in the cited prior work). Its logits,
passed through a spatial softmax, are the model's attention map m_i, trained
towards the teacher's map by :func:`attn_contrastive.losses.attention_loss`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class AttentionHead(nn.Module):
  """1×1 conv → BN → ReLU → 1×1 conv to one logit per location; ``[B, h, w]``."""
  width: int = 64
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
    x = nn.Conv(self.width, (1, 1), use_bias=False, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=1e-5, dtype=self.dtype)(x)
    x = nn.relu(x)
    return nn.Conv(1, (1, 1), dtype=jnp.float32)(x)[..., 0].astype(jnp.float32)


class AttentionHeads(nn.Module):
  """One :class:`AttentionHead` per named stage; returns ``{stage: logits}``."""
  stages: Sequence[str] = ("conv3", "conv4")
  width: int = 64
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, features: dict[str, jnp.ndarray],
               train: bool = True) -> dict[str, jnp.ndarray]:
    return {s: AttentionHead(self.width, self.dtype, self.bn_momentum,
                             name=f"attention_{s}")(features[s], train=train)
            for s in self.stages}


class WithAttention(nn.Module):
  """A network whose stage outputs also feed attention heads.

  Wraps a :class:`~attn_contrastive.models.resnet.ResNet` (the supervised
  rows): returns its outputs plus ``attention_logits`` ``{stage: [B, h, w]}``.
  """
  network: nn.Module
  attention: AttentionHeads

  def __call__(self, x, train: bool = True) -> dict[str, jnp.ndarray]:
    out = self.network(x, train=train)
    return dict(out, attention_logits=self.attention(out, train=train))


def spatial_softmax(logits: jnp.ndarray) -> jnp.ndarray:
  """``[B, h, w]`` logits → maps that sum to 1 over each image's locations."""
  b = logits.shape[0]
  return jax.nn.softmax(logits.reshape(b, -1).astype(jnp.float32), -1).reshape(logits.shape)


def attention_heads_from_config(attn_cfg, model_cfg) -> AttentionHeads:
  """Builds the heads from ``config.attention`` and ``config.model``."""
  return AttentionHeads(stages=tuple(attn_cfg.stages), width=attn_cfg.width,
                        dtype=jnp.dtype(model_cfg.dtype),
                        bn_momentum=model_cfg.bn_momentum)
