"""The ``results.json`` of an evaluation task: one outline for every one of them.

A task that evaluates another run's checkpoint (linear evaluation,
retrieval, …) writes, with :func:`write`::

  {"task": "linear_eval",
   "source_workdir": "/runs/simclr", "source_step": 117,
   "source_config": {... the source run's config.json ...},
   "dataset": {"name": "salient_objects/classification",
               "splits": ["train", "validation"], "version": "1.0.0"},
   "linear/top1": 0.61, "linear/top5": 0.97, ...,
   "bad_images": {"salient_objects/classification/train": {"count": 1,
                                                            "files": ["x.png"]}},
   "wall_time_s": 312.5}

so that a report can put any two evaluations of any two runs side by side
and say which checkpoint, which data and which version of it each number
comes from, and how many of its images could not be decoded
(:func:`bad_images`: skipped, and another record read in their place).
Metric keys are ``<protocol>/<metric>`` at the top level;
their values are scalars, or lists/dicts where a protocol keeps more (the
L2 grid of the cached-feature probe).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from attn_contrastive import paths

FILE = "results.json"
#: The keys every evaluation's ``results.json`` has besides its metrics.
OUTLINE = ("task", "source_workdir", "source_step", "source_config", "dataset", "bad_images",
           "wall_time_s")


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
          metrics: Mapping[str, Any], wall_time_s: float,
          bad_images: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Writes ``<workdir>/results.json`` (process 0 only, atomically); returns its dict.

  ``source_config`` is the source run's config (a dict or ConfigDict);
  ``metrics`` are ``<protocol>/<metric>`` keys; ``bad_images`` is
  :func:`bad_images`' count of the splits read (none: empty).
  """
  if hasattr(source_config, "to_dict"):
    source_config = source_config.to_dict()
  clash = set(metrics) & set(OUTLINE)
  if clash:
    raise ValueError(f"metric keys {sorted(clash)} would overwrite the outline")
  source_workdir = paths.resolve(source_workdir)
  results = {"task": task, "source_workdir": source_workdir,
             "source_step": source_step, "source_config": dict(source_config),
             "dataset": dict(dataset), **metrics, "bad_images": dict(bad_images or {}),
             "wall_time_s": float(wall_time_s)}
  write_json(os.path.join(workdir, FILE), results)
  return results


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` from process 0, atomically (a kill leaves the
  old file or the new one, never half of one; see :mod:`attn_contrastive.paths`)."""
  if jax.process_index() == 0:
    paths.makedirs(os.path.dirname(path) or ".")
    paths.write_json(path, obj)


#: The bad files ``results.json`` names per split (the count is always whole).
LISTED_BAD_FILES = 20


def bad_images(logs: Sequence[Any]) -> dict[str, dict[str, Any]]:
  """``{split: {"count", "files"}}``: the distinct undecodable records of the splits a
  task read, over every process, with the first :data:`LISTED_BAD_FILES` file names.

  ``logs`` are this process's ``data.images.BadImageLog``s (one per split
  opened); a record met by several processes counts once. A collective with
  several processes: every process calls it, at the same point.
  """
  mine = {}
  for log in logs:
    mine.setdefault(log.dataset, {}).update(
        {str(i): name for i, (name, _) in log.bad.items()})
  every = _gather_json(mine)
  merged: dict[str, dict[str, str]] = {}
  for part in every:
    for split, bad in part.items():
      merged.setdefault(split, {}).update(bad)
  return {split: {"count": len(bad),
                  "files": [bad[i] for i in sorted(bad, key=int)][:LISTED_BAD_FILES]}
          for split, bad in sorted(merged.items())}


def _gather_json(obj: Any) -> list[Any]:
  """``obj`` of every process (JSON through two fixed-size all-gathers)."""
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:len(data)] = data
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]
