"""The saliency teacher: a ResNet encoder with a top-down decoder.

The teacher predicts where people look. It is trained from scratch on human
spatial-attention labels (no ImageNet weights: everything it knows comes from
the attention data) and is later run over the image dataset to make the
pseudo attention labels.

Architecture (U-Net / FPN-like):

* encoder: the project's :class:`~attn_contrastive.models.resnet.ResNet`,
  which exposes its stage outputs ``conv2`` … ``conv5``;
* decoder: starting from ``conv5`` (reduced to ``decoder_width`` channels by
  a 1×1 conv-BN-ReLU), each step upsamples bilinearly to the next finer
  stage, concatenates that stage's 1×1-reduced skip connection and mixes them
  with a 3×3 conv-BN-ReLU. The decoder stops at the finest stage that is not
  finer than the output resolution; if the output resolution is finer still,
  a last bilinear upsampling is followed by one more 3×3 conv-BN-ReLU;
* head: a 1×1 convolution to one channel of logits at ``input / output_stride``
  resolution, interpreted as a log-density over the pixels of each image
  (``log_softmax`` over H×W).

The model is fully convolutional: any input size works, and the output is
``(H // output_stride, W // output_stride)``. Like the encoder, it takes
its convolution module and max pooling as arguments (flax's by default);
:func:`teacher_from_config` picks them from the config's ``conv_impl``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_contrastive.models import forward
from attn_contrastive.models.resnet import STAGE_NAMES, ModuleDef, ResNet


def log_density(logits: jnp.ndarray) -> jnp.ndarray:
  """``log_softmax`` over the pixels of each map: ``[B, H, W]`` → ``[B, H, W]``.

  ``exp`` of the result sums to 1 over each image's pixels.
  """
  b, h, w = logits.shape
  flat = jax.nn.log_softmax(logits.reshape(b, h * w).astype(jnp.float32), axis=-1)
  return flat.reshape(b, h, w)


def output_shape(height: int, width: int, output_stride: int) -> tuple[int, int]:
  """The teacher's map resolution for a ``height`` × ``width`` input."""
  return max(height // output_stride, 1), max(width // output_stride, 1)


def input_hw(config) -> tuple[int, int]:
  """A teacher run's input size from its config: ``data.image_size`` × (``data.image_width``
  or square)."""
  h = int(config.data.image_size)
  w = int(config.data.get("image_width", 0) or 0)
  return h, (w if w > 0 else h)


def map_hw(config) -> tuple[int, int]:
  """A teacher run's output (and training-target) resolution from its config."""
  return output_shape(*input_hw(config), config.model.output_stride)


def _resize(x: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
  """Bilinear resize of an NHWC tensor to spatial size ``hw`` (no-op if equal)."""
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), method="bilinear")


