"""ResNet-18/50 encoders (He et al. 2016, torchvision's v1.5 layout) in Flax.

The encoder returns the output of every stage (``conv2`` … ``conv5`` in He et
al.'s naming) besides the pooled feature, because the attention heads of the
paper sit on intermediate stages. Parameter counts match torchvision exactly
(with a 1000-class head: ResNet-18 11,689,512; ResNet-50 25,557,032): convs
carry no bias, padding is symmetric ``k // 2`` as in PyTorch, and the stride
of a bottleneck sits on its 3×3 convolution.

The convolution module and the stem's max pooling are arguments (``conv``,
``max_pool``; flax's ``nn.Conv`` and ``nn.max_pool`` by default), as in
flax's ImageNet example, so the same network runs with other kernels;
:func:`resnet_from_config` picks them from the config's ``conv_impl``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

STAGE_NAMES = ("conv2", "conv3", "conv4", "conv5")
STAGE_SIZES = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}
STAGE_STRIDES = (1, 2, 2, 2)


def block_name(stage: str, index: int) -> str:
  """The name of block ``index`` (from 0) of ``stage``: ``conv4_block1``."""
  return f"{stage}_block{index}"


def stage_output_block(depth: int, stage: str) -> str:
  """The block whose output is ``stage``'s output (the stage's last), for a ResNet-``depth``.

  A caller that needs a stage's activation inside the network (Grad-CAM's
  gradient with respect to it) finds it at this block's output.
  """
  if stage not in STAGE_NAMES:
    raise ValueError(f"unknown stage {stage!r}: choose one of {STAGE_NAMES}")
  if depth not in STAGE_SIZES:
    raise ValueError(f"ResNet depth {depth} is not one of {sorted(STAGE_SIZES)}")
  return block_name(stage, STAGE_SIZES[depth][STAGE_NAMES.index(stage)] - 1)


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((kernel // 2, kernel // 2),) * 2


class BasicBlock(nn.Module):
  """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), (self.strides,) * 2, padding=_pad(3))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3), padding=_pad(3))(y)
    # Zero-initialised last scale: each block starts as the identity.
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, (1, 1), (self.strides,) * 2, padding=_pad(1),
                    name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """1×1 reduce, 3×3 (strided), 1×1 expand by 4, with a shortcut."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  expansion = 4

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1), padding=_pad(1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides,) * 2, padding=_pad(3))(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1), padding=_pad(1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if x.shape != y.shape:
      x = self.conv(self.filters * 4, (1, 1), (self.strides,) * 2,
                    padding=_pad(1), name="proj_conv")(x)
      x = self.norm(name="proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A ResNet encoder that exposes every stage.

  Attributes:
    depth: 10, 18, 34 (basic blocks) or 50, 101 (bottlenecks).
    width: channels of the first stage (64 in the paper's ResNets; small
      values such as 16 make laptop-sized models).
    stem_kernel, stem_stride, stem_pool: the stem; (7, 2, True) is ImageNet's,
      (3, 1, True) suits 64-px images, (3, 1, False) 32-px ones.
    num_classes: adds a linear classifier on the pooled feature when set.
    dtype: computation dtype (bfloat16 on accelerators); parameters stay fp32.
    bn_momentum: BatchNorm running-average momentum.
    conv: the convolution module, ``nn.Conv`` or a partial of it (e.g. with
      another ``conv_general_dilated``); called with ``use_bias=False`` and
      ``dtype``.
    max_pool: the stem's max pooling, with ``nn.max_pool``'s signature.
    frozen_through: stages up to this one (stem 0, conv2 1 … conv5 4; -1 none)
      run as at inference even in training (BatchNorm normalises with its
      running statistics and leaves them as they are) and pass no gradient
      back: SimCLR's fine-tuning with ``fine_tune_after_block``, where
      frozen blocks are not trainable layers.
  """
  depth: int = 50
  width: int = 64
  stem_kernel: int = 7
  stem_stride: int = 2
  stem_pool: bool = True
  num_classes: int | None = None
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  conv: ModuleDef = nn.Conv
  max_pool: Callable[..., jnp.ndarray] = nn.max_pool
  frozen_through: int = -1

  @property
  def block_cls(self):
    return BasicBlock if self.depth < 50 else BottleneckBlock

  @property
  def feature_dim(self) -> int:
    return self.width * 8 * self.block_cls.expansion

  @nn.compact
  def __call__(self, x, train: bool = True) -> dict[str, jnp.ndarray]:
    """Returns ``{'conv2'..'conv5': stage maps, 'pooled': [B, D], 'logits'?}``."""
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"ResNet depth {self.depth} is not one of {sorted(STAGE_SIZES)}")
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)

    def norm_of(stage: int):
      return functools.partial(
          nn.BatchNorm, use_running_average=not train or stage <= self.frozen_through,
          momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype)

    def after(stage: int, y):
      return jax.lax.stop_gradient(y) if stage == self.frozen_through else y

    k, s = self.stem_kernel, self.stem_stride
    x = conv(self.width, (k, k), (s, s), padding=_pad(k), name="stem_conv")(x)
    x = nn.relu(norm_of(0)(name="stem_bn")(x))
    if self.stem_pool:
      x = self.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    x = after(0, x)
    out = {}
    for i, (n_blocks, stride) in enumerate(zip(STAGE_SIZES[self.depth], STAGE_STRIDES)):
      for j in range(n_blocks):
        x = self.block_cls(self.width * 2**i, stride if j == 0 else 1, conv, norm_of(i + 1),
                           name=block_name(STAGE_NAMES[i], j))(x)
      x = out[STAGE_NAMES[i]] = after(i + 1, x)
    out["pooled"] = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, dtype=jnp.float32,
                               name="classifier")(out["pooled"])
    return out


def resnet_from_config(cfg, num_classes: int | None = None, frozen_through: int = -1
                       ) -> ResNet:
  """Builds a :class:`ResNet` from a ``config.model`` ConfigDict.

  ``cfg.conv_impl`` ('auto', 'xla' or 'cpu_matmul') selects the convolution
  and max pooling (:func:`attn_contrastive.ops.layers.conv_and_max_pool`):
  'auto' hands the network faster CPU gradients on the CPU backend.
  """
  # Imported here: the network above knows nothing of the kernels it is handed.
  from attn_contrastive.ops import layers  # pylint: disable=g-import-not-at-top
  conv, max_pool = layers.conv_and_max_pool(cfg.conv_impl)
  return ResNet(depth=cfg.depth, width=cfg.width, stem_kernel=cfg.stem_kernel,
                stem_stride=cfg.stem_stride, stem_pool=cfg.stem_pool,
                num_classes=num_classes, dtype=jnp.dtype(cfg.dtype),
                bn_momentum=cfg.bn_momentum, conv=conv, max_pool=max_pool,
                frozen_through=frozen_through)
