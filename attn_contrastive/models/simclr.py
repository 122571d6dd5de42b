"""The SimCLR model: a ResNet encoder, a projection head and optional attention heads."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from attn_contrastive.models.attention import AttentionHeads, attention_heads_from_config
from attn_contrastive.models.heads import ProjectionHead
from attn_contrastive.models.resnet import ResNet, resnet_from_config

ALL = slice(None)


class SimCLR(nn.Module):
  """Encoder + projection MLP; returns the stage maps and ``embedding``.

  With ``attention`` set, also ``attention_logits``: ``{stage: [B', h, w]}``.
  ``project`` and ``attend`` pick the rows of the batch that the projection
  head and the attention heads see (``None``: that head is skipped), so a
  batch mixing SimCLR views with human-attention images (the co-train row)
  keeps each head's BatchNorm on its own data.
  """
  encoder: ResNet
  head: ProjectionHead
  attention: AttentionHeads | None = None

  def __call__(self, x, train: bool = True, *, project: slice | None = ALL,
               attend: slice | None = ALL) -> dict[str, jnp.ndarray]:
    features = self.encoder(x, train=train)
    out = dict(features)
    if project is not None:
      out["embedding"] = self.head(features["pooled"][project], train=train)
    if self.attention is not None and attend is not None:
      out["attention_logits"] = self.attention({k: v[attend] for k, v in features.items()},
                                               train=train)
    return out


def simclr_from_config(model_cfg, attention_cfg=None) -> SimCLR:
  """Builds :class:`SimCLR`; attention heads when ``attention_cfg.enabled``."""
  encoder = resnet_from_config(model_cfg)
  head = ProjectionHead(hidden_dim=model_cfg.proj_hidden_dim,
                        out_dim=model_cfg.proj_out_dim,
                        num_layers=model_cfg.get("proj_num_layers", 2),
                        dtype=jnp.dtype(model_cfg.dtype),
                        bn_momentum=model_cfg.bn_momentum)
  attention = None
  if attention_cfg is not None and attention_cfg.enabled:
    attention = attention_heads_from_config(attention_cfg, model_cfg)
  return SimCLR(encoder=encoder, head=head, attention=attention)
