"""Tests of the synthetic salient-objects generator and its tfds builder."""
import colorsys
import itertools

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from attn_contrastive.data import prepare
from attn_contrastive.data import synthetic

CFG = synthetic.CLASSIFICATION
SIZE = CFG.image_size


def _render(n, split="train", config=CFG, start=0):
  return [synthetic.render_example(config, split, i)
          for i in range(start, start + n)]


def test_same_index_gives_identical_arrays():
  a = synthetic.render_example(CFG, "train", 17)
  b = synthetic.render_example(CFG, "train", 17)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_different_index_split_or_seed_gives_different_images():
  base = synthetic.render_example(CFG, "train", 3)["image"]
  for other in (synthetic.render_example(CFG, "train", 4),
                synthetic.render_example(CFG, "validation", 3),
                synthetic.render_example(synthetic.HUMAN_ATTENTION, "train", 3)):
    assert not np.array_equal(base, other["image"])


def test_features_have_documented_shapes_and_dtypes():
  ex = synthetic.render_example(CFG, "validation", 5)
  assert ex["image"].shape == (SIZE, SIZE, 3) and ex["image"].dtype == np.uint8
  assert ex["saliency_map"].shape == (SIZE, SIZE, 1)
  assert ex["saliency_map"].dtype == np.uint8
  assert ex["saliency_map"].max() == 255
  assert ex["object_mask"].shape == (SIZE, SIZE, 1)
  assert set(np.unique(ex["object_mask"])) == {0, 255}
  fix = ex["fixations"]
  assert fix.dtype == np.int32 and fix.ndim == 2 and fix.shape[1] == 2
  lo, hi = CFG.fixations_per_observer
  assert CFG.num_observers * lo <= len(fix) <= CFG.num_observers * hi
  assert ex["file_name"] == "salient_objects_validation_000005.png"
  assert 0 <= ex["label"] < CFG.num_classes


def test_index_out_of_range_is_refused():
  with pytest.raises(IndexError):
    synthetic.render_example(CFG, "validation", CFG.num_validation)


def test_labels_are_balanced_over_every_block_of_classes():
  k = CFG.num_classes
  labels = [ex["label"] for ex in _render(3 * k)]
  assert sorted(labels) == sorted(list(range(k)) * 3)
  assert labels[:k] != labels[k:2 * k]  # not a fixed cycle


def test_canonical_shapes_are_pairwise_distinct():
  masks = [synthetic.shape_mask(c, SIZE, (SIZE / 2, SIZE / 2), SIZE / 4)
           for c in range(len(synthetic.CLASS_NAMES))]
  for (i, a), (j, b) in itertools.combinations(enumerate(masks), 2):
    iou = (a & b).sum() / (a | b).sum()
    assert iou < 0.8, (synthetic.CLASS_NAMES[i], synthetic.CLASS_NAMES[j], iou)


def _normalised_mask(mask):
  """The object's bounding box resized to 16x16: position/scale invariant."""
  rows, cols = np.nonzero(mask[..., 0])
  crop = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1, 0]
  return cv2.resize(crop.astype(np.float32) / 255, (16, 16),
                    interpolation=cv2.INTER_AREA).ravel()


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y, k):
  centroids = np.stack([train_x[train_y == c].mean(0) for c in range(k)])
  dist = ((test_x[:, None] - centroids[None]) ** 2).sum(-1)
  return (dist.argmin(1) == test_y).mean()


def test_class_is_decided_by_shape_not_colour():
  k = CFG.num_classes
  train, test = _render(300), _render(100, "validation")
  y_train = np.array([e["label"] for e in train])
  y_test = np.array([e["label"] for e in test])
  # Shape alone (position and scale removed) predicts the class.
  shape_acc = _nearest_centroid_accuracy(
      np.stack([_normalised_mask(e["object_mask"]) for e in train]), y_train,
      np.stack([_normalised_mask(e["object_mask"]) for e in test]), y_test, k)
  assert shape_acc > 0.8
  # The object's colour does not.
  colour = lambda e: e["image"][e["object_mask"][..., 0] > 0].mean(0) / 255
  colour_acc = _nearest_centroid_accuracy(
      np.stack([colour(e) for e in train]), y_train,
      np.stack([colour(e) for e in test]), y_test, k)
  assert colour_acc < 0.3


def test_object_is_salient_against_background():
  for ex in _render(20):
    inside = ex["object_mask"][..., 0] > 0
    obj = ex["image"][inside].astype(np.float32).mean(0)
    bg = np.median(ex["image"][~inside].astype(np.float32), axis=0)
    assert np.abs(obj - bg).max() > 60


def test_fixations_are_in_bounds_and_mostly_on_the_object():
  on_object = []
  for ex in _render(100):
    fix = ex["fixations"]
    assert fix.min() >= 0 and fix.max() < SIZE
    on_object.append((ex["object_mask"][fix[:, 0], fix[:, 1], 0] > 0).mean())
  assert np.mean(on_object) > 0.5
  # Centre-bias and random fixations exist too.
  assert np.mean(on_object) < 0.95


def test_density_map_peaks_near_fixations():
  sigma = CFG.saliency_sigma * SIZE
  for ex in _render(30, "validation"):
    peak = np.unravel_index(ex["saliency_map"][..., 0].argmax(), (SIZE, SIZE))
    dist = np.linalg.norm(ex["fixations"] - np.array(peak), axis=1).min()
    assert dist <= sigma
    np.testing.assert_array_equal(
        ex["saliency_map"][..., 0],
        synthetic.density_map(ex["fixations"], SIZE, sigma))


