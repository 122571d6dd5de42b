"""Tests of the SALICON builder on a small fixture tree in the release's format."""

import shutil

import cv2
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from attn_contrastive.data import salicon

# Its tests share a costly module fixture: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("test_salicon")

H, W = 48, 64  # Reduced from 480 x 640; `resolution` in the .mat files matches.


def _gaze(observers):
  """A MATLAB struct array (one entry per observer) of 1-based [x, y] fixations."""
  gaze = np.empty((len(observers), 1), dtype=[("location", "O"), ("timestamp", "O"),
                                              ("fixations", "O")])
  for i, fixes in enumerate(observers):
    fixes = np.asarray(fixes, np.float64).reshape(-1, 2)
    mouse = np.repeat(fixes, 3, axis=0) if len(fixes) else np.array([[10.0, 10.0]])
    gaze[i, 0] = (mouse, np.arange(len(mouse), dtype=np.float64) * 5.0, fixes)
  return gaze


def _observers(seed, n_observers):
  """Random in-image fixations (1-based [x, y]) for several observers.

  Observer 1 has a single fixation and observer 2 none (edge cases of scipy's
  squeezing); observer 0 has points on and just past the image border.
  """
  rng = np.random.default_rng(seed)
  observers = []
  for i in range(n_observers):
    if i == 1:
      observers.append([[rng.integers(1, W + 1), rng.integers(1, H + 1)]])
    elif i == 2:
      observers.append(np.zeros((0, 2)))
    else:
      n = int(rng.integers(2, 6))
      observers.append(np.stack([rng.integers(1, W + 1, n), rng.integers(1, H + 1, n)], 1))
  observers[0] = np.concatenate([observers[0], [[1, 1], [W, H], [W + 2, 0]]])
  return observers


def _expected(observers):
  """Independent conversion: 1-based [x, y] -> 0-based (row, col), clipped."""
  rows, obs = [], []
  for i, fixes in enumerate(observers):
    for x, y in np.asarray(fixes).reshape(-1, 2):
      rows.append((min(max(int(y) - 1, 0), H - 1), min(max(int(x) - 1, 0), W - 1)))
      obs.append(i)
  return np.array(rows, np.int32).reshape(-1, 2), np.array(obs, np.int32)


def _write_tree(root, edition_seed=0, label_root=None):
  """Writes 3 train, 2 val, 1 test images with maps and .mat files.

  Images go under ``root/images``; maps and fixations under ``label_root``
  (default ``root``). Returns {split folder: {stem: observers}}.
  """
  label_root = label_root or root
  rng = np.random.default_rng(100)  # Same images for every edition.
  map_rng = np.random.default_rng(edition_seed)  # Maps differ between editions.
  truth = {}
  for folder, count in (("train", 3), ("val", 2), ("test", 1)):
    (root / "images" / folder).mkdir(parents=True, exist_ok=True)
    truth[folder] = {}
    for k in range(count):
      stem = f"COCO_{folder}2014_{k + 1:012d}"
      image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
      cv2.imwrite(str(root / "images" / folder / f"{stem}.jpg"), image)
      if folder == "test":
        continue
      for kind in ("maps", "fixations"):
        (label_root / kind / folder).mkdir(parents=True, exist_ok=True)
      smap = cv2.GaussianBlur(map_rng.integers(0, 256, (H, W), dtype=np.uint8), (0, 0), 3)
      cv2.imwrite(str(label_root / "maps" / folder / f"{stem}.png"), smap)
      if (folder, k) == ("val", 1):
        # A single observer with a single fixation: scipy squeezes gaze to
        # a scalar struct and the fixations to a length-2 vector.
        observers = [[[5 + edition_seed, 7]]]
      else:
        observers = _observers(edition_seed * 1000 + 10 * count + k, 4)
      scipy.io.savemat(
          str(label_root / "fixations" / folder / f"{stem}.mat"), {
              "image": stem,
              "resolution": np.array([[H, W]], np.float64),
              "gaze": _gaze(observers),
          })
      truth[folder][stem] = observers
  return truth


