"""The whole study in one command: teacher → labels → every row × seed → evaluations → report.

A study config (``configs/study.py``) holds one full config per stage: the
teacher's, the label task's, one per table row (``rows.<name>``) and one per
evaluation (``linear_eval``, ``robustness``, ``retrieval``, ``alignment``),
each overridable from the command line like any config
(``--config.rows.contrastive.train.num_epochs=5``). This task fills in what
links them (checkpoints, the maps folder, the seed) and runs them one after
the other in this process, in ``<workdir>/``::

  teacher/  maps_train/
  <row>/seed<k>/{train, linear_eval, robustness, retrieval, alignment}/
  report/   report.md, report.csv, figures

A stage whose ``results.json`` exists is skipped, and a training stage
killed half-way resumes from its checkpoint, so a killed study restarted
with the same command goes on where it stopped and ends with the report an
uninterrupted study writes (``tests/test_study_kills.py``). The report is rewritten
after every seed, so a study cut short still leaves the tables of what ran.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from attn_contrastive import config as config_lib
from attn_contrastive import config_checks, paths, progress, tasks, terminal
from attn_contrastive.evaluators import results
from attn_contrastive.train import preemption


def is_done(workdir: str) -> bool:
  """A stage is done when its ``results.json`` is there (written last, atomically).

  Results are written whole, so one that is not valid JSON was damaged after
  it was written (a disk fault, an edit): it is refused, naming the file and
  how to redo the stage, rather than taken for finished work.
  """
  path = os.path.join(workdir, "results.json")
  if not paths.exists(path):
    return False
  read_results(path)
  return True


def read_results(path: str) -> Any:
  """``results.json`` at ``path``; a damaged one raises naming the file and the fix."""
  return paths.read_json(path, fix=(
      "Delete it and run the same study command again: that stage is redone (a training "
      "stage resumes from its last checkpoint), the others are skipped"))


def stage_kind(name: str) -> str:
  """The entry of ``study.stages`` that a stage's name (``<row>/seed<k>/train``) is of."""
  kind = name.split("/")[-1]
  return "train" if kind.startswith("train") else kind


def planned_stages(config: ml_collections.ConfigDict) -> list[str]:
  """The names of the stages a study runs (done or not), in order: what its bar counts."""
  names = ["teacher", "label"]
  for seed in config.study.seeds:
    for row in config.study.rows:
      names += [f"{row}/seed{seed}/{kind}" for kind in ("train", *config_checks.EVALUATIONS)]
  return [n for n in names if stage_kind(n) in config.study.stages]


def stage_line(number: int, total: int, name: str, task: str, workdir: str,
               seconds: float | None) -> str:
  """``stage 7/17 <name>: 2.1 min, <key> <value>``: a finished stage and its key number."""
  results_path = os.path.join(workdir, "results.json")
  found = config_lib.flatten(paths.read_json(results_path), sep="/") if paths.exists(
      results_path) else {}
  numbers = terminal.key_numbers(task, found)[:1]
  took = ("done earlier" if seconds is None else f"{seconds:.0f} s" if seconds < 60
          else f"{seconds / 60:.1f} min")
  return f"stage {number}/{total} {name}: " + ", ".join([took, *numbers])


