"""The shared training loop: one jitted, data-parallel step over global arrays.

A task (SimCLR pretraining, supervised training, …) supplies a
:class:`TaskSpec` — its model, loss, per-example transform and evaluation —
and this loop does the rest: mesh, optimiser, state, resume, logging,
checkpoints, and the non-finite-loss guard. Resume order: the workdir's
latest checkpoint, then ``config.init_checkpoint``, then scratch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from attn_contrastive import config as config_lib
from attn_contrastive import paths
from attn_contrastive import progress
from attn_contrastive.config_checks import TORCHVISION_INIT
from attn_contrastive.data import images
from attn_contrastive.evaluators import common as eval_lib
from attn_contrastive.train import checkpoint as ckpt_lib
from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train import optim
from attn_contrastive.train import preemption
from attn_contrastive.train import step as step_lib
from attn_contrastive.train import torchvision_init
from attn_contrastive.train.state import TrainState, count_params, create_train_state


@dataclasses.dataclass
class TaskSpec:
  """What a task gives the loop.

  ``evaluate`` (optional) follows :mod:`attn_contrastive.evaluators.common`:
  its flat scalars are logged as ``eval/<key>``, and its ``results`` of the
  final evaluation are added to ``results.json``. ``frozen`` (optional): a
  tree of arrays that ``loss_fn`` reads as its fifth argument but never
  updates (a pretrained encoder under linear evaluation); it is replicated
  over the mesh, passed to every step without being donated, and kept out of
  the train state and its checkpoints.
  """
  model: Any
  loss_fn: step_lib.LossFn
  train_source: Any
  train_transform: Callable
  sample_input: jax.ShapeDtypeStruct
  evaluate: eval_lib.Evaluator | None = None
  frozen: Any = None


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def total_steps(config, num_train_examples: int) -> tuple[int, int]:
  """(steps per epoch, total steps) from ``train.num_steps`` or ``num_epochs``."""
  per_epoch = max(num_train_examples // config.input.global_batch_size, 1)
  if config.train.num_steps > 0:
    return per_epoch, int(config.train.num_steps)
  return per_epoch, max(int(math.ceil(config.train.num_epochs * per_epoch)), 1)


def skipped_steps(state: TrainState) -> int:
  """Steps whose update was skipped as non-finite (``train.skip_nonfinite_steps``)."""
  counts = optax.tree.get(state.opt_state, "total_notfinite", default=None)
  return 0 if counts is None else int(jax.device_get(counts))


def _check_finite(metrics: dict[str, float], step: int, ckpt: ckpt_lib.Checkpointer,
                  state: TrainState, skip_limit: int) -> None:
  """Stops on a non-finite loss (naming the metrics that are), or past the skip limit."""
  if skip_limit > 0:
    skipped = skipped_steps(state)
    if skipped <= skip_limit:
      return
    reason = (f"{skipped} steps skipped for a non-finite loss or gradient by step {step}, "
              f"more than train.skip_nonfinite_steps={skip_limit}")
  elif np.isfinite(metrics["loss"]):
    return
  else:
    bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
    reason = f"loss is {metrics['loss']} at step {step} (not finite: {', '.join(bad)})"
  ckpt.wait()
  raise NonFiniteLossError(
      f"{reason}; stopping. The last good checkpoint (step {ckpt.latest_step()}) is kept in "
      f"{ckpt.directory}. Lower --config.optim.base_lr or raise warmup_epochs, then restart "
      "(or let a few bad steps pass with --config.train.skip_nonfinite_steps=N).")


def _restore(config, state, ckpt) -> TrainState:
  """Resume order: workdir checkpoint, then init_checkpoint (a run's workdir, or
  ``torchvision:PATH``: torchvision weights for the encoder), then scratch."""
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(state)
  elif config.init_checkpoint.startswith(TORCHVISION_INIT):
    current = {"params": state.params, "batch_stats": state.batch_stats}
    variables = torchvision_init.init_variables(
        config.init_checkpoint[len(TORCHVISION_INIT):], jax.device_get(current), config.task)
    state = state.replace(**jax.tree.map(
        lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding),
        variables, current))
    logging.info("Initialised the encoder from %s", config.init_checkpoint)
  elif config.init_checkpoint:
    target = {"params": state.params, "batch_stats": state.batch_stats}
    if config.task == "supervised" and _task_of(config.init_checkpoint) == "pretrain":
      variables = _from_encoder(config.init_checkpoint, target)
    else:
      variables = ckpt_lib.load_variables(config.init_checkpoint, target=target)
    state = state.replace(**variables)
    logging.info("Initialised from %s", config.init_checkpoint)
  return state


def _task_of(run_dir: str) -> str | None:
  """The task of the run whose workdir is ``run_dir`` (None without its config.json)."""
  path = os.path.join(run_dir, "config.json")
  return paths.read_json(path).get("task") if paths.exists(path) else None


def _from_encoder(run_dir: str, target: dict[str, Any]) -> dict[str, Any]:
  """A supervised ResNet's variables from a SimCLR run's encoder, its classifier zero
  (SimCLR's fine-tuning: ``zero_init_logits_layer``, so training starts from the
  pretrained features alone)."""
  trunk = {k: {"encoder": {n: x for n, x in v.items() if n != "classifier"}}
           for k, v in target.items()}
  loaded = ckpt_lib.load_variables(run_dir, target=trunk)
  variables = {k: {**target[k], **loaded[k].get("encoder", {})} for k in target}
  variables["params"]["classifier"] = jax.tree.map(lambda x: x * 0,
                                                   target["params"]["classifier"])
  return variables


def write_config(workdir: str, config) -> None:
  """Saves the run's config as ``config.json``, so later stages (alignment,
  linear evaluation) can rebuild its model from the workdir alone."""
  if jax.process_index() == 0:
    paths.write_atomic(os.path.join(workdir, "config.json"), config.to_json(indent=2))


def _bad_images_dir(workdir: str) -> str:
  return os.path.join(workdir, "bad_images")


def _record_bad_images(source: Any, workdir: str) -> None:
  """Has the training split's bad records written under the workdir by every process
  and grain worker, so that ``results.json`` counts them all (``images.recorded``)."""
  log = getattr(source, "log", None)
  if log is not None:
    log.record_dir = _bad_images_dir(workdir)


def write_results(workdir: str, results: dict[str, Any]) -> None:
  """Writes ``results.json`` (process 0 only), atomically: a study skips a stage
  whose results.json exists, so a half-written one must never be seen."""
  if jax.process_index() == 0:
    paths.write_json(os.path.join(workdir, "results.json"), results)


#: Keys that may change between a run and its resumption: where things are and how
#: often the loop reports, never what it computes (``data.max_bad_images`` only
#: decides when to stop: which records are skipped depends on the data alone).
RESUMABLE_CHANGES = (
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.async_checkpoint", "train.eval_every", "train.profile",
    "train.resume_with_changes", "input.num_threads", "input.prefetch", "input.num_workers",
    "data.data_dir", "data.auto_prepare", "data.max_bad_images", "init_checkpoint", "eval")


def config_changes(saved: dict[str, Any], config) -> list[str]:
  """``"key: old → new"`` for every key that differs and changes what a run computes.

  Keys only one of the two configs has (added or retired by another version of
  the code) are not compared.
  """
  old, new = config_lib.flatten(saved), config_lib.flatten(json.loads(config.to_json()))
  changed = []
  for key in sorted(set(old) & set(new)):
    if any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES):
      continue
    if old[key] != new[key]:
      changed.append(f"{key}: {old[key]!r} → {new[key]!r}")
  return changed


def check_resume_config(workdir: str, config) -> None:
  """Refuses to resume a checkpoint written under another config, naming the changes.

  ``train.resume_with_changes`` resumes anyway (e.g. to extend a schedule on
  purpose); keys of :data:`RESUMABLE_CHANGES` never count.
  """
  path = os.path.join(workdir, "config.json")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not (paths.exists(path) and paths.isdir(ckpt_dir) and paths.listdir(ckpt_dir)):
    return
  saved = paths.read_json(path)
  changed = config_changes(saved, config)
  if changed and not config.train.get("resume_with_changes", False):
    raise ValueError(
        f"{workdir} holds checkpoints of a run with another config; differing keys:\n  "
        + "\n  ".join(changed) + "\nUse another --workdir, or resume anyway with "
        "--config.train.resume_with_changes=True.")


def run(config, workdir: str, task: TaskSpec, *, stop_at: int | None = None,
        mesh=None) -> tuple[TrainState, dict[str, float]]:
  """Trains ``task`` for the configured steps; returns the state and last metrics.

  ``stop_at`` ends the loop after that step without a final save, as a killed
  process would (used to test resume).
  """
  paths.makedirs(workdir)
  check_resume_config(workdir, config)
  write_config(workdir, config)
  mesh = mesh or mesh_lib.make_mesh()
  batch = config.input.global_batch_size
  mesh_lib.check_batch_divisible(batch, mesh)
  steps_per_epoch, last_step = total_steps(config, len(task.train_source))
  schedule = optim.make_schedule(config.optim, batch, last_step, steps_per_epoch)
  tx = optim.make_optimizer(config.optim, schedule)
  if config.get("finetune") is not None:
    tx = optim.freeze_through(tx, int(config.finetune.after_block))
  skip_limit = int(config.train.get("skip_nonfinite_steps", 0))
  if skip_limit > 0:  # counted in the optimiser state, so the count survives a resume
    tx = optax.apply_if_finite(tx, max_consecutive_errors=skip_limit + 1)
  state = create_train_state(task.model, tx, task.sample_input, config.seed,
                             mesh_lib.replicated(mesh))
  logging.info("Model parameters: %d", count_params(state.params))
  ckpt = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                               save_every=config.train.checkpoint_every,
                               async_save=config.train.async_checkpoint)
  state = _restore(config, state, ckpt)
  first_step = int(state.step) + 1
  _record_bad_images(task.train_source, workdir)  # before grain's workers copy the source
  from attn_contrastive.data import pipeline  # grain, only in a process that trains
  data_iter = pipeline.train_iterator(
      task.train_source, task.train_transform, seed=config.seed, global_batch=batch,
      num_threads=config.input.num_threads, prefetch=config.input.prefetch,
      num_workers=config.input.num_workers, start_batch=first_step - 1)
  train_step = step_lib.make_train_step(task.loss_fn, schedule,
                                        skip_nonfinite=skip_limit > 0)
  if task.frozen is None:
    step_fn, frozen = step_lib.jit_train_step(train_step, mesh), ()
  else:
    step_fn = step_lib.jit_train_step(train_step, mesh, with_frozen=True)
    frozen = (jax.device_put(task.frozen, mesh_lib.replicated(mesh)),)
  step_rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), mesh_lib.replicated(mesh))

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  writer.write_hparams({k: str(v) for k, v in config.items()})
  hooks = [periodic_actions.ReportProgress(num_train_steps=last_step, writer=writer,
                                           every_steps=config.train.log_every)]
  if config.train.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))

  preemption.check()  # a Ctrl-C while the run was being set up
  # A signal after the last step lets the final evaluation finish: the last
  # checkpoint is written by then, and the run ends normally.
  with preemption.Watcher() as watcher:
    bar = progress.bar(last_step, "steps", unit="step", initial=first_step - 1)
    steps = _Steps(config, task, mesh, step_fn, frozen, step_rng, ckpt, writer, hooks,
                   skip_limit, bar)
    try:
      state, last = _train(steps, state, data_iter, watcher, first_step, last_step, stop_at)
    finally:  # stops grain's worker processes now, whatever ended the steps
      bar.close()
      data_iter.close()
    results = {}
    if task.evaluate and (stop_at is None or int(state.step) == last_step):
      eval_metrics = task.evaluate(state)
      writer.write_scalars(int(state.step), {f"eval/{k}": v for k, v in eval_metrics.items()})
      last.update({f"eval/{k}": v for k, v in eval_metrics.items()})
      results = task.evaluate.results
  writer.flush()
  if stop_at is None:
    write_results(workdir, {"step": int(state.step), **last, **results,
                            "bad_images": images.recorded(_bad_images_dir(workdir))})
  return state, last


@dataclasses.dataclass
class _Steps:
  """What every step of :func:`_train` uses."""
  config: Any
  task: TaskSpec
  mesh: Any
  step_fn: Callable
  frozen: tuple
  step_rng: jax.Array
  ckpt: ckpt_lib.Checkpointer
  writer: Any
  hooks: list
  skip_limit: int
  bar: Any  # progress.bar of the steps: their count, loss and time left


def _train(s: _Steps, state: TrainState, data_iter, watcher: preemption.Watcher,
           first_step: int, last_step: int, stop_at: int | None):
  """The steps ``first_step..last_step``; returns the state and the last logged metrics.

  Saves on schedule, and on a preemption signal saves the agreed step, waits for
  the save and raises :class:`preemption.Preempted`.
  """
  config, task, mesh, ckpt, writer = s.config, s.task, s.mesh, s.ckpt, s.writer
  step_fn, frozen, step_rng, hooks, skip_limit = (s.step_fn, s.frozen, s.step_rng, s.hooks,
                                                  s.skip_limit)
  batch = config.input.global_batch_size
  metrics, last = {}, {}
  t0, t0_step = time.perf_counter(), first_step - 1
  for step in range(first_step, last_step + 1):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      global_batch = mesh_lib.to_global(next(data_iter), mesh)
      state, metrics = step_fn(state, global_batch, step_rng, *frozen)
    for hook in hooks:
      hook(step)
    s.bar.update(1)
    if step % config.train.log_every == 0 or step == last_step:
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_finite(last, step, ckpt, state, skip_limit)
      if skip_limit > 0:
        last["skipped_steps"] = float(skipped_steps(state))
      elapsed = time.perf_counter() - t0
      last["examples_per_s"] = (step - t0_step) * batch / max(elapsed, 1e-9)
      writer.write_scalars(step, last)
      s.bar.set_postfix_str(f"loss {last['loss']:.4g}", refresh=False)
      t0, t0_step = time.perf_counter(), step
    preempted = watcher.reached(step)
    if ckpt.should_save(step, last_step) or preempted:
      _check_finite({k: float(v) for k, v in jax.device_get(metrics).items()}, step, ckpt,
                    state, skip_limit)
      ckpt.save(step, state)
    if preempted:
      ckpt.close()  # waits until the save is committed on every process
      writer.flush()
      stop = preemption.Interrupted if watcher.interrupted else preemption.Preempted
      raise stop(step, ckpt.directory)
    if (task.evaluate and config.train.eval_every > 0
        and step % config.train.eval_every == 0 and step != last_step):
      writer.write_scalars(step, {f"eval/{k}": v for k, v in task.evaluate(state).items()})
    if stop_at is not None and step >= stop_at:
      break
  ckpt.close()
  return state, last
