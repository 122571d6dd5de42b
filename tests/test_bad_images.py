"""Images that are damaged, in unusual modes or smaller than the view.

A small dataset is built on disk the way ImageNet-C's release is read
(``imagenet_c`` builder: files stored as their bytes, unchecked), each file in
its own class folder so that a label names its file; it holds real JPEG / PNG
files in every mode a dataset can bring, a truncated JPEG, garbage and an
empty file. The decoded pixels are compared with independent conversions;
the skipping with its count, log, limit, full batches and determinism.
"""
import io
import json
import logging
import os
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from attn_contrastive import config as config_lib
from attn_contrastive.data import augment, images, pipeline

# Its tests share a costly module fixture: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("test_bad_images")

DATASET = "imagenet_c/gaussian_noise_3"
RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (24, 18), dtype=np.uint8)
RGBA = RNG.integers(0, 256, (16, 20, 4), dtype=np.uint8)
CMYK = RNG.integers(0, 256, (20, 20, 4), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (12, 16), dtype=np.uint16)
RGB16 = RNG.integers(0, 65536, (14, 10, 3), dtype=np.uint16)
BAD = ("truncated.JPEG", "garbage.JPEG", "empty.JPEG")


def _pil_bytes(array, mode, fmt, **kwargs) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array, mode).save(out, fmt, **kwargs)
  return out.getvalue()


def _truncated_jpeg() -> bytes:
  noise = np.random.default_rng(3).integers(0, 256, (96, 96, 3), dtype=np.uint8)
  data = _pil_bytes(noise, "RGB", "JPEG", quality=90)
  return data[:len(data) // 2]


def _palette_png() -> bytes:
  img = Image.fromarray(RGB).quantize(colors=16)
  img.info["transparency"] = 0
  out = io.BytesIO()
  img.save(out, "PNG", transparency=0)
  return out.getvalue()


def _files() -> dict[str, bytes]:
  """Every file of the fixture dataset (names end in .JPEG, as ImageNet's do)."""
  return {
      "rgb.JPEG": _pil_bytes(RGB, "RGB", "JPEG", quality=95),
      "grey.JPEG": _pil_bytes(GREY, "L", "JPEG", quality=95),
      "grey_png.JPEG": _pil_bytes(GREY, "L", "PNG"),
      "rgba.JPEG": _pil_bytes(RGBA, "RGBA", "PNG"),
      "cmyk.JPEG": _pil_bytes(CMYK, "CMYK", "JPEG", quality=95),
      "grey16.JPEG": _pil_bytes(GREY16, None, "PNG"),  # mode I;16
      "rgb16.JPEG": cv2.imencode(".png", RGB16[..., ::-1])[1].tobytes(),
      "palette.JPEG": _palette_png(),
      "truncated.JPEG": _truncated_jpeg(),
      "garbage.JPEG": b"not an image at all" * 10,
      "empty.JPEG": b"",
  }


def _expected(name: str, data: bytes) -> np.ndarray:
  """Each good file's RGB pixels, from the source array or an independent conversion."""
  decoded = Image.open(io.BytesIO(data))
  if name == "cmyk.JPEG":  # Pillow's formula, applied here to the decoded CMYK samples
    c = np.asarray(decoded).astype(np.float64)
    return np.round((255 - c[..., :3]) * (255 - c[..., 3:]) / 255).astype(np.uint8)
  return {
      "rgb.JPEG": lambda: np.asarray(decoded.convert("RGB")),
      "grey.JPEG": lambda: np.repeat(np.asarray(decoded)[..., None], 3, -1),
      "grey_png.JPEG": lambda: np.repeat(GREY[..., None], 3, -1),
      "rgba.JPEG": lambda: RGBA[..., :3],
      "grey16.JPEG": lambda: np.repeat((GREY16 >> 8).astype(np.uint8)[..., None], 3, -1),
      "rgb16.JPEG": lambda: (RGB16 >> 8).astype(np.uint8),
      "palette.JPEG": lambda: np.asarray(decoded.convert("RGB")),
  }[name]()


# ---------------------------------------------------------------------------
# Decoding one file.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in _files() if n not in BAD])
def test_decode_gives_uint8_rgb_with_the_right_values(name):
  data = _files()[name]
  out = images.decode(data, name)
  want = _expected(name, data)
  assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
  assert out.shape == want.shape
  tolerance = 1 if name == "cmyk.JPEG" else 0  # Pillow rounds its CMYK product in integers
  assert np.abs(out.astype(int) - want.astype(int)).max() <= tolerance


def test_sequential_jpegs_take_libjpeg_turbo_and_give_pillows_pixels(monkeypatch):
  """Baseline JPEGs (colour 4:2:0 at odd sizes, grey) are decoded by libjpeg-turbo
  directly, bit for bit as Pillow decodes them; progressive, CMYK and PNG files
  are not, nor is anything libjpeg-turbo refuses (Pillow then decides)."""
  texture = cv2.resize(RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8), (53, 37),
                       interpolation=cv2.INTER_CUBIC)
  files = {"colour": _pil_bytes(texture, "RGB", "JPEG", quality=92, subsampling=2),
           "grey": _files()["grey.JPEG"],
           "progressive": _pil_bytes(texture, "RGB", "JPEG", quality=92, progressive=True)}
  used = []
  turbo = images._decode_turbo
  monkeypatch.setattr(images, "_decode_turbo", lambda data: used.append(data) or turbo(data))
  for name, data in files.items():
    pillow = Image.open(io.BytesIO(data))
    want = np.asarray(pillow.convert("RGB"))
    np.testing.assert_array_equal(images.decode(data, name), want, err_msg=name)
  assert used == [files["colour"], files["grey"]]
  for name in ("cmyk.JPEG", "grey_png.JPEG", "rgb16.JPEG"):
    assert not images.is_sequential_jpeg(_files()[name]), name
  # A truncated baseline JPEG reaches libjpeg-turbo, which refuses it; so does Pillow.
  assert images.is_sequential_jpeg(_files()["truncated.JPEG"])
  with pytest.raises(images.BadImageError, match="truncated"):
    images.decode(_files()["truncated.JPEG"], "truncated.JPEG")
  # Whatever libjpeg-turbo refuses goes to Pillow, which decodes it if it can.
  monkeypatch.setattr(images, "_decode_turbo", lambda data: (_ for _ in ()).throw(
      ValueError("refused")))
  np.testing.assert_array_equal(images.decode(files["colour"]),
                                np.asarray(Image.open(io.BytesIO(files["colour"]))))


