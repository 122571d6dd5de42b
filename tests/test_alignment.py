"""Grad-CAM against hand-set and finite-difference answers; the alignment task's outputs."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_contrastive import config as config_lib
from attn_contrastive import runs as runs_lib
from attn_contrastive import terminal
from attn_contrastive.evaluators import gradcam, results
from attn_contrastive.evaluators import saliency as saliency_eval
from attn_contrastive.models.resnet import ResNet, stage_output_block
from attn_contrastive.tasks import alignment
from attn_contrastive.train import mesh as mesh_lib
from fakes import human_squares
from helpers import SIZE, TINY_RESNET, bilinear, filled_variables, nss, standardise, write_run

# Its tests share a costly module fixture: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("test_alignment")

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
EPS32 = float(np.finfo(np.float32).eps)

# ---------------------------------------------------------------------------
# Grad-CAM on networks whose answer is known.
# ---------------------------------------------------------------------------


class _Stage(nn.Module):
  """A 1×1 convolution and ReLU: the stage whose activation Grad-CAM reads."""

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(2, (1, 1), name="conv")(x))


class _Net(nn.Module):
  """Stage → 3×3 conv → ReLU → mean pool → linear head."""

  @nn.compact
  def __call__(self, x):
    a = _Stage(name="stage")(x)
    t = nn.relu(nn.Conv(3, (3, 3), padding="SAME", name="tail")(a))
    return {"stage": a, "logits": nn.Dense(2, name="head")(t.mean((1, 2)))}


def _hand_set_params():
  """Channel 0 fires on bright pixels (the object), channel 1 on dark ones; the tail
  passes both on; class 0's logit is mean(object) − mean(background) + 1."""
  stage = {"kernel": np.full((1, 1, 3, 2), 1 / 3, np.float32) * np.array([1, -1], np.float32),
           "bias": np.array([-0.5, 0.5], np.float32)}
  tail = np.zeros((3, 3, 2, 3), np.float32)
  tail[1, 1, 0, 0] = tail[1, 1, 1, 1] = 1.0
  head = {"kernel": np.array([[1, -1], [-1, 1], [0, 0]], np.float32),
          "bias": np.array([1, 0], np.float32)}
  return {"params": {"stage": {"conv": stage},
                     "tail": {"kernel": tail, "bias": np.zeros(3, np.float32)},
                     "head": head}}


@jax.jit
def _run_gradcam(params, x):
  net = _Net()
  return gradcam.gradcam(lambda: net.apply(params, x), "stage", "stage", lambda o: o["logits"])


@jax.jit
def _net_gradient(params, x):
  net = _Net()
  return gradcam.stage_gradient(lambda: net.apply(params, x), "stage", "stage",
                                lambda o: o["logits"])


def test_gradcam_peaks_on_the_object():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 0.3, (2, SIZE, SIZE, 3)).astype(np.float32)
  corners = [(2, 9), (11, 3)]
  for b, (r, c) in enumerate(corners):
    x[b, r:r + 3, c:c + 3] = 1.0
  params = _hand_set_params()
  dens, out = _run_gradcam(params, jnp.asarray(x))
  dens = np.asarray(dens)
  assert np.all(np.argmax(out["logits"], -1) == 0)
  assert dens.shape == out["stage"].shape[:3] == (2, SIZE, SIZE)
  assert np.all(dens >= 0)
  np.testing.assert_allclose(dens.sum((1, 2)), 1.0, rtol=1e-5)
  for b, (r, c) in enumerate(corners):
    peak = np.unravel_index(np.argmax(dens[b]), dens[b].shape)
    assert r <= peak[0] < r + 3 and c <= peak[1] < c + 3
    np.testing.assert_allclose(dens[b, r:r + 3, c:c + 3].sum(), 1.0, rtol=1e-5)
  # Each image's map is its own: in another batch, the same map.
  swapped, _ = _run_gradcam(params, jnp.asarray(x[::-1]))
  np.testing.assert_allclose(swapped[::-1], dens, rtol=1e-5, atol=1e-7)


def _np_tail_score(a, p, cls):
  """The hand-written tail of :class:`_Net` in float64: class ``cls``'s logit of ``a``."""
  k, bias = (np.asarray(p["tail"][n], np.float64) for n in ("kernel", "bias"))
  h, w, _ = a.shape
  padded = np.pad(a, ((1, 1), (1, 1), (0, 0)))
  t = sum(padded[i:i + h, j:j + w] @ k[i, j] for i in range(3) for j in range(3)) + bias
  pooled = np.maximum(t, 0).mean((0, 1))
  return pooled @ np.asarray(p["head"]["kernel"], np.float64)[:, cls] + p["head"]["bias"][cls]


