"""Linear evaluation: a frozen encoder, a portable restore, the cached probe, results.json."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_contrastive import config as config_lib
from attn_contrastive import runs, terminal
from attn_contrastive.data import pipeline
from attn_contrastive.evaluators import features, results, softmax_regression
from attn_contrastive.models import forward
from attn_contrastive.models.attention import WithAttention, attention_heads_from_config
from attn_contrastive.models.build import encoder_of
from attn_contrastive.models.resnet import resnet_from_config
from attn_contrastive.models.simclr import simclr_from_config
from attn_contrastive.tasks import linear_eval, pretrain
from attn_contrastive.train import checkpoint as ckpt_lib
from attn_contrastive.train import loop
from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train.state import init_key
from fakes import colours
from helpers import TINY_MODEL, standardise, write_run, zip_leaves

# Its tests share a costly module fixture: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("test_linear_eval")

EPS32 = float(np.finfo(np.float32).eps)


def _near_ties(x, kernel, bias, rel):
  """The fraction of rows of ``x`` whose top-1 class a relative error ``rel`` in
  each term of their logits could change: the top-2 margin is within twice
  ``rel · Σ_d |x_d · k_dc| + |b_c|`` (the rounding bound of a float32 dot)."""
  x, kernel, bias = (np.asarray(a, np.float64) for a in (x, kernel, bias))
  logits = x @ kernel + bias
  scale = (np.abs(x) @ np.abs(kernel) + np.abs(bias)).max(1)
  top2 = np.sort(logits, 1)[:, -2:]
  return float(np.mean(top2[:, 1] - top2[:, 0] <= 2 * rel * scale))

SIZE = 16
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _tiny_pretrain_config():
  c = config_lib.base_config()
  c.data.image_size = SIZE
  c.model.update(TINY_MODEL)
  c.input.update(dict(global_batch_size=16, num_threads=1, prefetch=1))
  c.optim.update(dict(base_lr=1.0, warmup_epochs=0.0))
  c.train.update(dict(num_steps=2, log_every=1, checkpoint_every=2, async_checkpoint=False))
  return c


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
  """A 2-step SimCLR run written on 8 devices: (workdir, its config)."""
  config = _tiny_pretrain_config()
  model = simclr_from_config(config.model)
  task = loop.TaskSpec(
      model=model, loss_fn=pretrain.make_loss_fn(model, config), train_source=colours(32, 0),
      train_transform=pipeline.ContrastiveViews(SIZE, config.aug),
      sample_input=jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))
  workdir = str(tmp_path_factory.mktemp("simclr"))
  loop.run(config, workdir, task, mesh=mesh_lib.make_mesh(8))
  return workdir, config


def _linear_config(run_dir):
  c = config_lib.load_config_file(os.path.join(CONFIGS, "linear_eval.py"))
  c.run_dir = run_dir
  c.data.num_classes = 4
  c.input.update(dict(global_batch_size=16, num_threads=1, prefetch=1))
  c.train.update(dict(num_steps=3, log_every=1, checkpoint_every=2, async_checkpoint=False))
  c.eval.update(dict(batch_size=16, num_threads=1))
  c.linear_cached.update(dict(l2_grid=(1e-4, 1e-2), max_iters=50, shard_size=32))
  return c


def test_linear_eval_keeps_the_encoder_frozen_and_writes_the_outline(simclr_run, tmp_path,
                                                                     monkeypatch):
  run_dir, config = simclr_run
  seen, real_run = {}, loop.run

  def recording_run(config, workdir, task, **kwargs):
    seen["before"] = jax.device_get(task.frozen)
    state, last = real_run(config, workdir, task, **kwargs)
    seen["after"], seen["head"] = jax.device_get((task.frozen, state.params))
    return state, last

  monkeypatch.setattr(loop, "run", recording_run)
  workdir = str(tmp_path / "eval")
  out = linear_eval.evaluate(
      _linear_config(run_dir), workdir, splits={"train": colours(48, 1),
                                                "validation": colours(20, 2)},
      dataset_version="test", mesh=mesh_lib.make_mesh(1))
  # The encoder's parameters and BatchNorm statistics: the checkpoint's, bit for bit,
  # before and after the head's training; the head moved.
  on_disk = ckpt_lib.load_variables(run_dir)
  on_disk = {k: v["encoder"] for k, v in on_disk.items()}
  assert set(seen["before"]) == {"params", "batch_stats"}
  for before, after, disk in zip_leaves(seen["before"], seen["after"], on_disk):
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(before, disk)
  assert np.abs(seen["head"]["head"]["kernel"]).max() > 0
  # The probe's own checkpoints hold the head only, in <workdir>/linear.
  assert set(ckpt_lib.load_variables(os.path.join(workdir, "linear"))["params"]) == {"head"}
  assert sorted(os.listdir(os.path.join(workdir, "features", "train"))) == [
      "00000.npz", "00001.npz"]
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(out))
  metrics = {f"{p}/{m}" for p in ("linear", "linear_cached") for m in ("top1", "top5")}
  assert set(results.OUTLINE) | metrics | {"linear_cached/l2"} <= set(written)
  assert written["task"] == "linear_eval" and written["source_step"] == 2
  assert written["source_workdir"] == os.path.abspath(run_dir)
  assert written["source_config"]["model"]["width"] == 4
  assert written["dataset"] == {"name": "salient_objects/classification",
                                "splits": ["train", "validation"], "version": "test"}
  assert all(0 <= written[k] <= 1 for k in metrics)
  assert written["linear_cached/l2"] in (1e-4, 1e-2)
  # Each protocol's classifier reads back as one linear map of the pooled features;
  # the cached one (standardisation folded in) gives the written top-1 on the cached
  # validation features.
  kernel, bias, protocol = runs.load_classifier(workdir)
  assert protocol == "linear"
  np.testing.assert_array_equal(kernel, seen["head"]["head"]["kernel"])
  # The linear protocol's top-1, recomputed: that head on the frozen encoder's pooled
  # features of the validation split's centre crops, the network applied here as a
  # program of its own (the task's features come from another: the same network rounded
  # otherwise, rtol 1e-5 as test_multiprocess's error model for features).
  val = colours(20, 2)
  crops = np.stack([pipeline.EvalView(SIZE)(val[i])["image"] for i in range(len(val))])
  encoder = simclr_from_config(config.model).encoder
  feats = np.asarray(jax.jit(lambda v, x: encoder.apply(v, x, train=False)["pooled"])(
      seen["before"], standardise(crops)))
  top1 = np.mean(np.argmax(feats @ kernel + bias, -1) == val.labels)
  ties = _near_ties(feats, kernel, bias, 1e-5 + feats.shape[1] * EPS32)
  assert abs(top1 - written["linear/top1"]) <= ties + 1e-6, (top1, written["linear/top1"])
  kernel, bias, _ = runs.load_classifier(workdir, "linear_cached")
  with np.load(os.path.join(workdir, "features", "validation", "00000.npz")) as f:
    val_x, val_y = f["features"], f["labels"]
  top1 = np.mean(np.argmax(val_x @ kernel + bias, -1) == val_y)
  # The task's logits fold the standardisation in on the device: another rounding
  # of the same D-term dot product (error ≤ D·eps of the terms' magnitudes).
  ties = _near_ties(val_x, kernel, bias, val_x.shape[1] * EPS32)
  assert abs(top1 - written["linear_cached/top1"]) <= ties + 1e-6  # (written in float32)
  with pytest.raises(FileNotFoundError, match="linear_eval run"):
    runs.load_classifier(str(tmp_path), "linear_cached")


def test_supervised_run_is_scored_with_its_own_classifier(tmp_path):
  """``supervised/top1`` and ``/top5`` of a supervised run (no protocol asked) against
  its network applied here to the validation split's centre crops."""
  run_dir, model, variables = write_run(tmp_path / "run", "supervised")
  config = _linear_config(run_dir)
  config.protocols = ()
  val = colours(24, 7)
  out = linear_eval.evaluate(config, str(tmp_path / "eval"),
                             splits={"train": colours(16, 8), "validation": val},
                             dataset_version="test", mesh=mesh_lib.make_mesh(8))
  assert {"supervised/top1", "supervised/top5"} <= set(out) and "linear/top1" not in out
  crops = np.stack([pipeline.EvalView(SIZE)(val[i])["image"] for i in range(len(val))])
  logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])(
      variables, standardise(crops)), np.float64)
  ranks = (logits > logits[np.arange(len(val)), val.labels][:, None]).sum(1)
  # The task's logits: the same network jitted over 8 devices, rounded otherwise
  # (rtol 1e-5, as for features): only rows whose top two are that close may differ.
  top2 = np.sort(logits, 1)[:, -2:]
  ties = np.mean(top2[:, 1] - top2[:, 0] <= 2e-5 * np.abs(logits).max(1))
  assert abs(out["supervised/top1"] - np.mean(ranks == 0)) <= ties + 1e-6
  assert out["supervised/top5"] == 1.0  # four classes
  assert 0 < np.mean(ranks == 0) < 1  # neither all right nor all wrong: the check has teeth


