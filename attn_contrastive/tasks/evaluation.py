"""The skeleton of every task that evaluates a finished run.

Linear evaluation, retrieval, robustness and alignment each score a run that
another stage trained; everything around their scoring is the same, and is
done here once, in this order by :func:`run_evaluation`:

1. the config's values are checked (as ``main`` checks them, for callers
   that do not go through it) and the config is saved as the workdir's
   ``config.json``;
2. the evaluated run is opened (:func:`attn_contrastive.runs.open_run`:
   config, network, latest checkpoint replicated on the mesh, step);
3. the task's ``score(evaluation) -> metrics`` runs, given an
   :class:`Evaluation` (config, workdir, run, mesh, the splits it reads);
4. ``results.json`` is written in the outline of
   :mod:`attn_contrastive.evaluators.results`: the task, the run's provenance
   (its resolved workdir, step and config), the dataset's name, splits and
   version, the task's metrics, the undecodable images of the splits it
   read (their total over every process, with their names) and the wall
   time of all of it.

A task is then its ``score`` and an entry that names its splits.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
from absl import logging

from attn_contrastive import config_checks, paths, runs
from attn_contrastive.evaluators import results
from attn_contrastive.train import loop
from attn_contrastive.train import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What an evaluation task's ``score`` is given.

  ``splits``: stand-ins for the configured dataset's splits, by name (tests);
  a split not among them is opened from tfds by :meth:`split`.
  """
  config: ml_collections.ConfigDict
  workdir: str
  run: runs.Run
  mesh: jax.sharding.Mesh
  splits: dict[str, Any] = dataclasses.field(default_factory=dict)
  #: The bad-image logs of the splits read (counted in ``results.json``).
  bad_image_logs: list[Any] = dataclasses.field(default_factory=list)

  def split(self, name: str):
    """A random-access source over split ``name`` of ``config.data``."""
    if name in self.splits:
      source = self.splits[name]
    else:
      from attn_contrastive.data import sources  # the data stack, only when there is data
      source = sources.open_config_split(self.config.data, name)
    if getattr(source, "log", None) is not None:
      self.bad_image_logs.append(source.log)
    return source

  @property
  def image_size(self) -> int:
    """The model's input side: ``data.image_size``, or the run's where it is 0."""
    return int(self.config.data.image_size or self.run.image_size)


ScoreFn = Callable[[Evaluation], dict[str, Any]]


def check_config(config: ml_collections.ConfigDict) -> None:
  """The config's values, as ``main`` checks them (links to other stages aside)."""
  bad = config_checks.problems(config, linked=True)
  if bad:
    raise ValueError("; ".join(bad))


def run_evaluation(config: ml_collections.ConfigDict, workdir: str, score: ScoreFn, *,
                   split_names: Sequence[str], run_dir: str | None = None,
                   reader: str | None = None, splits: dict[str, Any] | None = None,
                   dataset_version: str | None = None,
                   mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Checks, opens, scores and writes ``results.json`` (see the module docstring).

  ``split_names``: the splits ``results.json`` names as the dataset read.
  ``run_dir``: the run evaluated, ``config.run_dir`` by default, and
  ``reader``: the task whose needs it must meet (``config.task`` by default;
  robustness opens the run its linear evaluation read, as that evaluation).
  ``splits`` and ``dataset_version`` replace the tfds dataset (tests).
  Returns the results' dict.
  """
  start = time.perf_counter()
  check_config(config)
  if splits is None and config.task in config_checks.LABELLED_EVALUATIONS:
    from attn_contrastive.data import sources  # the data stack, only when there is data
    sources.require_labels(config.data, f"the {config.task} task")
  paths.makedirs(workdir)
  loop.write_config(workdir, config)
  mesh = mesh or mesh_lib.make_mesh()
  run = runs.open_run(run_dir or config.run_dir, mesh, reader=reader or config.task)
  logging.info("Evaluating %s (%s run, step %d)", run.run_dir, run.task, run.step)
  evaluation = Evaluation(config, workdir, run, mesh, dict(splits or {}))
  metrics = score(evaluation)
  bad_images = results.bad_images(evaluation.bad_image_logs)  # over every process
  dataset = results.dataset_entry(config.data.name, split_names,
                                  data_dir=config.data.data_dir, version=dataset_version)
  return results.write(workdir, task=config.task, source_workdir=run.run_dir,
                       source_step=run.step, source_config=run.config, dataset=dataset,
                       metrics=metrics, wall_time_s=time.perf_counter() - start,
                       bad_images=bad_images)
