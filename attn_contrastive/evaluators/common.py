"""The one shape of an evaluator, and the plumbing every evaluator shares.

An evaluator is a callable ``evaluate(state) -> dict[str, float]``. What it
returns are flat scalars: the loop logs them as ``eval/<key>`` (at
``train.eval_every`` and after the last step) and keeps the last ones in
``results.json``. What does not fit flat scalars (a table per scored model,
the settings of the evaluation) it keeps in ``evaluate.results`` after each
call, and the loop adds that dict to ``results.json`` as it is; an evaluator
with nothing more to say leaves it empty.

Evaluators are built by composition: each takes the model as a function of
the train state (``predict(state, images) -> output``, uint8 images in)
and a split, never another task's evaluator, so that a task's model is all a
new task needs to reuse one (``saliency.SaliencyEvaluator`` serves the
teacher and the alignment of any run; ``classification`` serves supervised
runs). A new evaluator (linear evaluation, kNN, retrieval) is a module here
with a class of this shape built on :func:`split_batches`.

Settings every evaluator reads from ``config.eval``: ``batch_size`` (the
global batch), ``max_examples`` (-1: the whole split) and ``num_threads``
(host threads loading and scoring examples).
"""
from __future__ import annotations

import concurrent.futures
import math
from typing import Any, Callable, Iterator, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils

Example = dict[str, Any]


class Evaluator(Protocol):
  """What the loop and the tasks call: flat scalars out, nested results kept."""

  results: dict[str, Any]

  def __call__(self, state: Any) -> dict[str, float]:
    ...


class Combined:
  """Several evaluators as one (a pretraining run's kNN and attention-heads monitors):
  their flat scalars and their results, merged."""

  def __init__(self, *evaluators: Evaluator):
    self.evaluators = evaluators
    self.results: dict[str, Any] = {}

  def __call__(self, state: Any) -> dict[str, float]:
    flat, results = {}, {}
    for evaluate in self.evaluators:
      flat.update(evaluate(state))
      results.update(evaluate.results)
    self.results = results
    return flat


def num_examples(source, max_examples: int) -> int:
  """How many examples of ``source`` to evaluate: all, or the first ``max_examples``."""
  n = len(source)
  n = min(n, int(max_examples)) if max_examples > 0 else n
  if n < 1:
    raise ValueError("the evaluation split is empty")
  return n


def split_batches(load: Callable[[int], Example], num_examples: int, global_batch: int,
                  pool: concurrent.futures.Executor
                  ) -> Iterator[tuple[list[Example], np.ndarray]]:
  """One pass over examples ``0 … num_examples-1``: this process's share of each global batch.

  Yields ``(examples, mask)``. Process ``p`` of ``P`` takes global positions
  ``p, p+P, …``, as the training iterator does; the last global batch is
  padded with example 0, where ``mask`` is False, so that every process runs
  the same number of equally shaped batches. ``load(index)`` runs on
  ``pool``'s threads.
  """
  padded = math.ceil(num_examples / global_batch) * global_batch
  n_proc = jax.process_count()
  positions = np.arange(jax.process_index(), padded, n_proc)
  per_process = global_batch // n_proc
  for start in range(0, len(positions), per_process):
    chunk = positions[start:start + per_process]
    mask = chunk < num_examples
    examples = list(pool.map(load, np.where(mask, chunk, 0).tolist()))
    yield examples, mask


def gather_from_processes(x: np.ndarray) -> np.ndarray:
  """Every process's ``x`` stacked on a new leading axis (just ``x`` on one process)."""
  return np.asarray(multihost_utils.process_allgather(x))


def sum_over_processes(x: np.ndarray) -> np.ndarray:
  """The sum of a host array over all processes (the same shape as ``x``)."""
  gathered = np.asarray(multihost_utils.process_allgather(x))
  return gathered.sum(axis=0) if gathered.ndim > np.ndim(x) else gathered
