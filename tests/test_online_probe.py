"""The pretraining monitor: the online probe leaves the encoder's training as it
was, learns by plain momentum SGD, and the kNN and attention scores agree with
NumPy; a short run writes them to results.json."""
import glob
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attn_contrastive import config as config_lib
from attn_contrastive.data import pipeline
from attn_contrastive.evaluators import attention_heads, common, features, knn
from attn_contrastive.models.attention import spatial_softmax
from attn_contrastive.models.build import build_model
from attn_contrastive.saliency import jax_metrics, metrics as np_metrics
from attn_contrastive.tasks import pretrain
from attn_contrastive.train import loop, mesh as mesh_lib, optim

from fakes import random_images
from helpers import SIZE, run_steps, tiny_config, zip_leaves


def _tiny_config(online_probe=True):
  c = tiny_config()
  c.train.update(dict(num_steps=3, checkpoint_every=100, online_probe=online_probe))
  c.eval.update(dict(batch_size=16, num_threads=1, knn_k=5, attention_examples=8,
                     attention_images=2))
  return c


def _two_steps(config, batch):
  model = build_model(config)
  # The schedule of the 3-step run below (64 examples, batch 16), so that its
  # step is this program again (one compilation, with the persistent cache).
  return run_steps(1, config, model, pretrain.make_loss_fn(model, config), batch,
                   schedule_args=(16, 3, 4))


def test_probe_leaves_the_encoder_and_heads_unchanged():
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
           for k in ("view1", "view2")}
  batch["label"] = rng.integers(0, 4, 16).astype(np.int32)
  init0, p0, s0, m0 = _two_steps(_tiny_config(online_probe=False), batch)
  init1, p1, s1, m1 = _two_steps(_tiny_config(online_probe=True), batch)
  probe0, probe1 = init1.pop("probe"), p1.pop("probe")
  assert set(s1.pop("probe")) == {"BatchNorm_0"}  # the probe's own input statistics
  for a, b in zip_leaves(init0, init1):  # same start
    np.testing.assert_array_equal(a, b)
  for a, b in zip_leaves((p0, s0), (p1, s1)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  assert max(np.abs(a - b).max() for a, b in zip_leaves(probe0, probe1)) > 1e-4
  # In evaluation mode the network needs no probe variables (alignment, linear eval).
  model = build_model(_tiny_config(online_probe=True))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       {"params": p1, "batch_stats": s1}, jnp.zeros((2, SIZE, SIZE, 3)))
  assert "probe_logits" not in out and out["embedding"].shape == (2, 8)
  np.testing.assert_allclose(m1["nt_xent"], m0["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["loss"], m1["nt_xent"] + m1["probe_loss"], rtol=1e-6)
  assert 0.0 <= m1["probe_accuracy"] <= 1.0


def test_probe_gets_no_weight_decay_and_no_trust_ratio():
  model = build_model(_tiny_config())
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, SIZE, SIZE, 3)), train=False))
  mask = optim.decay_mask(params["params"])
  for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]:
    name = jax.tree_util.keystr(path)
    assert decayed == (name.endswith("['kernel']") and not name.startswith("['probe']")), name
  # An update: the probe moves by -lr·g (then momentum), a conv kernel does not.
  cfg = config_lib.base_config().optim
  cfg.update(dict(weight_decay=0.1, momentum=0.9))
  tx = optim.make_optimizer(cfg, optax.constant_schedule(2.0))
  rng = np.random.default_rng(0)
  p = {"probe": {"kernel": rng.normal(size=(8, 4)).astype(np.float32),
                 "bias": rng.normal(size=4).astype(np.float32)},
       "encoder": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}}}
  g = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), p)
  state = tx.init(p)
  first, state = tx.update(g, state, p)
  second, _ = tx.update(g, state, p)
  for k in ("kernel", "bias"):
    np.testing.assert_allclose(first["probe"][k], -2.0 * g["probe"][k], rtol=1e-6)
    np.testing.assert_allclose(second["probe"][k], -2.0 * 1.9 * g["probe"][k], rtol=1e-6)
  conv = first["encoder"]["conv"]["kernel"]
  assert not np.allclose(conv, -2.0 * g["encoder"]["conv"]["kernel"], rtol=1e-2)


@flax.struct.dataclass
class _State:
  params: Any
  step: Any


def _pixels(images):
  return images.reshape(images.shape[0], -1).astype(np.float32) - 127.5


def _numpy_knn(queries, bank, bank_labels, k, temperature, num_classes):
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  sim = q.astype(np.float64) @ b.T.astype(np.float64)
  top = np.argsort(-sim, axis=1)[:, :k]
  votes = np.zeros((len(q), num_classes))
  for i, row in enumerate(top):
    for j in row:
      votes[i, bank_labels[j]] += np.exp(sim[i, j] / temperature)
  return votes.argmax(1)