def _tint_from_pixels(ex, num_classes):
  """Palette index of the background tint, read off the image's pixels."""
  background = cv2.dilate(ex["object_mask"][..., 0], np.ones((5, 5))) == 0
  r, g, b = np.median(ex["image"][background].astype(np.float32), 0) / 255
  hue = colorsys.rgb_to_hsv(r, g, b)[0]
  return int(np.round(hue * num_classes)) % num_classes


def test_spurious_tint_tracks_label_only_in_train():
  cfg = synthetic.CLASSIFICATION_SPURIOUS
  k, p = cfg.num_classes, cfg.spurious_strength
  train, val = _render(400, config=cfg), _render(400, "validation", config=cfg)
  for ex in train[:50] + val[:50]:  # the stored attribute is what is drawn
    assert _tint_from_pixels(ex, k) == ex["background_tint"]
  agree = lambda exs: np.mean([e["background_tint"] == e["label"] for e in exs])
  assert abs(agree(train) - (p + (1 - p) / k)) < 0.05
  assert abs(agree(val) - 1 / k) < 0.05
  assert abs(agree(_render(400)) - 1 / k) < 0.05  # plain config: chance


def test_spurious_config_changes_only_the_tint():
  plain = synthetic.render_example(CFG, "validation", 9)
  spur = synthetic.render_example(synthetic.CLASSIFICATION_SPURIOUS,
                                  "validation", 9)
  for key in plain:
    np.testing.assert_array_equal(plain[key], spur[key], err_msg=key)


def test_invalid_config_is_refused():
  with pytest.raises(ValueError, match="sum to 1"):
    synthetic.SalientObjectsConfig(name="bad", frac_object=0.9)
  with pytest.raises(ValueError, match="num_classes"):
    synthetic.SalientObjectsConfig(name="bad", num_classes=99)


def test_parallel_generation_matches_serial():
  cfg = synthetic.SalientObjectsConfig(name="par", num_train=12,
                                       num_validation=4)
  serial = list(synthetic.generate_encoded(cfg, "train", num_workers=0))
  parallel = list(synthetic.generate_encoded(cfg, "train", num_workers=2,
                                             chunk_size=3))
  assert [i for i, _ in parallel] == list(range(12))
  for (i, a), (j, b) in zip(serial, parallel):
    assert i == j
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_tiny_build_reads_back_through_data_source(tmp_path):
  tiny = synthetic.SalientObjectsConfig(
      name="tiny", description="test build", num_train=24, num_validation=8)
  builder = synthetic.SalientObjects(config=tiny, data_dir=tmp_path)
  builder.download_and_prepare(file_format="array_record")
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert list(builder.data_path.glob("*.array_record-*"))

  # Read as the training pipeline does; 'tiny' is not a registered config,
  # so tfds reads the files alone, without this project's code.
  sources = tfds.data_source("salient_objects/tiny", data_dir=tmp_path,
                             download=False)
  assert {s: len(sources[s]) for s in sources} == {"train": 24,
                                                   "validation": 8}
  for split, source in sources.items():
    for index in range(len(source)):
      record, ref = source[index], synthetic.render_example(tiny, split, index)
      assert record["image"].dtype == np.uint8
      assert record["image"].shape == (SIZE, SIZE, 3)
      assert record["fixations"].dtype == np.int32
      assert record["fixations"].shape == ref["fixations"].shape
      assert record["file_name"].decode() == ref["file_name"]
      for key in ("image", "saliency_map", "object_mask", "fixations",
                  "label", "background_tint"):
        np.testing.assert_array_equal(record[key], ref[key], err_msg=key)

  # The CLI's entry point finds the prepared data instead of rebuilding it.
  assert prepare.prepare("salient_objects/tiny", str(tmp_path)) == str(
      builder.data_path)
  with pytest.raises(ValueError, match="stored as array_record"):
    prepare.prepare("salient_objects/tiny", str(tmp_path), "tfrecord")


def test_unknown_dataset_is_named(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset"):
    prepare.prepare("no_such_dataset_anywhere", str(tmp_path))


def test_registered_configs():
  builder_cls = tfds.builder_cls("salient_objects")
  assert builder_cls is synthetic.SalientObjects
  assert set(builder_cls.builder_configs) == {
      "human_attention", "classification", "classification_spurious"}
  assert (synthetic.HUMAN_ATTENTION.num_train,
          synthetic.HUMAN_ATTENTION.num_validation) == (2000, 500)
  assert (CFG.num_train, CFG.num_validation) == (10000, 2000)
  assert synthetic.CLASSIFICATION_SPURIOUS.spurious_strength == 0.9


def test_first_use_build_happens_once_when_several_ask_at_once(tmp_path, monkeypatch):
  """Processes of one run asking for unbuilt synthetic data: one builds, the others
  wait for its lock and find the dataset prepared (threads here; flock works
  across threads and processes alike)."""
  import threading
  import time
  from attn_contrastive.data import sources
  built, building = [], threading.Event()

  class Builder:
    def __init__(self):
      self.data_dir = str(tmp_path)

    def is_prepared(self):
      return bool(built)

    def download_and_prepare(self, file_format):
      assert not building.is_set(), "two builds at once"
      building.set()
      time.sleep(0.3)
      built.append(file_format)
      building.clear()

  monkeypatch.setattr(tfds, "builder", lambda name, data_dir: Builder())
  got = []
  threads = [threading.Thread(target=lambda: got.append(sources._build_once(
      "salient_objects/classification", str(tmp_path)))) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert built == ["array_record"] and len(got) == 3
  assert all(b.is_prepared() for b in got)