def test_checkpoint_of_eight_devices_gives_the_same_features_on_one(simclr_run):
  run_dir, config = simclr_run
  model = simclr_from_config(config.model)
  embed = forward.predict(model.encoder, jnp.float32, "pooled")
  src = colours(24, 3)
  feats = {}
  for n in (1, 8):
    mesh = mesh_lib.make_mesh(n)
    variables = ckpt_lib.load_variables(run_dir, sharding=mesh_lib.replicated(mesh))
    assert all(x.sharding.mesh.size == n for x in jax.tree.leaves(variables))
    _, frozen = encoder_of(model, variables)
    eval_cfg = config_lib.base_config().eval
    eval_cfg.update(dict(batch_size=8, num_threads=1))
    feats[n], _ = features.extract(embed, frozen, src, pipeline.EvalView(SIZE), eval_cfg,
                                   mesh=mesh)
  np.testing.assert_allclose(feats[1], feats[8], rtol=1e-5, atol=1e-6)
  assert feats[1].std(0).max() > 0


def test_cached_probe_separates_separable_features_with_a_small_l2():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(6, 16)) * 4

  def split(n):
    y = rng.integers(0, 6, n)
    return 3.0 + 0.1 * (centres[y] + rng.normal(size=(n, 16))), y  # off-centre, small scale

  (tx, ty), (vx, vy) = split(603), split(205)
  fit = softmax_regression.fit_and_evaluate(
      tx, ty, vx, vy, 6, l2_grid=(1e-6, 1e-4, 1e-2, 1.0), max_iters=200,
      mesh=mesh_lib.make_mesh(8))
  assert fit["top1"] >= 0.98 and fit["top5"] == 1.0
  assert fit["l2"] <= 1e-4, fit["grid"]
  assert fit["grid"][-1]["heldout_loss"] > fit["grid"][0]["heldout_loss"]


