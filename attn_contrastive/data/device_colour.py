"""The colour half of SimCLR's views, in the jitted step (``aug.views_on = "device"``).

With views made on the host (``data/augment.py``'s :func:`simclr_view`),
the colour ops cost the host as much as the crops; here the host only
decodes, crops, flips and resizes (:func:`augment.simclr_geometry`, uint8)
and draws every colour parameter as the host path would, and the
accelerator applies them: colour jitter (brightness, contrast, saturation,
hue, in each view's drawn order), grayscale, blur, the final clip and the
rounding to 256 levels the host path's uint8 views have. Each op is the
host path's (OpenCV's RGB/HSV conversions, the ITU-R 601 luma, SimCLR's
zero-padded Gaussian of a tenth of the view's side), so for the same draws
the views agree to float rounding, and their distribution is the host
path's (``tests/test_device_colour.py``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attn_contrastive.data import augment

_COL = {name: i for i, name in enumerate(augment.COLOUR_PARAMS)}
#: ITU-R 601 luma weights (OpenCV's RGB2GRAY).
_LUMA = jnp.array([0.299, 0.587, 0.114], jnp.float32)


def _rgb_to_hsv(x: jax.Array) -> jax.Array:
  """OpenCV's float RGB → HSV: H in degrees [0, 360), S and V in [0, 1]."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = jnp.max(x, axis=-1)
  diff = v - jnp.min(x, axis=-1)
  s = diff / (jnp.abs(v) + jnp.finfo(jnp.float32).eps)
  scale = 60.0 / (diff + jnp.finfo(jnp.float32).eps)
  h = jnp.where(v == r, (g - b) * scale,
                jnp.where(v == g, (b - r) * scale + 120.0, (r - g) * scale + 240.0))
  h = jnp.where(h < 0, h + 360.0, h)
  return jnp.stack([h, s, v], axis=-1)


def _hsv_to_rgb(x: jax.Array) -> jax.Array:
  """OpenCV's float HSV → RGB (hues past 360 degrees wrap)."""
  h, s, v = x[..., 0] / 60.0, x[..., 1], x[..., 2]
  h = h - 6.0 * jnp.floor(h / 6.0)
  sector = jnp.clip(jnp.floor(h), 0, 5).astype(jnp.int32)
  f = h - sector
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  table = jnp.stack([jnp.stack(c, -1) for c in
                     ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], -2)
  return jnp.take_along_axis(table, sector[..., None, None], axis=-2)[..., 0, :]


def _brightness(x, p):
  return jnp.clip(x * p[_COL["brightness"]] + p[_COL["brightness_delta"]], 0.0, 1.0)


def _contrast(x, p):
  f = p[_COL["contrast"]]
  return jnp.clip(f * x + (1 - f) * jnp.mean(x, axis=(0, 1)), 0.0, 1.0)


def _saturation(x, p):
  hsv = _rgb_to_hsv(x)
  hsv = hsv.at[..., 1].set(jnp.minimum(hsv[..., 1] * p[_COL["saturation"]], 1.0))
  return jnp.clip(_hsv_to_rgb(hsv), 0.0, 1.0)


def _hue(x, p):
  hsv = _rgb_to_hsv(x)
  hsv = hsv.at[..., 0].add(360.0 * jnp.mod(p[_COL["hue"]], 1.0))
  return jnp.clip(_hsv_to_rgb(hsv), 0.0, 1.0)


#: The jitter ops by their number in a draw's order; each checks whether it is neutral.
_OPS = ((_brightness, lambda p: (p[_COL["brightness"]] != 1) | (p[_COL["brightness_delta"]] != 0)),
        (_contrast, lambda p: p[_COL["contrast"]] != 1),
        (_saturation, lambda p: p[_COL["saturation"]] != 1),
        (_hue, lambda p: p[_COL["hue"]] != 0))


def _jitter(x: jax.Array, p: jax.Array) -> jax.Array:
  """The four ops in the view's drawn order; a neutral one is skipped, as on the host."""
  branches = [lambda x, p, op=op, active=active: jnp.where(active(p), op(x, p), x)
              for op, active in _OPS]
  for step in range(4):
    x = jax.lax.switch(p[_COL[f"order{step}"]].astype(jnp.int32), branches, x, p)
  return x


def _blur(x: jax.Array, sigma: jax.Array) -> jax.Array:
  """SimCLR's separable Gaussian, zero padding, kernel a tenth of the view's height."""
  radius = augment.blur_kernel_size(x.shape[0]) // 2
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  taps = jnp.exp(-offsets**2 / (2.0 * sigma**2))
  taps = taps / jnp.sum(taps)

  def along(x, axis):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad)
    size = x.shape[axis]
    return sum(taps[k] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
               for k in range(2 * radius + 1))
  return along(along(x, 0), 1)


def _one_view(view: jax.Array, p: jax.Array) -> jax.Array:
  x = view.astype(jnp.float32) * jnp.float32(1 / 255)
  x = jnp.where(p[_COL["jitter"]] > 0, _jitter(x, p), x)
  grey = jnp.broadcast_to(jnp.sum(x * _LUMA, axis=-1, keepdims=True), x.shape)
  x = jnp.where(p[_COL["gray"]] > 0, grey, x)
  x = jnp.where(p[_COL["blur"]] > 0, _blur(x, p[_COL["sigma"]]), x)
  return jnp.clip(x, 0.0, 1.0)


def colour_views(views: jax.Array, params: jax.Array) -> jax.Array:
  """SimCLR's colour ops on uint8 views ``[N, H, W, 3]`` with their drawn ``params``
  (``[N, 13]``, :data:`augment.COLOUR_PARAMS`): float32 in [0, 1]."""
  if views.ndim != 4 or params.shape != (views.shape[0], len(augment.COLOUR_PARAMS)):
    raise ValueError(f"views [N, H, W, 3] and params [N, {len(augment.COLOUR_PARAMS)}] "
                     f"expected, got {views.shape} and {params.shape}")
  return jax.vmap(_one_view)(views, params)


def as_uint8_levels(x: jax.Array) -> jax.Array:
  """[0, 1] views on the 256 levels of the host path's uint8 views (``pipeline.to_uint8``),
  as float32 0 … 255 for :func:`attn_contrastive.models.forward.normalize_images`."""
  return jnp.floor(jnp.clip(x, 0.0, 1.0) * 255.0 + 0.5)
