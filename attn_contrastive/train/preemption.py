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
  catches SIGTERM, tells every process, and picks the sync point after the
  largest one any process has reached;
  :func:`jax.experimental.multihost_utils.reached_preemption_sync_point`
  says when a process is there. SIGUSR1 and Ctrl-C are turned into SIGTERM
  for it. The sync points are this process's boundaries, counted once for
  the whole run (:func:`_reached_sync_point`): every training step, and every
  piece boundary of the other tasks (:func:`check`: label rounds, feature
  shards, robustness conditions, study stages), which every process passes
  in the same order, so all of them stop at the same boundary, keep the
  finished pieces, and exit 75 together. A task of one piece (alignment,
  retrieval without a feature cache) finishes it; the next boundary, a
  study's next stage, stops.

A signal during an evaluation or a save is acted on at the next step
boundary, after the evaluation or save: nothing in flight is cut.

Ctrl-C (SIGINT) stops a run the same way, with exit status
:data:`EXIT_INTERRUPTED` (130, as a shell reports a job ended by SIGINT) so
that the launchers do not restart it: a training loop saves at the next step
boundary; the piecewise tasks stop at their next piece boundary, keeping
their finished pieces. A second Ctrl-C stops at once (``KeyboardInterrupt``), leaving the
last committed checkpoint. A process whose parent started it with SIGINT
ignored (``nohup``, a background job of a non-interactive shell) keeps
ignoring it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, TypeVar

from absl import logging

T = TypeVar("T")

#: The exit status of a run that saved and stopped because it was preempted.
EXIT_PREEMPTED = 75
#: The exit status of a run stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
  """The run stopped on a preemption signal, after saving the checkpoint of ``step``
  (a training loop) or between its resumable pieces (``step`` None)."""

  exit_status = EXIT_PREEMPTED

  def __init__(self, step: int | None = None, directory: str | None = None):
    super().__init__(self._message(step, directory))
    self.step, self.directory = step, directory

  @staticmethod
  def _message(step: int | None, directory: str | None) -> str:
    done = (f"saved the checkpoint of step {step} in {directory} and stopped" if step
            is not None else "stopped; its finished pieces (shards, conditions, stages) "
            "are kept")
    return (f"preempted: {done}; run the same command again to resume "
            f"(exit status {EXIT_PREEMPTED})")


class Interrupted(Preempted):
  """The run stopped on Ctrl-C, as :class:`Preempted` does, with exit status 130."""
  exit_status = EXIT_INTERRUPTED

  @staticmethod
  def _message(step: int | None, directory: str | None) -> str:
    done = (f"saved the checkpoint of step {step} in {directory}" if step is not None
            else "finished pieces (shards, conditions, stages) are kept")
    return f"stopped by Ctrl-C: {done}; run the same command again to resume"


#: Set by the first Ctrl-C; :func:`check` raises at the next piece boundary once it is.
_interrupted = threading.Event()


def _sigint_ignored() -> bool:
  """Whether this process was started with SIGINT ignored (then it stays ignored)."""
  return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def _on_second_interrupt() -> None:
  """A second Ctrl-C: stop at once (a third one is the system's default: terminate)."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  raise KeyboardInterrupt("second Ctrl-C")


def _note_ctrl_c(signum) -> bool:
  """Whether ``signum`` is Ctrl-C, noting it; the second one stops at once."""
  if signum != signal.SIGINT:
    return False
  if _interrupted.is_set():
    _on_second_interrupt()
  _interrupted.set()
  return True


def _on_signal(signum, frame) -> None:
  """A preemption signal stops the task where it is; Ctrl-C at the next :func:`check`."""
  del frame
  if _note_ctrl_c(signum):
    logging.warning("Ctrl-C: stopping at the next shard, condition or stage boundary, "
                    "keeping the finished ones (Ctrl-C again to stop at once)")
    return
  logging.warning("Received %s: stopping", signal.Signals(signum).name)
  raise Preempted()


def check() -> None:
  """Stops the task at a boundary between its pieces (label rounds, feature shards,
  robustness conditions, study stages).

  One process: raises :class:`Interrupted` if Ctrl-C was pressed (a
  preemption signal has stopped it already). Several processes: every
  process calls it at the same boundaries; it raises :class:`Preempted` (or
  :class:`Interrupted` after Ctrl-C) at the sync point JAX's preemption
  service picked, the same boundary on every process.
  """
  if _distributed():
    if _reached_sync_point():
      raise (Interrupted if _interrupted.is_set() else Preempted)()
  elif _interrupted.is_set():
    raise Interrupted()


#: The sync points this process has passed (training steps and piece boundaries).
_sync_points = [0]


def _reached_sync_point() -> bool:
  """Whether the next sync point is where every process stops (several processes).

  One counter for the whole run rather than the training step: a study's
  stages each start their steps again, and the service's sync point must
  lie ahead of every process's count.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  _sync_points[0] += 1
  return bool(multihost_utils.reached_preemption_sync_point(_sync_points[0]))