class Study:
  """Runs the stages of ``config`` in ``workdir``, skipping finished ones."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               run_stage: Callable[[ml_collections.ConfigDict, str], Any] | None = None):
    self.config, self.workdir = config, paths.resolve(workdir)
    self.run_stage = run_stage or _run_stage
    self.timings: list[tuple[str, float, bool]] = []
    self._bar = None
    bad = config_checks.study_problems(config)
    if bad:
      raise ValueError("; ".join(bad))

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def stage(self, name: str, config: ml_collections.ConfigDict, workdir: str) -> str:
    """Runs one stage unless it is done or not among ``study.stages``; returns its workdir."""
    if stage_kind(name) not in self.config.study.stages:
      return workdir
    preemption.check()
    if is_done(workdir):
      self.timings.append((name, 0.0, True))
      self.announce_finished(name, config, workdir, None)
      return workdir
    self.announce_start(name, workdir)
    t0 = time.perf_counter()
    self.run_stage(config, workdir)
    self.timings.append((name, time.perf_counter() - t0, False))
    self.announce_finished(name, config, workdir, self.timings[-1][1])
    return workdir

  def progress_bar(self):
    """The study's bar, "stage k/n <name>", made when the first stage starts."""
    if self._bar is None:
      self._bar = progress.bar(len(planned_stages(self.config)), "study", unit="stage",
                               bar_format="{desc} |{bar:12}| {elapsed}")
    return self._bar

  def announce_start(self, name: str, workdir: str) -> None:
    """The log's line and the bar's name for a stage that starts."""
    logging.info("Study: %s → %s", name, workdir)
    number = len(self.timings) + 1
    self.progress_bar().set_description_str(
        f"stage {number}/{len(planned_stages(self.config))} {name}")

  def announce_finished(self, name: str, config: ml_collections.ConfigDict, workdir: str,
                        seconds: float | None) -> None:
    """One line on the terminal per finished stage (``seconds`` None: done earlier), with
    its key number; the bar moves on, and goes when the last stage is done."""
    line = stage_line(len(self.timings), len(planned_stages(self.config)), name,
                      config.task, workdir, seconds)
    logging.info("Study: %s", line)
    progress.say(line)
    bar = self.progress_bar()
    bar.update(1)
    if bar.n >= bar.total:
      bar.close()

  def teacher_and_maps(self) -> str:
    """The teacher, then its maps of the training split; returns the maps folder."""
    teacher = self.stage("teacher", self.config.teacher, self.path("teacher"))
    label = self.config.label.copy_and_resolve_references()
    label.teacher_checkpoint = teacher
    return self.stage("label", label, self.path("maps_train"))

  def row(self, name: str, seed: int, maps_dir: str) -> None:
    """Trains row ``name`` with ``seed`` and runs every evaluation of it."""
    base = self.path(name, f"seed{seed}")
    train = self.config.rows[name].copy_and_resolve_references()
    train.seed = seed
    if train.get("attention") is not None and train.attention.enabled:
      if train.attention.labels == "teacher":
        train.attention.maps_dir = maps_dir
        train.attention.teacher_checkpoint = self.path("teacher")
    run_dir = self.stage(f"{name}/seed{seed}/train", train, os.path.join(base, "train"))
    for evaluation in config_checks.EVALUATIONS:
      cfg = self.config[evaluation].copy_and_resolve_references()
      source = os.path.join(base, "linear_eval") if evaluation == "robustness" else run_dir
      cfg.run_dir = source
      if evaluation == "alignment" and "linear_eval" in self.config.study.stages:
        cfg.alignment.classifier = os.path.join(base, "linear_eval")
      if evaluation == "retrieval" and "linear_eval" in self.config.study.stages:
        cfg.retrieval.features_from = os.path.join(base, "linear_eval")
      self.stage(f"{name}/seed{seed}/{evaluation}", cfg, os.path.join(base, evaluation))

  def report(self) -> dict[str, Any] | None:
    if "report" not in self.config.study.stages or jax.process_index() != 0:
      return None
    from attn_contrastive import report  # matplotlib, only when a report is written
    return report.write_report([self.workdir], self.path("report"))

  def run(self) -> dict[str, Any] | None:
    maps_dir = self.teacher_and_maps()
    written = None
    for seed in self.config.study.seeds:
      for name in self.config.study.rows:
        self.row(name, int(seed), maps_dir)
      written = self.report()
    return written


#: The numbers of each row the study prints at its end: (table, metric keys tried in
#: order, label).
HEADLINE = (("classification", ("linear/top1", "linear_cached/top1", "supervised/top1"),
             "linear top-1"),
            ("robustness", ("robustness/mean",), "corrupted top-1"),
            ("robustness", ("robustness/mce",), "mCE"),
            ("alignment", ("alignment/model/nss",), "NSS"),
            ("retrieval", ("retrieval/map",), "mAP"))


def headline(written: dict[str, Any]) -> list[str]:
  """One line per row of the report's key numbers (mean ± std over seeds)."""
  by_row: dict[str, list[str]] = {}
  for table, keys, label in HEADLINE:
    found = [t for name, t in written["tables"].items() if name.split(":")[0] == table]
    for t in found[:1]:
      for row, cells in t["rows"].items():
        key = next((k for k in keys if k in cells), None)
        if key is not None:
          cell = cells[key]
          std = f" ± {cell['std']:.2f}" if cell.get("std") is not None else ""
          by_row.setdefault(row, []).append(f"{label} {cell['mean']:.2f}{std}")
  return [f"{row}: {', '.join(v)}" for row, v in by_row.items()]


def _run_stage(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """One stage, in this process, as ``main`` would run it."""
  paths.makedirs(workdir)
  return tasks.entry(config.task)(config, workdir)


def run_study(config, workdir: str) -> dict[str, Any] | None:
  """Runs the study of ``config`` in ``workdir``; writes its report and ``results.json``."""
  if config.study.compilation_cache:
    # Seeds of a row compile the same programs: later seeds read them from disk.
    jax.config.update("jax_compilation_cache_dir", os.path.join(paths.resolve(workdir),
                                                                "compilation_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  study = Study(config, workdir)
  start = time.perf_counter()
  written = study.run()
  lines, notes = (headline(written), list(written["notes"])) if written else ([], [])
  for line in lines + notes:
    logging.info("%s", line)
  results.write_json(os.path.join(workdir, results.FILE), {
      "task": "study", "rows": list(config.study.rows), "seeds": list(config.study.seeds),
      "report": study.path("report", "report.md") if written else None,
      "headline": lines, "notes": notes,
      "stages": [{"stage": n, "minutes": s / 60, "skipped": k} for n, s, k in study.timings],
      "wall_time_s": time.perf_counter() - start})
  return written
