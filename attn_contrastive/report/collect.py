"""The evaluations under a set of folders, each named by the paper's row and its seed.

An evaluation workdir (linear evaluation, robustness, retrieval, alignment)
holds a ``results.json`` with the outline of
:mod:`attn_contrastive.evaluators.results`; its ``source_config`` is the
config of the trained run it evaluated, which decides the row
(:func:`row_of`) and the seed. A teacher's workdir holds a training run's
``results.json`` (the teacher's and the centre bias's saliency scores) with
its ``config.json`` beside it; it is read as an alignment of the row
"Teacher". Pretraining and supervised runs are listed as training runs.
Anything else (a linear probe's own ``linear/results.json``, the label
task's) is ignored.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Mapping, Sequence

from attn_contrastive import config_checks, paths

#: The paper's rows, in its order.
ROWS = ("Contrastive", "Contrastive attn. teacher", "Contrastive attn. co-train",
        "Supervised (ResNet-50)", "Supervised attn. teacher",
        "Supervised (ResNet-18)", "Supervised (ResNet-18) attn. teacher")
TEACHER = "Teacher"
#: The evaluation tasks, in the order of the report's stages: a study's, then those run on
#: their own (distribution shift).
STAGES = (*config_checks.EVALUATIONS, "shift")
RESULTS = "results.json"
EXAMPLES = "examples.npz"


def _get(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
  """``config["a"]["b"]`` for ``"a.b"`` (or a flat ``"a.b"`` key), else ``default``."""
  if key in config:
    return config[key]
  node: Any = config
  for part in key.split("."):
    if not isinstance(node, Mapping) or part not in node:
      return default
    node = node[part]
  return node


def row_of(config: Mapping[str, Any]) -> str:
  """The paper's row of a trained run, from its config (as in its ``config.json``).

  Raises ValueError for a run that is none of the paper's rows (another
  task, an unknown label source, a supervised depth other than 18 or 50).
  """
  task = _get(config, "task")
  attention = bool(_get(config, "attention.enabled", False))
  if task == "pretrain":
    if not attention:
      return "Contrastive"
    labels = _get(config, "attention.labels", "teacher")
    if labels == "human":
      return "Contrastive attn. co-train"
    if labels == "teacher":
      return "Contrastive attn. teacher"
    raise ValueError(f"pretraining with attention labels {labels!r} is none of the rows")
  if task == "supervised":
    depth = _get(config, "model.depth")
    if depth == 50:
      return "Supervised attn. teacher" if attention else "Supervised (ResNet-50)"
    if depth == 18:
      return "Supervised (ResNet-18) attn. teacher" if attention else "Supervised (ResNet-18)"
    raise ValueError(f"a supervised ResNet-{depth} is none of the rows")
  raise ValueError(f"a run of task {task!r} is none of the rows")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One workdir's results: ``kind`` is a stage of :data:`STAGES` or "train"."""
  kind: str
  row: str
  seed: Any
  workdir: str
  dataset: str
  results: Mapping[str, Any]
  config: Mapping[str, Any]
  step: Any = None


@dataclasses.dataclass
class Collection:
  """Every entry found, and what was left out and why."""
  entries: list[Entry]
  skipped: list[tuple[str, str]]
  ignored: int
  replaced: list[tuple[Entry, Entry]]

  def of(self, kind: str, dataset: str | None = None) -> list[Entry]:
    return [e for e in self.entries
            if e.kind == kind and (dataset is None or e.dataset == dataset)]


def _results_files(roots: Sequence[str]) -> Iterator[str]:
  """Every ``results.json`` under the roots, once each, in a stable order."""
  seen = set()
  for root in roots:
    for folder, dirs, files in paths.walk(root):
      dirs[:] = sorted(d for d in dirs if d != "checkpoints")
      if RESULTS in files:
        path = paths.real(os.path.join(folder, RESULTS))
        if path not in seen:
          seen.add(path)
          yield os.path.join(folder, RESULTS)


def _read_json(path: str) -> Any:
  """A results or config file; a damaged one is refused naming it and the fix."""
  return paths.read_json(path, fix=(
      "Delete it and run that run's command again (a study's command redoes the stage), "
      "or leave its folder out of the report's roots"))


def _evaluation(workdir: str, results: Mapping[str, Any]) -> Entry:
  config = results["source_config"]
  dataset = results.get("dataset") or {}
  return Entry(kind=results["task"], row=row_of(config), seed=_get(config, "seed"),
               workdir=workdir, dataset=str(dataset.get("name", "?")), results=results,
               config=config, step=results.get("source_step"))


