"""The SimCLR model: a ResNet encoder, a projection head, optional attention heads
and an optional online linear probe."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_contrastive.models.attention import AttentionHeads, attention_heads_from_config
from attn_contrastive.models.heads import ProjectionHead
from attn_contrastive.models.resnet import ResNet, resnet_from_config

ALL = slice(None)

#: The online probe's parameters sit under this name (the ``probe`` field);
#: ``train/optim.py`` keeps them out of weight decay and LARS's trust ratio.
PROBE = "probe"


class SimCLR(nn.Module):
  """Encoder + projection MLP; returns the stage maps and ``embedding``.

  With ``attention`` set, also ``attention_logits``: ``{stage: [B', h, w]}``.
  With ``probe`` set (SimCLR's ``lineareval_while_pretraining``), also
  ``probe_logits`` in training: a :class:`LinearProbe` on the pooled features
  of the projected rows behind a ``stop_gradient``, so it learns from the
  encoder without teaching it anything. In evaluation mode it is left out
  (an evaluator applies ``probe`` to the features itself), so the network
  evaluates from its encoder's and heads' variables alone. ``project`` and
  ``attend`` pick the rows of the batch that the projection head (and
  probe) and the attention heads see (``None``: that head is skipped), so a
  batch mixing SimCLR views with human-attention images (the co-train row)
  keeps each head's BatchNorm on its own data.
  """
  encoder: ResNet
  head: ProjectionHead
  attention: AttentionHeads | None = None
  probe: LinearProbe | None = None

  def __call__(self, x, train: bool = True, *, project: slice | None = ALL,
               attend: slice | None = ALL) -> dict[str, jnp.ndarray]:
    features = self.encoder(x, train=train)
    out = dict(features)
    if project is not None:
      out["embedding"] = self.head(features["pooled"][project], train=train)
      if self.probe is not None and (train or self.is_initializing()):
        frozen = jax.lax.stop_gradient(features["pooled"][project].astype(jnp.float32))
        out["probe_logits"] = self.probe(frozen, train=train)
    if self.attention is not None and attend is not None:
      out["attention_logits"] = self.attention({k: v[attend] for k, v in features.items()},
                                               train=train)
    return out


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


def simclr_from_config(model_cfg, attention_cfg=None, num_classes: int = 0) -> SimCLR:
  """Builds :class:`SimCLR`; attention heads when ``attention_cfg.enabled``, an
  online linear probe over ``num_classes`` classes when it is positive."""
  encoder = resnet_from_config(model_cfg)
  head = ProjectionHead(hidden_dim=model_cfg.proj_hidden_dim,
                        out_dim=model_cfg.proj_out_dim,
                        num_layers=model_cfg.get("proj_num_layers", 2),
                        dtype=jnp.dtype(model_cfg.dtype),
                        bn_momentum=model_cfg.bn_momentum)
  attention = None
  if attention_cfg is not None and attention_cfg.enabled:
    attention = attention_heads_from_config(attention_cfg, model_cfg)
  probe = LinearProbe(num_classes, model_cfg.bn_momentum) if num_classes > 0 else None
  return SimCLR(encoder=encoder, head=head, attention=attention, probe=probe)
