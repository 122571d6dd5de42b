"""The ONNX file of a run: uint8 images in, the run's outputs out, any batch size.

The graph is traced from the PyTorch modules of :mod:`.torch_models`, built
from the same tensors as the torchvision export, by PyTorch's TorchScript
exporter. JAX's own converters do not serve this project: jax2onnx pins
orbax-checkpoint below the release the project's checkpoints need, and
jax2tf now serialises a function as StableHLO inside one ``XlaCallModule``
op, which tf2onnx cannot convert. The copy's outputs are checked against the
project's networks (``tests/test_export.py``), so the file computes what the
run computes.

Inputs: ``images``, uint8 ``[batch, H, W, 3]`` at the run's input size,
normalised inside the graph as the project does on its device. Outputs:
a teacher's ``log_density`` ``[batch, h, w]``; an encoder's ``pooled``
feature, and where the run has them its ``projection``, ``logits`` and one
attention map per head, ``attention_<stage>`` (spatial softmax, each sums
to 1).
"""
from __future__ import annotations

import os
import tempfile
import warnings

import torch
from torch import nn

from attn_contrastive import paths
from attn_contrastive.export import torch_models
from attn_contrastive.export.collect import Exported

OPSET = 17
FILE = "model.onnx"


class ImagesToOutputs(nn.Module):
  """uint8 NHWC images → the run's named outputs, in :attr:`names`' order."""

  def __init__(self, modules: dict[str, nn.Module]):
    super().__init__()
    self.parts = nn.ModuleDict(modules)
    self.register_buffer("mean", torch.tensor(torch_models.MEAN).view(1, 3, 1, 1) * 255)
    self.register_buffer("std", torch.tensor(torch_models.STD).view(1, 3, 1, 1) * 255)
    if "teacher" in modules:
      self.names = ["log_density"]
    else:
      self.names = ["pooled"] + [n for n in ("projection",) if n in modules]
      if "classifier" in modules or isinstance(modules["encoder"].fc, nn.Linear):
        self.names.append("logits")
      self.names += [f"attention_{s}" for s in modules.get("attention", {})]

  def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = (images.float().permute(0, 3, 1, 2) - self.mean) / self.std
    if "teacher" in self.parts:
      return (self.parts["teacher"](x)[1],)
    encoder = self.parts["encoder"]
    feats = torch_models.stage_outputs(encoder, x)
    out = [feats["pooled"]]
    if "projection" in self.parts:
      out.append(self.parts["projection"](feats["pooled"]))
    if "classifier" in self.parts:
      out.append(self.parts["classifier"](feats["pooled"]))
    elif isinstance(encoder.fc, nn.Linear):
      out.append(encoder.fc(feats["pooled"]))
    for stage, head in self.parts["attention"].items() if "attention" in self.parts else ():
      out.append(torch_models.spatial_softmax(head(feats[stage])))
    return tuple(out)


def write(exported: Exported, out: str) -> list[str]:
  """``<out>/model.onnx`` (opset :data:`OPSET`, dynamic batch); returns the file."""
  wrapper = ImagesToOutputs(torch_models.build(exported.spec, exported.parts)).eval()
  h, w = exported.spec["input"]["height"], exported.spec["input"]["width"]
  example = torch.zeros((2, h, w, 3), dtype=torch.uint8)
  dynamic = {name: {0: "batch"} for name in ["images"] + wrapper.names}
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, FILE)
    with warnings.catch_warnings():  # shapes read while tracing: fixed by the input size
      warnings.simplefilter("ignore", torch.jit.TracerWarning)
      torch.onnx.export(wrapper, (example,), local, input_names=["images"],
                        output_names=wrapper.names, dynamic_axes=dynamic, opset_version=OPSET,
                        dynamo=False)
    with open(local, "rb") as f:
      path = os.path.join(out, FILE)
      paths.write_atomic(path, f.read())
  return [path]