def _build(name, manual_dir, data_dir):
  """Builds config ``name`` into ``data_dir`` (array_record) and returns the builder."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
      file_format="array_record")
  return builder


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """One release tree: 2017 labels at the root, 2015 labels under salicon2015/."""
  root = tmp_path_factory.mktemp("manual")
  truth_2017 = _write_tree(root, edition_seed=1)
  truth_2015 = _write_tree(root, edition_seed=2, label_root=root / "salicon2015")
  return root, {"salicon2017": truth_2017, "salicon2015": truth_2015}


def _read(name, split, data_dir):
  return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)


@pytest.mark.parametrize("config", ["salicon2017", "salicon2015"])
def test_build_and_read_back(release, tmp_path, config):
  root, truths = release
  truth = truths[config]
  builder = _build(f"salicon/{config}", root, tmp_path)
  assert builder.info.splits["train"].num_examples == 3
  assert builder.info.splits["validation"].num_examples == 2
  assert builder.info.splits["test"].num_examples == 1
  for split, folder in (("train", "train"), ("validation", "val")):
    source = _read(f"salicon/{config}", split, tmp_path)
    names = []
    for i in range(len(source)):
      ex = source[i]
      name = ex["file_name"]
      name = name.decode() if isinstance(name, bytes) else str(name)
      names.append(name)
      stem = name[:-4]
      assert ex["image"].shape == (H, W, 3) and ex["image"].dtype == np.uint8
      assert ex["saliency_map"].shape == (H, W, 1)
      png = cv2.imread(
          str(_label_dir(root, config) / "maps" / folder / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
      np.testing.assert_array_equal(ex["saliency_map"][..., 0], png)
      jpg = cv2.cvtColor(cv2.imread(str(root / "images" / folder / name)), cv2.COLOR_BGR2RGB)
      np.testing.assert_array_equal(ex["image"], jpg)
      fixations, observer = _expected(truth[folder][stem])
      assert ex["fixations"].dtype == np.int32 and ex["observer"].dtype == np.int32
      np.testing.assert_array_equal(ex["fixations"], fixations)
      np.testing.assert_array_equal(ex["observer"], observer)
    assert sorted(names) == sorted(f"{s}.jpg" for s in truth[folder])
  test = _read(f"salicon/{config}", "test", tmp_path)
  ex = test[0]
  assert ex["image"].shape == (H, W, 3)
  assert ex["saliency_map"].shape == (H, W, 1) and not ex["saliency_map"].any()
  assert ex["fixations"].shape == (0, 2) and ex["observer"].shape == (0,)


def _label_dir(root, config):
  return root / "salicon2015" if config == "salicon2015" else root


def test_default_config_is_2017():
  assert tfds.builder_cls("salicon").DEFAULT_BUILDER_CONFIG_NAME == "salicon2017"


def test_conversion_hand_example(tmp_path):
  # [x, y] = [1, 1] -> (row 0, col 0); [64, 48] -> (47, 63); [10, 3] -> (2, 9);
  # [66, 0] is outside: clipped to (0, 63).
  path = tmp_path / "one.mat"
  scipy.io.savemat(
      str(path), {
          "image": "COCO_val2014_000000000001",
          "resolution": np.array([[H, W]]),
          "gaze": _gaze([[[1, 1], [64, 48]], [[10, 3]], [], [[66, 0]]])
      })
  record = salicon.read_fixation_file(path, expected_stem="COCO_val2014_000000000001")
  assert record.resolution == (H, W)
  np.testing.assert_array_equal(record.fixations, [[0, 0], [47, 63], [2, 9], [0, 63]])
  np.testing.assert_array_equal(record.observer, [0, 0, 1, 3])
  assert record.n_clipped == 1


def test_record_array_representation(tmp_path):
  # scipy's default representation (struct_as_record=True, no squeezing).
  path = tmp_path / "rec.mat"
  scipy.io.savemat(str(path), {"resolution": np.array([[H, W]]), "gaze": _gaze([[[3, 4]], []])})
  gaze = scipy.io.loadmat(str(path))["gaze"]
  entries = salicon._gaze_entries(gaze, path)
  assert len(entries) == 2
  np.testing.assert_array_equal(
      salicon._as_xy(salicon._struct_field(entries[0], "fixations", path, 0), path, 0), [[3, 4]])
  assert salicon._as_xy(salicon._struct_field(entries[1], "fixations", path, 1), path,
                        1).shape == (0, 2)


def test_read_image_and_map_conversions(tmp_path):
  grey = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
  cv2.imwrite(str(tmp_path / "grey.jpg"), grey)
  stored, size = salicon.read_image(tmp_path / "grey.jpg")
  assert size == (H, W) and stored == (tmp_path / "grey.jpg").read_bytes()
  # Not a JPEG despite its name: decoded and handed on as an RGB array.
  cv2.imwrite(str(tmp_path / "fake.png"), np.dstack([grey] * 3))
  (tmp_path / "fake.png").rename(tmp_path / "fake.jpg")
  stored, size = salicon.read_image(tmp_path / "fake.jpg")
  assert size == (H, W) and stored.shape == (H, W, 3) and stored.dtype == np.uint8
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
  with pytest.raises(ValueError, match="broken.jpg"):
    salicon.read_image(tmp_path / "broken.jpg")
  # Grey PNG kept as bytes; a colour PNG becomes [H, W, 1] grey; 16-bit scaled.
  cv2.imwrite(str(tmp_path / "m.png"), grey)
  assert salicon.read_saliency_map(tmp_path / "m.png", (H, W)) == (tmp_path / "m.png").read_bytes()
  cv2.imwrite(str(tmp_path / "c.png"), np.dstack([grey] * 3))
  np.testing.assert_array_equal(salicon.read_saliency_map(tmp_path / "c.png", (H, W))[..., 0], grey)
  cv2.imwrite(str(tmp_path / "w.png"), grey.astype(np.uint16) * 257)
  np.testing.assert_array_equal(salicon.read_saliency_map(tmp_path / "w.png", (H, W))[..., 0], grey)
  with pytest.raises(ValueError, match="m.png.*expected 10 x 10"):
    salicon.read_saliency_map(tmp_path / "m.png", (10, 10))


def _mat_content(case):
  """Contents of a malformed .mat file, by case name."""
  resolution = np.array([[H, W]])
  return {
      "no_gaze": {
          "resolution": resolution
      },
      "no_resolution": {
          "gaze": _gaze([[[1, 1]]])
      },
      "gaze_not_struct": {
          "gaze": "x",
          "resolution": resolution
      },
      "bad_resolution": {
          "gaze": _gaze([[[1, 1]]]),
          "resolution": np.array([[0, W]])
      },
  }[case]


@pytest.mark.parametrize("case, message", [
    ("garbage", "not a readable MATLAB"),
    ("no_gaze", "missing key 'gaze'"),
    ("no_resolution", "missing key 'resolution'"),
    ("gaze_not_struct", "not a struct array"),
    ("bad_resolution", "two positive integers"),
])
def test_malformed_mat_files(tmp_path, case, message):
  path = tmp_path / "COCO_train2014_000000000001.mat"
  if case == "garbage":
    path.write_bytes(b"this is not a mat file")
  else:
    scipy.io.savemat(str(path), _mat_content(case))
  with pytest.raises(ValueError, match=message) as info:
    salicon.read_fixation_file(path)
  assert str(path) in str(info.value)


def test_bad_fixation_shape_and_wrong_image(tmp_path):
  path = tmp_path / "COCO_train2014_000000000001.mat"
  gaze = _gaze([[[1, 1]]])
  gaze["fixations"][0, 0] = np.ones((2, 3))
  scipy.io.savemat(str(path), {"resolution": np.array([[H, W]]), "gaze": gaze})
  with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
    salicon.read_fixation_file(path)
  scipy.io.savemat(
      str(path), {
          "image": "COCO_train2014_000000000099",
          "resolution": np.array([[H, W]]),
          "gaze": _gaze([[[1, 1]]])
      })
  with pytest.raises(ValueError, match="COCO_train2014_000000000099"):
    salicon.read_fixation_file(path, expected_stem="COCO_train2014_000000000001")


def _small_tree(root):
  """A minimal valid tree: one train and one val image with labels."""
  rng = np.random.default_rng(5)
  for folder in ("train", "val"):
    stem = f"COCO_{folder}2014_000000000001"
    for kind in ("images", "maps", "fixations"):
      (root / kind / folder).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(
        str(root / "images" / folder / f"{stem}.jpg"),
        rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "maps" / folder / f"{stem}.png"), np.zeros((H, W), np.uint8))
    scipy.io.savemat(
        str(root / "fixations" / folder / f"{stem}.mat"), {
            "image": stem,
            "resolution": np.array([[H, W]]),
            "gaze": _gaze([[[2, 3]]])
        })
  return root / "maps" / "val" / "COCO_val2014_000000000001.png"


def test_missing_map_names_the_file(tmp_path):
  map_path = _small_tree(tmp_path / "manual")
  map_path.unlink()
  with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000001.png"):
    _build("salicon/salicon2017", tmp_path / "manual", tmp_path / "data")


def test_map_size_mismatch_names_the_file(tmp_path):
  map_path = _small_tree(tmp_path / "manual")
  cv2.imwrite(str(map_path), np.zeros((H // 2, W // 2), np.uint8))
  with pytest.raises(ValueError, match="COCO_val2014_000000000001.png.*expected 48 x 64"):
    _build("salicon/salicon2017", tmp_path / "manual", tmp_path / "data")


def test_resolution_mismatch_names_the_file(tmp_path):
  _small_tree(tmp_path / "manual")
  mat = tmp_path / "manual" / "fixations" / "train" / "COCO_train2014_000000000001.mat"
  scipy.io.savemat(str(mat), {"resolution": np.array([[480, 640]]), "gaze": _gaze([[[2, 3]]])})
  with pytest.raises(ValueError, match="COCO_train2014_000000000001.mat.*480 x 640"):
    _build("salicon/salicon2017", tmp_path / "manual", tmp_path / "data")


def test_missing_folder(tmp_path):
  _small_tree(tmp_path / "manual")
  shutil.rmtree(tmp_path / "manual" / "fixations" / "val")
  with pytest.raises(FileNotFoundError, match="fixations/val"):
    _build("salicon/salicon2017", tmp_path / "manual", tmp_path / "data")


# --------------------------------------------------------------------------
# Damaged and inconsistent files: what is refused, what is counted.
# --------------------------------------------------------------------------


def test_fixations_outside_nan_and_at_zero_are_counted(tmp_path):
  path = tmp_path / "COCO_val2014_000000000001.mat"
  observers = [
      [[1, 1], [W, H], [0, 5], [W + 2, 3]],  # in; in at the far edge; 1 and 2 px out: clipped
      [[W + 3, 3], [-50, 10], [np.nan, 4], [5, np.inf], [7, 9]],  # 3 px out, far out, NaN, inf
  ]
  scipy.io.savemat(str(path), {"resolution": np.array([[H, W]]), "gaze": _gaze(observers)})
  record = salicon.read_fixation_file(path)
  np.testing.assert_array_equal(record.fixations,
                                [[0, 0], [H - 1, W - 1], [4, 0], [2, W - 1], [8, 6]])
  np.testing.assert_array_equal(record.observer, [0, 0, 0, 0, 1])
  assert record.counts.as_dict() == {"kept": 5, "clipped": 2, "outside": 2, "non_finite": 2,
                                     "at_zero": 1, "at_far_edge": 1}
  assert record.n_clipped == 2


def _write_fixations(root, folder, observers):
  stem = f"COCO_{folder}2014_000000000001"
  scipy.io.savemat(str(root / "fixations" / folder / f"{stem}.mat"), {
      "image": stem, "resolution": np.array([[H, W]]), "gaze": _gaze(observers)})


def test_split_counts_go_to_the_metadata_and_0_based_files_are_named(tmp_path, caplog):
  root = tmp_path / "manual"
  _small_tree(root)
  # 0-based train file: reaches 0, never W or H. The val file: NaN and far outside.
  _write_fixations(root, "train", [[[0, 0], [3, 0], [W - 1, H - 1], [10, 12]]])
  _write_fixations(root, "val", [[[2, 3], [np.nan, 1], [W + 40, 2]]])
  with caplog.at_level("INFO"):
    builder = _build("salicon/salicon2017", root, tmp_path / "data")
  want = {
      "fixations_train": {"kept": 4, "clipped": 2, "outside": 0, "non_finite": 0,
                          "at_zero": 2, "at_far_edge": 0},
      "fixations_validation": {"kept": 1, "clipped": 0, "outside": 1, "non_finite": 1,
                               "at_zero": 0, "at_far_edge": 0},
  }
  assert dict(builder.info.metadata) == want
  reread = tfds.builder("salicon/salicon2017", data_dir=str(tmp_path / "data"))
  assert dict(reread.info.metadata) == want
  text = "\n".join(r.getMessage() for r in caplog.records)
  assert "SALICON train" in text and "look 0-based" in text
  assert "dropped 1 fixation(s) more than 2 px outside" in text
  assert "COCO_val2014_000000000001.jpg" in text
  assert "validation: 2 fixation(s) have a coordinate of 0" not in text


def _break(root, case):
  """Damages the small tree's val files by case; returns the file the error must name."""
  stem = "COCO_val2014_000000000001"
  folder = {kind: root / kind / "val" for kind in ("images", "maps", "fixations")}
  if case == "no_fixations_field":
    gaze = np.empty((1, 1), dtype=[("location", "O"), ("timestamp", "O")])
    gaze[0, 0] = (np.ones((2, 2)), np.arange(2.0))
    scipy.io.savemat(str(folder["fixations"] / f"{stem}.mat"),
                     {"resolution": np.array([[H, W]]), "gaze": gaze})
    return folder["fixations"] / f"{stem}.mat"
  if case == "map_wrong_size":
    cv2.imwrite(str(folder["maps"] / f"{stem}.png"), np.zeros((H, W + 1), np.uint8))
    return folder["maps"] / f"{stem}.png"
  if case == "truncated_image":
    data = (folder["images"] / f"{stem}.jpg").read_bytes()
    (folder["images"] / f"{stem}.jpg").write_bytes(data[:len(data) // 2])
    return folder["images"] / f"{stem}.jpg"
  if case == "missing_mat":
    (folder["fixations"] / f"{stem}.mat").unlink()
    return folder["fixations"] / f"{stem}.mat"
  if case in ("map_without_image", "mat_without_image"):
    kind, suffix = ("maps", ".png") if case == "map_without_image" else ("fixations", ".mat")
    extra = folder[kind] / f"COCO_val2014_000000000077{suffix}"
    shutil.copy(next(folder[kind].iterdir()), extra)
    return extra.name
  raise ValueError(case)


@pytest.mark.parametrize("case, error, fix", [
    ("no_fixations_field", ValueError, "from the SALICON release"),
    ("map_wrong_size", ValueError, "from the SALICON release"),
    ("truncated_image", ValueError, "from the SALICON release"),
    ("missing_mat", FileNotFoundError, "copy it from the SALICON release"),
    ("map_without_image", ValueError, "Extract the release's images"),
    ("mat_without_image", ValueError, "Extract the release's images"),
])
def test_damaged_files_are_refused_naming_the_file_and_the_fix(tmp_path, case, error, fix):
  root = tmp_path / "manual"
  _small_tree(root)
  named = _break(root, case)
  with pytest.raises(error) as info:
    _build("salicon/salicon2017", root, tmp_path / "data")
  assert str(named) in str(info.value) and fix in str(info.value)


def test_a_16_bit_image_is_scaled_not_clipped(tmp_path):
  deep = np.random.default_rng(2).integers(0, 65536, (H, W, 3), dtype=np.uint16)
  cv2.imwrite(str(tmp_path / "deep.png"), deep)
  (tmp_path / "deep.png").rename(tmp_path / "deep.jpg")
  stored, size = salicon.read_image(tmp_path / "deep.jpg")
  assert size == (H, W)
  np.testing.assert_array_equal(stored, (deep[..., ::-1] >> 8).astype(np.uint8))
