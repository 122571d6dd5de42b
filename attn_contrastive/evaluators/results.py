"""The ``results.json`` of an evaluation task: one outline for every one of them.

A task that evaluates another run's checkpoint (linear evaluation,
retrieval, …) writes, with :func:`write`::

  {"task": "linear_eval",
   "source_workdir": "/runs/simclr", "source_step": 117,
   "source_config": {... the source run's config.json ...},
   "dataset": {"name": "salient_objects/classification",
               "splits": ["train", "validation"], "version": "1.0.0"},
   "linear/top1": 0.61, "linear/top5": 0.97, ...,
   "wall_time_s": 312.5}

so that a report can put any two evaluations of any two runs side by side
and say which checkpoint, which data and which version of it each number
comes from. Metric keys are ``<protocol>/<metric>`` at the top level;
their values are scalars, or lists/dicts where a protocol keeps more (the
L2 grid of the cached-feature probe).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax

from attn_contrastive import paths

FILE = "results.json"
#: The keys every evaluation's ``results.json`` has besides its metrics.
OUTLINE = ("task", "source_workdir", "source_step", "source_config", "dataset", "wall_time_s")


def dataset_entry(name: str, splits: Sequence[str], *, data_dir: str = "",
                  version: str | None = None) -> dict[str, Any]:
  """``{"name", "splits", "version"}``; the version is the prepared tfds builder's.

  ``version`` given (data that is not a tfds dataset, as in tests) is used
  as it is.
  """
  if version is None:
    from attn_contrastive.data import sources  # the data stack, only when there is data
    version = str(sources.get_builder(name, data_dir).info.version)
  return {"name": name, "splits": list(splits), "version": version}


def write(workdir: str, *, task: str, source_workdir: str, source_step: int | None,
          source_config: Mapping[str, Any], dataset: Mapping[str, Any],
          metrics: Mapping[str, Any], wall_time_s: float) -> dict[str, Any]:
  """Writes ``<workdir>/results.json`` (process 0 only, atomically); returns its dict.

  ``source_config`` is the source run's config (a dict or ConfigDict);
  ``metrics`` are ``<protocol>/<metric>`` keys.
  """
  if hasattr(source_config, "to_dict"):
    source_config = source_config.to_dict()
  clash = set(metrics) & set(OUTLINE)
  if clash:
    raise ValueError(f"metric keys {sorted(clash)} would overwrite the outline")
  source_workdir = paths.resolve(source_workdir)
  results = {"task": task, "source_workdir": source_workdir,
             "source_step": source_step, "source_config": dict(source_config),
             "dataset": dict(dataset), **metrics, "wall_time_s": float(wall_time_s)}
  write_json(os.path.join(workdir, FILE), results)
  return results


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` from process 0, atomically (a kill leaves the
  old file or the new one, never half of one; see :mod:`attn_contrastive.paths`)."""
  if jax.process_index() == 0:
    paths.makedirs(os.path.dirname(path) or ".")
    paths.write_json(path, obj)
