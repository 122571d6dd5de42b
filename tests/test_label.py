"""The label task and the attention-map dataset: resume, alignment, key checks."""
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_contrastive import config as config_lib
from attn_contrastive.data import attention_maps as am
from attn_contrastive.data import canvases
from attn_contrastive.models.forward import normalize_images
from attn_contrastive.models.teacher import teacher_from_config
from attn_contrastive.tasks import label
from attn_contrastive.train import step as step_lib
from fakes import Permuted, Split, file_names, human_squares, random_images
from helpers import TINY_MODEL, bilinear, filled_variables, standardise, tiny_label_config

# Its tests share a costly module fixture: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("test_label")


def _images(n=20):
  """An in-memory image source with keys: random 20-px images."""
  return random_images(n, classes=3, keys=True)


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config():
  return tiny_label_config()


@pytest.fixture(scope="module")
def teacher():
  c = _config()
  model = teacher_from_config(c.teacher.model)
  return model, filled_variables(model, (1, 16, 16, 3))


def _files(d):
  out = {}
  for i in range(3):
    with np.load(am.shard_path(str(d), i, 3)) as z:
      out[i] = (z["maps"], z["keys"])
  return out


def test_written_maps_are_the_teachers_density_resized_and_scaled(tmp_path, teacher):
  """Each written map against an independent chain: the teacher on one image
  (``model.apply``, no mesh), the exponentiated log-density resized by Pillow's
  antialiased bilinear filter, scaled so that its peak is 255, rounded.

  The two chains round floats differently (about 1e-6 relative), which can move
  a value across a rounding boundary only where 255·d/peak lies within 1e-3 of
  a half: there one level apart is allowed, elsewhere the bytes are equal.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  model, variables = teacher
  c = _config()
  size, map_size = c.teacher.data.image_size, c.label.map_size
  rng = np.random.default_rng(7)
  src = Split(image=rng.integers(0, 256, (12, size, size, 3), dtype=np.uint8),  # input size
              file_name=file_names(12))
  label.write_maps(c, str(tmp_path), teacher=teacher, source=src)
  written = am.AttentionMapSource(str(tmp_path))
  apply = jax.jit(lambda x: model.apply(variables, x, train=False)["log_density"])
  for i in range(len(src)):
    log_density = np.asarray(apply(normalize_images(src.images[i:i + 1])))[0]
    density = np.exp(log_density.astype(np.float64)).astype(np.float32)
    small = np.asarray(Image.fromarray(density, mode="F").resize((map_size, map_size),
                                                                 Image.BILINEAR), np.float64)
    scaled = 255.0 * np.maximum(small, 0) / small.max()
    want = np.round(scaled)
    got = written[i]["attention_map"].astype(np.float64)
    assert written[i]["file_name"] == f"img_{i:03d}.png" and got.shape == want.shape
    near_half = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-3
    assert np.all(np.abs(got - want) <= near_half), (i, np.abs(got - want).max())


def test_resumed_run_matches_uninterrupted(tmp_path, teacher):
  c, src = _config(), _images()
  label.write_maps(c, str(tmp_path / "straight"), teacher=teacher, source=src)
  killed = str(tmp_path / "killed")
  r = label.write_maps(c, killed, teacher=teacher, source=src, stop_after_shards=1)
  assert r["shards_written"] == 1
  with pytest.raises(FileNotFoundError, match="incomplete"):
    am.AttentionMapSource(killed)
  r = label.write_maps(c, killed, teacher=teacher, source=src)
  assert r["shards_written"] == 2  # the finished shard is not redone
  assert (r["maps"], r["shards"]) == (len(src), 3)
  a, b = _files(tmp_path / "straight"), _files(killed)
  for i in range(3):
    np.testing.assert_array_equal(a[i][0], b[i][0])
    np.testing.assert_array_equal(a[i][1], b[i][1])
  maps = am.AttentionMapSource(killed, "salient_objects/classification", "train")
  assert len(maps) == 20
  m = maps[13]
  assert m["attention_map"].shape == (8, 8) and m["attention_map"].dtype == np.uint8
  assert m["attention_map"].max() == 255 and m["file_name"] == "img_013.png"
  joined = am.with_attention_maps(src, killed, dataset="salient_objects/classification",
                                  split="train")
  rec = joined[13]
  np.testing.assert_array_equal(rec["attention_map"], m["attention_map"])
  assert rec["label"] == 13 % 3
  with pytest.raises(ValueError, match="split 'train', not 'validation'"):
    am.AttentionMapSource(killed, split="validation")
  with pytest.raises(ValueError, match="made differently"):
    c2 = _config()
    c2.label.map_size = 4
    label.write_maps(c2, killed, teacher=teacher, source=src)


def test_rerun_redoes_a_broken_shard_and_counts_the_work(tmp_path, teacher):
  """A truncated shard is refused by the reader (naming it) and redone by the
  label task's rerun, which leaves the whole shards alone; ``results.json``
  counts the run's shards and images (summed over processes: one here)."""
  import json
  c, src, d = _config(), _images(), str(tmp_path)
  r = label.write_maps(c, d, teacher=teacher, source=src)
  assert (r["shards_written"], r["images_labelled"], r["processes"]) == (3, 20, 1)
  with open(os.path.join(d, "results.json")) as f:
    assert json.load(f) == r
  before = _files(tmp_path)
  path = am.shard_path(d, 1, 3)
  whole = os.path.getmtime(am.shard_path(d, 0, 3))
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) - 100])
  with pytest.raises(am.ShardError, match=f"{path}.*re-run the label task"):
    am.AttentionMapSource(d)
  r = label.write_maps(c, d, teacher=teacher, source=src)
  start, stop = am.shard_ranges(20, 3)[1]
  assert (r["shards_written"], r["images_labelled"]) == (1, stop - start)
  assert os.path.getmtime(am.shard_path(d, 0, 3)) == whole
  after = _files(tmp_path)
  for i in range(3):
    np.testing.assert_array_equal(before[i][0], after[i][0])
    np.testing.assert_array_equal(before[i][1], after[i][1])
  assert len(am.AttentionMapSource(d)) == 20