def _to_preemption_service(signum, frame) -> None:
  """Several processes: SIGUSR1 and Ctrl-C reach JAX's preemption service as SIGTERM
  (a second Ctrl-C stops at once)."""
  del frame
  _note_ctrl_c(signum)
  logging.warning("%s: stopping at the next shard, condition, stage or step boundary "
                  "that every process reaches", "Ctrl-C" if signum == signal.SIGINT
                  else signal.Signals(signum).name)
  os.kill(os.getpid(), signal.SIGTERM)


def _wanted(distributed: bool) -> tuple[signal.Signals, ...]:
  wanted = (signal.SIGUSR1,) if distributed else SIGNALS
  return wanted if _sigint_ignored() else (*wanted, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signal():
  """Turns a preemption signal into :class:`Preempted` wherever the task is.

  For the tasks that resume piece by piece (label, feature extraction,
  robustness conditions, a study's stages): every piece is written whole, so
  stopping anywhere loses at most the piece in flight. A preemption signal
  stops the task at once (a scheduler's grace period is short); Ctrl-C at
  the next piece boundary (:func:`check`), or at once when pressed again.
  A training loop replaces this with its :class:`Watcher` while it runs.
  With several processes SIGTERM is left to JAX's preemption service, and
  every process stops at the same boundary (:func:`check`).
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _interrupted.clear()
  distributed = _distributed()
  handler = _to_preemption_service if distributed else _on_signal
  previous = {sig: signal.signal(sig, handler) for sig in _wanted(distributed)}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    _interrupted.clear()


#: What a run says when a second Ctrl-C (or one before the task began) stopped it.
STOPPED_AT_ONCE = ("stopped by Ctrl-C at once: the last committed checkpoint and the "
                   "finished pieces are kept; run the same command again to resume")


def run_stoppable(task: Callable[[], T]) -> T:
  """Runs ``task()`` under :func:`stop_on_signal`; a stop ends the process.

  A preemption or Ctrl-C becomes one warning line (stderr and the run's log;
  no traceback) and ``SystemExit`` with :data:`EXIT_PREEMPTED` or
  :data:`EXIT_INTERRUPTED`.
  """
  try:
    with stop_on_signal():  # a training loop takes over while it trains
      return task()
  except Preempted as e:  # saved: the launchers restart a run that exits 75
    logging.warning("%s", e)
    raise SystemExit(e.exit_status) from None
  except KeyboardInterrupt:  # a second Ctrl-C: what was committed is kept
    logging.warning("%s", STOPPED_AT_ONCE)
    raise SystemExit(EXIT_INTERRUPTED) from None


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
    for sig in _wanted(self._distributed):
      self._previous[sig] = signal.signal(sig, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    self._previous.clear()

  def _on_signal(self, signum, frame) -> None:
    del frame
    _note_ctrl_c(signum)
    if not self._signalled.is_set():
      name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
      logging.warning("%s: saving at the next step boundary, then stopping%s", name,
                      " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")
    self._signalled.set()
    if self._distributed:  # JAX's preemption service listens for SIGTERM only
      os.kill(os.getpid(), signal.SIGTERM)

  @property
  def interrupted(self) -> bool:
    """Whether the signal was Ctrl-C (the run then stops with :class:`Interrupted`).

    The loop calls :func:`check` before it starts watching, so a Ctrl-C seen
    here came while it watched."""
    return _interrupted.is_set()

  @property
  def signalled(self) -> bool:
    """Whether this process has received a preemption signal."""
    return self._signalled.is_set()

  def reached(self, step: int) -> bool:
    """Whether ``step`` is the step to save and stop at (call it after every step).

    With several processes it is True at the same step on all of them (each
    step is a sync point: :func:`_reached_sync_point`).
    """
    if self._distributed:
      return _reached_sync_point()
    return self._signalled.is_set()
