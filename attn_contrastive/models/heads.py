"""Heads on top of the encoder: SimCLR's projection MLP."""
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