@pytest.mark.parametrize("kind", ["resnet", "attention"])
def test_encoder_of_a_supervised_model_is_its_trunk(kind):
  config = _tiny_pretrain_config()
  model = resnet_from_config(config.model, num_classes=3)
  if kind == "attention":
    config.attention.update(dict(stages=("conv4",), width=4))
    model = WithAttention(model, attention_heads_from_config(config.attention, config.model))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)), jnp.float32)
  variables = jax.jit(lambda rng: model.init(rng, x, train=False))(init_key(0))
  encoder, part = encoder_of(model, variables)
  assert isinstance(encoder, nn.Module) and "classifier" not in part["params"]
  pooled = jax.jit(lambda m, v: m.apply(v, x, train=False)["pooled"], static_argnums=0)
  np.testing.assert_array_equal(pooled(encoder, part), pooled(model, variables))


def test_summary_hands_linear_eval_to_robustness_and_robustness_the_run_to_retrieval(
    tmp_path):
  linear = tmp_path / "linear_simclr"
  linear.mkdir()
  (linear / "results.json").write_text(json.dumps(
      {"task": "linear_eval", "source_workdir": "/runs/simclr", "linear/top1": 0.5}))
  text = terminal.summary("linear_eval", "configs/linear_eval.py", str(linear),
                         "salient_objects/classification", 1.0)
  assert "linear/top1 0.5" in text
  assert text.rstrip().endswith(
      f"--config=configs/robustness.py --workdir={tmp_path}/robust_linear_simclr "
      f"--config.run_dir={linear}")
  (linear / "results.json").write_text(json.dumps(
      {"task": "robustness", "source_workdir": "/runs/simclr", "robustness/mce": 0.9}))
  text = terminal.summary("robustness", "configs/robustness.py:imagenet", str(linear),
                         "imagenet2012", 1.0)
  assert "robustness/mce 0.9" in text
  assert text.rstrip().endswith(
      f"--config=configs/retrieval.py:imagenet --workdir={tmp_path}/retrieval_simclr "
      "--config.run_dir=/runs/simclr")