def test_sixteen_bit_is_scaled_not_clipped():
  # Pillow's own convert() clips 16-bit grey at 255: nearly every pixel white.
  data = _files()["grey16.JPEG"]
  clipped = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  assert (clipped == 255).mean() > 0.9
  out = images.decode(data)
  assert out.max() == GREY16.max() >> 8 and out.min() == GREY16.min() >> 8
  # tfds's NumPy decoder would have kept the low byte instead.
  assert not np.array_equal(out[..., 0], (GREY16 & 255).astype(np.uint8))


@pytest.mark.parametrize("name", BAD)
def test_undecodable_files_raise_naming_the_file(name):
  with pytest.raises(images.BadImageError, match=name) as info:
    images.decode(_files()[name], name)
  assert info.value.name == name and info.value.reason


# ---------------------------------------------------------------------------
# A dataset on disk with bad files.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """The fixture files prepared as a tfds array_record dataset; returns (data_dir, labels)."""
  from attn_contrastive.data import imagenet_c_release, prepare
  root = tmp_path_factory.mktemp("bad_images")
  wnids = imagenet_c_release.imagenet_label_names()
  labels = {}
  for k, (name, data) in enumerate(_files().items()):
    folder = root / "manual" / "gaussian_noise" / "3" / wnids[k]
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    labels[name] = k
  prepare.prepare(DATASET, str(root / "data"), manual_dir=str(root / "manual"))
  return str(root / "data"), labels


def _open(dataset, max_bad_images=100):
  from attn_contrastive.data import sources
  return sources.open_split(DATASET, "validation", dataset[0], max_bad_images=max_bad_images)


def _name(record) -> str:
  return images.record_name(record, -1)


