"""The end of a run: INFO lines in log.txt only, and the closing summary."""
import json
import logging
import os

import pytest
from absl import logging as absl_logging

from attn_contrastive import terminal


def _teacher_workdir(tmp_path):
  results = {"step": 3, "num_images": 20, "loss": 0.9,
             "teacher": {"nss": 1.25, "cc": 0.5, "kld": 0.75},
             "center_bias": {"nss": 1.125, "cc": 0.625}}
  (tmp_path / "results.json").write_text(json.dumps(results))
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / terminal.LOG_FILE).write_text("")
  (tmp_path / "events.out.tfevents.1.host").write_text("")
  return str(tmp_path)


def test_summary_names_workdir_metrics_outputs_and_next_command(tmp_path):
  workdir = _teacher_workdir(tmp_path)
  text = terminal.summary("teacher", "configs/teacher.py", workdir,
                         "salient_objects/human_attention", 0.5)
  assert "teacher (configs/teacher.py), 3 steps" in text
  for number in ("teacher/nss 1.25", "teacher/cc 0.5", "center_bias/nss 1.125"):
    assert number in text
  for path in (workdir, os.path.join(workdir, "checkpoints"),
               os.path.join(workdir, "results.json"), os.path.join(workdir, "log.txt"),
               f"tensorboard --logdir {workdir}"):
    assert path in text
  assert text.rstrip().endswith(
      "python -m attn_contrastive.main --config=configs/label.py "
      f"--workdir={os.path.join(os.path.dirname(workdir), 'maps_train')} "
      f"--config.teacher_checkpoint={workdir}")


@pytest.mark.parametrize("task,data,config,flag", [
    ("label", "imagenet2012", "/r/configs/contrastive_attn_teacher.py:imagenet",
     "attention.maps_dir"),
    ("pretrain", "salient_objects/classification", "/r/configs/linear_eval.py ", "run_dir"),
    ("supervised", "imagenet2012", "/r/configs/alignment.py:salicon ", "run_dir"),
])
def test_next_command_follows_the_chain(task, data, config, flag):
  command = terminal.next_command(task, "/r/configs/x.py:arg", "/w/run", data)
  assert f"--config={config}" in command + " " and command.endswith(f"--config.{flag}=/w/run")
  prefix = {"pretrain": "linear", "supervised": "align"}.get(task)
  if prefix:
    assert f"--workdir=/w/{prefix}_run " in command


def test_after_alignment_comes_the_report_and_after_the_demo_the_full_study(tmp_path):
  assert terminal.next_command("alignment", "configs/alignment.py", "/w/align_run",
                               "salicon") == (
      "python -m attn_contrastive.report --runs=/w --out=/w/report")
  text = terminal.summary("alignment", "configs/alignment.py", str(tmp_path), "salicon", 1.0)
  assert "metrics:  (none in results.json)" in text
  assert terminal.next_command("study", "configs/study.py", "/w/study", "x") == (
      "python -m attn_contrastive.main --config=configs/study.py:full "
      "--workdir=/w/study_full")
  assert terminal.next_command("study", "configs/study.py:full", "/w/study", "x") is None
  (tmp_path / "results.json").write_text(json.dumps({
      "task": "study", "stages": [{"skipped": True}, {"skipped": False}],
      "headline": ["Contrastive: linear top-1 20.40", "Teacher: NSS 2.04"],
      "notes": ["robustness scores the first 200 validation images"]}))
  text = terminal.summary("study", "configs/study.py:cifar10", str(tmp_path), "cifar10", 2.0)
  assert ("ran:      study (configs/study.py:cifar10), 2 stages (1 done earlier) in 2.0 min\n"
          "results:  Contrastive: linear top-1 20.40\n"
          "          Teacher: NSS 2.04\n"
          "note:     robustness scores the first 200 validation images\n") in text
  assert text.endswith("next:     none: the chain has run to its end")


def test_alignment_summary_reads_the_evaluation_outline(tmp_path):
  scores = {"nss": 1.5, "cc": 0.75, "kld": 0.5}
  (tmp_path / "results.json").write_text(json.dumps({
      "task": "alignment", "source_workdir": "/runs/simclr", "source_step": 117,
      "alignment/model": scores, "alignment/activations": scores,
      "alignment/gradcam": {"nss": 1.25, "cc": 0.625},
      "alignment/center_bias": {"nss": 1.125, "cc": 0.5625}, "alignment/primary": "activations"}))
  text = terminal.summary("alignment", "configs/alignment.py", str(tmp_path), "salicon", 1.0)
  for number in ("alignment/model/nss 1.5", "alignment/model/cc 0.75", "alignment/model/kld 0.5",
                 "alignment/center_bias/nss 1.125", "alignment/center_bias/cc 0.5625",
                 "alignment/gradcam/nss 1.25", "alignment/gradcam/cc 0.625"):
    assert number in text
  assert "--runs=/runs " not in text and "python -m attn_contrastive.report" in text


def test_library_info_goes_to_the_log_file_only(tmp_path):
  root, absl_handler = logging.getLogger(), absl_logging.get_absl_handler()
  handlers, filters = list(root.handlers), list(absl_handler.filters)
  try:
    path = terminal.log_to_workdir(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "log.txt")

    def record(pathname, level=logging.INFO, msg="msg", func=None):
      return logging.LogRecord("absl", level, pathname, 1, msg, None, None, func)

    library = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"
    project = os.path.join(os.path.dirname(terminal.__file__), "train", "loop.py")
    assert not absl_handler.filter(record(library))
    assert absl_handler.filter(record(library, logging.WARNING))
    assert not absl_handler.filter(record(project))  # how far a run is: its bars
    assert absl_handler.filter(record(project, logging.ERROR))
    writer = "/venv/site-packages/clu/metric_writers/logging_writer.py"
    assert not absl_handler.filter(record(writer, func="write_scalars"))
    root.handle(record(library, msg="saved checkpoint 3"))
    with open(path) as f:
      assert "saved checkpoint 3" in f.read()
  finally:
    for h in set(root.handlers) - set(handlers):
      root.removeHandler(h)
      h.close()
    absl_handler.filters[:] = filters
