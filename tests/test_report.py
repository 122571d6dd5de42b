"""The report: evaluations grouped by row and seed, tables, CSV and figures, from fixtures."""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpl_image

from attn_contrastive import report

# Its tests share a costly module fixture: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("test_report")

CLASSIFICATION = "salient_objects/classification"
HUMAN = "salient_objects/human_attention"
CONFIGS = {
    "Contrastive": dict(task="pretrain", attention=dict(enabled=False, labels="teacher")),
    "Contrastive attn. teacher": dict(task="pretrain", attention=dict(enabled=True,
                                                                      labels="teacher")),
    "Contrastive attn. co-train": dict(task="pretrain", attention=dict(enabled=True,
                                                                       labels="human")),
    "Supervised (ResNet-50)": dict(task="supervised", model=dict(depth=50)),
    "Supervised attn. teacher": dict(task="supervised", model=dict(depth=50),
                                     attention=dict(enabled=True)),
    "Supervised (ResNet-18)": dict(task="supervised", model=dict(depth=18),
                                   attention=dict(enabled=False)),
    "Supervised (ResNet-18) attn. teacher": dict(task="supervised", model=dict(depth=18),
                                                 attention=dict(enabled=True)),
}
SALIENCY_KEYS = ("nss", "cc", "kld", "sim", "auc_judd", "auc_borji", "auc_shuffled",
                 "info_gain")
GUIDED, BASELINE = "Contrastive attn. teacher", "Contrastive"


def _write(folder, results, config=None):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "results.json").write_text(json.dumps(results))
  if config is not None:
    (folder / "config.json").write_text(json.dumps(config))
  return folder


def _evaluation(folder, task, row, seed, metrics, dataset=CLASSIFICATION, step=100):
  config = dict(CONFIGS[row], seed=seed, data=dict(name=CLASSIFICATION))
  results = {"task": task, "source_workdir": f"/runs/{row}/{seed}", "source_step": step,
             "source_config": config,
             "dataset": {"name": dataset, "splits": ["train", "validation"],
                         "version": "1.0.0"},
             **metrics, "wall_time_s": 1.0}
  return _write(folder, results)


def _saliency(nss, cc=0.7, kld=0.8):
  scores = dict.fromkeys(SALIENCY_KEYS, 0.5)
  return dict(scores, nss=nss, cc=cc, kld=kld)


