"""Inference on a folder (predict) and from Python (attn_contrastive.load): the files
written, their values against independent chains, the API against the command line."""
import io
import json
import os

import jax
import numpy as np
import pytest
from absl import flags
from absl import logging as absl_logging
from PIL import Image

import attn_contrastive
from attn_contrastive import predict
from attn_contrastive.data import augment, canvases, pipeline
from attn_contrastive.data import images as images_lib
from attn_contrastive.models import forward
from helpers import bilinear, standardise, tiny_config, tiny_teacher_config, write_run

# Its tests share costly module fixtures: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("test_predict")

#: The folder's images as written: a JPEG, a PNG at the teacher's input, a grey PNG (the
#: JPEG and the grey PNG share a padded canvas: two programs compile, not three).
SHAPES = {"a.jpg": (20, 28), "b.png": (16, 16), "sub/c.png": (18, 26)}


def _encoded(image: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """The user's folder: three good images, a corrupt JPEG and a note (not an image)."""
  root = tmp_path_factory.mktemp("photos")
  rng = np.random.default_rng(3)
  os.makedirs(root / "sub")
  a = rng.integers(0, 256, (*SHAPES["a.jpg"], 3), dtype=np.uint8)
  b = rng.integers(0, 256, (*SHAPES["b.png"], 3), dtype=np.uint8)
  c = rng.integers(0, 256, SHAPES["sub/c.png"], dtype=np.uint8)
  (root / "a.jpg").write_bytes(_encoded(a, "JPEG"))
  (root / "b.png").write_bytes(_encoded(b, "PNG"))
  (root / "sub" / "c.png").write_bytes(_encoded(c, "PNG"))
  (root / "broken.jpg").write_bytes(_encoded(a, "JPEG")[:200])  # truncated
  (root / "notes.txt").write_text("not an image")
  return str(root)


def _decoded(folder):
  """The good images as the readers decode them (the JPEG's own pixels, grey as RGB)."""
  return {name: predict.read_image(folder, name) for name in SHAPES}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny teacher run and a tiny SimCLR run with attention heads on conv3 and conv4."""
  root = tmp_path_factory.mktemp("runs")
  simclr = tiny_config("pretrain")
  simclr.attention.update(dict(enabled=True, width=4, map_size=8))
  return {"teacher": write_run(root / "teacher", "teacher", tiny_teacher_config()),
          "pretrain": write_run(root / "pretrain", "pretrain", simclr)}


def _command_line(run_dir: str, folder: str, out: str, *args: str) -> dict:
  """``python -m attn_contrastive.predict`` in this process: its flags parsed, its main
  run; returns the summary.json it wrote."""
  flag_values = flags.FlagValues()
  defined = predict.define_flags(flag_values)
  flag_values(["predict", f"--run={run_dir}", f"--images={folder}", f"--out={out}", *args])
  # main quietens absl for its process; this one goes on to other tests, whose caplog
  # needs absl's INFO lines: its logger's own level is put back.
  absl_logger = absl_logging.get_absl_logger()
  level = absl_logger.level
  try:
    predict.main(["predict"], defined)
  finally:
    absl_logger.setLevel(level)
  with open(os.path.join(out, "summary.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def teacher_out(tmp_path_factory, folder, runs):
  """``(summary, out)`` of the command line on the folder with the teacher run."""
  out = str(tmp_path_factory.mktemp("teacher_out"))
  return _command_line(runs["teacher"][0], folder, out, "--npy"), out


@pytest.fixture(scope="module")
def encoder_out(tmp_path_factory, folder, runs):
  """``(summary, out)`` of the command line on the folder with the SimCLR run, its
  query an image of the folder."""
  out = str(tmp_path_factory.mktemp("encoder_out"))
  query = os.path.join(folder, "b.png")
  return _command_line(runs["pretrain"][0], folder, out, f"--query={query}", "--k=2"), out


def _png(path) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(img)


_JITTED = {}


def _logits(model):
  """The teacher's logits on normalised inputs, jitted once (its eager ops would each
  compile on their own)."""
  if model not in _JITTED:
    _JITTED[model] = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
  return _JITTED[model]


def _teacher_log_density(model, variables, image: np.ndarray) -> np.ndarray:
  """The teacher's log-density of one image at its own size, written out: the image on
  its canvas, its padding zeroed after normalisation, a softmax over the image's map
  pixels, bilinear to the image's size, renormalised."""
  image_hw, canvas_hw = canvases.own_hw(image.shape[:2], 16, canvases.DEFAULT_ASPECTS, 2)
  x = np.array(standardise(canvases.on_canvas(image, image_hw, canvas_hw)[None]))
  x[:, image_hw[0]:], x[:, :, image_hw[1]:] = 0, 0
  logits = np.asarray(_logits(model)(variables, x)[0], np.float64)
  mh, mw = (-(-image_hw[0] * logits.shape[0] // canvas_hw[0]),
            -(-image_hw[1] * logits.shape[1] // canvas_hw[1]))
  part = np.exp(logits[:mh, :mw] - logits[:mh, :mw].max())
  density = bilinear(part / part.sum(), image.shape[:2])
  return np.log(density / density.sum())


def test_teacher_run_writes_a_map_and_overlay_per_good_image(folder, runs, teacher_out):
  _, model, variables = runs["teacher"]
  summary, out = teacher_out
  assert summary["images"] == 3 and summary["bad_images"] == ["broken.jpg"]
  assert summary["ignored_files"] == ["notes.txt"] and summary["task"] == "teacher"
  images = _decoded(folder)
  padded = 0
  for name, image in images.items():
    stem = os.path.splitext(name)[0]
    saved = _png(os.path.join(out, "saliency", stem + ".png"))
    log_density = np.load(os.path.join(out, "saliency", stem + ".npy"))
    assert saved.shape == SHAPES[name] and log_density.shape == SHAPES[name]
    assert _png(os.path.join(out, "overlays", stem + ".png")).shape == (*SHAPES[name], 3)
    np.testing.assert_array_equal(saved, predict.to_8bit(np.exp(log_density)))
    np.testing.assert_allclose(np.exp(log_density).sum(), 1.0, rtol=1e-5)
    want = _teacher_log_density(model, variables, image)
    np.testing.assert_allclose(np.exp(log_density), np.exp(want), rtol=1e-4, atol=1e-7)
    padded += SHAPES[name][0] != SHAPES[name][1]
  assert padded == 2  # two images reached the teacher on padded canvases
  assert not os.path.exists(os.path.join(out, "saliency", "broken.png"))


def test_the_map_of_an_unpadded_image_is_the_teachers_log_density(folder, runs):
  """At the teacher's input size, the map is forward.predict's log-density, upsampled."""
  run_dir, model, variables = runs["teacher"]
  image = _decoded(folder)["b.png"]
  got = attn_contrastive.load(run_dir).saliency([image], log=True)[0]
  log_density = jax.jit(forward.predict(model, np.float32, "log_density"))(variables,
                                                                          image[None])
  density = bilinear(np.exp(np.asarray(log_density[0], np.float64)), image.shape[:2])
  np.testing.assert_allclose(np.exp(got), density / density.sum(), rtol=1e-4, atol=1e-7)


def test_encoder_run_writes_embeddings_attention_and_neighbours(folder, runs, encoder_out):
  run_dir = runs["pretrain"][0]
  summary, out = encoder_out
  assert summary["bad_images"] == ["broken.jpg"] and summary["images"] == 3
  saved = np.load(os.path.join(out, "embeddings.npz"))
  assert list(saved["file_names"]) == list(SHAPES)
  predictor = attn_contrastive.load(run_dir)
  embed, variables = predictor.run.embedding("pooled")
  views = np.stack([pipeline.to_uint8(augment.eval_view(image, out_size=16)[0])
                    for image in _decoded(folder).values()])
  want = np.asarray(jax.jit(embed)(variables, views))
  np.testing.assert_allclose(saved["embeddings"], want, rtol=1e-5, atol=1e-6)
  neighbours = summary["neighbours"]
  assert [n["file_name"] for n in neighbours][0] == "b.png" and len(neighbours) == 2
  assert neighbours[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
  assert neighbours[0]["similarity"] >= neighbours[1]["similarity"]
  for stage in ("conv3", "conv4"):
    for name, hw in SHAPES.items():
      stem = os.path.splitext(name)[0]
      assert _png(os.path.join(out, "attention", stage, stem + ".png")).shape == hw
      assert _png(os.path.join(out, "overlays", stage, stem + ".png")).shape == (*hw, 3)


def test_the_api_equals_the_command_line(folder, runs, teacher_out, encoder_out):
  images = list(_decoded(folder).values())
  teacher_out, encoder_out = teacher_out[1], encoder_out[1]
  teacher = attn_contrastive.load(runs["teacher"][0], batch_size=4)
  for name, got in zip(SHAPES, teacher.saliency(images, log=True)):
    want = np.load(os.path.join(teacher_out, "saliency", os.path.splitext(name)[0] + ".npy"))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  encoder = attn_contrastive.load(runs["pretrain"][0], batch_size=4)
  np.testing.assert_allclose(encoder.embed(images),
                             np.load(os.path.join(encoder_out, "embeddings.npz"))["embeddings"],
                             rtol=1e-5, atol=1e-6)
  maps = encoder.attention(images)
  for stage in ("conv3", "conv4"):
    for name, m in zip(SHAPES, maps[stage]):
      assert m.shape == SHAPES[name] and m.sum() == pytest.approx(1.0, rel=1e-5)
      saved = _png(os.path.join(encoder_out, "attention", stage,
                                os.path.splitext(name)[0] + ".png"))
      np.testing.assert_array_equal(predict.to_8bit(m), saved)
  # A batch of one size is a list of images too.
  same = np.stack([images[1], images[1]])
  np.testing.assert_allclose(encoder.embed(same)[0], encoder.embed([images[1]])[0],
                             rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_refused_with_the_fix(tmp_path, folder, runs):
  teacher = attn_contrastive.load(runs["teacher"][0])
  with pytest.raises(images_lib.TooManyBadImagesError, match="broken.jpg"):
    predict.predict_folder("", folder, str(tmp_path / "out"), max_bad_images=0,
                           predictor=teacher)
  with pytest.raises(ValueError, match="uint8"):
    teacher.saliency([np.zeros((8, 8, 3), np.float32)])
  with pytest.raises(ValueError, match="H×W×3"):
    teacher.saliency([np.zeros((8, 8, 4), np.uint8)])
  with pytest.raises(ValueError, match="needs a pretrain or supervised run"):
    teacher.embed([np.zeros((8, 8, 3), np.uint8)])
  with pytest.raises(ValueError, match="needs a teacher run"):
    attn_contrastive.load(runs["pretrain"][0]).saliency([np.zeros((8, 8, 3), np.uint8)])
  with pytest.raises(FileNotFoundError, match="holds no config.json"):
    attn_contrastive.load(os.path.dirname(runs["teacher"][0]))
  plain = attn_contrastive.load(write_run(tmp_path / "plain", "pretrain")[0])
  with pytest.raises(ValueError, match="has no attention heads"):
    plain.attention([np.zeros((8, 8, 3), np.uint8)])


def test_nearest_ranks_by_cosine_similarity():
  """retrieval_metrics.nearest against the cosine similarities written out."""
  from attn_contrastive.evaluators import retrieval_metrics  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  queries, bank = rng.standard_normal((3, 5)), rng.standard_normal((7, 5))
  bank[4] = 3 * queries[1]  # the same direction, another norm
  cosine = (queries @ bank.T) / np.outer(np.linalg.norm(queries, axis=1),
                                         np.linalg.norm(bank, axis=1))
  sim, idx = retrieval_metrics.nearest(queries, bank, k=4)
  np.testing.assert_array_equal(idx, np.argsort(-cosine, axis=1)[:, :4])
  np.testing.assert_allclose(sim, np.take_along_axis(cosine, idx, 1), rtol=1e-5, atol=1e-6)
  assert idx[1, 0] == 4 and sim[1, 0] == pytest.approx(1.0, abs=1e-6)
  assert retrieval_metrics.nearest(queries, bank, k=50)[1].shape == (3, 7)
