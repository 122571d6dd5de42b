"""The study's orchestration: which stages run, in what order, linked how, and resume."""
import json
import os

import pytest

from attn_contrastive import config as config_lib
from attn_contrastive import config_checks
from attn_contrastive.tasks import study as study_lib

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class _Recorder:
  """Records each stage's config and writes its results.json; can fail at one stage."""

  def __init__(self, fail_at: int | None = None):
    self.calls, self.fail_at = [], fail_at

  def __call__(self, config, workdir):
    if self.fail_at is not None and len(self.calls) == self.fail_at:
      raise KeyboardInterrupt("killed")
    self.calls.append((config, workdir))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"task": config.task}, f)


def _config():
  c = config_lib.load_config_file(os.path.join(CONFIGS, "study.py"))
  c.study.rows = ("contrastive_attn_teacher", "supervised_r18")
  c.study.seeds = (0, 3)
  c.study.stages = tuple(s for s in config_checks.STUDY_STAGES if s != "report")
  return c


def test_stages_run_in_order_linked_to_each_other(tmp_path):
  rec = _Recorder()
  study_lib.Study(_config(), str(tmp_path), run_stage=rec).run()
  rel = [os.path.relpath(w, tmp_path) for _, w in rec.calls]
  per_row = ["train", "linear_eval", "robustness", "retrieval", "alignment"]
  assert rel == ["teacher", "maps_train"] + [
      f"{row}/seed{seed}/{stage}" for seed in (0, 3)
      for row in ("contrastive_attn_teacher", "supervised_r18") for stage in per_row]
  by_dir = {os.path.relpath(w, tmp_path): c for c, w in rec.calls}
  assert by_dir["maps_train"].teacher_checkpoint == str(tmp_path / "teacher")
  train = by_dir["contrastive_attn_teacher/seed3/train"]
  assert train.task == "pretrain" and train.seed == 3
  assert train.attention.maps_dir == str(tmp_path / "maps_train")
  assert train.attention.teacher_checkpoint == str(tmp_path / "teacher")
  assert by_dir["supervised_r18/seed0/train"].task == "supervised"
  base = tmp_path / "supervised_r18" / "seed3"
  assert by_dir["supervised_r18/seed3/linear_eval"].run_dir == str(base / "train")
  assert by_dir["supervised_r18/seed3/robustness"].run_dir == str(base / "linear_eval")
  assert by_dir["supervised_r18/seed3/alignment"].alignment.classifier == str(
      base / "linear_eval")
  # The study's own config is left alone: each stage gets a copy.
  assert _config().rows.contrastive_attn_teacher.seed == 0


def test_a_killed_study_resumes_where_it_stopped(tmp_path):
  first = _Recorder(fail_at=5)
  with pytest.raises(KeyboardInterrupt):
    study_lib.Study(_config(), str(tmp_path), run_stage=first).run()
  second = _Recorder()
  study = study_lib.Study(_config(), str(tmp_path), run_stage=second)
  study.run()
  ran = [w for _, w in first.calls] + [w for _, w in second.calls]
  assert len(ran) == len(set(ran)) == 2 + 2 * 2 * 5   # every stage exactly once
  assert [os.path.relpath(w, tmp_path) for _, w in second.calls][0] == (
      "contrastive_attn_teacher/seed0/retrieval")
  assert sum(skipped for _, _, skipped in study.timings) == 5


def test_unknown_rows_and_stages_are_refused():
  c = _config()
  c.study.rows = ("contrastive", "simclr_v9")
  with pytest.raises(ValueError, match="simclr_v9"):
    study_lib.Study(c, "/tmp/unused")
  c = _config()
  c.study.stages = ("teacher", "pretrain")
  with pytest.raises(ValueError, match=r"study\.stages has \['pretrain'\]"):
    study_lib.Study(c, "/tmp/unused")


def test_the_cifar10_study_chains_salicon_teacher_cifar_rows_and_cifar10_c(tmp_path):
  c = config_lib.load_config_file(os.path.join(CONFIGS, "study.py") + ":cifar10")
  c.robustness.robustness.manual_dir = str(tmp_path / "cifar10_c")
  c.study.stages = tuple(s for s in c.study.stages if s != "report")
  assert config_checks.problems(c) == []
  rec = _Recorder()
  study_lib.Study(c, str(tmp_path / "study"), run_stage=rec).run()
  by_dir = {os.path.relpath(w, tmp_path / "study"): cfg for cfg, w in rec.calls}
  per_row = ["train", "linear_eval", "robustness", "retrieval"]
  assert list(by_dir) == ["teacher", "maps_train"] + [
      f"{row}/seed0/{stage}" for row in ("contrastive", "contrastive_attn_teacher")
      for stage in per_row]
  assert by_dir["teacher"].data.name == "salicon"
  assert (by_dir["maps_train"].data.name, by_dir["maps_train"].data.split) == ("cifar10",
                                                                              "train")
  train = by_dir["contrastive_attn_teacher/seed0/train"]
  assert (train.data.name, train.model.stem_stride, train.model.stem_pool) == ("cifar10", 1,
                                                                              False)
  assert train.attention.maps_dir == str(tmp_path / "study" / "maps_train")
  robustness = by_dir["contrastive/seed0/robustness"].robustness
  assert (robustness.released_dataset, robustness.constants) == ("cifar10_c", "cifar")
  assert by_dir["contrastive/seed0/retrieval"].retrieval.query_split == "test"
  # Without the release the check names both ways out.
  c.robustness.robustness.manual_dir = ""
  assert any("CIFAR-10-C folder" in p and "source='generate'" in p
             for p in config_checks.problems(c))


def test_a_damaged_results_json_is_refused_naming_the_file_and_the_fix(tmp_path):
  study_lib.Study(_config(), str(tmp_path), run_stage=_Recorder()).run()
  damaged = tmp_path / "supervised_r18" / "seed0" / "linear_eval" / "results.json"
  damaged.write_text('{"task": "linear_ev')  # cut short after it was written
  rerun = _Recorder()
  with pytest.raises(ValueError, match=f"(?s){damaged} is not valid JSON.*Delete it and run "
                                       "the same study command again"):
    study_lib.Study(_config(), str(tmp_path), run_stage=rerun).run()
  assert [os.path.relpath(w, tmp_path) for _, w in rerun.calls] == []
  # The report leaves it out and says why, with the same words.
  from attn_contrastive.report import collect
  skipped = dict(collect.scan([str(tmp_path)]).skipped)
  assert f"{damaged} is not valid JSON" in skipped[str(damaged)]
  assert "Delete it and run that run's command again" in skipped[str(damaged)]
  damaged.unlink()
  study_lib.Study(_config(), str(tmp_path), run_stage=rerun).run()
  assert [os.path.relpath(w, tmp_path) for _, w in rerun.calls] == [
      "supervised_r18/seed0/linear_eval"]
