"""The convolution module and max pooling that a config's ``conv_impl`` selects.

Networks take their convolution and pooling as arguments (``conv``,
``max_pool``; flax's by default, as in flax's ImageNet example), so they say
nothing of CPU tuning. The model builders (``resnet_from_config``,
``teacher_from_config``) call :func:`conv_and_max_pool` with the config's
``conv_impl`` and hand the result to the networks: this is the one place
where a config's choice of convolution path becomes layers.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from attn_contrastive.ops import conv as conv_lib
from attn_contrastive.ops import pool as pool_lib

ModuleDef = Any


def conv_and_max_pool(impl: str = "auto") -> tuple[ModuleDef, Callable[..., jax.Array]]:
  """``(conv, max_pool)`` for ``impl``: a module like ``nn.Conv``, a function like ``nn.max_pool``.

  Args:
    impl: ``'auto'`` (the CPU gradients on the CPU backend, XLA's own
      operations elsewhere), ``'xla'`` (always XLA's) or ``'cpu_matmul'``
      (always the CPU gradients); see :mod:`attn_contrastive.ops.conv` and
      :mod:`attn_contrastive.ops.pool`. ``ATTN_CONTRASTIVE_CONV_IMPL``
      replaces ``'auto'`` when set.

  Returns:
    ``nn.Conv`` with the ``conv_general_dilated`` of ``impl``, and the max
    pooling of ``impl`` with ``flax.linen.max_pool``'s signature.

  Raises:
    ValueError: for an unknown ``impl``.
  """
  conv = functools.partial(
      nn.Conv, conv_general_dilated=conv_lib.conv_general_dilated_fn(impl))
  return conv, pool_lib.max_pool_fn(impl)