def _raw_names(source) -> list[str]:
  """The stored order of the records' file names (read without decoding)."""
  return [_name(source.source.source[i]) for i in range(len(source))]


def test_the_split_decodes_every_good_file_and_replaces_the_bad(dataset, caplog):
  source = _open(dataset)
  names = _raw_names(source)
  files = _files()
  with caplog.at_level(logging.WARNING):
    records = [source[i] for i in range(len(source))]
  for i, (name, record) in enumerate(zip(names, records)):
    if name in BAD:  # the next good record in stored order stands in, whole
      j = next((i + k) % len(names) for k in range(len(names))
               if names[(i + k) % len(names)] not in BAD)
      assert _name(record) == names[j] and record["label"] == records[j]["label"]
      np.testing.assert_array_equal(record["image"], records[j]["image"])
      continue
    assert _name(record) == name and record["label"] == dataset[1][name]
    want = _expected(name, files[name])
    assert record["image"].dtype == np.uint8 and record["image"].shape == want.shape
    assert np.abs(record["image"].astype(int) - want.astype(int)).max() <= 1
  assert source.log.count == 3
  assert sorted(name for name, _ in source.log.bad.values()) == sorted(BAD)
  for name in BAD:  # one warning per bad file, naming it and the limit
    lines = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(lines) == 1 and "data.max_bad_images=100" in lines[0]
  for i in range(len(source)):  # met again (a second epoch): neither logged nor counted
    source[i]
  assert source.log.count == 3
  copy = pickle.loads(pickle.dumps(source))  # as grain's worker processes receive it
  assert copy.log.count == 3
  for i in range(len(source)):
    np.testing.assert_array_equal(copy[i]["image"], records[i]["image"])
  err = pickle.loads(pickle.dumps(images.BadImageError("x.JPEG", "truncated")))
  assert (err.name, err.reason) == ("x.JPEG", "truncated")


def test_past_the_limit_the_read_stops_naming_files_count_and_key(dataset):
  source = _open(dataset, max_bad_images=2)
  with pytest.raises(images.TooManyBadImagesError) as info:
    for i in range(len(source)):
      source[i]
  message = str(info.value)
  assert "3 records" in message and "data.max_bad_images=2" in message
  assert all(name in message for name in BAD)
  assert "--config.data.max_bad_images=" in message


def _batches(source, n, state=None):
  aug = config_lib.base_config().aug
  it = pipeline.train_iterator(source, pipeline.SupervisedView(32, aug), seed=3,
                               global_batch=4, num_threads=2, prefetch=2)
  if state is not None:
    it.set_state(state)
  return it, [next(it) for _ in range(n)]


