"""torchvision ResNet weights as a run's start: ``init_checkpoint=torchvision:PATH``.

A supervised run or a teacher may start its encoder from public ImageNet
weights the user has (a ``.pth`` state_dict or a safetensors file, as
torchvision and timm write them, or an export of this project). The
encoder's convolutions and BatchNorms are read under torchvision's names
(:mod:`attn_contrastive.export.torch_names`); the classifier too where
``fc`` has this run's number of classes. Everything else (attention heads,
the teacher's decoder, a classifier of other classes) keeps its fresh
initialisation. The paper trains from scratch, which stays the default.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging

from attn_contrastive import paths
from attn_contrastive.config_checks import TORCHVISION_INIT, TORCHVISION_INIT_TASKS
from attn_contrastive.export import torch_names


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """``{name: array}`` of a safetensors file or a PyTorch ``.pth`` / ``.pt`` state_dict
  (also one wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``). The prefix that
  DistributedDataParallel (``module.``) or ``torch.compile`` (``_orig_mod.``) puts on
  every name is dropped, as is an export's ``encoder.``."""
  if not paths.exists(path):
    raise FileNotFoundError(f"init_checkpoint={TORCHVISION_INIT}{path}: no such file")
  data = paths.read_bytes(path)
  if path.endswith(".safetensors"):
    from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
    tensors = load(data)
  else:
    import io  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
      if isinstance(tensors.get(key), dict):
        tensors = tensors[key]
    tensors = {k: v.numpy() for k, v in tensors.items() if hasattr(v, "numpy")}
  for wrapper in ("module.", "_orig_mod."):  # a wrapped model's names, all prefixed
    if tensors and all(k.startswith(wrapper) for k in tensors):
      tensors = {k[len(wrapper):]: v for k, v in tensors.items()}
  if any(k.startswith("encoder.") for k in tensors):
    tensors = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
  return dict(tensors)


def _encoder_key(params: dict[str, Any], task: str) -> str | None:
  """Where the ResNet's parameters sit in a run's params (None: at the top)."""
  if task == "teacher":
    return "encoder"
  return "network" if "network" in params else None


def init_variables(path: str, variables: dict[str, Any], task: str) -> dict[str, Any]:
  """``variables`` (``params``, ``batch_stats``, host arrays) with the encoder read from
  the torchvision state_dict at ``path``."""
  if task not in TORCHVISION_INIT_TASKS:
    raise ValueError(f"init_checkpoint={TORCHVISION_INIT}{path}: a {task!r} run cannot start "
                     f"from torchvision weights (only {TORCHVISION_INIT_TASKS})")
  state_dict = read_state_dict(path)
  params, stats = variables["params"], variables["batch_stats"]
  key = _encoder_key(params, task)
  enc_params = params[key] if key else params
  enc_stats = (stats.get(key, {}) if key else stats)
  pairs = torch_names.encoder_pairs(enc_params)
  if "classifier" in enc_params:
    ours = np.shape(enc_params["classifier"]["kernel"])[::-1]
    if np.shape(state_dict.get("fc.weight", ())) != ours:
      pairs = [p for p in pairs if p[1] != "fc"]
      logging.info("%s: its classifier is not of %d classes; this run's starts fresh",
                   path, ours[0])
  new_params, new_stats = torch_names.from_torch(state_dict, enc_params, enc_stats, pairs,
                                                 where=path)
  if key:
    return {"params": dict(params, **{key: new_params}),
            "batch_stats": dict(stats, **{key: new_stats})}
  return {"params": new_params, "batch_stats": new_stats}