def test_gradcam_weights_match_finite_differences():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 6, 3)), jnp.float32)
  rng = np.random.default_rng(3)  # random weights in the hand-set model's shapes
  params = jax.tree.map(lambda v: rng.normal(size=v.shape).astype(np.float32),
                        _hand_set_params())
  grad, out = _net_gradient(params, x)
  p = jax.tree.map(np.asarray, params["params"])
  a = np.asarray(out["stage"], np.float64)
  eps = 1e-5
  for b in range(2):
    cls = int(np.argmax(out["logits"][b]))
    fd = np.zeros_like(a[b])
    for idx in np.ndindex(*a[b].shape):
      up, down = a[b].copy(), a[b].copy()
      up[idx] += eps
      down[idx] -= eps
      fd[idx] = (_np_tail_score(up, p, cls) - _np_tail_score(down, p, cls)) / (2 * eps)
    np.testing.assert_allclose(grad[b], fd, rtol=1e-3, atol=1e-6)
    weights = fd.mean((0, 1))
    np.testing.assert_allclose(gradcam.channel_weights(grad)[b], weights, rtol=1e-3,
                               atol=1e-7)
    expected = np.maximum(a[b] @ weights, 0)
    # A channel sum that cancels to near zero keeps float32's error of its terms:
    # at most C·eps·Σ|a·w| (×4).
    cancel = 4 * a.shape[-1] * np.finfo(np.float32).eps * np.abs(a[b] * weights).sum(-1).max()
    np.testing.assert_allclose(gradcam.cam(out["stage"], grad)[b], expected, rtol=1e-3,
                               atol=max(1e-7, cancel))


def test_gradcam_of_the_last_stage_is_the_classifier_column():
  """At conv5, ∂S/∂A = W[:, c] / (h·w) at every location (mean pool, linear head)."""
  model = ResNet(**TINY_RESNET, num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, SIZE, SIZE, 3))
  variables = filled_variables(model, (1, SIZE, SIZE, 3))
  block = stage_output_block(10, "conv5")
  assert block == "conv5_block0" and stage_output_block(50, "conv4") == "conv4_block5"
  grad, out = jax.jit(lambda v: gradcam.stage_gradient(
      lambda: model.apply(v, x, train=False), "conv5", block, lambda o: o["logits"]))(variables)
  kernel = np.asarray(variables["params"]["classifier"]["kernel"])
  cls = np.argmax(out["logits"], -1)
  h, w = out["conv5"].shape[1:3]
  np.testing.assert_allclose(grad, np.broadcast_to(kernel[:, cls].T[:, None, None] / (h * w),
                                                   grad.shape), rtol=1e-5, atol=1e-8)
  with pytest.raises(ValueError, match="conv5_block7"):
    jax.eval_shape(lambda v: gradcam.stage_gradient(
        lambda: model.apply(v, x, train=False), "conv5", "conv5_block7",
        lambda o: o["logits"]), variables)


def test_all_zero_map_becomes_uniform():
  maps = jnp.stack([jnp.zeros((4, 2)), jnp.arange(8.0).reshape(4, 2)])
  dens = np.asarray(gradcam.to_density(maps))
  np.testing.assert_allclose(dens[0], 1 / 8)
  np.testing.assert_allclose(dens[1], np.arange(8.0).reshape(4, 2) / 28, rtol=1e-6)


# ---------------------------------------------------------------------------
# The alignment task on tiny runs.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{task: (workdir, model, variables)} of a supervised and a SimCLR run."""
  root = tmp_path_factory.mktemp("runs")
  return {task: write_run(root / task, task) for task in ("supervised", "pretrain")}


def _config(run_dir, **alignment_keys):
  c = config_lib.load_config_file(os.path.join(CONFIGS, "alignment.py"))
  c.run_dir = run_dir
  c.eval.update(dict(batch_size=8, num_threads=1, num_images=3, shuffle_pool=6,
                     shuffle_others=2))
  c.alignment.update(alignment_keys)
  return c


def _align(config, workdir):
  return alignment.evaluate(config, str(workdir), splits={"validation": human_squares()},
                            dataset_version="test", mesh=mesh_lib.make_mesh(1))


def _activation_maps(out, stages):
  """Activation attention written out: Σ_c A_c² of each stage, normalised to sum 1,
  upsampled to the finest stage, renormalised and averaged."""
  energies = [np.square(np.asarray(out[s], np.float64)).sum(-1) for s in stages]
  hw = max(e.shape[1:] for e in energies)
  total = 0.0
  for e in energies:
    up = np.stack([bilinear(m / m.sum(), hw) for m in e])
    total = total + up / up.sum((1, 2), keepdims=True)
  return total / len(stages)


