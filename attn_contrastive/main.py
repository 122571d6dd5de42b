r"""The one entry point: ``python -m attn_contrastive.main --config=... --workdir=...``.

``--config=configs/<file>.py[:arg]`` picks the experiment, ``--config.key=value``
overrides any field, and ``config.task`` picks the stage to run.
"""
from __future__ import annotations

import atexit
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from attn_contrastive import config as config_lib
from attn_contrastive import config_checks
from attn_contrastive import paths
from attn_contrastive import progress
from attn_contrastive import terminal
from attn_contrastive import workdir_lock
from attn_contrastive import tasks
from attn_contrastive.data.images import DataFileError, TooManyBadImagesError
from attn_contrastive.train import preemption

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False,
    "Call jax.distributed.initialize() (Cloud TPU pods, SLURM, or the flags below).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns a bad ``--config.key`` into a clear message."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # ml_collections raises several types for bad overrides
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is not None:
      try:
        config_lib.check_overrides(argv, config_lib.load_config_file(config_arg))
      except KeyError as key_error:
        sys.exit(f"error: {key_error.args[0]}")
    sys.exit(f"error: {e}")


def check_layout(config, num_devices: int, num_processes: int) -> None:
  """Exits listing every batch that these devices and processes cannot split.

  Runs once JAX knows the layout and before any data is read, so that a
  batch that fails on this pod (an evaluation batch of 1000 on 32 devices)
  is refused at once rather than hours in, when its evaluation comes.
  Every process exits alike: none is left waiting for the others.
  """
  bad = config_checks.layout_problems(config, num_devices, num_processes)
  if bad:
    sys.exit(f"error: {len(bad)} batch size(s) that this layout cannot split, to fix "
             "before anything runs:\n  " + "\n  ".join(bad))


def hold_workdir(workdir: str) -> workdir_lock.WorkdirLock | None:
  """Takes the workdir's lock until the run ends (``execute`` releases it; at the
  process's exit at the latest), or exits naming the run that holds it
  (``workdir_lock.py``): nothing is written to a workdir in use."""
  try:
    lock = workdir_lock.hold_for_run(workdir)
  except workdir_lock.WorkdirLocked as e:
    sys.exit(f"error: {e}")
  if lock is not None:
    atexit.register(lock.release)
  return lock


def main(argv: list[str]) -> None:
  del argv
  if _CONFIG.value is None or _WORKDIR.value is None:
    sys.exit("error: pass --config=configs/<file>.py[:arg] and --workdir=DIR")
  execute(_CONFIG.value, _WORKDIR.value,
          config_flags.get_config_filename(flags.FLAGS["config"]), _DISTRIBUTED.value)


def execute(config, workdir: str, config_file: str, distributed: bool = False) -> None:
  """Runs ``config.task`` in ``workdir`` as the command line does, once its flags are
  parsed: config checks, ``jax.distributed`` if asked, the workdir's log, layout
  checks, the task (stoppable), the closing summary. Its own function so that a
  documented command can be run in this process (the ImageNet rehearsal's test)."""
  if config.task not in tasks.TASKS:
    sys.exit(f"error: config.task={config.task!r}; known tasks: {sorted(tasks.TASKS)}")
  bad = config_checks.problems(config)
  if bad:
    sys.exit(f"error: {len(bad)} config value(s) to fix before anything runs:\n  "
             + "\n  ".join(bad))
  import jax  # here, so that a bad flag is refused without loading JAX
  if distributed:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  paths.makedirs(workdir)
  lock = hold_workdir(workdir)
  # Before JAX starts its backends, whose INFO lines belong in the log file.
  process = jax.process_index() if distributed else 0
  log_file = terminal.log_to_workdir(workdir, process)
  if process == 0:
    progress.say(f"{config.task} in {workdir}; every log line in {log_file}")
  if paths.is_remote(workdir):
    logging.info("Log: %s, copied into %s when the run ends", log_file, workdir)
  logging.info("Process %d/%d, %d devices (%s)", jax.process_index(), jax.process_count(),
               jax.device_count(), jax.default_backend())
  check_layout(config, jax.device_count(), jax.process_count())
  if config.task == "study":  # every stage's config: kept in config.json, not the terminal
    from attn_contrastive.train import loop
    loop.write_config(workdir, config)
  else:
    logging.info("Config:\n%s", config)
  start = time.perf_counter()
  run_task = tasks.entry(config.task)
  try:
    preemption.run_stoppable(lambda: run_task(config, workdir))
  except (TooManyBadImagesError, DataFileError) as e:  # names the files and the fix
    sys.exit(f"error: {e}")
  finally:
    terminal.upload_log(workdir, process)
    terminal.end_log(log_file)
    if lock is not None:
      lock.release()
  if jax.process_index() == 0:
    minutes = (time.perf_counter() - start) / 60
    print(terminal.summary(config.task, config_file, workdir, config.data.name, minutes),
          flush=True)


def run() -> None:
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:  # while Python, JAX or TensorFlow were still loading
    print(preemption.STOPPED_AT_ONCE, file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_INTERRUPTED)


if __name__ == "__main__":
  run()
