"""Distribution shift (configs/shift.py): ImageNet-A/R's class subsets against their
authors' published indices, the subset and ReaL scoring by hand, and the task end to end
on tfds's builders mocked (tfds.testing.mock_data, no download)."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attn_contrastive import config as config_lib
from attn_contrastive import config_checks
from attn_contrastive.data import imagenet_c_release, imagenet_shifts
from attn_contrastive.tasks import shift as shift_lib
from helpers import mocked_tfds

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
NUM_EXAMPLES = 8

#: ImageNet-R's classes as indices into ImageNet's 1000, as its authors list them
#: (github.com/hendrycks/imagenet-r, eval.py, the comment under ``imagenet_r_mask``).
R_INDICES = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94,
    96, 97, 99, 100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151,
    155, 160, 161, 162, 163, 171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232,
    234, 235, 242, 245, 247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277, 281,
    288, 289, 291, 292, 293, 296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327,
    330, 334, 335, 337, 338, 340, 341, 344, 347, 353, 355, 361, 362, 365, 366, 367, 368,
    372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435, 437, 441, 447, 448,
    457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570, 579, 583,
    587, 593, 594, 596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768,
    774, 776, 779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883, 889,
    895, 907, 928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951, 953, 954,
    957, 963, 965, 967, 980, 981, 983, 988)
#: ImageNet-A's: the keys of ``thousand_k_to_200`` that are not -1
#: (github.com/hendrycks/natural-adv-examples, eval.py).
A_INDICES = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90,
    94, 96, 97, 99, 105, 107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151,
    207, 234, 235, 254, 277, 283, 287, 291, 295, 298, 301, 306, 307, 308, 309, 310, 311,
    313, 314, 315, 317, 319, 323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363, 372,
    378, 386, 397, 400, 401, 402, 404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438,
    445, 456, 457, 461, 462, 470, 472, 483, 486, 488, 492, 496, 514, 516, 528, 530, 539,
    542, 543, 549, 552, 557, 561, 562, 569, 572, 573, 575, 579, 589, 606, 607, 609, 614,
    626, 627, 640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704, 719, 736, 746,
    749, 752, 758, 763, 765, 768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804,
    813, 815, 820, 823, 831, 833, 835, 839, 845, 847, 850, 859, 862, 870, 879, 880, 888,
    890, 897, 900, 907, 913, 924, 932, 933, 934, 937, 943, 945, 947, 951, 954, 956, 957,
    959, 971, 972, 980, 981, 984, 986, 987, 988)


def test_a_and_r_classes_are_the_published_ones_in_imagenet2012():
  names = imagenet_c_release.imagenet_label_names()
  for wnids, published in ((imagenet_shifts.IMAGENET_A_WNIDS, A_INDICES),
                           (imagenet_shifts.IMAGENET_R_WNIDS, R_INDICES)):
    assert len(set(wnids)) == 200 and set(wnids) <= set(names)
    assert imagenet_shifts.class_indices(wnids) == list(published)
  assert tuple(imagenet_shifts.SHIFTS) == config_checks.SHIFT_DATASETS
  with pytest.raises(ValueError, match="n00000000"):
    imagenet_shifts.class_indices(("n00000000",))


def test_subset_scoring_reads_only_the_subsets_logits():
  logits = np.zeros((3, 1000), np.float32)
  logits[:, 0] = 9.0                      # the best class overall, outside the subset
  logits[0, 6], logits[0, 11] = 2.0, 1.0  # image 0: 6 is the subset's best
  logits[1, 11] = 3.0                     # image 1: 11
  logits[2, 13] = -1.0                    # image 2: every subset logit 0 but 13: 6 first
  labels = np.array([6, 6, 6])
  assert shift_lib.subset_top1(logits, labels, [6, 11, 13]) == pytest.approx(2 / 3)
  assert np.mean(np.argmax(logits, -1) == labels) == 0  # unmasked, all wrong


def test_real_scoring_leaves_out_images_without_real_labels():
  top1, n = shift_lib.real_top1(np.array([3, 5, 7, 1]), [{3, 4}, set(), {8}, {1}])
  assert (top1, n) == (pytest.approx(2 / 3), 3)
  assert shift_lib.real_top1(np.array([1]), [set()])[1] == 0


def _mocked():
  return mocked_tfds(NUM_EXAMPLES, ("test", "validation"))


def _linear_eval(tmp_path, bias):
  """A linear evaluation's workdir of a tiny run: its config and a 1000-class cached
  classifier whose logits are ``bias`` whatever the image (a zero kernel)."""
  from attn_contrastive.train import loop
  from helpers import write_run
  run_dir, _, _ = write_run(tmp_path / "simclr", "pretrain")
  linear = config_lib.load_config_file(os.path.join(CONFIGS, "linear_eval.py") + ":imagenet")
  linear.run_dir = run_dir
  linear_dir = tmp_path / "linear"
  (linear_dir / "linear_cached").mkdir(parents=True)
  loop.write_config(str(linear_dir), linear)
  np.savez(linear_dir / "linear_cached" / "classifier.npz",
           kernel=np.zeros((32, 1000), np.float32), bias=bias)
  return str(linear_dir)


def test_shift_scores_every_set_through_tfds_mocked(tmp_path):
  """Predictions fixed by the classifier's bias: 0 overall (outside both subsets), an
  ImageNet-A class among A's logits, an ImageNet-R class among R's; each set's top-1 is
  then the share of its mocked labels equal to that class (ReaL: of its label sets that
  hold it, empty sets left out)."""
  a_only = sorted(set(imagenet_shifts.class_indices(imagenet_shifts.IMAGENET_A_WNIDS))
                  - set(R_INDICES))[0]
  r_only = sorted(set(R_INDICES) - set(A_INDICES))[0]
  bias = np.zeros(1000, np.float32)
  bias[0], bias[a_only], bias[r_only] = 3.0, 2.0, 1.0
  c = config_lib.load_config_file(os.path.join(CONFIGS, "shift.py"))
  c.run_dir = _linear_eval(tmp_path, bias)
  c.data.image_size = 16
  c.eval.update(dict(batch_size=8, num_threads=1))
  with _mocked():
    out = shift_lib.evaluate(c, str(tmp_path / "shift"), dataset_version="5.1.0")
    records = {s.name: list(tfds.data_source(s.tfds_name, split=s.split))
               for s in imagenet_shifts.SHIFTS.values()}
  expected = {"imagenet_v2": 0, "imagenet_sketch": 0, "imagenet_a": a_only,
              "imagenet_r": r_only}
  for name, predicted in expected.items():
    labels = np.array([r["label"] for r in records[name]])
    assert out[f"shift/{name}"] == pytest.approx(np.mean(labels == predicted)), name
    assert out[f"shift/num_images/{name}"] == NUM_EXAMPLES
  sets = [set(np.asarray(r["real_label"]).tolist()) for r in records["real"]]
  kept = [s for s in sets if s]
  assert out["shift/num_images/real"] == len(kept)
  if kept:
    assert out["shift/real"] == pytest.approx(np.mean([0 in s for s in kept]))
  assert out["shift/classifier"]["protocol"] == "linear_cached"
  assert out["task"] == "shift" and out["source_workdir"].endswith("simclr")
  from attn_contrastive.report import write_report
  written = write_report([str(tmp_path / "shift")], str(tmp_path / "report"))
  (row, cells), = written["tables"]["shift"]["rows"].items()
  assert {k: v["n"] for k, v in cells.items()} == {
      f"shift/{k}": 1 for k in config_checks.SHIFT_DATASETS}, row
  assert "Distribution shift" in (tmp_path / "report" / "report.md").read_text()
