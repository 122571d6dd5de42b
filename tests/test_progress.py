"""What a person sees of a study: on a terminal, bars and one line per finished stage;
in a file, the same lines without redraws; in log.txt, every INFO line."""
import json
import logging
import os
import sys
import threading

import pytest
from absl import logging as absl_logging

from attn_contrastive import config as config_lib
from attn_contrastive import progress, terminal
from attn_contrastive.tasks import study as study_lib

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
#: Each fake stage's results: the key number its stage line shows.
RESULTS = {"teacher": {"teacher": {"nss": 2.0625}}, "label": {"images_labelled": 16000},
           "pretrain": {"step": 4, "nt_xent": 3.5}, "linear_eval": {"linear_cached": {
               "top1": 0.3125}}, "robustness": {"robustness": {"mean": 0.1875}},
           "retrieval": {"retrieval": {"map": 0.125}},
           "alignment": {"alignment": {"model": {"nss": 1.5}}}}


def _stage(config, workdir):
  """A stage as the real ones behave: a bar, an INFO line per condition, results.json."""
  with progress.bar(5, "conditions", unit="cond") as bar:
    for severity in range(1, 6):
      absl_logging.info("gaussian_noise severity %d: top-1 0.25 (0.1 s)", severity)
      bar.update(1)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"task": config.task, **RESULTS[config.task]}, f)


def _config():
  c = config_lib.load_config_file(os.path.join(CONFIGS, "study.py"))
  c.study.rows, c.study.compilation_cache = ("contrastive",), False
  c.study.stages = tuple(s for s in c.study.stages if s != "report")
  return c


def _run_study(workdir, stream, monkeypatch) -> None:
  """The study as ``main`` runs it, stdout and absl's stderr both on ``stream``."""
  monkeypatch.setattr(study_lib, "_run_stage", _stage)
  monkeypatch.setattr(sys, "stdout", stream)
  root, absl_handler = logging.getLogger(), absl_logging.get_absl_handler()
  handlers, filters = list(root.handlers), list(absl_handler.filters)
  # The absl logger's own level, not get_verbosity() (its effective level): restoring
  # that would pin the logger at the root's level and keep later tests' caplog from it.
  stderr, level = absl_handler.python_handler.stream, absl_logging.get_absl_logger().level
  try:
    absl_handler.python_handler.stream = stream
    if absl_handler not in root.handlers:
      root.addHandler(absl_handler)
    absl_logging.set_verbosity(absl_logging.INFO)
    os.makedirs(workdir, exist_ok=True)
    terminal.log_to_workdir(workdir)
    study_lib.run_study(_config(), workdir)
    print(terminal.summary("study", "configs/study.py", workdir,
                           "salient_objects/classification", 0.25))
    stream.flush()
  finally:
    for h in set(root.handlers) - set(handlers):
      root.removeHandler(h)
      if h is not absl_handler:
        h.close()
    absl_handler.filters[:] = filters
    absl_handler.python_handler.stream = stderr
    absl_logging.get_absl_logger().setLevel(level)


def _check_lines(text: str, log: str) -> None:
  for line in ("stage 1/7 teacher: 0 s, ", "teacher/nss 2.062", "stage 2/7 label: ",
               "images_labelled 16000", "stage 5/7 contrastive/seed0/robustness: ",
               "robustness/mean 0.1875", "stage 7/7 contrastive/seed0/alignment: ",
               "=== study finished ===", "7 stages in 0.2 min",
               "next:     python -m attn_contrastive.main --config=configs/study.py:full"):
    assert line in text, line
  assert "severity" not in text and "Study:" not in text  # INFO lines: the log's only
  assert log.count("gaussian_noise severity 3") == 7 and log.count("Study: stage") == 7


def _read_all(fd: int, chunks: list) -> None:
  while True:
    try:
      data = os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other end is closed
      return
    if not data:
      return
    chunks.append(data)


def test_a_terminal_gets_bars_and_stage_lines_and_no_info(tmp_path, monkeypatch):
  monkeypatch.setenv("TERM", "xterm")
  master, replica = os.openpty()
  chunks = []
  reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
  reader.start()  # a terminal's buffer is small: it is read while the study writes
  with os.fdopen(replica, "w") as tty:
    assert progress.on_terminal(tty)
    _run_study(str(tmp_path), tty, monkeypatch)
  reader.join(timeout=10)
  os.close(master)
  text = b"".join(chunks).decode()
  assert text.count("\rconditions:") >= 7  # a bar per stage, drawn in place
  assert "stage 5/7 contrastive/seed0/robustness |" in text  # the study's bar, by stage
  _check_lines(text, (tmp_path / "log.txt").read_text())


def test_a_file_gets_the_stage_lines_without_redraws(tmp_path, monkeypatch):
  out = tmp_path / "stdout.txt"
  with open(out, "w") as f:
    assert not progress.on_terminal(f)
    _run_study(str(tmp_path / "study"), f, monkeypatch)
  text = out.read_text()
  assert "\r" not in text and "\x1b" not in text and "conditions" not in text
  _check_lines(text, (tmp_path / "study" / "log.txt").read_text())
  lines = text.splitlines()  # the stage lines, then the summary and nothing else
  assert [line.startswith("stage ") for line in lines] == [True] * 7 + [False] * 8


@pytest.mark.parametrize("every,lines", [(0.0, 3), (3600.0, 0)])
def test_off_a_terminal_a_bar_writes_a_line_now_and_then(tmp_path, monkeypatch, every, lines):
  monkeypatch.setattr(progress, "PLAIN_EVERY_S", every)
  out = tmp_path / "stdout.txt"
  with open(out, "w") as f:
    monkeypatch.setattr(sys, "stdout", f)
    with progress.bar(4, "steps", unit="step") as bar:
      for _ in range(2):
        bar.update(2)
  written = out.read_text().splitlines()
  assert len(written) >= lines and (lines == 0) == (written == [])
  if lines:
    assert written[-1].startswith("steps: 100%|##########| 4/4")
