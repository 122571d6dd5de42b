"""Preemption: SIGTERM and SIGUSR1 mid-run, mid-evaluation and mid-save.

Each interrupted run must save the checkpoint of an agreed step, exit 75, and
the restarted run must end where an uninterrupted run ends: bit for bit on
one process, within float noise on two processes (one of them signalled).
"""
import os
import signal
import time

import numpy as np
import pytest

import multiprocess
from attn_contrastive.train import checkpoint as ckpt_lib
from attn_contrastive.train import preemption

# Its tests share a costly module fixture: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("test_preemption")

STEPS = 12
EVAL_EVERY = 6


def _plan(workdir, **kwargs):
  return [["train", dict(workdir=workdir, steps=STEPS, eval_every=EVAL_EVERY, delay=0.01, **kwargs)]]


def _final(workdir):
  with np.load(os.path.join(workdir, "final.npz")) as z:
    return dict(z)


def _interrupt(tmp_path, workdir, tag, marker, sig, processes=1, to=(0,), **kwargs):
  """Starts the run, sends ``sig`` to processes ``to`` once ``marker`` exists, and
  returns the step of the checkpoint it left."""
  procs = multiprocess.start(_plan(workdir, **kwargs), processes, 3 - processes,
                             str(tmp_path), tag)
  multiprocess.wait_for(os.path.join(workdir, marker), procs)
  for p in to:
    multiprocess.send(procs[p], sig)
  codes = multiprocess.wait(procs)
  assert codes == [preemption.EXIT_PREEMPTED] * processes, (
      codes, multiprocess.logs(str(tmp_path), tag))
  return ckpt_lib.latest_step(workdir)


def _finish(tmp_path, workdir, tag, processes=1):
  multiprocess.run(_plan(workdir), processes, 3 - processes, str(tmp_path), tag)
  return _final(workdir)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run on one process of two devices."""
  root = tmp_path_factory.mktemp("straight")
  return _finish(root, str(root / "run"), "straight")


def test_one_process_resumes_to_the_uninterrupted_result(tmp_path, straight):
  workdir = str(tmp_path / "run")
  # SIGTERM mid-run: saved at the next step boundary, not at a scheduled save.
  mid_run = _interrupt(tmp_path, workdir, "a", os.path.join("checkpoints", "2"), signal.SIGTERM)
  assert 2 < mid_run < EVAL_EVERY
  # SIGUSR1 during the evaluation at step 6: it ends, step 7 runs and is saved.
  assert _interrupt(tmp_path, workdir, "b", "evaluating", signal.SIGUSR1) == 7
  got = _finish(tmp_path, workdir, "c")
  for k, v in straight.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_two_processes_agree_on_the_step_when_one_is_signalled(tmp_path, straight):
  workdir = str(tmp_path / "run")
  # SIGUSR1 to process 1 alone while the checkpoint of step 2 is being written:
  # the save is finished, both processes save step 3 and exit 75.
  assert _interrupt(tmp_path, workdir, "a", "saving", signal.SIGUSR1, processes=2, to=(1,),
                    slow_save=1.5) == 3
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
  got = _finish(tmp_path, workdir, "b", processes=2)
  # 2 processes: sums over rows in another order (about n·eps relative each step),
  # carried through 12 LARS steps at a low rate (test_multiprocess's error model).
  for k, v in straight.items():
    np.testing.assert_allclose(got[k], v, rtol=2e-4, atol=2e-5, err_msg=k)


def test_a_signal_outside_a_training_loop_stops_the_task_keeping_its_pieces():
  before = signal.getsignal(signal.SIGUSR1)
  with pytest.raises(preemption.Preempted, match="finished pieces"):
    with preemption.stop_on_signal():
      os.kill(os.getpid(), signal.SIGUSR1)
      for _ in range(100):  # the handler runs at the next bytecode boundary
        time.sleep(0.01)
  assert signal.getsignal(signal.SIGUSR1) is before


def test_the_watcher_flags_a_signal_and_restores_the_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.Watcher() as watcher:
    assert not watcher.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert watcher.signalled and watcher.reached(2)
  assert signal.getsignal(signal.SIGTERM) is before


def _wait_for_handler():
  for _ in range(100):  # the handler runs at the next bytecode boundary
    time.sleep(0.001)


@pytest.fixture
def sigint_default():
  """SIGINT at Python's default here, whatever this process inherited (a runner
  started in the background has it ignored, and the tasks then leave it so)."""
  inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, inherited)


def test_ctrl_c_stops_a_piecewise_task_at_its_next_piece_and_twice_at_once(sigint_default):
  before = signal.getsignal(signal.SIGINT)
  pieces = []
  with pytest.raises(preemption.Interrupted, match="Ctrl-C.*finished pieces") as stopped:
    with preemption.stop_on_signal():
      for piece in range(5):
        preemption.check()
        pieces.append(piece)
        if piece == 2:
          os.kill(os.getpid(), signal.SIGINT)
          _wait_for_handler()  # the piece in flight is not cut
  assert pieces == [0, 1, 2] and stopped.value.exit_status == preemption.EXIT_INTERRUPTED
  with pytest.raises(KeyboardInterrupt):
    with preemption.stop_on_signal():
      os.kill(os.getpid(), signal.SIGINT)
      _wait_for_handler()
      os.kill(os.getpid(), signal.SIGINT)
      _wait_for_handler()
  assert signal.getsignal(signal.SIGINT) is before
  preemption.check()  # the flag ends with the task


def test_an_ignored_ctrl_c_stays_ignored():
  inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with preemption.stop_on_signal(), preemption.Watcher() as watcher:
      assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
      os.kill(os.getpid(), signal.SIGINT)
      _wait_for_handler()
      assert not watcher.signalled
  finally:
    signal.signal(signal.SIGINT, inherited)


def test_the_watcher_takes_ctrl_c_as_an_interruption_and_a_second_one_at_once(sigint_default):
  with preemption.stop_on_signal():
    with preemption.Watcher() as watcher:
      os.kill(os.getpid(), signal.SIGINT)
      _wait_for_handler()
      assert watcher.reached(3) and watcher.interrupted
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_handler()
    with pytest.raises(preemption.Interrupted):  # and the task's next piece stops too
      preemption.check()
