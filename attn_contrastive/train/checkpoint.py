"""Orbax checkpoints of the train state, portable across devices and processes.

A run killed at any step and started again in the same workdir continues
with the same parameters *and* the same next batch: the input stream is a
function of the seed and the step (``pipeline.train_iterator``'s
``start_batch``), so no iterator state is saved, and the state is restored
into the new run's own structure and shardings, so a checkpoint written by N
devices or processes resumes on M. Resume order: the workdir's latest checkpoint, then an explicit
``init_checkpoint`` (parameters and BatchNorm statistics only), then scratch.
"""
from __future__ import annotations

import contextlib
import os
import logging as pylogging
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from attn_contrastive import paths


def _write_replicated_arrays_from_one_replica() -> None:
  """Saves each replicated array from one replica, unsliced.

  Orbax's default "replica-parallel" save splits every replicated array
  across its replicas, which compiles one slicing program per parameter (on
  CPU a second or more per checkpoint of a small ResNet); data-parallel
  parameters are small enough that one replica writing them is faster.
  """
  handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
  current = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(current, "_use_replica_parallel", True) is False:
    return  # registered already (orbax warns at every override)
  # Orbax warns at any override of a type's handler; this one is meant, and its
  # warning would reach the terminal of every run.
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(pylogging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.setLevel(level)


def _use_distributed_barriers() -> None:
  """Makes orbax's barriers use the coordination service, not device collectives.

  By default orbax synchronises processes with ``sync_global_devices``, a
  collective on the devices, while the train step's own collectives may be in
  flight; orbax itself warns that collectives called concurrently can
  deadlock. The distributed runtime's key-value barriers involve no device
  and have a timeout.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1 and "experimental_orbax_use_distributed_barrier" in flags.FLAGS:
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be read."""


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` for (state, iterator) pairs."""

  def __init__(self, workdir: str, *, keep: int = 3, save_every: int = 1000,
               async_save: bool = True):
    self.directory = os.path.join(paths.resolve(workdir), "checkpoints")
    self.save_every, self.async_save = save_every, async_save
    _write_replicated_arrays_from_one_replica()
    _use_distributed_barriers()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=1, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save, create=True))
    self._saving_step: int | None = None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, state: Any) -> tuple[Any, int]:
    """Restores the latest checkpoint into ``state``'s structure and shardings.

    Checkpoints of earlier versions also hold a data-iterator item (``iter``),
    tied to their process layout; it is not read.
    """
    step = self.manager.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    args = {"state": ocp.args.StandardRestore(abstract)}
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # orbax and tensorstore raise many types for a bad file
      earlier = [s for s in self.manager.all_steps() if s < step]
      fix = (f"delete {self.directory}/{step} to resume from step {max(earlier)}" if earlier
             else f"delete {self.directory} to start over")
      raise CheckpointError(
          f"the checkpoint of step {step} in {self.directory} cannot be read "
          f"({type(e).__name__}: {' '.join(str(e).split())[:200]}…); a file in it may be "
          f"truncated (a full disk, a copy cut short): {fix}.") from e
    logging.info("Resumed from %s at step %d", self.directory, step)
    return restored["state"], step

  def should_save(self, step: int, last_step: int) -> bool:
    """On schedule and at the last step (preemption: ``train/preemption.py``)."""
    return step % self.save_every == 0 or step == last_step

  def save(self, step: int, state: Any) -> None:
    args = {"state": ocp.args.StandardSave(state)}
    self.wait()  # the previous save's error, if any, under its own step (orbax waits anyway)
    self._saving_step = step
    with self._reporting_save_errors():
      self.manager.save(step, args=ocp.args.Composite(**args), force=True)
      if not self.async_save:
        self.manager.wait_until_finished()

  def wait(self) -> None:
    with self._reporting_save_errors():
      self.manager.wait_until_finished()

  def close(self) -> None:
    with self._reporting_save_errors():
      self.manager.wait_until_finished()
    self.manager.close()

  @contextlib.contextmanager
  def _reporting_save_errors(self):
    """Turns a failed save (a full disk above all) into one error saying what is kept."""
    try:
      yield
    except Exception as e:  # orbax and tensorstore raise many types for one OS error
      step = self._saving_step
      kept = [s for s in self.manager.all_steps() if step is None or s < step]
      cause = " ".join(str(e).split())[:300]
      full = _is_disk_full(e)
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        pass  # already failing: the first error is the one to report
      raise CheckpointError(
          f"saving the checkpoint{f' of step {step}' if step is not None else ''} to "
          f"{self.directory} failed: "
          + ("the disk is full. " if full else f"{type(e).__name__}: {cause}. ")
          + (f"The checkpoint of step {max(kept)} is intact and a restart resumes from it"
             if kept else "No earlier checkpoint was written")
          + ("; free space there (or move --workdir) first." if full else ".")) from e


def _is_disk_full(error: BaseException | None) -> bool:
  """ENOSPC anywhere in an exception's chain (tensorstore reports it as text)."""
  while error is not None:
    text = str(error)
    if (getattr(error, "errno", None) == 28 or "No space left" in text
        or "os_error_code='28'" in text):
      return True
    error = error.__cause__ or error.__context__
  return False


def latest_step_dir(path: str) -> str:
  """The folder of the latest checkpoint under a workdir or its ``checkpoints`` folder.

  A step's folder (one holding ``state``) is returned as it is; its name is
  the step.
  """
  path = paths.resolve(path)
  if paths.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if not paths.isdir(os.path.join(path, "state")):
    with ocp.CheckpointManager(path) as mngr:
      step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint found under {path}: point the config at a "
                              "workdir that holds one")
    path = os.path.join(path, str(step))
  return path


def latest_step(path: str) -> int:
  """The step of the latest checkpoint under ``path`` (see :func:`latest_step_dir`)."""
  return int(os.path.basename(latest_step_dir(path)))


def _leaves(tree: Any) -> dict[str, tuple[int, ...]]:
  """``{"params/a/b": shape}`` of a tree of arrays, structs or orbax metadata."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path):
          tuple(leaf.shape) for path, leaf in flat}


def check_tree_match(saved: Any, target: Any, where: Any) -> None:
  """Refuses a checkpoint that lacks a leaf of ``target`` or has it in another shape.

  Names the first such path (leaves only the checkpoint has are fine: a partial
  restore reads a subset, e.g. the encoder of a SimCLR run).
  """
  have = _leaves({k: saved[k] for k in target if k in saved})
  for path, shape in _leaves(target).items():
    if path not in have:
      near = [p for p in have if p.rsplit("/", 1)[-1] == path.rsplit("/", 1)[-1]][:3]
      raise ValueError(
          f"the checkpoint in {where} does not match this model: it has no {path} "
          f"(this model's, shape {shape}){'; it has ' + ', '.join(near) if near else ''}. "
          "Is it a checkpoint of another model or config?")
    if have[path] != shape:
      raise ValueError(
          f"the checkpoint in {where} does not match this model: {path} has shape "
          f"{have[path]} there and {shape} here. Is it a checkpoint of another model or "
          "config (model.width, model.depth, num_classes)?")


def load_variables(path: str, *, target: Any | None = None,
                   sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
  """Reads ``params`` and ``batch_stats`` from another run's checkpoint.

  ``path`` is a workdir, its ``checkpoints`` folder, or one step's folder.
  The variables are restored into a target, so that the devices and
  processes that wrote the checkpoint do not matter: ``target`` (a tree
  ``{"params", "batch_stats"}`` of arrays or ``jax.ShapeDtypeStruct`` with
  shardings, e.g. a fresh state's) gives the structure and shardings;
  otherwise the checkpoint's own shapes and dtypes are placed in
  ``sharding`` (e.g. ``mesh_lib.replicated(mesh)``), or on the host as NumPy
  arrays without one. The optimiser state is not read.
  """
  state_dir = epath.Path(latest_step_dir(path)) / "state"
  handler = ocp.PyTreeCheckpointHandler()
  try:
    if target is None:
      saved = handler.metadata(state_dir).tree
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            {k: saved[k] for k in ("params", "batch_stats") if k in saved})
    else:
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(target))
      check_tree_match(handler.metadata(state_dir).tree, target, state_dir)
    restored = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  finally:
    handler.close()
  return {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