def test_retrieval_task_equals_brute_force_on_the_run(simclr_run, tmp_path):
  """The retrieval task's mAP, P@1 and kNN top-1 of a real (tiny) run's
  pooled features equal a NumPy brute force on the same features; its
  results.json has the evaluation outline."""
  from attn_contrastive.evaluators import results as results_lib
  from attn_contrastive.tasks import retrieval
  workdir, _ = simclr_run
  c = config_lib.load_config_file(os.path.join(CONFIGS, "retrieval.py"))
  c.run_dir = workdir
  c.retrieval.update(dict(knn_k=5, chunk=8, shard_size=16))
  c.eval.update(dict(batch_size=16, num_threads=1))
  splits = {"train": colours(32, 3), "validation": colours(12, 4)}
  out = retrieval.evaluate(c, str(tmp_path), splits=splits, dataset_version="0",
                           mesh=mesh_lib.make_mesh(8))
  assert set(results_lib.OUTLINE) <= set(out) and out["task"] == "retrieval"
  assert len(out["retrieval/pr_curve"]) == 11
  # Brute force over the cached features.
  feats = {}
  for s in ("train", "validation"):
    with np.load(os.path.join(str(tmp_path), "features", f"pooled_{s}", "00000.npz")) as f:
      x = np.concatenate([f["features"]] + ([] if s == "validation" else [np.load(
          os.path.join(str(tmp_path), "features", "pooled_train", "00001.npz"))["features"]]))
    feats[s] = x / np.linalg.norm(x, axis=1, keepdims=True)
  q, g = feats["validation"], feats["train"]
  qy, gy = splits["validation"].labels, splits["train"].labels
  sims = q @ g.T
  aps, p1, knn = [], [], []
  for i in range(len(q)):
    order = np.argsort(-sims[i], kind="stable")
    rel = gy[order] == qy[i]
    hits = np.cumsum(rel)
    aps.append(np.sum(hits[rel] / (np.flatnonzero(rel) + 1)) / rel.sum())
    p1.append(rel[0])
    top = order[:5]
    votes = np.bincount(gy[top], weights=np.exp(sims[i, top] / 0.07), minlength=4)
    knn.append(np.argmax(votes) == qy[i])
  assert out["retrieval/map"] == pytest.approx(np.mean(aps), abs=1e-5)
  assert out["retrieval/precision@1"] == pytest.approx(np.mean(p1), abs=1e-6)
  assert out["knn/top1"] == pytest.approx(np.mean(knn), abs=1e-6)