def test_training_batches_stay_full_deterministic_and_resumable(dataset):
  source = _open(dataset)
  bad_labels = {dataset[1][n] for n in BAD}
  good_labels = set(dataset[1].values()) - bad_labels
  it, first = _batches(source, 6)
  seen = []
  for batch in first:
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4,)
    seen.extend(batch["label"].tolist())
  assert not set(seen) & bad_labels and set(seen) == good_labels
  _, again = _batches(_open(dataset), 6)  # another run: the same batches
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # Resume from the state after two batches: the same next batches.
  it, head = _batches(_open(dataset), 2)
  _, resumed = _batches(_open(dataset), 4, state=it.get_state())
  for a, b in zip(first[2:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_the_limit_error_comes_out_of_the_training_iterator(dataset):
  with pytest.raises(images.TooManyBadImagesError, match="data.max_bad_images=0"):
    _batches(_open(dataset, max_bad_images=0), 6)


def test_features_keep_each_image_with_its_own_label(dataset):
  import jax.numpy as jnp
  import ml_collections
  from attn_contrastive.evaluators import features
  source = _open(dataset)
  view = pipeline.EvalView(16)
  cfg = ml_collections.ConfigDict(dict(batch_size=8, max_examples=-1, num_threads=2))
  embed = lambda state, x: jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # noqa: E731
  feats, labels = features.extract(embed, None, source, view, cfg)
  assert feats.shape == (len(source), 3) and labels.shape == (len(source),)
  for i in range(len(source)):
    ex = view(source[i])
    assert labels[i] == ex["label"]
    np.testing.assert_allclose(feats[i], ex["image"].reshape(-1, 3).mean(0), rtol=1e-5)


def test_label_writes_one_map_per_key_and_the_join_skips_with_its_image(dataset, tmp_path):
  from attn_contrastive.data import attention_maps as am
  from attn_contrastive.models.teacher import teacher_from_config
  from attn_contrastive.tasks import label
  from helpers import filled_variables, tiny_label_config
  c = tiny_label_config(batch_size=4)
  model = teacher_from_config(c.teacher.model)
  teacher = (model, filled_variables(model, (1, 16, 16, 3)))
  source = _open(dataset)
  label.write_maps(c, str(tmp_path), teacher=teacher, source=source)
  names = _raw_names(source)
  maps = am.AttentionMapSource(str(tmp_path))
  assert [maps[i]["file_name"] for i in range(len(maps))] == names  # every key once, in order
  for i, name in enumerate(names):
    assert (maps[i]["attention_map"].max() == 0) == (name in BAD)
  assert source.log.count == 3
  # results.json counts them, by split, with their names in stored order.
  with open(tmp_path / "results.json") as f:
    counted = json.load(f)["bad_images"]
  assert counted == {f"{DATASET}/validation": {
      "count": 3, "files": [n for n in names if n in BAD]}}
  joined = am.with_attention_maps(source, str(tmp_path))
  for i, name in enumerate(names):
    record = joined[i]  # keys match: a bad record is replaced with its map
    j = names.index(_name(record))
    assert (j == i) == (name not in BAD)
    np.testing.assert_array_equal(record["attention_map"], maps[j]["attention_map"])


# ---------------------------------------------------------------------------
# Images smaller than the view.
# ---------------------------------------------------------------------------

H, W, SLOPE = 20, 30, 8  # a horizontal ramp: pixel column c holds SLOPE * c


def _ramp() -> np.ndarray:
  return np.broadcast_to((SLOPE * np.arange(W, dtype=np.uint8))[None, :, None],
                         (H, W, 3)).copy()


def _ramp_samples(x0: float, width: float, out: int, flip: bool = False) -> np.ndarray:
  """Bilinear samples of the ramp at the output's pixel centres over [x0, x0 + width)."""
  u = x0 + (np.arange(out) + 0.5) * width / out - 0.5  # in pixel-centre coordinates
  values = SLOPE * np.clip(u, 0, W - 1)  # edge pixels replicated past the border
  return values[::-1] if flip else values


def test_the_evaluation_view_upscales_a_small_image_correctly():
  out = pipeline.EvalView(224)({"image": _ramp(), "label": 0})["image"]
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  side = 0.875 * min(H, W)  # resize the short side, centre-crop 87.5% of it
  want = _ramp_samples((W - side) / 2, side, 224)
  assert np.abs(out.astype(float) - want[None, :, None]).max() <= 1.0


@pytest.mark.parametrize("seed", range(4))
def test_the_random_resized_crop_upscales_a_small_image_correctly(seed):
  aug = config_lib.base_config().aug
  out = pipeline.SupervisedView(224, aug)({"image": _ramp(), "label": 0},
                                          np.random.default_rng(seed))["image"]
  rng = np.random.default_rng(seed)  # the view's own draws, replayed: box, then flip
  box = augment.sample_crop_box(rng, H, W, (aug.area_min, 1.0))
  flip = bool(rng.random() < 0.5)
  want = _ramp_samples(box.x0 * W, box.width * W, 224, flip)
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(float) - want[None, :, None]).max() <= 1.0


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (20, 30)])
def test_tiny_images_give_full_views_of_their_colour(shape):
  image = np.empty((*shape, 3), np.uint8)
  image[:] = (12, 140, 250)
  aug = config_lib.base_config().aug
  for view in (pipeline.EvalView(64)({"image": image, "label": 0})["image"],
               pipeline.SupervisedView(64, aug)({"image": image, "label": 0},
                                                np.random.default_rng(0))["image"]):
    assert view.shape == (64, 64, 3)
    assert (view == np.array([12, 140, 250], np.uint8)).all()
  grey = images.decode(_pil_bytes(np.full(shape, 77, np.uint8), "L", "PNG"))
  view = pipeline.EvalView(64)({"image": grey, "label": 0})["image"]
  assert (view == 77).all()