def _resnet10_after_conv4(run, variables, a):
  """The supervised ResNet-10's logits from its conv4 activation ``a``: its conv5 block
  (inference BatchNorm), the mean pool and the classifier, rebuilt from the run's
  variables outside the network."""
  import functools  # pylint: disable=g-import-not-at-top
  from attn_contrastive.models.resnet import BasicBlock  # pylint: disable=g-import-not-at-top
  block = BasicBlock(run.model.width * 8, 2, functools.partial(nn.Conv, use_bias=False),
                     functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5))
  name = "conv5_block0"
  x = block.apply({"params": variables["params"][name],
                   "batch_stats": variables["batch_stats"][name]}, a)
  head = variables["params"]["classifier"]
  return x.mean((1, 2)) @ head["kernel"] + head["bias"]


def _gradcam_maps(run, variables, out):
  """Grad-CAM of the predicted class at conv4 written out: the class's logit
  differentiated (jax.grad) through the rebuilt tail, the gradient's spatial means as
  channel weights, ReLU(Σ_k w_k A_k) normalised to sum 1.

  Also returns each entry's rounding bound in float32: Σ_k w_k A_k can cancel to
  near zero, leaving C·eps·Σ_k |w_k A_k| (×4) of its terms, over the map's total.
  """
  a = jnp.asarray(out["conv4"])
  cls = np.argmax(_resnet10_after_conv4(run, variables, a), -1)
  grad = jax.grad(lambda a: jnp.sum(
      _resnet10_after_conv4(run, variables, a)[np.arange(len(cls)), cls]))(a)
  weights = np.asarray(grad, np.float64).mean((1, 2))
  terms = np.asarray(a, np.float64) * weights[:, None, None]
  cam = np.maximum(terms.sum(-1), 0)
  total = cam.sum((1, 2), keepdims=True)
  return cam / total, 4 * a.shape[-1] * EPS32 * np.abs(terms).sum(-1) / total


def _check_examples(workdir, kinds, map_hw):
  with np.load(os.path.join(workdir, saliency_eval.EXAMPLES_FILE)) as z:
    ex = {k: z[k] for k in z.files}
  assert set(ex) == {"image", "human", "index"} | {f"map/{k}" for k in kinds}
  human = human_squares()
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (3, SIZE, SIZE, 3)
  np.testing.assert_array_equal(ex["image"], [human[i]["image"] for i in range(3)])
  assert ex["index"].dtype == np.int64 and list(ex["index"]) == [0, 1, 2]
  assert ex["human"].dtype == np.float32 and ex["human"].shape == (3, SIZE, SIZE)
  np.testing.assert_allclose(ex["human"].sum((1, 2)), 1.0, rtol=1e-5)
  for kind in kinds:
    m = ex[f"map/{kind}"]
    assert m.dtype == np.float32 and m.shape == (3, *map_hw[kind]) and np.all(m >= 0)
    np.testing.assert_allclose(m.sum((1, 2)), 1.0, rtol=1e-5)


