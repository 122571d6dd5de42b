"""A run that holds its workdir's lock and writes numbered checkpoint files, for the
two-writer tests (``tests/test_workdir_lock.py``).

    python tests/lock_worker.py WORKDIR STEPS RECORD

Takes ``WORKDIR``'s lock (:mod:`attn_contrastive.workdir_lock`), prints
``ready``, then writes ``WORKDIR/checkpoints/<step>`` from the first missing
step up to ``STEPS``, one every 20 ms, noting each step in the local file
``RECORD``: ``start <step>`` before its write and ``done <step>`` after it, so
that a test can tell a write a kill cut short from a finished one. Exits 3 with
the refusal on stderr when a live run holds the workdir. NumPy and epath
only: no JAX.
"""
import os
import sys
import time

from attn_contrastive import paths, workdir_lock


def main() -> None:
  workdir, steps, record = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  try:
    lock = workdir_lock.WorkdirLock(workdir, lease_s=60.0)
    lock.acquire()
  except workdir_lock.WorkdirLocked as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(3)
  print("ready", flush=True)
  folder = os.path.join(workdir, "checkpoints")
  paths.makedirs(folder)
  done = set(paths.listdir(folder)) if paths.exists(folder) else set()
  with open(record, "a") as notes:
    for step in range(steps):
      if str(step) in done:
        continue
      notes.write(f"start {step}\n")
      notes.flush()
      paths.write_atomic(os.path.join(folder, str(step)), str(os.getpid()))
      notes.write(f"done {step}\n")
      notes.flush()
      time.sleep(0.02)
  lock.release()


if __name__ == "__main__":
  main()