def _examples(folder, kind, seed_offset=0):
  """5 validation images (the same for every workdir) and one map kind of 4x4."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  human = rng.random((5, 8, 8), dtype=np.float32)
  maps = np.random.default_rng(1 + seed_offset).random((5, 4, 4), dtype=np.float32)
  np.savez(folder / "examples.npz", image=image, human=human, index=np.arange(5),
           **{f"map/{kind}": maps})


def _robustness(noise, mce, clean=0.5):
  return {"robustness/clean_top1": clean,
          "robustness/top1": {c: [0.4] * 5 for c in ("gaussian_noise", "snow")},
          "robustness/noise": noise, "robustness/blur": 0.3, "robustness/weather": 0.4,
          "robustness/digital": 0.5, "robustness/extra": 0.45, "robustness/mean": 0.4,
          "robustness/mce": mce, "robustness/relative_mce": 1.1,
          "robustness/by_severity": [x + noise - 0.22 for x in (0.48, 0.45, 0.4, 0.35, 0.3)],
          "robustness/protocol": "tfds imagenet2012_corrupted, 224 px",
          "retrieval_c/map": 0.05, "retrieval_c/precision@10": 0.15,
          "retrieval_c/pr_curve": list(np.linspace(0.3, 0.05, 11))}


def _retrieval(m):
  return {"retrieval/map": m, "retrieval/precision@1": 0.3, "retrieval/precision@10": 0.2,
          "retrieval/precision@100": 0.15, "retrieval/r_precision": 0.12,
          "retrieval/pr_curve": list(np.linspace(0.4, 0.1, 11)), "knn/top1": 0.25}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Contrastive: seeds 0-2 (alignment for 0-1 only); attn. teacher: seeds 0-1, no
  robustness; a teacher; a training run; files the report must not read."""
  root = tmp_path_factory.mktemp("runs")
  top1 = {BASELINE: (0.60, 0.62, 0.64), GUIDED: (0.70, 0.71)}
  for row, values in top1.items():
    for seed, v in enumerate(values):
      name = f"{'base' if row == BASELINE else 'attn'}_s{seed}"
      linear = _evaluation(root / f"linear_{name}", "linear_eval", row, seed,
                           {"linear/top1": v, "linear_cached/top1": v + 0.1})
      _write(linear / "linear", {"step": 40, "top1": 0.99})  # the probe's own loop
      _evaluation(root / f"retrieval_{name}", "retrieval", row, seed,
                  _retrieval(0.10 + 0.01 * seed))
  for seed, (noise, mce) in enumerate([(0.20, 0.80), (0.22, 0.78), (0.24, 0.76)]):
    _evaluation(root / f"robustness_base_s{seed}", "robustness", BASELINE, seed,
                dict(_robustness(noise, mce), **{"robustness/missing": [] if seed < 2 else
                                                 ["speckle_noise", "spatter"]}))
  for seed, nss in enumerate((1.40, 1.44)):
    align = _evaluation(root / f"align_base_s{seed}", "alignment", BASELINE, seed,
                        {"alignment/model": _saliency(nss),
                         "alignment/center_bias": _saliency(1.10)}, dataset=HUMAN)
    _examples(align, "activations", seed)
  for seed, nss in enumerate((1.60, 1.62)):
    align = _evaluation(root / f"align_attn_s{seed}", "alignment", GUIDED, seed,
                        {"alignment/model": _saliency(nss), "alignment/heads": _saliency(nss),
                         "alignment/primary": "heads", "alignment/kinds": ["heads", "gradcam"],
                         "alignment/gradcam": _saliency(1.2 + seed / 10),
                         "alignment/center_bias": _saliency(1.10)}, dataset=HUMAN)
    _examples(align, "heads", seed)
  teacher = _write(root / "teacher", {"step": 50, "teacher": _saliency(2.07),
                                      "center_bias": _saliency(1.10)},
                   {"task": "teacher", "seed": 0, "data": {"name": HUMAN}})
  _examples(teacher, "teacher")
  # A stale evaluation of seed 0 (earlier checkpoint): replaced by the later one.
  _evaluation(root / "old" / "linear_base_s0", "linear_eval", BASELINE, 0,
              {"linear/top1": 0.10}, step=50)
  _write(root / "simclr_s0", {"step": 117, "nt_xent": 5.0},
         dict(CONFIGS[BASELINE], seed=0, data=dict(name=CLASSIFICATION)))
  _write(root / "maps_train", {"shards_written": 4}, {"task": "label"})
  _write(root / "no_outline", {"task": "linear_eval", "linear/top1": 0.99})
  return root


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
  out = tmp_path_factory.mktemp("report")
  # The same tree twice (a root inside another): each file is read once.
  return report.write_report([str(runs), str(runs / "linear_base_s1")], str(out))


def test_row_of_names_every_row_and_refuses_others():
  for row, config in CONFIGS.items():
    assert report.row_of(config) == row
  assert report.row_of({"task": "pretrain"}) == "Contrastive"
  assert tuple(report.ROWS) == tuple(CONFIGS)
  for config in ({"task": "teacher"}, {"task": "supervised", "model": {"depth": 10}},
                 {"task": "pretrain", "attention": {"enabled": True, "labels": "x"}}):
    with pytest.raises(ValueError):
      report.row_of(config)


def test_rows_and_seeds_give_mean_and_sample_std(written):
  classification = written["tables"]["classification"]
  assert classification["datasets"] == {"linear_eval": CLASSIFICATION}
  assert classification["columns"] == ["linear/top1", "linear_cached/top1"]
  assert list(classification["rows"]) == [BASELINE, GUIDED]
  base = classification["rows"][BASELINE]["linear/top1"]
  assert base["mean"] == pytest.approx(62.0) and base["std"] == pytest.approx(2.0)
  assert base["n"] == 3 and base["seeds"] == [0, 1, 2] and base["paper"] == "67.61 ± 0.04"
  guided = classification["rows"][GUIDED]["linear_cached/top1"]
  assert guided["mean"] == pytest.approx(80.5)
  assert guided["std"] == pytest.approx(statistics.stdev([80.0, 81.0]))
  robustness = written["tables"]["robustness"]["rows"]
  assert list(robustness) == [BASELINE]
  assert robustness[BASELINE]["robustness/noise"]["mean"] == pytest.approx(22.0)
  assert robustness[BASELINE]["robustness/mce"]["std"] == pytest.approx(2.0)
  assert robustness[BASELINE]["robustness/noise"]["paper"] == "28.23"
  alignment = written["tables"]["alignment"]
  assert list(alignment["rows"]) == [BASELINE, GUIDED, "Teacher", "Centre bias"]
  assert alignment["rows"]["Teacher"]["alignment/model/nss"]["mean"] == pytest.approx(2.07)
  assert alignment["rows"]["Centre bias"]["alignment/model/nss"]["n"] == 5
  assert "alignment/gradcam/nss" in alignment["columns"]
  assert written["missing"] == {BASELINE: ["alignment lacks seed 2"],
                                GUIDED: ["no robustness"]}
  assert written["rows"] == [BASELINE, GUIDED]


def test_csv_has_one_line_per_table_row_metric(written):
  with open(written["csv"]) as f:
    lines = list(csv.DictReader(f))
  assert list(lines[0]) == ["table", "row", "metric", "mean", "std", "n", "seeds", "paper"]
  keyed = {(x["table"], x["row"], x["metric"]): x for x in lines}
  assert len(keyed) == len(lines)
  line = keyed[("classification", BASELINE, "linear/top1")]
  assert float(line["mean"]) == pytest.approx(62.0) and float(line["std"]) == pytest.approx(2)
  assert (line["n"], line["seeds"], line["paper"]) == ("3", "0;1;2", "67.61 ± 0.04")
  teacher = keyed[("alignment", "Teacher", "alignment/model/nss")]
  assert (teacher["n"], teacher["std"], teacher["seeds"]) == ("1", "", "0")
  assert keyed[("robustness", BASELINE, "robustness/digital")]["paper"] == "60.42"
  assert keyed[("robustness", BASELINE, "robustness/mean")]["paper"] == ""
  corrupted = keyed[("retrieval", BASELINE, "retrieval_c/map")]
  assert float(corrupted["mean"]) == pytest.approx(5.0) and corrupted["n"] == "3"
  expected = {"classification": 2 * 2, "robustness": 9, "retrieval": 2 * 5 + 2,
              "alignment": 2 * 5 + 5 + 1 + 5}  # + gradcam NSS, + teacher, + centre bias
  for table, count in expected.items():
    assert sum(x["table"] == table for x in lines) == count, table
  assert not any(x["mean"] in ("99", "10") for x in lines)  # ignored / replaced files


def test_markdown_shows_formatted_cells_paper_values_and_gaps(written):
  with open(written["markdown"]) as f:
    text = f.read()
  assert "| Contrastive | 62.0 ± 2.0 (n=3) | 72.0 ± 2.0 (n=3) | 67.61 ± 0.04 |" in text
  assert "| Contrastive attn. teacher | 70.5 ± 0.7 (n=2) |" in text
  assert "| Contrastive | 50.0 ± 0.0 (n=3) | 22.0 ± 2.0 (n=3) |" in text
  assert "28.23 / 26.16 / 43.08 / 60.42" in text and "does not name" in text
  assert "| Teacher | teacher output | 2.070 (n=1) |" in text
  assert "| Contrastive | activations | 1.420 ± 0.028 (n=2) |" in text
  assert "| Contrastive attn. teacher | heads | 1.610 ± 0.014 (n=2) |" in text
  assert f"`{CLASSIFICATION}` (linear evaluation)" in text and f"`{HUMAN}` (alignment)" in text
  assert "- Contrastive attn. teacher: no robustness" in text
  assert "Not scored for Contrastive: spatter, speckle_noise (absent" in text
  assert "- Contrastive: alignment lacks seed 2" in text
  assert "19 workdirs" in text and "1 teacher, 1 training runs" in text
  assert "seeds 0, 1, 2" in text
  assert "7 other `results.json` ignored" in text and "replaced by" in text
  for name in ("attention", "pr_curves", "robustness_severity"):
    assert f"![{name}]({name}.png)" in text


def test_figures_are_valid_pngs(written):
  for name, path in written["figures"].items():
    assert path and os.path.dirname(path) == os.path.dirname(written["markdown"]), name
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < os.path.getsize(path) < 300_000, name
    pixels = mpl_image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300, name
    assert pixels.std() > 0.02, name
  # Image, human, teacher, guided, baseline: five columns of 1.9 inches.
  assert mpl_image.imread(written["figures"]["attention"]).shape[1] == int(5 * 1.9 * 80)


def test_figures_without_inputs_are_skipped_and_datasets_kept_apart(tmp_path):
  root = tmp_path / "runs"
  _evaluation(root / "a", "linear_eval", BASELINE, 0, {"linear/top1": 0.5})
  _evaluation(root / "b", "linear_eval", BASELINE, 1, {"linear/top1": 0.7}, dataset="imagenet")
  written = report.write_report([str(root)], str(tmp_path / "out"))
  assert written["figures"] == dict.fromkeys(("attention", "pr_curves",
                                              "robustness_severity"))
  assert set(written["skipped"]) == set(written["figures"])
  assert sorted(written["tables"]) == ["classification:imagenet",
                                       f"classification:{CLASSIFICATION}"]
  assert written["tables"]["classification:imagenet"]["rows"][BASELINE]["linear/top1"][
      "n"] == 1
  text = open(written["markdown"]).read()
  assert "`pr_curves.png` not drawn" in text and "| Contrastive | 70.0 (n=1) |" in text
  assert not list((tmp_path / "out").glob("*.png"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    report.write_report([str(root), str(tmp_path / "nowhere")], str(tmp_path / "out"))


def test_cli_writes_the_report_without_jax(runs, tmp_path):
  out = tmp_path / "out"
  done = subprocess.run([sys.executable, "-m", "attn_contrastive.report",
                         f"--runs={runs}", f"--out={out}"],
                        capture_output=True, text=True, check=True, timeout=120)
  assert done.stdout.count("\n") == 1 and done.stdout.startswith("report: 19 workdirs")
  for name in ("report.md", "report.csv", "attention.png"):
    assert (out / name).exists()
  check = ("import sys, attn_contrastive.report as r; r.write_report([sys.argv[1]], "
           "sys.argv[2]); print('jax' in sys.modules)")
  done = subprocess.run([sys.executable, "-c", check, str(runs), str(tmp_path / "again")],
                        capture_output=True, text=True, check=True, timeout=120)
  assert done.stdout.strip() == "False"


def test_cifar10_retrieval_gets_its_own_rows_and_precision_recall_panel(tmp_path):
  """Retrieval on the main data and on CIFAR-10 (with CIFAR-10-C's corrupted queries):
  each dataset its own table rows and its own panel of the precision-recall figure."""
  from attn_contrastive.report import write_report
  for dataset, m in ((CLASSIFICATION, 0.10), ("cifar10", 0.30)):
    tag = dataset.split("/")[-1]
    _evaluation(tmp_path / f"retrieval_{tag}", "retrieval", BASELINE, 0, _retrieval(m),
                dataset=dataset)
  _evaluation(tmp_path / "robustness_cifar10", "robustness", BASELINE, 0,
              _robustness(0.2, float("nan")), dataset="cifar10")
  written = write_report([str(tmp_path)], str(tmp_path / "report"))
  tables = {name: t["rows"][BASELINE]["retrieval/map"]["mean"]
            for name, t in written["tables"].items()
            if name.startswith("retrieval") and "retrieval/map" in t["rows"][BASELINE]}
  assert tables == {"retrieval:cifar10": pytest.approx(30.0),
                    f"retrieval:{CLASSIFICATION}": pytest.approx(10.0)}
  cifar = written["tables"]["retrieval:cifar10"]
  assert cifar["datasets"] == {"retrieval": "cifar10", "robustness": "cifar10"}
  assert cifar["rows"][BASELINE]["retrieval_c/map"]["mean"] == pytest.approx(5.0)
  text = (tmp_path / "report" / "report.md").read_text()
  assert ("on `cifar10` (clean and corrupted queries); "
          f"`{CLASSIFICATION}`.") in text, text
  assert mpl_image.imread(written["figures"]["pr_curves"]).shape[1] > 2 * 6 * 80


def test_fine_tuned_runs_are_tabled_under_the_row_they_started_from(tmp_path):
  """configs/finetune.py's runs: each under its SimCLR run's row and seed, one table per
  subset; a fine-tuned ResNet-50 is not taken for the supervised row."""
  from attn_contrastive.report import write_report
  for seed in (0, 1):
    pretrained = _write(tmp_path / f"simclr_s{seed}", {"step": 10},
                        dict(CONFIGS[BASELINE], seed=seed, data=dict(name=CLASSIFICATION)))
    for subset, top1 in (("1pct", 0.40 + seed / 10), ("10pct", 0.60)):
      _write(tmp_path / f"finetune_{subset}_s{seed}", {
          "step": 20, "eval/accuracy": top1, "eval/top5": 0.8},
             dict(task="supervised", seed=0, model=dict(depth=50), init_checkpoint=str(
                 pretrained), finetune=dict(after_block=-1),
                  data=dict(name=f"imagenet2012_subset/{subset}")))
  written = write_report([str(tmp_path)], str(tmp_path / "report"))
  one = written["tables"]["finetune:imagenet2012_subset/1pct"]["rows"]
  assert list(one) == [BASELINE]
  assert one[BASELINE]["eval/accuracy"]["mean"] == pytest.approx(45.0)
  assert one[BASELINE]["eval/accuracy"]["n"] == 2
  ten = written["tables"]["finetune:imagenet2012_subset/10pct"]["rows"]
  assert ten[BASELINE]["eval/top5"]["mean"] == pytest.approx(80.0)
  assert "Label-efficient fine-tuning" in (tmp_path / "report" / "report.md").read_text()


def test_a_robustness_subset_is_said_in_the_report_and_the_severity_caption(tmp_path):
  for row, top1 in ((BASELINE, 0.25), (GUIDED, 0.296)):
    name = "base" if row == BASELINE else "attn"
    _evaluation(tmp_path / f"linear_{name}", "linear_eval", row, 0,
                {"linear_cached/top1": top1, "linear_cached/num_images": 2000})
    _evaluation(tmp_path / f"robustness_{name}", "robustness", row, 0,
                dict(_robustness(0.2, 0.8, clean=top1 - 0.05), **{
                    "robustness/num_images": 200}))
  written = report.write_report([str(tmp_path)], str(tmp_path / "report"))
  said = ("robustness scores the first 200 validation images and linear evaluation 2000: "
          "robustness's clean top-1 (severity 0) is of those 200, not the linear top-1 of "
          "the classification table")
  assert written["notes"] == [said]
  text = open(written["markdown"]).read()
  assert text.count(said) == 2  # under the title and under the severity figure
  assert written["figures"]["robustness_severity"] and written["figures"]["pr_curves"]
  # The same images for both: nothing to say.
  _evaluation(tmp_path / "linear_base", "linear_eval", BASELINE, 0,
              {"linear_cached/top1": 0.25, "linear_cached/num_images": 200})
  _evaluation(tmp_path / "linear_attn", "linear_eval", GUIDED, 0,
              {"linear_cached/top1": 0.296, "linear_cached/num_images": 200})
  assert report.write_report([str(tmp_path)], str(tmp_path / "report"))["notes"] == []