# ---------------------------------------------------------------------------
# The limit in the configs.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["contrastive.py", "supervised.py", "teacher.py", "label.py",
                                  "linear_eval.py", "retrieval.py", "robustness.py",
                                  "alignment.py"])
def test_every_stage_has_the_limit_and_a_negative_one_is_refused(name):
  import os
  from attn_contrastive import config_checks
  c = config_lib.load_config_file(os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", name))
  assert c.data.max_bad_images == images.DEFAULT_MAX_BAD_IMAGES
  assert not any("max_bad_images" in p for p in config_checks.problems(c))
  c.data.max_bad_images = -1
  assert any(p.startswith("data.max_bad_images=-1: must be") for p in config_checks.problems(c))


def test_raising_the_limit_does_not_block_a_resume():
  import json
  from attn_contrastive.train import loop
  c = config_lib.base_config()
  saved = json.loads(c.to_json())
  c.data.max_bad_images = 1000  # what the error past the limit asks for
  assert loop.config_changes(saved, c) == []


def test_an_evaluation_counts_the_bad_images_of_the_splits_it_read(dataset):
  from attn_contrastive.evaluators import results
  from attn_contrastive.tasks import evaluation
  source = _open(dataset)
  ev = evaluation.Evaluation(config=None, workdir="", run=None, mesh=None,
                             splits={"validation": source})
  split = ev.split("validation")
  for i in range(len(split)):
    split[i]
  names = _raw_names(source)
  assert results.bad_images(ev.bad_image_logs) == {f"{DATASET}/validation": {
      "count": 3, "files": [n for n in names if n in BAD]}}
  assert results.bad_images([]) == {}


def test_a_training_split_counts_bad_records_over_processes_and_workers(tmp_path,
                                                                      monkeypatch):
  """Each copy of the log (a grain worker's is a pickled one, in another process)
  records what it met; the run's count merges them, a record met by two copies once."""
  log = images.BadImageLog("x/train")
  log.record_dir = str(tmp_path / "bad_images")
  worker = pickle.loads(pickle.dumps(log))
  log.add(4, images.BadImageError("d.png", "empty"))
  pid = os.getpid()
  monkeypatch.setattr(images.os, "getpid", lambda: pid + 1)  # the worker's process
  worker.add(1, images.BadImageError("b.png", "garbage"))
  worker.add(4, images.BadImageError("d.png", "empty"))
  assert len(os.listdir(tmp_path / "bad_images")) == 2
  assert images.recorded(str(tmp_path / "bad_images")) == {
      "x/train": {"count": 2, "files": ["b.png", "d.png"]}}
  assert images.recorded(str(tmp_path / "none")) == {}


@pytest.mark.parametrize("fault", ["truncated", "bit-flipped"])
def test_a_damaged_array_record_file_stops_the_read_naming_it_and_the_fix(dataset, tmp_path,
                                                                          fault):
  import glob
  import shutil
  from attn_contrastive.data import sources
  data_dir = str(tmp_path / "data")
  shutil.copytree(dataset[0], data_dir)
  [path] = glob.glob(os.path.join(data_dir, "**", "*validation.array_record*"),
                     recursive=True)
  with open(path, "rb") as f:
    data = bytearray(f.read())
  if fault == "truncated":
    data = data[:len(data) // 2]
  else:  # a bit in every kilobyte of the records (not in the file's padding)
    for k in range(200, 8000, 997):
      data[k] ^= 0x10
  with open(path, "wb") as f:
    f.write(bytes(data))
  source = sources.open_split(DATASET, "validation", data_dir)
  with pytest.raises(images.DataFileError) as stopped:
    for i in range(len(source)):
      source[i]
  message = str(stopped.value)
  assert f"in {path}," in message and "truncated or damaged" in message
  assert (f"python -m attn_contrastive.data.prepare --dataset={DATASET} "
          f"--data_dir={data_dir}") in message
  assert source.log.count <= len(BAD)  # not skipped as bad images
