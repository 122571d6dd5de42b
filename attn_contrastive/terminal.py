"""What a run leaves on the terminal: bars, warnings, stage lines, then a summary.

Everyone logs a great deal at INFO (orbax on every checkpoint, JAX and
TensorFlow on start-up, the project on every corruption, shard and
monitor). :func:`log_to_workdir` keeps every INFO line in
``<workdir>/log.txt`` and lets through to the terminal only warnings and
errors; how far the run is shows in its progress bars
(:mod:`attn_contrastive.progress`). A remote workdir's log is written
locally and copied into it when the run ends (:func:`log_path`).
:func:`summary` is the run's last word: what ran, its key numbers, where the
outputs are, and the command to run next (the chain's next stage: teacher →
label → attention-guided training → alignment → the report; linear
evaluation → robustness → retrieval), or that there is none.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from absl import logging as absl_logging

from attn_contrastive import config as config_lib
from attn_contrastive import paths

LOG_FILE = "log.txt"
#: Where the logs of remote workdirs are written while their runs last (:func:`log_path`).
REMOTE_LOG_ROOT = os.path.join(tempfile.gettempdir(), "attn_contrastive_logs")


#: The next stage of the chain: (config file beside this run's, its argument
#: for ImageNet-scale data, the flag that takes this workdir, the suggested
#: workdir beside this one; ``{name}`` is this workdir's name). An evaluation
#: of another run (its ``results.json`` names a ``source_workdir``) hands on
#: that run's workdir instead, and ``{name}`` is its name, except the stages
#: of :data:`HANDS_ON_ITSELF`, whose own outputs the next stage reads.
NEXT_STAGE = {
    "teacher": ("label.py", "imagenet", "teacher_checkpoint", "maps_train"),
    "label": ("contrastive_attn_teacher.py", "imagenet", "attention.maps_dir", "simclr_attn"),
    "pretrain": ("linear_eval.py", "imagenet", "run_dir", "linear_{name}"),
    "supervised": ("alignment.py", "salicon", "run_dir", "align_{name}"),
    "linear_eval": ("robustness.py", "imagenet", "run_dir", "robust_{name}"),
    "robustness": ("retrieval.py", "imagenet", "run_dir", "retrieval_{name}"),
    "retrieval": ("alignment.py", "salicon", "run_dir", "align_{name}"),
}

#: Linear evaluation hands on its own workdir: robustness reads its classifier.
HANDS_ON_ITSELF = ("linear_eval",)

#: The numbers of ``results.json`` (nested keys joined by "/") each task shows; a study's
#: line for a finished stage shows the first found.
KEY_METRICS = {
    "pretrain": ("knn/top1", "nt_xent", "contrastive_accuracy", "attn_loss",
                 "online_probe/top1"),
    "supervised": ("eval/accuracy", "eval/loss", "loss"),
    "teacher": ("teacher/nss", "teacher/cc", "teacher/kld", "center_bias/nss",
                "center_bias/cc"),
    "label": ("maps", "images_labelled", "images_per_s", "shards_written"),
    "alignment": ("alignment/model/nss", "alignment/model/cc", "alignment/model/kld",
                  "alignment/center_bias/nss", "alignment/center_bias/cc",
                  "alignment/gradcam/nss", "alignment/gradcam/cc"),
    "linear_eval": ("linear/top1", "linear/top5", "linear_cached/top1", "linear_cached/top5",
                    "linear_cached/l2", "supervised/top1", "supervised/top5"),
    "robustness": ("robustness/mean", "robustness/clean_top1", "robustness/noise",
                   "robustness/blur", "robustness/weather", "robustness/digital",
                   "robustness/mce", "retrieval_c/map"),
    "retrieval": ("retrieval/map", "retrieval/precision@1", "retrieval/r_precision",
                  "knn/top1", "knn/top5"),
}


class _WarningsAndErrors(logging.Filter):
  """Passes warnings and errors only: INFO lines are the log file's."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def log_path(workdir: str, process_index: int = 0) -> str:
  """The local file that :func:`log_to_workdir` writes for ``workdir``.

  ``<workdir>/log.txt`` (``log.<p>.txt`` for process ``p > 0``). A remote
  workdir (``gs://…``) cannot be appended to line by line (an object is
  written whole), so its log is written to the same name under
  :data:`REMOTE_LOG_ROOT`, a local folder named after the workdir, and
  :func:`upload_log` copies it into the workdir when the run ends.
  """
  name = LOG_FILE if process_index == 0 else f"log.{process_index}.txt"
  if not paths.is_remote(workdir):
    return os.path.join(workdir, name)
  scheme, _, rest = workdir.partition("://")
  return os.path.join(REMOTE_LOG_ROOT, scheme, rest.strip("/"), name)


def log_to_workdir(workdir: str, process_index: int = 0) -> str:
  """Every INFO line to the run's log file (:func:`log_path`); only warnings and
  errors to the terminal. Returns the file's path."""
  path = log_path(workdir, process_index)
  if paths.is_remote(workdir):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  handler = logging.FileHandler(path)
  handler.setFormatter(absl_logging.PythonFormatter())
  handler.setLevel(logging.INFO)
  logging.getLogger().addHandler(handler)
  absl_logging.get_absl_handler().addFilter(_WarningsAndErrors())
  return path


def end_log(path: str) -> None:
  """Closes the log file that :func:`log_to_workdir` opened at ``path``, so that a
  later run in the same process logs only to its own."""
  for handler in list(logging.getLogger().handlers):
    if isinstance(handler, logging.FileHandler) and handler.baseFilename == os.path.abspath(path):
      logging.getLogger().removeHandler(handler)
      handler.close()