def test_supervised_run_scores_every_kind_on_the_outline(runs, tmp_path):
  run_dir = runs["supervised"][0]
  out = _align(_config(run_dir), tmp_path)
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(out))
  assert set(results.OUTLINE) <= set(written)
  assert written["task"] == "alignment" and written["source_step"] == 3
  assert written["source_workdir"] == os.path.abspath(run_dir)
  assert written["source_config"]["task"] == "supervised"
  assert written["dataset"] == {"name": "salient_objects/human_attention",
                                "splits": ["validation"], "version": "test"}
  for key in ("model", "center_bias", "activations", "gradcam"):
    assert set(written[f"alignment/{key}"]) == set(saliency_eval.METRIC_NAMES)
    assert all(np.isfinite(v) for v in written[f"alignment/{key}"].values())
  assert written["alignment/model"] == written["alignment/activations"]
  assert written["alignment/gradcam"] != written["alignment/activations"]
  assert written["alignment/primary"] == "activations"
  assert written["alignment/kinds"] == ["activations", "gradcam"]
  assert written["alignment/stages"] == {"activations": ["conv3", "conv4"],
                                         "gradcam": ["conv4"]}
  assert written["alignment/gradcam_stage"] == "conv4"
  assert written["alignment/num_images"] == 6
  assert written["alignment/classifier"] == {"workdir": os.path.abspath(run_dir),
                                             "protocol": "supervised"}
  _check_examples(str(tmp_path), ("activations", "gradcam"),
                  {"activations": (8, 8), "gradcam": (4, 4)})
  # Both kinds of map recomputed from the network's stage outputs (model.apply, one
  # program of its own: the task's come from another, the same sums rounded otherwise),
  # then their NSS at the human fixations, against examples.npz and results.json.
  _, model, variables = runs["supervised"]
  run = runs_lib.read_config(run_dir)
  human = human_squares()
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, standardise(human.images))
  activations = _activation_maps(out, ("conv3", "conv4"))
  gradcam_maps, cancel = _gradcam_maps(run, variables, out)
  with np.load(tmp_path / saliency_eval.EXAMPLES_FILE) as z:
    # Activation attention sums C ≤ 16 positive terms per pixel (≤ C·eps relative);
    # Grad-CAM's weights come from another program's gradient (rtol 1e-4) and its sums
    # can cancel (the bound returned with the maps).
    np.testing.assert_allclose(z["map/activations"], activations[:3], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(z["map/gradcam"], gradcam_maps[:3], rtol=1e-4,
                               atol=max(cancel[:3].max(), 1e-7))
  for kind, maps in (("activations", activations), ("gradcam", gradcam_maps)):
    want = np.mean([nss(bilinear(m, (SIZE, SIZE)), h["fixations"])
                    for m, h in zip(maps, human)])
    # (maps equal to 1e-5 relative move the z-scores, of order 1, by about as much)
    np.testing.assert_allclose(written[f"alignment/{kind}"]["nss"], want, rtol=1e-4,
                               atol=1e-5, err_msg=kind)
  text = terminal.summary("alignment", "configs/alignment.py", str(tmp_path),
                         "salient_objects/human_attention", 1.0)
  for kind, metric in (("model", "nss"), ("model", "cc"), ("center_bias", "nss")):
    value = written[f"alignment/{kind}"][metric]
    assert f"alignment/{kind}/{metric} {value:.4g}" in text


def test_simclr_run_reads_the_linear_evaluation_classifier(runs, tmp_path):
  run_dir, model, variables = runs["pretrain"]
  linear = tmp_path / "linear"
  (linear / "linear_cached").mkdir(parents=True)
  rng = np.random.default_rng(2)
  kernel = rng.normal(size=(32, 4)).astype(np.float32)
  bias = rng.normal(size=4).astype(np.float32)
  np.savez(linear / "linear_cached" / "classifier.npz", kernel=kernel, bias=bias)
  (linear / "results.json").write_text(json.dumps({"source_workdir": run_dir}))
  out = _align(_config(run_dir, maps=("gradcam", "auto"), classifier=str(linear)),
               tmp_path / "align")
  assert out["alignment/kinds"] == ["gradcam", "activations"]
  assert out["alignment/model"] == out["alignment/gradcam"]
  assert out["alignment/classifier"] == {"workdir": str(linear), "protocol": "linear_cached"}
  _check_examples(str(tmp_path / "align"), ("activations", "gradcam"),
                  {"activations": (8, 8), "gradcam": (4, 4)})
  # The maps are Grad-CAM of the linear classifier's predicted class at conv4.
  images = human_squares().images[:3]
  state = runs_lib.EvalState(variables["params"], variables["batch_stats"], 0,
                             {"kernel": kernel, "bias": bias})
  predict = alignment.make_predict(model, runs_lib.read_config(run_dir), ("gradcam",),
                                   {"gradcam": ("conv4",)})
  with np.load(tmp_path / "align" / "examples.npz") as z:
    np.testing.assert_allclose(jax.jit(predict)(state, images)["gradcam"], z["map/gradcam"],
                               rtol=1e-4, atol=1e-7)


def test_gradcam_without_logits_is_skipped_by_default_and_refused_when_asked(runs, tmp_path,
                                                                            caplog):
  run_dir = runs["pretrain"][0]
  run = runs_lib.read_config(run_dir)
  with caplog.at_level("INFO"):
    kinds, stages = alignment.resolve_maps(_config(run_dir), run, has_logits=False)
  assert kinds == ("activations",) and stages == {"activations": ("conv3", "conv4")}
  assert "--config.alignment.classifier" in caplog.text
  for maps in (("gradcam",), ("activations", "gradcam"), ("activations,gradcam",)):
    with pytest.raises(ValueError, match="alignment.classifier"):
      _align(_config(run_dir, maps=maps), tmp_path)
  with pytest.raises(FileNotFoundError, match="alignment.classifier="):
    _align(_config(run_dir, classifier=str(tmp_path)), tmp_path)
  with pytest.raises(ValueError, match="no attention heads"):
    _align(_config(run_dir, maps=("heads",)), tmp_path)
  with pytest.raises(ValueError, match="choose kinds"):
    _align(_config(run_dir, maps=("saliency",)), tmp_path)
