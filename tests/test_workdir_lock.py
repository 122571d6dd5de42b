"""One writer per workdir (``attn_contrastive/workdir_lock.py``), on a local disk and on
the GCS emulator.

The unit tests take and swap the lock in this process; the two-writer tests
start real processes (``tests/lock_worker.py``, which writes numbered
checkpoint files under the lock, and ``main`` itself): a second run on a
workdir that a live run holds is refused naming the holder, the lock of a
SIGKILLed run is taken over by the next one, and no checkpoint is written by
two runs.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from attn_contrastive import paths, workdir_lock
from test_remote_paths import BUCKET, gcs  # noqa: F401  (the emulator fixture)

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "lock_worker.py")
STEPS = 12


def _dead_pid() -> int:
  """The PID of a process that has ended."""
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def _workdir(where: str, tmp_path, name: str) -> str:
  if where == "gcs":
    return f"gs://{BUCKET}/lock/{name}"
  return str(tmp_path / name)


@pytest.fixture(params=["local", "gcs"])
def where(request):
  if request.param == "gcs":
    request.getfixturevalue("gcs")
  return request.param


def test_a_live_holder_refuses_and_a_dead_one_is_taken_over(where, tmp_path, caplog):
  workdir = _workdir(where, tmp_path, "unit")
  paths.makedirs(workdir)
  first = workdir_lock.WorkdirLock(workdir, lease_s=60)
  mine = first.acquire()
  with pytest.raises(workdir_lock.WorkdirLocked) as refused:
    workdir_lock.WorkdirLock(workdir).acquire()  # this very process holds it: alive
  message = str(refused.value)
  assert f"host {socket.gethostname()}, PID {os.getpid()}, started {mine['start_time']}" \
      in message and "lock.json" in message
  before = first.store.read()[0]["renewed"]
  time.sleep(0.01)
  first.renew()
  assert first.store.read()[0]["renewed"] > before
  first.release()
  assert first.store.read()[0] is None

  held, version = first.store.read()
  dead = dict(workdir_lock.record(60), pid=_dead_pid(), process_start=None)
  version = first.store.swap(version, dead)  # a SIGKILLed run's lock
  with caplog.at_level("WARNING"):
    with workdir_lock.held(workdir) as taken:
      assert taken.store.read()[0]["token"] == taken.mine["token"]
  assert f"process {dead['pid']} on this host is gone" in caplog.text

  # A lost host: refused while its lease runs, taken over once it has expired.
  away = dict(workdir_lock.record(60), host="elsewhere", renewed=time.time())
  version = first.store.swap(first.store.read()[1], away)
  with pytest.raises(workdir_lock.WorkdirLocked, match="host elsewhere"):
    workdir_lock.WorkdirLock(workdir).acquire()
  version = first.store.swap(version, dict(away, renewed=time.time() - 61))
  # Two runs that read the same stale lock: one swap wins, the other conflicts.
  winner = workdir_lock.record(60)
  new_version = first.store.swap(version, winner)
  with pytest.raises(workdir_lock._Conflict):
    first.store.swap(version, workdir_lock.record(60))
  assert first.store.read() == (winner, new_version)
  first.store.swap(new_version, None)


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path):
  reused = dict(workdir_lock.record(60), process_start="1")  # this PID, another start
  assert "another process's now" in workdir_lock.stale_reason(reused)
  assert workdir_lock.stale_reason(workdir_lock.record(60)) is None


def _env(where: str) -> dict[str, str]:
  env = dict(os.environ)
  if where == "gcs":  # the emulator's settings are in os.environ; gcsfs's token too
    env["FSSPEC_GS_TOKEN"] = "anon"
  return env


def _start(workdir: str, record: str, where: str, steps: int = 10_000):
  return subprocess.Popen([sys.executable, WORKER, workdir, str(steps), record],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_env(where))


def _written(record: str, what: str = "done") -> list[int]:
  """The steps a worker noted as ``what`` ("start" or "done") in ``record``."""
  if not os.path.exists(record):
    return []
  with open(record) as f:
    return [int(step) for kind, step in (line.split() for line in f) if kind == what]


def test_two_real_runs_one_workdir(where, tmp_path):
  workdir = _workdir(where, tmp_path, "run")
  paths.makedirs(workdir)
  notes = {k: str(tmp_path / f"{k}.steps") for k in ("a", "b", "c")}
  a = _start(workdir, notes["a"], where)
  assert a.stdout.readline().strip() == "ready", a.stderr.read()
  deadline = time.monotonic() + 60
  while len(_written(notes["a"])) < 3:
    assert time.monotonic() < deadline and a.poll() is None, a.stderr.read()
    time.sleep(0.02)
  b = _start(workdir, notes["b"], where)  # the same command started twice
  _, err = b.communicate(timeout=60)
  assert b.returncode == 3, err
  assert f"host {socket.gethostname()}, PID {a.pid}, started" in err
  if where == "local":  # main refuses before it writes anything there
    main = subprocess.run(
        [sys.executable, "-m", "attn_contrastive.main",
         f"--config={os.path.join(os.path.dirname(HERE), 'configs', 'contrastive.py')}",
         f"--workdir={workdir}"], capture_output=True, text=True, env=_env(where),
        timeout=120)
    assert main.returncode == 1 and f"PID {a.pid}" in main.stderr, main.stderr[-2000:]
    assert sorted(os.listdir(workdir)) == ["checkpoints", "lock.json"]
  a.send_signal(signal.SIGKILL)  # the holder dies without releasing the lock
  a.wait()
  started_a, done_a = _written(notes["a"], "start"), _written(notes["a"])
  total = len(started_a) + 4
  c = _start(workdir, notes["c"], where, steps=total)
  _, err = c.communicate(timeout=60)
  assert c.returncode == 0 and "Taking over the lock" in err and f"PID {a.pid}" in err, err
  started_c, done_c = _written(notes["c"], "start"), _written(notes["c"])
  assert _written(notes["b"], "start") == []
  assert started_c == done_c
  # The kill may cut a's last write short (its file absent, so c writes it); no step
  # that a finished is written again, and every step is written once in the end.
  assert not set(done_a) & set(started_c), "a checkpoint written by two runs"
  assert set(started_c) & set(started_a) <= set(started_a[-1:]) - set(done_a)
  assert sorted(set(done_a) | set(done_c)) == list(range(total)) or \
      sorted(set(started_a) | set(done_c)) == list(range(total))
  names = paths.listdir(os.path.join(workdir, "checkpoints"))  # a kill may leave a .tmp
  assert sorted(int(n) for n in names if n.isdigit()) == list(range(total))
  assert not paths.exists(os.path.join(workdir, "lock.json"))  # released at its end
