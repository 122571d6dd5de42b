"""folder:PATH, the user's own images: the folder → dataset conversion, and the chain
docs/own_images.md lists (prepare → label → attention-teacher pretraining → linear
evaluation → retrieval) on a folder of tiny JPEG and PNG images."""
import os

import numpy as np
import pytest
from PIL import Image

from attn_contrastive.data import image_folder, images, prepare, sources

CLASSES = ("zebra", "apple", "moth", "kiwi")  # sorted: apple, kiwi, moth, zebra


def _write(path, rng, size=(20, 24), mode="RGB"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  shape = (*size, 3) if mode == "RGB" else size
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def _folder(root, per_class=6, classes=CLASSES, seed=0):
  """``root/<class>/<i>.{jpg,png}`` (every other image a grey-scale PNG), a note
  beside them and a hidden file, each class in its own subfolder."""
  rng = np.random.default_rng(seed)
  for c in classes:
    for i in range(per_class):
      if i % 2:
        _write(os.path.join(root, c, f"{i}.jpg"), rng)
      else:
        _write(os.path.join(root, c, f"{i}.png"), rng, mode="L")
    with open(os.path.join(root, c, "notes.txt"), "w") as f:
      f.write("not an image")
    with open(os.path.join(root, c, ".DS_Store"), "wb") as f:
      f.write(b"\0\0")
  return str(root)


def _records(name, split, data_dir):
  src = sources.open_split(name, split, data_dir)
  return [src[i] for i in range(len(src))]


def _key(record) -> str:
  """A record's ``file_name``: its path under the folder."""
  return images.record_name(record, 0)


def test_class_subfolders_become_sorted_labels_and_a_seeded_split(tmp_path):
  root = _folder(tmp_path / "pets")
  name, data_dir = f"folder:{root}", str(tmp_path / "tfds")
  prepare.prepare(name, data_dir, validation_fraction=0.25, split_seed=3)
  builder = sources.get_builder(name, data_dir)
  assert builder.info.features["label"].names == sorted(CLASSES)
  assert builder.info.metadata["ignored_files"] == 4  # the notes; hidden files unseen
  train, val = _records(name, "train", data_dir), _records(name, "validation", data_dir)
  assert len(train) == 16 and len(val) == 8  # round(0.25 × 6) = 2 of each class
  for r in train + val:
    key = _key(r)
    assert r["label"] == sorted(CLASSES).index(key.split("/")[0]), key
    assert r["image"].dtype == np.uint8 and r["image"].shape == (20, 24, 3)
  # Every file once, in one split; the pixels are the file's own.
  keys = sorted(_key(r) for r in train + val)
  assert keys == sorted(f"{c}/{i}.{'jpg' if i % 2 else 'png'}" for c in CLASSES
                        for i in range(6))
  png = next(r for r in val + train if _key(r).endswith(".png"))
  want = np.asarray(Image.open(os.path.join(root, _key(png))))
  np.testing.assert_array_equal(png["image"], np.repeat(want[..., None], 3, -1))
  # The split is the seed's: the same for the same seed, whatever the order files
  # were written in; another seed gives another one.
  listing = image_folder.list_folder(root)
  again = _folder(tmp_path / "again", seed=1)  # other pixels, the same names
  assert (image_folder.split_indices(image_folder.list_folder(again), 0.25, 3)
          == image_folder.split_indices(listing, 0.25, 3))
  chosen = {listing.files[i] for i in image_folder.split_indices(listing, 0.25, 3)["validation"]}
  assert chosen == {_key(r) for r in val}
  other = image_folder.split_indices(listing, 0.25, 4)["validation"]
  assert {listing.files[i] for i in other} != chosen
  # Preparing again is a no-op; with another split it is refused, naming the fix.
  prepare.prepare(name, data_dir, validation_fraction=0.25, split_seed=3)
  with pytest.raises(ValueError, match="delete that folder"):
    prepare.prepare(name, data_dir, validation_fraction=0.5, split_seed=3)


def test_a_flat_folder_is_unlabelled_and_a_bad_file_is_counted_and_named(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(10):
    _write(str(tmp_path / "flat" / f"img{i}.webp"), rng)
  (tmp_path / "flat" / "img3.webp").write_bytes(b"RIFF but not an image")
  (tmp_path / "flat" / "readme.md").write_text("hello")
  name, data_dir = f"folder:{tmp_path / 'flat'}", str(tmp_path / "tfds")
  prepare.prepare(name, data_dir, validation_fraction=0.2)
  features = sources.get_builder(name, data_dir).info.features
  assert "label" not in features
  src = sources.open_split(name, "train", data_dir)
  val = sources.open_split(name, "validation", data_dir)
  assert len(src) == 8 and len(val) == 2
  names = [_key(src[i]) for i in range(len(src))] + [_key(val[i]) for i in range(2)]
  bad = src.log.bad or val.log.bad
  assert list(bad.values())[0][0] == "img3.webp" and "img3.webp" not in names
  assert src.log.count + val.log.count == 1
  strict = sources.open_split(name, "train" if src.log.count else "validation", data_dir,
                              max_bad_images=0)
  with pytest.raises(images.TooManyBadImagesError, match="img3.webp"):
    [strict[i] for i in range(len(strict))]


def test_folders_that_cannot_be_read_are_refused_with_the_fix(tmp_path):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    prepare.prepare(f"folder:{tmp_path / 'nowhere'}", data_dir)
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "a.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="no image"):
    prepare.prepare(f"folder:{tmp_path / 'notes'}", data_dir)
  _folder(tmp_path / "mixed", per_class=2, classes=("a", "b"))
  _write(str(tmp_path / "mixed" / "stray.jpg"), np.random.default_rng(0))
  with pytest.raises(ValueError, match="move the images"):
    prepare.prepare(f"folder:{tmp_path / 'mixed'}", data_dir)
  with pytest.raises(sources.DatasetMissingError, match="--dataset=folder:"):
    sources.get_builder(f"folder:{tmp_path / 'pets'}", data_dir)