def test_knn_evaluator_matches_numpy():
  # Random 4×4 images (their pixels are the features) with labels in [0, 4).
  bank_split = random_images(45, 4, seed=0, classes=4, random_labels=True)
  val = random_images(13, 4, seed=1, classes=4, random_labels=True)
  w = np.random.default_rng(2).normal(size=(48, 4)).astype(np.float32)
  cfg = ml_collections.ConfigDict(dict(batch_size=8, max_examples=-1, num_threads=2, knn_k=7,
                                       knn_temperature=0.07, knn_bank_size=40))
  evaluator = knn.KnnEvaluator(
      lambda state, images: _pixels(images), bank_split, val, dict, cfg, num_classes=4,
      classifiers={"probe": lambda state, feats: feats @ state.params})
  flat = evaluator(_State(params=jnp.asarray(w), step=jnp.int32(3)))
  bank = _pixels(bank_split.images[:40])
  want = _numpy_knn(_pixels(val.images), bank, bank_split.labels[:40], 7, 0.07, 4)
  assert flat["knn/top1"] == np.mean(want == val.labels)
  assert flat["probe/top1"] == np.mean((_pixels(val.images) @ w).argmax(1) == val.labels)
  assert evaluator.results["knn/bank_size"] == 40
  assert evaluator.results["knn/num_queries"] == 13
  assert set(flat) == {"knn/top1", "knn/top5", "probe/top1"}
  assert evaluator(_State(params=jnp.asarray(w), step=jnp.int32(4))) == flat  # views kept
  assert evaluator.bank_rows == 40  # one process holds every device's block


def test_knn_bank_padded_over_8_devices_scores_every_image():
  """45 bank images padded to 48 rows over 8 devices, built block by block: every image
  votes (the padding never does), in split order, as NumPy's vote over all 45."""
  assert jax.device_count() >= 8, "tests/conftest.py sets 8 host devices"
  bank_split = random_images(45, 4, seed=0, classes=4, random_labels=True)
  val = random_images(13, 4, seed=1, classes=4, random_labels=True)
  cfg = ml_collections.ConfigDict(dict(batch_size=8, max_examples=-1, num_threads=2, knn_k=7,
                                       knn_temperature=0.07, knn_bank_size=-1))
  mesh = mesh_lib.make_mesh(8)
  embed = lambda state, images: _pixels(images)  # noqa: E731
  bank, labels, n = features.extract_block(embed, None, bank_split, dict, cfg, mesh=mesh,
                                           columns=40)
  assert n == 45 and bank.shape == (48, 40) and labels.shape == (48,)
  assert [s.data.shape[0] for s in bank.addressable_shards] == [6] * 8
  np.testing.assert_array_equal(np.asarray(bank)[:45], _pixels(bank_split.images)[:, :40])
  np.testing.assert_array_equal(np.asarray(bank)[45:], 0)
  np.testing.assert_array_equal(np.asarray(labels)[:45], bank_split.labels)
  evaluator = knn.KnnEvaluator(embed, bank_split, val, dict, cfg, num_classes=4, mesh=mesh)
  flat = evaluator(_State(params=None, step=jnp.int32(0)))
  want = _numpy_knn(_pixels(val.images), _pixels(bank_split.images), bank_split.labels, 7,
                    0.07, 4)
  assert flat["knn/top1"] == np.mean(want == val.labels)
  assert evaluator.results["knn/bank_size"] == 45 and evaluator.bank_rows == 48


def test_attention_monitor_matches_numpy(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
  targets = rng.random((4, SIZE, SIZE)).astype(np.float32)
  logits = {"conv3": rng.normal(size=(4, 8, 8)).astype(np.float32)}
  cfg = ml_collections.ConfigDict(dict(attention_images=2))
  monitor = attention_heads.AttentionHeadsMonitor(
      lambda state, x: {"conv3": jnp.asarray(logits["conv3"])}, images, targets, cfg,
      targets_name="toy", workdir=str(tmp_path))
  flat = monitor(_State(params=None, step=jnp.int32(5)))
  density = np.asarray(spatial_softmax(logits["conv3"]), np.float64)
  small = np.asarray(jax_metrics.resize_maps(targets, (8, 8)), np.float64)
  q = small / small.sum((1, 2), keepdims=True)
  kld = np.mean(np.sum(q * np.log(q / density), axis=(1, 2)))
  cc = np.mean([np_metrics.cc(d, t) for d, t in zip(density, small)])
  np.testing.assert_allclose(flat["attention/kld/conv3"], kld, rtol=1e-4)
  np.testing.assert_allclose(flat["attention/cc/conv3"], cc, rtol=1e-4)
  assert monitor.results["attention/num_images"] == 4
  assert glob.glob(str(tmp_path / "events.out.tfevents.*"))


def test_run_writes_the_monitor_to_results(tmp_path):
  """Three steps with the probe; the monitor at step 2 and at the end."""
  config = _tiny_config()
  config.train.eval_every = 2
  model = build_model(config)
  train = random_images(64, 24, seed=0, classes=4, random_labels=True)
  val = random_images(24, 24, seed=1, classes=4, random_labels=True)
  workdir, mesh = str(tmp_path / "run"), mesh_lib.make_mesh(1)
  task = loop.TaskSpec(
      model=model, loss_fn=pretrain.make_loss_fn(model, config), train_source=train,
      train_transform=pipeline.ContrastiveViews(SIZE, config.aug),
      sample_input=jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32),
      evaluate=common.Combined(pretrain.make_knn_evaluator(model, config, train, val, mesh)))
  _, last = loop.run(config, workdir, task, mesh=mesh)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["step"] == 3
  assert 0.0 <= results["online_probe/top1"] <= 1.0
  assert 0.0 <= results["knn/top1"] <= results["knn/top5"] <= 1.0
  assert results["knn/bank_size"] == 64 and results["knn/num_queries"] == 24
  assert results["eval/online_probe/top1"] == results["online_probe/top1"]
  assert {"probe_loss", "probe_accuracy", "nt_xent"} <= set(last)
  events = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert events and any(b"eval/knn/top1" in open(e, "rb").read() for e in events)
