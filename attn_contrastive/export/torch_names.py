"""The project's variables under PyTorch's names, and back: the one mapping export and
import share.

The encoder's tensors take torchvision's ResNet names (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``), which timm's ResNet
shares, so a state_dict written here loads strictly into either. A stage
``convN`` is torchvision's ``layer{N-1}``; a block's ``Conv_i`` /
``BatchNorm_i`` are its ``conv{i+1}`` / ``bn{i+1}``, its projection shortcut
(``proj_conv``, ``proj_bn``) is ``downsample.0`` / ``.1``. The heads keep the
project's module names under a prefix of their own (``hidden0``,
``output_bn``, ``conv3.reduce``, ``lateral_conv5_conv``), matched by the small
modules of :mod:`attn_contrastive.export.torch_models`.

Layouts: a flax convolution kernel is HWIO, a torch one OIHW; a dense kernel
is ``[in, out]``, a torch weight ``[out, in]``. A BatchNorm is its ``scale``
and ``bias`` (params) and ``mean`` and ``var`` (batch_stats) here,
``weight``, ``bias``, ``running_mean``, ``running_var`` and
``num_batches_tracked`` there; one without a bias (the projection's output)
gets a zero bias, which computes the same. NumPy only: nothing here needs
torch.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np

#: ``(flax path, torch prefix)`` of one layer.
Pair = tuple[tuple[str, ...], str]

_BLOCK = re.compile(r"conv([2-5])_block(\d+)$")
_IN_BLOCK = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}
#: An attention head's layers (flax's auto names) under their torch names.
ATTENTION_LAYERS = {"Conv_0": "reduce", "BatchNorm_0": "bn", "Conv_1": "logit"}


def _in_block(name: str) -> str:
  if name in _IN_BLOCK:
    return _IN_BLOCK[name]
  kind, index = name.rsplit("_", 1)
  return f"{'conv' if kind == 'Conv' else 'bn'}{int(index) + 1}"


def encoder_pairs(params: dict[str, Any]) -> list[Pair]:
  """The layers of a ResNet's ``params`` (an encoder's, a classifier's ``classifier``
  included) under torchvision's names."""
  pairs: list[Pair] = [(("stem_conv",), "conv1"), (("stem_bn",), "bn1")]
  for name in sorted(params):
    match = _BLOCK.match(name)
    if match:
      prefix = f"layer{int(match[1]) - 1}.{match[2]}"
      pairs += [((name, child), f"{prefix}.{_in_block(child)}") for child in sorted(params[name])]
  if "classifier" in params:
    pairs.append((("classifier",), "fc"))
  return pairs


def same_name_pairs(params: dict[str, Any]) -> list[Pair]:
  """Each top-level layer of ``params`` under its own name (the projection head, the
  teacher's decoder)."""
  return [((name,), name) for name in sorted(params)]


def attention_pairs(params: dict[str, Any]) -> list[Pair]:
  """The attention heads' layers: ``attention_conv3/Conv_0`` → ``conv3.reduce``."""
  return [((head, layer), f"{head.removeprefix('attention_')}.{ATTENTION_LAYERS[layer]}")
          for head in sorted(params) for layer in sorted(params[head])]


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree.get(key, {}) if isinstance(tree, dict) else {}
  return tree


def to_torch(params: dict[str, Any], batch_stats: dict[str, Any],
             pairs: Iterable[Pair]) -> dict[str, np.ndarray]:
  """``{torch name: float32 array}`` of the layers ``pairs`` names."""
  out: dict[str, np.ndarray] = {}
  for path, prefix in pairs:
    p, s = _get(params, path), _get(batch_stats, path)
    if "mean" in s:  # a BatchNorm
      n = np.asarray(s["mean"]).shape[0]
      out[f"{prefix}.weight"] = np.asarray(p.get("scale", np.ones(n)), np.float32)
      out[f"{prefix}.bias"] = np.asarray(p.get("bias", np.zeros(n)), np.float32)
      out[f"{prefix}.running_mean"] = np.asarray(s["mean"], np.float32)
      out[f"{prefix}.running_var"] = np.asarray(s["var"], np.float32)
      out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
      continue
    kernel = np.asarray(p["kernel"], np.float32)
    out[f"{prefix}.weight"] = (kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T)
    if "bias" in p:
      out[f"{prefix}.bias"] = np.asarray(p["bias"], np.float32)
  return {k: np.array(v, order="C") for k, v in out.items()}  # 0-d stays 0-d


def _tensor(state_dict: dict[str, Any], key: str, shape: tuple[int, ...], where: str
            ) -> np.ndarray:
  if key not in state_dict:
    raise ValueError(f"{where} has no tensor {key!r}, which this model needs (shape {shape}): "
                     "is it a state_dict of the same ResNet depth (torchvision's names)?")
  value = np.asarray(state_dict[key], np.float32)
  if value.shape != tuple(shape):
    raise ValueError(f"{where}: {key!r} has shape {value.shape}, this model needs {shape}: "
                     "set model.depth and model.width (and the stem) to the weights' layout")
  return value


def from_torch(state_dict: dict[str, Any], params: dict[str, Any], batch_stats: dict[str, Any],
               pairs: Iterable[Pair], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """``params`` and ``batch_stats`` with the layers ``pairs`` names read from
  ``state_dict`` (the inverse of :func:`to_torch`); every shape is checked against the
  model's, and ``where`` (the file) is named in an error."""
  params = _copy(params)
  batch_stats = _copy(batch_stats)
  for path, prefix in pairs:
    p, s = _get(params, path), _get(batch_stats, path)
    if "mean" in s:
      n = (np.shape(s["mean"])[0],)
      for ours, theirs, tree in (("scale", "weight", p), ("bias", "bias", p),
                                 ("mean", "running_mean", s), ("var", "running_var", s)):
        if ours in tree:
          tree[ours] = _tensor(state_dict, f"{prefix}.{theirs}", n, where)
      continue
    kshape = np.shape(p["kernel"])
    tshape = (kshape[3], kshape[2], *kshape[:2]) if len(kshape) == 4 else kshape[::-1]
    weight = _tensor(state_dict, f"{prefix}.weight", tshape, where)
    p["kernel"] = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T
    if "bias" in p:
      p["bias"] = _tensor(state_dict, f"{prefix}.bias", np.shape(p["bias"]), where)
  return params, batch_stats


def _copy(tree: Any) -> Any:
  """A tree's dicts copied (its arrays shared), so that filling it leaves the original."""
  return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree
