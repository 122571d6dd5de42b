"""The ``:cifar10`` configs end to end on tfds's ``cifar10`` mocked (no download): SimCLR's
CIFAR-10 pretraining, linear evaluation, retrieval, and robustness on a CIFAR-10-C folder
written in the release's layout."""
import json
import os

import numpy as np
import pytest

from attn_contrastive import config as config_lib
from helpers import TINY_MODEL
from helpers import mocked_tfds

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
NUM_EXAMPLES = 24  # of each mocked split


def mocked_cifar10():
  """tfds's ``cifar10`` as random 32-px records (:func:`helpers.mocked_tfds`)."""
  return mocked_tfds(NUM_EXAMPLES, ("train", "test"))


def _config(name: str, **updates):
  c = config_lib.load_config_file(os.path.join(CONFIGS, name) + ":cifar10")
  for key, value in updates.items():
    node = c
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def test_simclr_cifar10_recipe():
  c = _config("contrastive.py")
  assert (c.data.name, c.data.image_size, c.data.eval_split) == ("cifar10", 32, "test")
  assert (c.model.stem_kernel, c.model.stem_stride, c.model.stem_pool) == (3, 1, False)
  assert (c.aug.strength, c.aug.p_blur, c.loss.temperature) == (0.5, 0.0, 0.5)
  assert (c.input.global_batch_size, c.train.num_epochs, c.optim.base_lr) == (512, 1000, 1.0)


def _write_cifar_c(root, corruptions):
  root.mkdir()
  np.save(root / "labels.npy", np.tile(np.arange(4, dtype=np.uint8), 5))
  for name in corruptions:
    np.save(root / f"{name}.npy",
            np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))


def test_simclr_cifar10_pretraining_reads_mocked_tfds(tmp_path):
  """The training task of ``contrastive.py:cifar10`` on the mocked split: two 32-px views
  per image, each with its label for the online probe."""
  from attn_contrastive.tasks import pretrain
  with mocked_cifar10():
    task = pretrain.build_task(_config("contrastive.py"), str(tmp_path))
    source = task.train_source
    views = task.train_transform(source[3], np.random.default_rng(0))
  assert len(source) == NUM_EXAMPLES
  assert views["view1"].shape == views["view2"].shape == (32, 32, 3)
  assert views["view1"].dtype == np.uint8 and 0 <= views["label"] < 10


def test_cifar10_evaluations_on_mocked_tfds(tmp_path):
  """linear_eval, retrieval and robustness ``:cifar10`` on any run's encoder (a tiny one at
  16 px: the 32-px images resized to it), robustness reading a CIFAR-10-C release folder
  that lacks an extra corruption."""
  from attn_contrastive.tasks import linear_eval, retrieval, robustness
  from helpers import write_run
  small = {"eval.batch_size": 8, "eval.num_threads": 1}
  run_dir, _, _ = write_run(tmp_path / "simclr", "pretrain")
  _write_cifar_c(tmp_path / "cifar10_c", ("fog", "contrast"))
  with mocked_cifar10():
    lin = str(tmp_path / "linear")
    out = linear_eval.evaluate(_config("linear_eval.py", **small, run_dir=run_dir,
                                       protocols=("linear_cached",),
                                       **{"input.num_workers": 0}), lin)
    ret = retrieval.evaluate(_config("retrieval.py", **small, run_dir=run_dir),
                             str(tmp_path / "retrieval"))
    rob = robustness.evaluate(_config(
        "robustness.py", **small, run_dir=lin, **{
            "robustness.manual_dir": str(tmp_path / "cifar10_c"),
            "robustness.corruptions": ("fog", "contrast", "spatter"),
            "robustness.severities": (1, 3)}), str(tmp_path / "robust"))
  assert out["dataset"]["splits"] == ["train", "test"], out["dataset"]
  assert ret["dataset"]["splits"] == ["test", "train"], ret["dataset"]
  assert 0 < ret["retrieval/map"] <= 1
  assert ret["retrieval/num_queries"] == ret["retrieval/num_gallery"] == NUM_EXAMPLES
  assert rob["robustness/missing"] == ["spatter"]
  assert set(rob["robustness/top1"]) == {"fog", "contrast"}
  assert rob["robustness/num_images"] == NUM_EXAMPLES and rob["robustness/source"] == "released"
  assert 0 < rob["retrieval_c/map"] <= 1
  assert np.isnan(rob["robustness/mce"]) and rob["robustness/ce"] == {}
  assert rob["robustness/mean"] == pytest.approx(
      np.mean([np.mean(v) for v in rob["robustness/top1"].values()]))
  fog = json.loads((tmp_path / "robust" / "conditions" / "fog_3.json").read_text())
  assert fog["num_images"] == 4  # the release's images, not the mocked test split