def test_robustness_scores_the_linear_evaluation_under_corruption_and_resumes(simclr_run,
                                                                              tmp_path):
  """The robustness task's top-1 of a condition equals the run's encoder and the linear
  evaluation's classifier applied by hand to the corrupted crops; the category means
  follow; a rerun reads the finished conditions back."""
  from attn_contrastive.data.corrupted_split import corruption_rng
  from attn_contrastive.data import image_corruptions
  from attn_contrastive.tasks import robustness
  run_dir, config = simclr_run
  splits = {"train": colours(32, 5), "validation": colours(16, 6)}
  lin_cfg = _linear_config(run_dir)
  lin_cfg.protocols = ("linear_cached",)
  linear_dir = str(tmp_path / "linear")
  linear_eval.evaluate(lin_cfg, linear_dir, splits=splits, dataset_version="0",
                       mesh=mesh_lib.make_mesh(1))
  c = config_lib.load_config_file(os.path.join(CONFIGS, "robustness.py"))
  c.run_dir = linear_dir
  c.robustness.update(dict(corruptions=("gaussian_noise", "pixelate", "saturate"),
                           severities=(1, 5), retrieval_severities=(5,), chunk=8))
  c.eval.update(dict(batch_size=16, num_threads=1))
  workdir = str(tmp_path / "robust")
  out = robustness.evaluate(c, workdir, splits=splits, dataset_version="0",
                            mesh=mesh_lib.make_mesh(1))
  assert out["task"] == "robustness" and out["source_workdir"] == os.path.abspath(run_dir)
  assert out["robustness/classifier"]["protocol"] == "linear_cached"
  # By hand: corrupted centre crops → encoder → the cached classifier.
  model = simclr_from_config(config.model)
  encoder, frozen = encoder_of(model, ckpt_lib.load_variables(run_dir))
  kernel, bias, _ = runs.load_classifier(linear_dir)
  view = pipeline.EvalView(SIZE, lin_cfg.aug.eval_crop_fraction)
  val = splits["validation"]
  images = np.stack([image_corruptions.corrupt(view(val[i])["image"], "gaussian_noise", 5,
                                         corruption_rng(0, "gaussian_noise", 5, i))
                     for i in range(len(val))])
  feats = np.asarray(jax.jit(forward.predict(encoder, jnp.float32, "pooled"))(frozen, images))
  top1 = np.mean(np.argmax(feats @ kernel + bias, -1) == val.labels)
  top1s = out["robustness/top1"]
  # The task's features come from a jitted program, these from one of their own: the same
  # network rounded otherwise (test_multiprocess's error model: rtol 1e-5).
  ties = _near_ties(feats, kernel, bias, 1e-5 + feats.shape[1] * EPS32)
  assert abs(top1s["gaussian_noise"][1] - top1) <= ties + 1e-6  # (written in float32)
  assert out["robustness/noise"] == pytest.approx(np.mean(top1s["gaussian_noise"]))
  assert out["robustness/digital"] == pytest.approx(np.mean(top1s["pixelate"]))
  assert out["robustness/extra"] == pytest.approx(np.mean(top1s["saturate"]))
  assert out["robustness/num_benchmark"] == 2 and np.isnan(out["robustness/blur"])
  assert len(out["retrieval_c/pr_curve"]) == 11 and out["retrieval_c/num_conditions"] == 3
  assert 0 < out["retrieval_c/map"] <= 1 and 0 < out["retrieval_c/clean_map"] <= 1
  # Resume: finished conditions are read back, not recomputed; another seed is refused.
  cond = os.path.join(workdir, "conditions")
  stamps = {f: os.stat(os.path.join(cond, f)).st_mtime_ns for f in os.listdir(cond)}
  again = robustness.evaluate(c, workdir, splits=splits, dataset_version="0",
                              mesh=mesh_lib.make_mesh(1))
  assert again["robustness/top1"] == top1s
  assert stamps == {f: os.stat(os.path.join(cond, f)).st_mtime_ns for f in os.listdir(cond)}
  c.robustness.seed = 1
  with pytest.raises(ValueError, match="holds features of"):
    robustness.evaluate(c, workdir, splits=splits, dataset_version="0",
                        mesh=mesh_lib.make_mesh(1))
  # Retrieval reads the linear evaluation's cached features of the same run and view
  # (nothing extracted again) and scores as it does on its own extraction.
  from attn_contrastive.tasks import retrieval
  r = config_lib.load_config_file(os.path.join(CONFIGS, "retrieval.py"))
  r.run_dir = run_dir
  r.retrieval.update(dict(knn_k=5, chunk=8, shard_size=32))
  r.eval.update(dict(batch_size=16, num_threads=1))
  own = retrieval.evaluate(r, str(tmp_path / "own"), splits=splits,
                           dataset_version="0", mesh=mesh_lib.make_mesh(1))
  r.retrieval.features_from = linear_dir
  reused = retrieval.evaluate(r, str(tmp_path / "reused"), splits=splits,
                              dataset_version="0", mesh=mesh_lib.make_mesh(1))
  assert os.listdir(tmp_path / "own" / "features") != ["source.json"]
  assert os.listdir(tmp_path / "reused" / "features") == ["source.json"]
  for k in ("retrieval/map", "retrieval/precision@1", "knn/top1"):
    assert reused[k] == pytest.approx(own[k], abs=1e-6)
  # A released tree without an extra corruption (no extra.tar): the rest is scored, and
  # results.json names what was left out.
  from PIL import Image
  release = tmp_path / "imagenet_c"
  for k, wnid in enumerate(("n01440764", "n15075141")):
    folder = release / "gaussian_noise" / "1" / wnid
    folder.mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 30 + 60 * k, np.uint8)).save(
        folder / f"ILSVRC2012_val_{k:08d}.JPEG")
  c.robustness.update(dict(source="released", manual_dir=str(release), seed=0, retrieval=False,
                           corruptions=("gaussian_noise", "speckle_noise"), severities=(1,)))
  c.data.data_dir = str(tmp_path / "data")
  out = robustness.evaluate(c, str(tmp_path / "released"), splits=splits,
                            dataset_version="0", mesh=mesh_lib.make_mesh(1))
  assert out["robustness/missing"] == ["speckle_noise"]
  assert list(out["robustness/top1"]) == ["gaussian_noise"]
  assert out["robustness/num_benchmark"] == 1 and np.isnan(out["robustness/extra"])
