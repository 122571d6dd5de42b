"""The SimCLR model: a ResNet encoder and a projection head."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from attn_contrastive.models.heads import ProjectionHead
from attn_contrastive.models.resnet import ResNet, resnet_from_config


class SimCLR(nn.Module):
  """Encoder + projection MLP; returns the stage maps and ``embedding``."""
  encoder: ResNet
  head: ProjectionHead

  def __call__(self, x, train: bool = True) -> dict[str, jnp.ndarray]:
    features = self.encoder(x, train=train)
    return dict(features, embedding=self.head(features["pooled"], train=train))


def simclr_from_config(model_cfg) -> SimCLR:
  encoder = resnet_from_config(model_cfg)
  head = ProjectionHead(hidden_dim=model_cfg.proj_hidden_dim,
                        out_dim=model_cfg.proj_out_dim,
                        dtype=jnp.dtype(model_cfg.dtype),
                        bn_momentum=model_cfg.bn_momentum)
  return SimCLR(encoder=encoder, head=head)
