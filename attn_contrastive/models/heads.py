"""Heads on the encoder's pooled feature: SimCLR's projection MLP and the linear
classifiers (the online probe of pretraining, linear evaluation's head).

The attention heads, which sit on the encoder's stages rather than on its
pooled feature, are in :mod:`attn_contrastive.models.attention`.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class ProjectionHead(nn.Module):
  """SimCLR's projection MLP, as its reference implementation builds it.

  ``num_layers`` bias-free dense layers (kernels drawn from N(0, 0.01)), each
  followed by BatchNorm: the middle ones with centring and a ReLU, the output
  one with scaling but no centring, no bias and no ReLU. Two layers is the
  SimCLR paper's head (v2 uses three). The contrastive loss is applied to its
  output; linear evaluation uses the encoder's pooled feature beneath it.
  """
  hidden_dim: int = 2048
  out_dim: int = 128
  num_layers: int = 2
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.num_layers < 1:
      raise ValueError(f"projection head needs at least one layer, got {self.num_layers}")
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype,
                              kernel_init=nn.initializers.normal(0.01))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5)
    for i in range(self.num_layers - 1):
      x = dense(self.hidden_dim, name=f"hidden{i}")(x)
      x = nn.relu(norm(dtype=self.dtype, name=f"hidden{i}_bn")(x))
    x = dense(self.out_dim, name="output")(x)
    return norm(use_bias=False, dtype=jnp.float32, name="output_bn")(x).astype(jnp.float32)


class LinearProbe(nn.Module):
  """A linear classifier of features that learns stably at SimCLR's learning rates.

  SimCLR's supervised head is one dense layer on the raw features, trained
  by momentum SGD at the pretraining rate (4.8 on ImageNet). At such rates
  that can diverge, since the loss's curvature grows with the features'
  scale and dimension, which depend on the encoder (``docs/results.md``,
  recipe fidelity). Here the features are first standardised per dimension
  (BatchNorm without scale or bias, as MAE's linear probe; running
  statistics at evaluation) and divided by √D, so their expected squared
  norm is 1 whatever the encoder: plain momentum SGD is stable up to a rate
  of ≈ 7. Both steps are affine, so this is still a linear classifier of the
  features. The dense layer: kernel N(0, 0.01), zero bias, float32.
  """
  num_classes: int
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                     use_scale=False, use_bias=False, dtype=jnp.float32)(x)
    x = x * x.shape[-1] ** -0.5
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(0.01))(x)


class LinearHead(nn.Module):
  """A linear classifier, zero-initialised as in SimCLR's linear evaluation."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # the loop's state creation passes it
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)