def upload_log(workdir: str, process_index: int = 0) -> str | None:
  """Copies the local log of a remote workdir into it, whole; returns where it went.

  ``None`` for a local workdir (its log is there already) or when there is no
  log to copy. The copy replaces the previous one, so a resumed run's log holds
  every earlier run's lines (the local file is appended to).
  """
  local = log_path(workdir, process_index)
  if not paths.is_remote(workdir) or not os.path.exists(local):
    return None
  for handler in logging.getLogger().handlers:
    if isinstance(handler, logging.FileHandler) and handler.baseFilename == local:
      handler.flush()
  target = os.path.join(workdir, os.path.basename(local))
  with open(local, "rb") as f:
    paths.write_atomic(target, f.read())
  return target


def _outputs(workdir: str) -> list[tuple[str, str]]:
  """(what, where) for each output the run left in ``workdir``."""
  found = [("workdir", workdir)]
  checks = [("checkpoints", "checkpoints"), ("results", "results.json"),
            ("attention maps", "metadata.json"), ("config", "config.json"),
            ("linear probe", "linear"), ("features", "features"),
            ("report", os.path.join("report", "report.md")), ("log", LOG_FILE)]
  for what, name in checks:
    if paths.exists(os.path.join(workdir, name)):
      found.append((what, os.path.join(workdir, name)))
  if paths.glob(workdir, "events.out.tfevents.*"):
    found.append(("tensorboard", f"tensorboard --logdir {workdir}"))
  return found


def _report_command(workdir: str) -> str:
  """The report over the folder that holds this run and its siblings."""
  parent = os.path.dirname(workdir.rstrip("/")) or "."
  return (f"python -m attn_contrastive.report --runs={parent} "
          f"--out={os.path.join(parent, 'report')}")


def _study_next(config_file: str, workdir: str) -> str | None:
  """After the demo study, the full one beside it; after any other study, nothing."""
  file, _, arg = config_file.partition(":")
  if arg not in ("", "demo"):
    return None
  full = os.path.join(os.path.dirname(workdir.rstrip("/")),
                      os.path.basename(workdir.rstrip("/")) + "_full")
  return f"python -m attn_contrastive.main --config={file}:full --workdir={full}"


def next_command(task: str, config_file: str, workdir: str, data_name: str,
                 source_workdir: str | None = None) -> str | None:
  """The command to run next (None: there is none).

  The chain's next stage reads this run's workdir, or ``source_workdir``,
  the run that this one evaluated; after alignment, the chain's last stage,
  comes the report over the folder of the runs; after the demo study, the
  full study.
  """
  if task == "alignment":
    return _report_command(workdir)
  if task == "study":
    return _study_next(config_file, workdir)
  if task not in NEXT_STAGE:
    return None
  file, real_arg, flag, next_workdir = NEXT_STAGE[task]
  path = os.path.join(os.path.dirname(config_file.partition(":")[0]), file)
  arg = "" if data_name.startswith("salient_objects") else f":{real_arg}"
  handed_on = workdir if task in HANDS_ON_ITSELF else (source_workdir or workdir)
  parent = os.path.dirname(workdir.rstrip("/"))
  name = os.path.basename(handed_on.rstrip("/"))
  next_workdir = os.path.join(parent, next_workdir.format(name=name))
  return (f"python -m attn_contrastive.main --config={path}{arg} "
          f"--workdir={next_workdir} --config.{flag}={handed_on}")


def key_numbers(task: str, results: dict[str, Any]) -> list[str]:
  """``"<key> <value>"`` of :data:`KEY_METRICS` found in flat ``results``."""
  return [f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4g}"
          for k in KEY_METRICS.get(task, ())
          if isinstance(v := results.get(k), (int, float)) and not isinstance(v, bool)]


def _block(label: str, items: list[str]) -> list[str]:
  """``label`` before the first item, the others aligned under it."""
  return [f"{label if i == 0 else '':10}{item}" for i, item in enumerate(items)]


def _ran(task: str, config_file: str, results: dict[str, Any], minutes: float) -> str:
  ran = f"{task} ({config_file})"
  if "step" in results:
    ran += f", {results['step']} steps"
  stages = results.get("stages")
  if task == "study" and isinstance(stages, list):
    skipped = sum(bool(s.get("skipped")) for s in stages if isinstance(s, dict))
    ran += f", {len(stages)} stages" + (f" ({skipped} done earlier)" if skipped else "")
  return f"{ran} in {minutes:.1f} min"


def summary(task: str, config_file: str, workdir: str, data_name: str,
            minutes: float) -> str:
  """The closing lines of a run, from its workdir (``results.json`` and what else is there).

  A study's key numbers are one line per row (its ``results.json``'s
  ``headline``) and what differs between them (``notes``: a robustness
  subset that is not linear evaluation's images).
  """
  workdir = paths.resolve(workdir)
  results_path = os.path.join(workdir, "results.json")
  raw = paths.read_json(results_path) if paths.exists(results_path) else {}
  results = config_lib.flatten(raw, sep="/")
  lines = ["", f"=== {task} finished ===",
           f"ran:      {_ran(task, config_file, results, minutes)}"]
  if task == "study":
    lines += _block("results:", list(raw.get("headline") or ["(no rows scored)"]))
    lines += _block("note:", list(raw.get("notes") or []))
  else:
    lines += _block("metrics:", [", ".join(key_numbers(task, results))
                                 or "(none in results.json)"])
  lines += _block("outputs:", [f"{what + ':':16}{where}" for what, where in _outputs(workdir)])
  command = next_command(task, config_file, workdir, data_name,
                         results.get("source_workdir"))
  lines.append(f"next:     {command or 'none: the chain has run to its end'}")
  return "\n".join(lines)
