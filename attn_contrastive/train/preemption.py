"""Preemption: save at a step every process agrees on, then exit with status 75.

Schedulers warn a job before they stop it: Cloud TPU maintenance events and
Kubernetes send SIGTERM, SLURM sends the signal of ``--signal`` (SIGUSR1 in
``launch/slurm.sbatch``). On either signal the training loop finishes the
step in flight, every process saves the checkpoint of one and the same step,
waits until the save is committed, and the run exits with
:data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``: "try again"). The launchers
restart a run that exits 75 (``launch/``), and the restarted run resumes from
that checkpoint and ends equal to an uninterrupted run.

Agreeing on the step:

* One process: the signal handler sets a flag; the next step boundary is the
  step.
* Several processes (``jax.distributed``): the signal may reach only some of
  them. JAX's preemption service (started by ``jax.distributed.initialize``)
  catches SIGTERM, tells every process, and picks the step after the largest
  step any process has reached; :func:`jax.experimental.multihost_utils.reached_preemption_sync_point`
  says when a process is there. SIGUSR1 is turned into SIGTERM for it.

A signal during an evaluation or a save is acted on at the next step
boundary, after the evaluation or save: nothing in flight is cut.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

from absl import logging

#: The exit status of a run that saved and stopped because it was preempted.
EXIT_PREEMPTED = 75

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
  """The run stopped on a preemption signal, after saving the checkpoint of ``step``
  (a training loop) or between its resumable pieces (``step`` None)."""

  def __init__(self, step: int | None = None, directory: str | None = None):
    done = (f"saved the checkpoint of step {step} in {directory} and stopped" if step
            is not None else "stopped; its finished pieces (shards, conditions, stages) "
            "are kept")
    super().__init__(f"preempted: {done}; run the same command again to resume "
                     f"(exit status {EXIT_PREEMPTED})")
    self.step, self.directory = step, directory


def _raise_preempted(signum, frame) -> None:
  del frame
  logging.warning("Received %s: stopping", signal.Signals(signum).name)
  raise Preempted()


@contextlib.contextmanager
def stop_on_signal():
  """Turns a preemption signal into :class:`Preempted` wherever the task is.

  For the tasks that resume piece by piece (label, feature extraction,
  robustness conditions, a study's stages): every piece is written whole, so
  stopping anywhere loses at most the piece in flight. A training loop
  replaces this with its :class:`Watcher` while it runs. With several
  processes SIGTERM is left to JAX's preemption service (the loop's).
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  wanted = (signal.SIGUSR1,) if _distributed() else SIGNALS
  previous = {sig: signal.signal(sig, _raise_preempted) for sig in wanted}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _distributed() -> bool:
  import jax  # pylint: disable=g-import-not-at-top  (main imports this module before JAX)
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return (jax.process_count() > 1
          and getattr(distributed.global_state, "preemption_sync_manager", None) is not None)


class Watcher:
  """Listens for the preemption signals while a training loop runs.

  A context manager: the previous handlers come back on exit. Handlers can
  only be set from the main thread; elsewhere (a loop run from a worker
  thread) the watcher only follows JAX's preemption service.
  """

  def __init__(self):
    self._signalled = threading.Event()
    self._previous: dict[int, object] = {}
    self._distributed = _distributed()

  def __enter__(self) -> "Watcher":
    if threading.current_thread() is not threading.main_thread():
      return self
    wanted = (signal.SIGUSR1,) if self._distributed else SIGNALS
    for sig in wanted:
      self._previous[sig] = signal.signal(sig, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    self._previous.clear()

  def _on_signal(self, signum, frame) -> None:
    del frame
    if not self._signalled.is_set():
      logging.warning("Received %s: saving at the next step boundary, then stopping",
                      signal.Signals(signum).name)
    self._signalled.set()
    if self._distributed:  # JAX's preemption service listens for SIGTERM only
      os.kill(os.getpid(), signal.SIGTERM)

  @property
  def signalled(self) -> bool:
    """Whether this process has received a preemption signal."""
    return self._signalled.is_set()

  def reached(self, step: int) -> bool:
    """Whether ``step`` is the step to save and stop at (call it after every step).

    With several processes it is True at the same step on all of them.
    """
    if self._distributed:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._signalled.is_set()