def test_shuffled_maps_fail_the_key_check(tmp_path, teacher):
  c, src = _config(), _images()
  label.write_maps(c, str(tmp_path), teacher=teacher, source=src)
  perm = np.random.default_rng(0).permutation(20)
  joined = am.JoinedSource(src, Permuted(am.AttentionMapSource(str(tmp_path)), perm))
  i = int(np.flatnonzero(perm != np.arange(20))[0])
  with pytest.raises(KeyError, match=f"img_{i:03d}.png.*img_{perm[i]:03d}.png"):
    joined[i]


def _np_head_density(logits):
  """The heads' maps as the alignment task defines them, in NumPy: each head's
  spatial softmax, upsampled to the finest head and renormalised, averaged."""
  h, w = max(v.shape[1] for v in logits.values()), max(v.shape[2] for v in logits.values())
  total = 0.0
  for v in logits.values():
    z = np.asarray(v, np.float64).reshape(len(v), -1)
    p = np.exp(z - z.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).reshape(v.shape)
    up = np.stack([bilinear(m, (h, w)) for m in p])
    total = total + up / up.sum((1, 2), keepdims=True)
  return total / len(logits)


def _check_alignment(run_dir, out_dir, model, c):
  """The alignment task on the run equals NSS/CC computed here from its heads."""
  from attn_contrastive.saliency import metrics
  from attn_contrastive.tasks import alignment
  from attn_contrastive.train import checkpoint as ckpt_lib
  ac = config_lib.load_config_file(os.path.join(CONFIGS, "alignment.py"))
  ac.run_dir = run_dir
  ac.eval.update(dict(batch_size=8, num_threads=1, shuffle_pool=6, shuffle_others=2))
  human = human_squares()
  r = alignment.evaluate(ac, out_dir, splits={"validation": human}, dataset_version="test")
  # A SimCLR run without a classifier: the default maps skip Grad-CAM.
  assert r["alignment/kinds"] == ["heads"] and r["alignment/primary"] == "heads"
  assert r["alignment/stages"] == {"heads": ["conv3", "conv4"]}
  assert r["alignment/classifier"] is None and "alignment/gradcam" not in r
  variables = ckpt_lib.load_variables(run_dir)
  images = human.images
  # One program, not the network op by op (each operation would compile on its own).
  out = jax.jit(lambda v, x: model.apply(v, normalize_images(x), train=False))(variables, images)
  dens = _np_head_density(out["attention_logits"])
  assert dens.shape == (6, 8, 8)
  np.testing.assert_allclose(alignment.model_density(out, ("conv3", "conv4"), "heads"), dens,
                             rtol=1e-4, atol=1e-7)
  nss, cc = [], []
  for d, h in zip(dens, human):
    gt = h["saliency_map"][..., 0].astype(np.float64)
    pred = bilinear(d, gt.shape)
    nss.append(metrics.nss(pred, metrics.fixations_to_map(h["fixations"], 16, 16)))
    cc.append(metrics.cc(pred, gt))
  model_scores = r["alignment/model"]
  np.testing.assert_allclose(model_scores["nss"], np.mean(nss), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(model_scores["cc"], np.mean(cc), rtol=1e-4, atol=1e-5)
  assert r["alignment/heads"] == model_scores
  assert r["alignment/center_bias"]["nss"] != model_scores["nss"]
  ac.alignment.maps = ("activations",)
  r = alignment.evaluate(ac, out_dir, splits={"validation": human}, dataset_version="test")
  assert r["alignment/primary"] == "activations"
  assert np.isfinite(r["alignment/model"]["cc"])


def _np_head_nss(logits, maps, hw):
  """The heads' NSS metric written out: each head map (the spatial softmax of its
  logits) z-scored over its pixels and weighted by the view's teacher map brought to
  the head's resolution (Pillow's antialiased bilinear) as a fixation density, averaged
  over the batch."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  z = np.asarray(logits, np.float64).reshape(len(logits), -1)
  m = np.exp(z - z.max(1, keepdims=True))
  m /= m.sum(1, keepdims=True)
  zm = (m - m.mean(1, keepdims=True)) / m.std(1, keepdims=True)
  w = np.stack([np.asarray(Image.fromarray(t, mode="F").resize(hw[::-1], Image.BILINEAR),
                           np.float64).ravel() for t in np.asarray(maps, np.float32)])
  return float(np.mean(np.sum(w * zm, 1) / w.sum(1)))


def _recording_steps(monkeypatch):
  """Records what each jitted train step is given (on the host, before the step
  donates the state) and the metrics it returns."""
  seen, jit_step = [], step_lib.jit_train_step

  def recording_jit_step(train_step, mesh, **kwargs):
    step_fn = jit_step(train_step, mesh, **kwargs)

    def step(state, batch, rng, *frozen):
      given = jax.device_get((state.params, state.batch_stats, batch))
      state, metrics = step_fn(state, batch, rng, *frozen)
      seen.append((*given, jax.device_get(metrics)))
      return state, metrics

    return step

  monkeypatch.setattr(step_lib, "jit_train_step", recording_jit_step)
  return seen


def test_pretrain_on_labelled_maps_runs(tmp_path, teacher, monkeypatch):
  """Label a toy source, two fused SimCLR + L_attn steps on the join, then the
  alignment of the run's attention heads with human maps."""
  from attn_contrastive.data import pipeline
  from attn_contrastive.models.simclr import simclr_from_config
  from attn_contrastive.tasks import pretrain
  from attn_contrastive.train import loop
  src = _images(32)
  label.write_maps(_config(), str(tmp_path / "maps"), teacher=teacher, source=src)
  c = config_lib.load_config_file(os.path.join(CONFIGS, "contrastive_attn_teacher.py"))
  assert c.attention.enabled and c.model.depth == 18
  c.data.image_size = 16
  c.model.update(TINY_MODEL)
  c.input.update(dict(global_batch_size=16, num_threads=1, prefetch=1))
  c.train.update(dict(num_steps=2, log_every=1, checkpoint_every=2, async_checkpoint=False))
  c.attention.update(dict(width=4, map_size=8))
  model = simclr_from_config(c.model, c.attention)
  task = loop.TaskSpec(
      model=model, loss_fn=pretrain.make_loss_fn(model, c),
      train_source=am.with_attention_maps(src, str(tmp_path / "maps")),
      train_transform=pipeline.ContrastiveViews(16, c.aug, c.attention.map_size),
      sample_input=jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  steps = _recording_steps(monkeypatch)
  _, metrics = loop.run(c, str(tmp_path / "run"), task)
  assert np.isfinite(metrics["loss"]) and len(steps) == 2
  # The last step's NSS of each head against its teacher maps, recomputed from the
  # parameters and batch it was given (the forward pass in training mode, as the
  # step's). Error model: the same network's sums rounded otherwise (rtol 1e-5 on
  # the logits, as for features) move the z-scores, of order 1, by about 1e-5; NSS
  # is their weighted mean, near 0 for heads this close to their start: atol 1e-5.
  params, stats, batch, last = steps[-1]
  assert metrics["attn_nss/conv3"] == pytest.approx(float(last["attn_nss/conv3"]))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
  out = forward({"params": params, "batch_stats": stats},
                standardise(np.concatenate([batch["view1"], batch["view2"]])))
  maps = np.concatenate([batch["map1"], batch["map2"]])
  for stage, logits in out["attention_logits"].items():
    want = _np_head_nss(logits, maps, logits.shape[1:])
    np.testing.assert_allclose(metrics[f"attn_nss/{stage}"], want, rtol=1e-4, atol=1e-5,
                               err_msg=stage)
  np.testing.assert_allclose(metrics["loss"], metrics["nt_xent"] + metrics["attn_loss"],
                             rtol=1e-5)
  _check_alignment(str(tmp_path / "run"), str(tmp_path / "align"), model, c)


# Labels at the image's own shape.


class DiscDetector(nn.Module):
  """A teacher stand-in with a known, translation-equivariant response: a matched
  filter for bright discs of radius ``radius`` (the disc's mean minus the mean of
  the ring around it, zero padding), at output stride 1."""
  radius: float = 3.5
  outer: float = 5.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train
    n = int(self.outer)
    r = np.hypot(*np.mgrid[-n:n + 1, -n:n + 1])
    disc, ring = r <= self.radius, (r > self.radius) & (r <= self.outer)
    kernel = disc / disc.sum() - ring / ring.sum()
    grey = jnp.mean(x.astype(jnp.float32), -1, keepdims=True)
    logits = jax.lax.conv_general_dilated(
        grey, jnp.asarray(kernel, jnp.float32)[:, :, None, None], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))[..., 0]
    return {"logits": 4.0 * logits}


def _ellipse(hw, centre, radii):
  y, x = np.mgrid[:hw[0], :hw[1]] + 0.5
  return ((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2 <= 1


def _portraits(n=4):
  """Tall 32×24 images (aspect 0.75, ImageNet's portrait): a disc of radius 3.5 (the
  object) off-centre above, and below it an ellipse that the squash to a 24×32
  teacher input turns into that disc (vertical semi-axis 3.5 / 0.75, horizontal
  3.5 / (4/3)); the object's column moves from image to image."""
  images = []
  for i in range(n):
    image = np.zeros((32, 24, 3), np.uint8)
    col = 9 + 2 * i
    image[_ellipse((32, 24), (8, col), (3.5, 3.5))] = 255
    image[_ellipse((32, 24), (23, col), (3.5 / 0.75, 3.5 * 0.75))] = 255
    images.append(image)
  return Split(image=images, file_name=file_names(n))


def _disc_config(**label_keys):
  c = tiny_label_config(map_size=16, num_shards=1, **label_keys)
  c.teacher.data.update(dict(image_size=24, image_width=32))  # SALICON's 3:4, in small
  c.teacher.model.output_stride = 1
  return c


def _peaks(maps):
  """Each map's peak in normalised ``(y, x)`` coordinates of its image."""
  flat = maps.reshape(len(maps), -1).argmax(1)
  rows, cols = np.unravel_index(flat, maps.shape[1:])
  return (np.stack([rows, cols], 1) + 0.5) / np.array(maps.shape[1:])


def test_own_shape_puts_the_peak_on_the_object_where_squashing_moves_it(tmp_path):
  """The disc detector on portrait images: at their own shape the map's peak is on
  the disc (normalised y ≈ 8/32); squashed to the teacher's landscape input, the
  disc becomes a flat ellipse and the ellipse a disc, and the peak moves to it."""
  src, teacher = _portraits(), (DiscDetector(), {})
  found = {}
  for shape in ("own", "squashed"):
    label.write_maps(_disc_config(shape=shape), str(tmp_path / shape), teacher=teacher,
                     source=src)
    maps = np.stack([m["attention_map"] for m in am.AttentionMapSource(str(tmp_path / shape))])
    found[shape] = _peaks(maps)
  cols = (9 + 2 * np.arange(4) + 0.5) / 24
  for shape, y in (("own", 8 / 32), ("squashed", 23 / 32)):
    np.testing.assert_allclose(found[shape][:, 0], y, atol=1 / 16, err_msg=shape)
    np.testing.assert_allclose(found[shape][:, 1], cols, atol=1 / 16, err_msg=shape)
  with open(os.path.join(tmp_path, "own", am.METADATA)) as f:
    assert '"shape": "own"' in f.read()


def _alone(predict, place, image):
  """One image labelled by itself, at its own size, no canvas padding."""
  from attn_contrastive.data import augment  # pylint: disable=g-import-not-at-top
  hw, _ = canvases.own_hw(image.shape[:2], min(place.teacher_hw), place.aspects, place.step)
  one = augment.whole_image(image, hw)[None]
  return np.asarray(predict(one, np.array([hw], np.int32)))[0]


def test_padding_is_masked_a_padded_batch_gives_each_images_own_map(tmp_path):
  """Images padded within their canvas (aspects 1.25, 1.83, and 2.5 fit inside the
  2:1 canvas) or filling it, two canvases to a batch, batches padded to the devices:
  each written map equals that image labelled alone at its own size (the
  convolution's sums in another order may move a level by one)."""
  rng = np.random.default_rng(3)
  shapes = [(30, 24), (24, 44), (24, 60), (32, 24)]
  images = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in shapes]
  src = Split(image=images, file_name=file_names(len(images)))
  c = _disc_config(batch_size=2)
  model = DiscDetector()
  label.write_maps(c, str(tmp_path), teacher=(model, {}), source=src)
  written = am.AttentionMapSource(str(tmp_path))
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), ("data",))  # alone
  predict = label.make_predict(model, {}, c.label.map_size, mesh)
  place = label.placement(c)
  padded = 0
  for i, image in enumerate(images):
    canvas, hw = place(image)
    padded += canvas.shape[:2] != tuple(hw)
    got = written[i]["attention_map"].astype(int)
    want = _alone(predict, place, image).astype(int)
    assert np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.95, i
  assert padded == 3

