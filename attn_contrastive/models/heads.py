"""Heads on top of the encoder: SimCLR's projection MLP."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class ProjectionHead(nn.Module):
  """SimCLR's 2-layer projection MLP: Dense → BN → ReLU → Dense.

  The contrastive loss is applied to its output; linear evaluation uses the
  encoder's pooled feature beneath it.
  """
  hidden_dim: int = 2048
  out_dim: int = 128
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=1e-5, dtype=self.dtype)(x)
    x = nn.relu(x)
    return nn.Dense(self.out_dim, dtype=jnp.float32)(x).astype(jnp.float32)