def _training_run(workdir: str, results: Mapping[str, Any]) -> Entry | None:
  """A teacher (as an alignment of the row "Teacher") or a training run; None otherwise."""
  config_path = os.path.join(workdir, "config.json")
  if not paths.exists(config_path):
    return None
  config = _read_json(config_path)
  task = _get(config, "task")
  dataset = str(_get(config, "data.name", "?"))
  if task == "teacher" and isinstance(results.get("teacher"), Mapping):
    as_alignment = {"alignment/model": results["teacher"],
                    "alignment/center_bias": results.get("center_bias", {})}
    return Entry(kind="alignment", row=TEACHER, seed=_get(config, "seed"), workdir=workdir,
                 dataset=dataset, results=as_alignment, config=config,
                 step=results.get("step"))
  if task == "supervised" and _get(config, "finetune") is not None:
    return _fine_tuned(workdir, results, config, dataset)
  if task in ("pretrain", "supervised"):
    return Entry(kind="train", row=row_of(config), seed=_get(config, "seed"), workdir=workdir,
                 dataset=dataset, results=results, config=config, step=results.get("step"))
  return None


def _fine_tuned(workdir: str, results: Mapping[str, Any], config: Mapping[str, Any],
                dataset: str) -> Entry | None:
  """A fine-tuning run (configs/finetune.py) as an entry of the row and seed of the run it
  started from (its ``init_checkpoint``); None when that run's config is not found."""
  source = os.path.join(str(_get(config, "init_checkpoint", "")), "config.json")
  if not paths.exists(source):
    return None
  pretrained = _read_json(source)
  return Entry(kind="finetune", row=row_of(pretrained), seed=_get(pretrained, "seed"),
               workdir=workdir, dataset=dataset, results=results, config=pretrained,
               step=results.get("step"))


def _entry(path: str) -> Entry | None:
  """The entry of one ``results.json``; None for results of another kind."""
  results = _read_json(path)
  if not isinstance(results, Mapping):
    return None
  workdir = os.path.dirname(path)
  if "source_config" in results:
    return _evaluation(workdir, results) if results.get("task") in STAGES else None
  return _training_run(workdir, results)


def _inside(workdir: str, others: set[str]) -> bool:
  parent = os.path.dirname(workdir)
  while parent and parent != os.path.dirname(parent):
    if parent in others:
      return True
    parent = os.path.dirname(parent)
  return False


def _latest(entries: list[Entry]) -> tuple[list[Entry], list[tuple[Entry, Entry]]]:
  """One entry per (kind, dataset, row, seed): the latest step, then the newest file."""
  def rank(e: Entry) -> tuple[float, float]:
    step = e.step if isinstance(e.step, (int, float)) else -1
    return step, paths.mtime(os.path.join(e.workdir, RESULTS))
  kept: dict[tuple, Entry] = {}
  replaced = []
  for e in entries:
    key = (e.kind, e.dataset, e.row, e.seed)
    if key in kept:
      old, new = sorted([kept[key], e], key=rank)
      replaced.append((new, old))
      kept[key] = new
    else:
      kept[key] = e
  return list(kept.values()), replaced


def scan(roots: Sequence[str]) -> Collection:
  """Reads every ``results.json`` under ``roots`` (recursively)."""
  entries, skipped, ignored = [], [], 0
  for path in _results_files(roots):
    try:
      entry = _entry(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      skipped.append((path, f"{type(e).__name__}: {e}"))
      continue
    if entry is None:
      ignored += 1
    else:
      entries.append(entry)
  evaluations = {paths.real(e.workdir) for e in entries if e.kind in STAGES}
  nested = {id(e) for e in entries if e.kind == "train"
            and _inside(paths.real(e.workdir), evaluations)}
  entries = [e for e in entries if id(e) not in nested]
  entries, replaced = _latest(entries)
  return Collection(entries=entries, skipped=skipped, ignored=ignored + len(nested),
                    replaced=replaced)


def row_order(row: str) -> int:
  """Sort key: the paper's rows in its order, then the teacher, then anything else."""
  return ROWS.index(row) if row in ROWS else len(ROWS) + (row != TEACHER)


def seed_key(seed: Any) -> tuple[int, str]:
  return (0, f"{seed:012d}") if isinstance(seed, int) else (1, str(seed))
