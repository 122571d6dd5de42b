"""The Hugging Face folder of a run: ``model.safetensors``, ``config.json`` and a model
card (``README.md``) written from the run's config and its evaluations' results.

Nothing is uploaded: the card ends with the command that would. The card's
numbers are read from every ``results.json`` under the given folders whose
``source_workdir`` is the exported run (a linear evaluation, robustness,
retrieval, alignment of it), and, for a teacher, from the run's own
``results.json`` (its saliency scores on held-out human attention).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

from attn_contrastive import paths
from attn_contrastive.export.collect import Exported

CITATION = """@inproceedings{yao2023teacher,
  title = {Teacher-Generated Spatial-Attention Labels Boost Robustness and Accuracy of
           Contrastive Models},
  author = {Yao, Yushi and Ye, Chang and He, Junfeng and Elsayed, Gamaleldin F.},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern
               Recognition (CVPR)},
  year = {2023}
}"""
#: How each evaluation task is titled in the card, in the card's order.
SECTIONS = {"linear_eval": "Linear evaluation (top-1 of a linear classifier on the frozen "
                           "pooled feature)",
            "robustness": "Robustness (the linear evaluation under corruptions; mCE)",
            "alignment": "Alignment with human attention",
            "retrieval": "Retrieval",
            "teacher": "Saliency on held-out human attention"}
WHAT = {"pretrain": "a SimCLR encoder (ResNet) with its projection head",
        "supervised": "a supervised ResNet classifier",
        "teacher": "the saliency teacher (ResNet encoder and top-down decoder) that predicts "
                   "where people look, as a log-density over the pixels"}


def evaluations(run_dir: str, folders: Iterable[str], task: str = ""
                ) -> dict[str, list[dict[str, Any]]]:
  """``{task: [results]}`` of the evaluations of ``run_dir`` found under ``folders``;
  a teacher run's (``task``) own ``results.json`` too, under ``teacher``."""
  found: dict[str, list[dict[str, Any]]] = {}
  seen = set()
  for root in folders:
    if not paths.isdir(root):
      continue
    for folder, dirs, files in paths.walk(root):
      dirs[:] = sorted(d for d in dirs if d != "checkpoints")
      path = os.path.join(folder, "results.json")
      if "results.json" not in files or path in seen:
        continue
      seen.add(path)
      results = paths.read_json(path)
      if results.get("source_workdir") == run_dir:
        found.setdefault(results.get("task", ""), []).append(results)
      elif task == "teacher" and paths.resolve(folder) == run_dir:
        found.setdefault("teacher", []).append(results)
  return found


def _scalars(results: Mapping[str, Any]) -> dict[str, float]:
  skip = {"source_step", "wall_time_s", "step"}
  return {k: float(v) for k, v in sorted(results.items())
          if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip}


def _recipe(config: Mapping[str, Any]) -> list[str]:
  data, model, optim, train = (config.get(k, {}) for k in ("data", "model", "optim", "train"))
  attn = config.get("attention", {})
  lines = [f"- Task: `{config.get('task')}`, seed {config.get('seed')}",
           f"- Training data: `{data.get('name')}` (split `{data.get('train_split')}`), "
           f"{data.get('image_size')}-px images"
           + (f", {data.get('num_classes')} classes" if config.get("task") != "teacher" else ""),
           f"- Network: ResNet-{model.get('depth')}, width {model.get('width')}, stem "
           f"{model.get('stem_kernel')}×{model.get('stem_kernel')} stride "
           f"{model.get('stem_stride')}{' with max pooling' if model.get('stem_pool') else ''}",
           f"- Optimiser: {optim.get('name')}, base learning rate {optim.get('base_lr')} "
           f"(× batch / 256), weight decay {optim.get('weight_decay')}, warm-up "
           f"{optim.get('warmup_epochs')} epochs then cosine",
           f"- Batch {config.get('input', {}).get('global_batch_size')}, "
           + (f"{train.get('num_steps')} steps" if (train.get("num_steps") or -1) > 0
              else f"{train.get('num_epochs')} epochs")]
  if attn.get("enabled"):
    lines.append(f"- Attention guidance: heads on {', '.join(attn.get('stages', []))} trained "
                 f"towards {attn.get('labels')} attention maps (weight {attn.get('alpha')})")
  return lines


