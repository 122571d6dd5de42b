"""A run's networks as named tensors under PyTorch's names, one group per part.

:func:`collect` opens any run (pretrain, supervised, teacher, or a
linear_eval run, whose classifier comes with the run it evaluated) through
:func:`attn_contrastive.runs.open_run` and turns its variables into float32
tensors (:mod:`.torch_names`): ``encoder`` (torchvision's ResNet
state_dict), ``projection``, ``attention``, ``classifier``, ``decoder``.
:func:`write_torchvision` puts them on disk as safetensors beside
``export.json``, what :func:`.torch_models.load` rebuilds them from.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from attn_contrastive import paths, runs
from attn_contrastive.export import torch_names
from attn_contrastive.train import mesh as mesh_lib

SPEC_FILE = "export.json"
#: torchvision's constructors, by depth, for the ImageNet layout.
TORCHVISION = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101"}


@dataclasses.dataclass
class Exported:
  """A run's tensors by part (``{part: {torch name: array}}``) and what rebuilds them.

  ``spec`` is JSON: the ResNet's layout, each head's sizes, the input's
  normalisation, and the run (and linear evaluation) it came from.
  """
  spec: dict[str, Any]
  parts: dict[str, dict[str, np.ndarray]]
  config: Any  # the run's ConfigDict
  run_dir: str


def resnet_layout(model_cfg) -> dict[str, Any]:
  """The keyword arguments of :func:`.torch_models.resnet` for a run's ``config.model``."""
  return dict(depth=int(model_cfg.depth), width=int(model_cfg.width),
              stem_kernel=int(model_cfg.stem_kernel), stem_stride=int(model_cfg.stem_stride),
              stem_pool=bool(model_cfg.stem_pool))


def torchvision_name(layout: dict[str, Any]) -> str | None:
  """``resnet50`` where the layout is exactly torchvision's constructor's, else None."""
  imagenet = (layout["width"], layout["stem_kernel"], layout["stem_stride"],
              layout["stem_pool"]) == (64, 7, 2, True)
  return TORCHVISION.get(layout["depth"]) if imagenet else None


def _open(run_dir: str) -> tuple[runs.Run, dict[str, np.ndarray] | None, str | None]:
  """The run and, for a linear evaluation's workdir, its classifier and protocol."""
  config = runs.read_config(run_dir)
  if config.get("task") != "linear_eval":
    return runs.open_run(run_dir, mesh_lib.make_mesh(1)), None, None
  kernel, bias, protocol = runs.load_classifier(run_dir)
  run = runs.open_run(runs.evaluated_run_dir(config), mesh_lib.make_mesh(1))
  return run, {"weight": np.ascontiguousarray(np.asarray(kernel, np.float32).T),
               "bias": np.asarray(bias, np.float32)}, protocol


def collect(run_dir: str) -> Exported:
  """Every exportable part of the run in ``run_dir`` as torch-named tensors."""
  run, classifier, protocol = _open(run_dir)
  variables = jax.device_get(run.variables)
  params, stats = variables["params"], variables.get("batch_stats", {})
  model_cfg, task = run.config.model, run.task
  layout = resnet_layout(model_cfg)

  key = ("encoder" if task in ("pretrain", "teacher") else
         "network" if "network" in params else None)
  enc_params, enc_stats = (params[key], stats.get(key, {})) if key else (params, stats)
  parts = {"encoder": torch_names.to_torch(
      enc_params, enc_stats, torch_names.encoder_pairs(enc_params))}
  spec: dict[str, Any] = {
      "task": task, "resnet": layout, "torchvision": torchvision_name(layout),
      "feature_dim": layout["width"] * 8 * (4 if layout["depth"] >= 50 else 1),
      "input": {"height": int(run.config.data.image_size),
                "width": int(run.config.data.get("image_width", 0) or run.config.data.image_size),
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
      "source": {"run_dir": run.run_dir, "step": int(run.step)}}
  if "classifier" in enc_params:
    spec["num_classes"] = int(enc_params["classifier"]["kernel"].shape[-1])
  _heads(task, params, stats, model_cfg, parts, spec)
  if classifier is not None:
    parts["classifier"] = classifier
    spec["classifier"] = {"protocol": protocol, "linear_eval_dir": paths.resolve(run_dir),
                          "num_classes": int(classifier["bias"].shape[0])}
  spec["files"] = sorted(parts)
  return Exported(spec=spec, parts=parts, config=run.config, run_dir=run.run_dir)


def _heads(task: str, params: dict[str, Any], stats: dict[str, Any], model_cfg,
           parts: dict[str, Any], spec: dict[str, Any]) -> None:
  """Adds the projection head, attention heads and teacher's decoder a run has to
  ``parts`` (their tensors) and ``spec`` (their sizes)."""
  def part(name):
    return params.get(name, {}), stats.get(name, {})

  if task == "pretrain":
    p, s = part("head")
    parts["projection"] = torch_names.to_torch(p, s, torch_names.same_name_pairs(p))
    spec["projection"] = dict(hidden_dim=int(model_cfg.proj_hidden_dim),
                              out_dim=int(model_cfg.proj_out_dim),
                              num_layers=int(model_cfg.get("proj_num_layers", 2)))
  if "attention" in params:
    p, s = part("attention")
    parts["attention"] = torch_names.to_torch(p, s, torch_names.attention_pairs(p))
    spec["attention"] = {"stages": [k.removeprefix("attention_") for k in sorted(p)]}
  if task == "teacher":
    p = {k: v for k, v in params.items() if k != "encoder"}
    s = {k: v for k, v in stats.items() if k != "encoder"}
    parts["decoder"] = torch_names.to_torch(p, s, torch_names.same_name_pairs(p))
    spec["decoder"] = {"output_stride": int(model_cfg.output_stride),
                       "width": int(model_cfg.decoder_width)}


def write_torchvision(exported: Exported, out: str) -> list[str]:
  """``<part>.safetensors`` for each part and ``export.json``; returns the files."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  written = []
  for name, tensors in exported.parts.items():
    path = os.path.join(out, f"{name}.safetensors")
    paths.write_atomic(path, save(tensors, metadata={"format": "pt"}))
    written.append(path)
  path = os.path.join(out, SPEC_FILE)
  paths.write_json(path, exported.spec)
  return written + [path]


