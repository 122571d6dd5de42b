"""folder:PATH, the user's own images: the folder → dataset conversion, and the chain
docs/own_images.md lists (prepare → label → attention-teacher pretraining → linear
evaluation → retrieval) on a folder of tiny JPEG and PNG images."""
import os

import numpy as np
import pytest
from PIL import Image

from attn_contrastive import config_checks
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
  # The evaluations that score labels refuse it before opening any run.
  from attn_contrastive import tasks
  lin = _config("linear_eval.py", name, data_dir)
  lin.run_dir = str(tmp_path / "no_run")
  with pytest.raises(ValueError, match="has no labels.*one subfolder per class"):
    tasks.entry("linear_eval")(lin, str(tmp_path / "linear"))


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


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config(file, name, data_dir, **data):
  """A documented config file's config on ``name``, its sizes made tiny."""
  from attn_contrastive import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.load_config_file(os.path.join(CONFIGS, file))
  c.data.update(dict(name=name, data_dir=data_dir, **data))
  c.eval.update(dict(batch_size=8, num_threads=1)) if "eval" in c else None
  return c


def _write_teacher(workdir, c):
  """A tiny teacher's checkpoint (filled variables, no training), as the label task
  reads it."""
  from attn_contrastive.models.teacher import teacher_from_config
  from attn_contrastive.train import checkpoint as ckpt_lib
  from helpers import filled_variables
  variables = filled_variables(teacher_from_config(c.teacher.model), (1, 16, 16, 3))
  ckpt = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  ckpt.save(1, {**variables, "step": np.int32(1)})
  ckpt.close()
  return str(workdir)


def _run(c, workdir):
  from attn_contrastive import tasks
  assert config_checks.problems(c) == []
  assert config_checks.layout_problems(c, 8, 1) == []
  return tasks.entry(c.task)(c, str(workdir))


def test_own_images_through_label_pretraining_input_and_every_evaluation(tmp_path):
  """The commands of docs/own_images.md on 24 JPEG / PNG images of 4 classes, with the
  documented configs, only sizes overridden (16-px images, the tiny ResNet, batch 8,
  two corruptions at one severity): prepare; label with a tiny teacher (the task
  itself); the attention-teacher pretraining's input built by its task (the folder's
  images joined to their maps by key, views with maps; its fused step on such a join
  is test_label's, left out here for time); linear evaluation, retrieval and
  robustness to generated corruptions (the tasks themselves) of a tiny pretraining
  run."""
  import json
  from attn_contrastive.data import attention_maps as am
  from attn_contrastive.tasks import pretrain
  from helpers import TINY_MODEL, tiny_label_config, write_run
  root = _folder(tmp_path / "photos")
  name, data_dir = f"folder:{root}", str(tmp_path / "tfds")
  prepare.prepare(name, data_dir, validation_fraction=0.25)
  train = _records(name, "train", data_dir)

  label = tiny_label_config(batch_size=8, num_shards=2, num_threads=1)
  label.data.update(dict(name=name, data_dir=data_dir))
  label.teacher_checkpoint = _write_teacher(tmp_path / "teacher", label)
  _run(label, tmp_path / "maps")
  maps = am.AttentionMapSource(str(tmp_path / "maps"), name, "train")
  assert [maps[i]["file_name"] for i in range(len(maps))] == [_key(r) for r in train]

  c = _config("contrastive_attn_teacher.py", name, data_dir, image_size=16, num_classes=4)
  c.model.update(TINY_MODEL)
  c.attention.update(dict(maps_dir=str(tmp_path / "maps"), width=4, map_size=8))
  assert config_checks.problems(c) == []
  task = pretrain.build_task(c)
  for i in (0, 7, 15):
    joined = task.train_source[i]
    assert _key(joined) == _key(train[i]) and joined["label"] == train[i]["label"]
    np.testing.assert_array_equal(joined["attention_map"], maps[i]["attention_map"])
    views = task.train_transform(joined, np.random.default_rng(i))
    assert views["view1"].shape == (16, 16, 3) and views["map1"].shape[:2] == (8, 8)

  run_dir, _, _ = write_run(tmp_path / "simclr", "pretrain")
  lin = _config("linear_eval.py", name, data_dir)
  lin.run_dir = run_dir
  lin.input.update(dict(global_batch_size=8, num_threads=1, prefetch=1))
  lin.train.update(dict(num_steps=2, async_checkpoint=False))
  _run(lin, tmp_path / "linear")
  res = json.loads((tmp_path / "linear" / "results.json").read_text())
  assert res["dataset"] == {"name": name, "splits": ["train", "validation"],
                            "version": "1.0.0"}
  assert {"linear/top1", "linear_cached/top1"} <= set(res)

  ret = _config("retrieval.py", name, data_dir)
  ret.run_dir = run_dir
  _run(ret, tmp_path / "retrieval")
  res = json.loads((tmp_path / "retrieval" / "results.json").read_text())
  assert res["retrieval/num_queries"] == 8 and res["retrieval/num_gallery"] == 16
  assert 0 < res["retrieval/map"] <= 1

  rob = _config("robustness.py", name, data_dir)
  rob.run_dir = str(tmp_path / "linear")
  rob.robustness.update(dict(corruptions=("gaussian_noise", "fog"), severities=(3,)))
  _run(rob, tmp_path / "robustness")
  res = json.loads((tmp_path / "robustness" / "results.json").read_text())
  assert set(res["robustness/ce"]) == {"gaussian_noise", "fog"}
  assert res["dataset"]["name"] == name and 0 <= res["robustness/clean_top1"] <= 1