def _evaluation_lines(found: Mapping[str, list[Mapping[str, Any]]], data_name: str
                      ) -> list[str]:
  """One table of scalar metrics per evaluation found, in :data:`SECTIONS`' order."""
  if not found:
    return ["No evaluation of this run was found beside it.", ""]
  lines = []
  for task, title in SECTIONS.items():
    for results in found.get(task, []):
      dataset = results.get("dataset", {}) or {}
      lines += [f"### {title}", "", f"Dataset: `{dataset.get('name', data_name)}` "
                f"{', '.join(dataset.get('splits', []))}".rstrip(), "",
                "| metric | value |", "|---|---|"]
      lines += [f"| {k} | {v:.4g} |" for k, v in _scalars(results).items()] + [""]
  return lines


def _use_lines(spec: Mapping[str, Any]) -> list[str]:
  """Intended use, and how to load the folder in PyTorch."""
  teacher = spec["task"] == "teacher"
  use = ("Predicting where people look in an image, as a density over its pixels: labelling "
         "images with spatial-attention maps for attention-guided training, as the paper "
         "does, and studying saliency." if teacher else
         "Research on representation learning, robustness and human attention: features for "
         "linear probes, retrieval and transfer, attention maps to study where the network "
         "looks.")
  call = ('_, log_density = modules["teacher"](torch_models.normalize(uint8_images))' if teacher
          else 'features = modules["encoder"](torch_models.normalize(uint8_images))')
  layout = (f" (`torchvision.models.{spec['torchvision']}`)" if spec["torchvision"] else
            " in the project's small layout (`attn_contrastive.export.torch_models.resnet`)")
  parts = ", ".join(f"`{p}`" for p in spec["files"])
  return ["## Intended use", "", use + " Not for decisions about people. A model trained on "
          "the synthetic stand-in data knows only coloured shapes.", "", "## Use", "",
          f"`model.safetensors` holds the parts {parts}, each tensor named `<part>.<name>`; "
          f"`encoder.*` is a torchvision ResNet state_dict{layout}. Inputs are RGB images "
          "normalised by ImageNet's mean and standard deviation.", "",
          "```python", "from attn_contrastive.export import torch_models",
          'modules = torch_models.load("PATH/TO/THIS/FOLDER")', call, "```", ""]


def card(exported: Exported, found: Mapping[str, list[Mapping[str, Any]]], repo: str) -> str:
  """The model card's markdown."""
  config = exported.config.to_dict()
  spec = exported.spec
  return "\n".join([
      "---", "library_name: pytorch",
      "tags: [image-feature-extraction, resnet, attn_contrastive]", "---", "",
      f"# {os.path.basename(exported.run_dir.rstrip('/'))}", "",
      f"This is {WHAT.get(spec['task'], spec['task'])}, trained with attn_contrastive, "
      "the reference implementation of Yao et al., CVPR 2023, *Teacher-Generated "
      "Spatial-Attention Labels Boost Robustness and Accuracy of Contrastive Models*. "
      f"It is the checkpoint of step {spec['source']['step']} of "
      f"`{spec['source']['run_dir']}`.", "",
      "## Training", "", *_recipe(config), "", "## Evaluation", "",
      *_evaluation_lines(found, config["data"]["name"]), *_use_lines(spec),
      "## Upload", "", "Nothing has been uploaded. To publish this folder on the Hugging "
      "Face Hub:", "", "```bash", "pip install huggingface_hub", "hf auth login",
      f"hf upload {repo} PATH/TO/THIS/FOLDER .", "```", "",
      "## Citation", "", "```bibtex", CITATION, "```", ""])


def write_folder(exported: Exported, out: str, results: list[str] | None,
                 repo: str = "YOUR_USER/MODEL_NAME") -> list[str]:
  """Writes ``model.safetensors``, ``config.json`` and ``README.md`` into ``out``."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  tensors = {f"{part}.{name}": t for part, group in exported.parts.items()
             for name, t in group.items()}
  folders = results or [os.path.dirname(exported.run_dir.rstrip("/"))]
  found = evaluations(exported.run_dir, folders, exported.spec["task"])
  written = [os.path.join(out, n) for n in ("model.safetensors", "config.json", "README.md")]
  paths.write_atomic(written[0], save(tensors, metadata={"format": "pt"}))
  paths.write_text(written[1], json.dumps(dict(exported.spec, model_type="attn_contrastive"),
                                          indent=2, sort_keys=True))
  paths.write_text(written[2], card(exported, found, repo))
  return written
