"""The exported networks as PyTorch modules: torchvision's ResNet and a small module per
head, with :func:`load` to rebuild them from an export folder.

The encoder is torchvision's own ``ResNet`` class. The project's ResNet is
torchvision's v1.5 layout (stride on a bottleneck's 3×3 convolution,
symmetric ``k // 2`` padding, a 1×1 strided projection shortcut, BatchNorm
ε = 1e-5), so the ImageNet layouts (ResNet-18/50, width 64, 7×7 stem of
stride 2 with max pooling) are ``torchvision.models.resnet18/50()`` exactly.
The small layouts differ in what torchvision's constructor fixes, not in
what a layer computes: their stem (3×3, stride 1, with or without pooling)
and width (the stages' channels from ``width``, not 64) are set on the same
class by :func:`resnet`, which rebuilds the stem and stages with
torchvision's own ``_make_layer``; the tensor names stay torchvision's.

Inputs are float ``[B, 3, H, W]`` normalised by ImageNet's mean and standard
deviation (torchvision's convention; :func:`normalize` turns uint8 NHWC
images into them as the project does on its device). Needs ``torch`` and
``torchvision``.
"""
from __future__ import annotations

import json
import os
import sys
import types
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _import_torchvision() -> types.ModuleType:
  """torchvision, also where its C extension cannot load beside this build of torch.

  PyPI's torchvision wheel links its detection operators (``nms``, …) against
  CUDA, so beside torch's CPU build the extension does not load and the
  import fails while registering those operators' fake-tensor kernels. The
  ResNet classes use none of them: the import is retried without those
  registrations.
  """
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType(
        "torchvision._meta_registrations")
    import torchvision  # pylint: disable=g-import-not-at-top
  return torchvision


torchvision = _import_torchvision()
BasicBlock = torchvision.models.resnet.BasicBlock
Bottleneck = torchvision.models.resnet.Bottleneck

STAGE_SIZES = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
               101: (3, 4, 23, 3)}
STAGES = ("conv2", "conv3", "conv4", "conv5")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(images: np.ndarray | torch.Tensor) -> torch.Tensor:
  """uint8 ``[B, H, W, 3]`` → float ``[B, 3, H, W]``, ImageNet-normalised."""
  x = torch.as_tensor(np.asarray(images)).float().permute(0, 3, 1, 2)
  mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
  std = torch.tensor(STD).view(1, 3, 1, 1) * 255
  return (x - mean) / std


def resnet(depth: int, width: int = 64, stem_kernel: int = 7, stem_stride: int = 2,
           stem_pool: bool = True, num_classes: int = 0) -> torchvision.models.ResNet:
  """torchvision's ``ResNet`` in the project's layout; ``num_classes=0``: no classifier
  (``fc`` is the identity and the output is the pooled feature)."""
  if depth not in STAGE_SIZES:
    raise ValueError(f"ResNet depth {depth} is not one of {sorted(STAGE_SIZES)}")
  block = BasicBlock if depth < 50 else Bottleneck
  model = torchvision.models.ResNet(block, list(STAGE_SIZES[depth]), num_classes=num_classes or 1000)
  if (width, stem_kernel, stem_stride) != (64, 7, 2):
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, stem_kernel, stem_stride, stem_kernel // 2, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    for i, n in enumerate(STAGE_SIZES[depth]):
      setattr(model, f"layer{i + 1}",
              model._make_layer(block, width * 2**i, n, stride=1 if i == 0 else 2))  # pylint: disable=protected-access
    model.fc = nn.Linear(width * 8 * block.expansion, num_classes or 1000)
  if not stem_pool:
    model.maxpool = nn.Identity()
  if not num_classes:
    model.fc = nn.Identity()
  return model.eval()


