"""The tasks by ``config.task``: the module of each and the function that runs it.

``main`` and the study run every task alike, ``entry(config.task)(config,
workdir)``. A task that trains a network calls its entry
``train_and_evaluate``; one that trains nothing is named for what it does
(``evaluate`` another run, ``write_maps``, ``run_study``). The table names
modules rather than importing them, so it loads without JAX (``main`` reads
it before JAX starts) and a task's module is imported only when it runs.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

#: ``config.task`` → (module, its entry ``entry(config, workdir) -> results``).
TASKS: dict[str, tuple[str, str]] = {
    "pretrain": ("attn_contrastive.tasks.pretrain", "train_and_evaluate"),
    "supervised": ("attn_contrastive.tasks.supervised", "train_and_evaluate"),
    "teacher": ("attn_contrastive.tasks.teacher", "train_and_evaluate"),
    "label": ("attn_contrastive.tasks.label", "write_maps"),
    "linear_eval": ("attn_contrastive.tasks.linear_eval", "evaluate"),
    "robustness": ("attn_contrastive.tasks.robustness", "evaluate"),
    "retrieval": ("attn_contrastive.tasks.retrieval", "evaluate"),
    "alignment": ("attn_contrastive.tasks.alignment", "evaluate"),
    "shift": ("attn_contrastive.tasks.shift", "evaluate"),
    "study": ("attn_contrastive.tasks.study", "run_study"),
}


def entry(task: str) -> Callable[..., Any]:
  """The function that runs ``task`` (its module imported now)."""
  if task not in TASKS:
    raise ValueError(f"config.task={task!r}; known tasks: {sorted(TASKS)}")
  module, name = TASKS[task]
  return getattr(importlib.import_module(module), name)