class SaliencyTeacher(nn.Module):
  """ResNet encoder + top-down decoder with skips → per-pixel log-density.

  Attributes:
    depth, width, stem_kernel, stem_stride, stem_pool, bn_momentum:
      the encoder (see :class:`~attn_contrastive.models.resnet.ResNet`).
    decoder_width: channels of every decoder feature map.
    output_stride: input pixels per output pixel (e.g. 2 for a 32×32 map of
      a 64×64 image, 4 for 60×80 of 240×320).
    dtype: computation dtype; the logits and log-density are float32.
    conv, max_pool: the convolution module and max pooling of the encoder and
      decoder (see :class:`~attn_contrastive.models.resnet.ResNet`).
  """
  depth: int = 18
  width: int = 64
  stem_kernel: int = 7
  stem_stride: int = 2
  stem_pool: bool = True
  decoder_width: int = 64
  output_stride: int = 4
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  conv: ModuleDef = nn.Conv
  max_pool: Callable[..., jnp.ndarray] = nn.max_pool

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = True) -> dict[str, jnp.ndarray]:
    """Returns ``{'logits': [B, h, w], 'log_density': [B, h, w]}`` (float32)."""
    target = output_shape(x.shape[1], x.shape[2], self.output_stride)
    feats = ResNet(depth=self.depth, width=self.width, stem_kernel=self.stem_kernel,
                   stem_stride=self.stem_stride, stem_pool=self.stem_pool,
                   dtype=self.dtype, bn_momentum=self.bn_momentum, conv=self.conv,
                   max_pool=self.max_pool, name="encoder")(x, train=train)
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype)

    def conv_bn_relu(y, kernel: int, name: str):
      pad = ((kernel // 2, kernel // 2),) * 2
      y = conv(self.decoder_width, (kernel, kernel), padding=pad, name=f"{name}_conv")(y)
      return nn.relu(norm(name=f"{name}_bn")(y))

    y = conv_bn_relu(feats[STAGE_NAMES[-1]], 1, f"lateral_{STAGE_NAMES[-1]}")
    for stage in reversed(STAGE_NAMES[:-1]):
      skip = feats[stage]
      if skip.shape[1] > target[0] or skip.shape[2] > target[1]:
        break  # finer than the output: stop here
      y = _resize(y, skip.shape[1:3])
      y = jnp.concatenate([y, conv_bn_relu(skip, 1, f"lateral_{stage}")], axis=-1)
      y = conv_bn_relu(y, 3, f"fuse_{stage}")
    if tuple(y.shape[1:3]) != target:
      y = conv_bn_relu(_resize(y, target), 3, "refine")
    logits = self.conv(1, (1, 1), use_bias=True, dtype=jnp.float32,
                       kernel_init=nn.initializers.normal(0.01),
                       name="head")(y.astype(jnp.float32))[..., 0]
    return {"logits": logits, "log_density": log_density(logits)}


def teacher_from_config(cfg) -> SaliencyTeacher:
  """Builds a :class:`SaliencyTeacher` from a ``config.model`` ConfigDict.

  ``cfg.conv_impl`` selects the convolution and max pooling, as in
  :func:`~attn_contrastive.models.resnet.resnet_from_config`.
  """
  # Imported here: the network above knows nothing of the kernels it is handed.
  from attn_contrastive.ops import layers  # pylint: disable=g-import-not-at-top
  conv, max_pool = layers.conv_and_max_pool(cfg.conv_impl)
  return SaliencyTeacher(
      depth=cfg.depth, width=cfg.width, stem_kernel=cfg.stem_kernel,
      stem_stride=cfg.stem_stride, stem_pool=cfg.stem_pool,
      decoder_width=cfg.decoder_width, output_stride=cfg.output_stride,
      dtype=jnp.dtype(cfg.dtype), bn_momentum=cfg.bn_momentum, conv=conv,
      max_pool=max_pool)


def inside(hw: jax.Array, height: int, width: int) -> jax.Array:
  """``[B, height, width]``: whether each pixel lies in its image's top-left ``hw``."""
  rows = jnp.arange(height)[None, :, None] < hw[:, 0, None, None]
  cols = jnp.arange(width)[None, None, :] < hw[:, 1, None, None]
  return rows & cols


def canvas_density(model: nn.Module, variables: Any, images: jax.Array,
                   image_hw: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(density [B, h, w], map_hw [B, 2])``: the teacher on images placed on canvases.

  Each image fills the top-left ``image_hw`` of its uint8 canvas
  (:mod:`attn_contrastive.data.canvases`). The rest is masked out twice: the
  network's normalised input is zero there (what its convolutions pad with at
  an image's edge), and the density is a softmax over the image's own map
  pixels only, the top-left ``map_hw`` (its share of the canvas, in whole map
  pixels) of the teacher's map; it is zero outside them. Traceable: the label
  task and inference on a folder call it inside their jitted functions.
  """
  _, height, width, _ = images.shape
  x = jnp.where(inside(image_hw, height, width)[..., None],
                forward.normalize_images(images, jnp.dtype(model.dtype)), 0)
  logits = model.apply(variables, x, train=False)["logits"].astype(jnp.float32)
  map_h, map_w = logits.shape[1:]
  map_hw = (image_hw * jnp.array([map_h, map_w]) + jnp.array([height, width]) - 1
            ) // jnp.array([height, width])
  mask = inside(map_hw, map_h, map_w)
  flat = jnp.where(mask, logits, -jnp.inf).reshape(len(logits), -1)
  density = jnp.where(mask, jnp.exp(jax.nn.log_softmax(flat, -1)).reshape(mask.shape), 0.0)
  return density, map_hw