def stage_outputs(model: torchvision.models.ResNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
  """``{'conv2'..'conv5': stage maps, 'pooled': [B, D]}``, as the project's encoder."""
  x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
  out = {}
  for i, stage in enumerate(STAGES):
    x = getattr(model, f"layer{i + 1}")(x)
    out[stage] = x
  out["pooled"] = torch.flatten(model.avgpool(x), 1)
  return out


class ProjectionHead(nn.Module):
  """SimCLR's projection MLP: bias-free linear layers, each followed by BatchNorm (ReLU
  between), as the project's ``ProjectionHead``."""

  def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2):
    super().__init__()
    self.num_layers = num_layers
    dims = [in_dim] + [hidden_dim] * (num_layers - 1)
    for i in range(num_layers - 1):
      setattr(self, f"hidden{i}", nn.Linear(dims[i], hidden_dim, bias=False))
      setattr(self, f"hidden{i}_bn", nn.BatchNorm1d(hidden_dim))
    self.output = nn.Linear(dims[-1], out_dim, bias=False)
    self.output_bn = nn.BatchNorm1d(out_dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for i in range(self.num_layers - 1):
      x = F.relu(getattr(self, f"hidden{i}_bn")(getattr(self, f"hidden{i}")(x)))
    return self.output_bn(self.output(x))


class AttentionHead(nn.Module):
  """1×1 conv → BN → ReLU → 1×1 conv: one saliency logit per location, ``[B, h, w]``."""

  def __init__(self, channels: int, width: int):
    super().__init__()
    self.reduce = nn.Conv2d(channels, width, 1, bias=False)
    self.bn = nn.BatchNorm2d(width)
    self.logit = nn.Conv2d(width, 1, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.logit(F.relu(self.bn(self.reduce(x))))[:, 0]


def spatial_softmax(logits: torch.Tensor) -> torch.Tensor:
  """``[B, h, w]`` logits → maps that sum to 1 over each image's locations."""
  return torch.softmax(logits.flatten(1), -1).view_as(logits)


class SaliencyDecoder(nn.Module):
  """The teacher's top-down decoder and head, built from its tensors' shapes.

  Its layers keep the project's names (``lateral_conv5_conv``, ``fuse_conv4_bn``,
  ``refine_conv``, ``head``); which stages it fuses depends on the input size, as
  in the project's ``SaliencyTeacher``.
  """

  def __init__(self, tensors: dict[str, Any], output_stride: int):
    super().__init__()
    self.output_stride = output_stride
    for key, value in tensors.items():
      name, kind = key.rsplit(".", 1)
      if kind == "weight" and np.ndim(value) == 4:
        o, i, kh, _ = np.shape(value)
        self.add_module(name, nn.Conv2d(i, o, kh, padding=kh // 2, bias=f"{name}.bias" in tensors))
      elif kind == "running_mean":
        self.add_module(name, nn.BatchNorm2d(np.shape(value)[0]))

  def _cbr(self, x: torch.Tensor, name: str) -> torch.Tensor:
    return F.relu(getattr(self, f"{name}_bn")(getattr(self, f"{name}_conv")(x)))

  def forward(self, feats: dict[str, torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
    """Stage maps of an ``hw`` input → logits ``[B, h, w]``."""
    target = (max(hw[0] // self.output_stride, 1), max(hw[1] // self.output_stride, 1))
    y = self._cbr(feats[STAGES[-1]], f"lateral_{STAGES[-1]}")
    for stage in reversed(STAGES[:-1]):
      skip = feats[stage]
      if skip.shape[2] > target[0] or skip.shape[3] > target[1]:
        break
      y = _resize(y, tuple(skip.shape[2:]))
      y = self._cbr(torch.cat([y, self._cbr(skip, f"lateral_{stage}")], 1), f"fuse_{stage}")
    if tuple(y.shape[2:]) != target:
      y = self._cbr(_resize(y, target), "refine")
    return self.head(y)[:, 0]


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
  if tuple(x.shape[2:]) == tuple(hw):
    return x
  return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)


class SaliencyTeacher(nn.Module):
  """Encoder + decoder → ``(logits, log_density)``, each ``[B, h, w]``."""

  def __init__(self, encoder: torchvision.models.ResNet, decoder: SaliencyDecoder):
    super().__init__()
    self.encoder, self.decoder = encoder, decoder

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = self.decoder(stage_outputs(self.encoder, x), tuple(x.shape[2:]))
    return logits, torch.log_softmax(logits.flatten(1), -1).view_as(logits)


def _load(module: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
  module.load_state_dict(tensors, strict=True)
  return module.eval()


def build(spec: dict[str, Any], parts: dict[str, dict[str, Any]]) -> dict[str, nn.Module]:
  """The modules of an export's ``spec`` (its ``export.json``) with the tensors of
  ``parts`` (``{part: {name: tensor}}``) loaded strictly: ``encoder`` and, where the run
  has them, ``projection``, ``attention`` (a ``ModuleDict`` by stage), ``classifier``,
  ``teacher``."""
  parts = {k: {n: torch.as_tensor(np.asarray(t)) for n, t in v.items()} for k, v in parts.items()}
  encoder = _load(resnet(**spec["resnet"], num_classes=spec.get("num_classes", 0)),
                  parts["encoder"])
  modules: dict[str, nn.Module] = {"encoder": encoder}
  if "projection" in parts:
    p = spec["projection"]
    modules["projection"] = _load(
        ProjectionHead(spec["feature_dim"], p["hidden_dim"], p["out_dim"], p["num_layers"]),
        parts["projection"])
  if "attention" in parts:
    heads = {}
    for stage in spec["attention"]["stages"]:
      out_ch, in_ch = parts["attention"][f"{stage}.reduce.weight"].shape[:2]
      heads[stage] = AttentionHead(in_ch, out_ch)
    modules["attention"] = _load(nn.ModuleDict(heads), parts["attention"])
  if "classifier" in parts:
    weight = parts["classifier"]["weight"]
    modules["classifier"] = _load(nn.Linear(weight.shape[1], weight.shape[0]),
                                  parts["classifier"])
  if "decoder" in parts:
    decoder = _load(SaliencyDecoder(parts["decoder"], spec["decoder"]["output_stride"]),
                    parts["decoder"])
    modules["teacher"] = SaliencyTeacher(encoder, decoder).eval()
  return modules


def load(folder: str) -> dict[str, nn.Module]:
  """:func:`build` from a folder: a torchvision export (``export.json`` and one
  ``<part>.safetensors`` per part) or a Hugging Face folder (``config.json`` and
  ``model.safetensors``, whose names are ``<part>.<name>``)."""
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(folder, "export.json")):
    with open(os.path.join(folder, "export.json")) as f:
      spec = json.load(f)
    parts = {name: load_file(os.path.join(folder, f"{name}.safetensors"))
             for name in spec["files"]}
    return build(spec, parts)
  with open(os.path.join(folder, "config.json")) as f:
    spec = json.load(f)
  parts: dict[str, dict[str, Any]] = {}
  for key, tensor in load_file(os.path.join(folder, "model.safetensors")).items():
    name, rest = key.split(".", 1)
    parts.setdefault(name, {})[rest] = tensor
  return build(spec, parts)
