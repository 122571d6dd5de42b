"""Export to torchvision, timm, ONNX and a Hugging Face folder, and torchvision weights as
``init_checkpoint``: the copies compute what the project's networks compute."""
import importlib.util
import json
import os
import types

import jax
import ml_collections
import numpy as np
import pytest

from tests import helpers

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
if importlib.util.find_spec("torchvision") is None:  # imported by torch_models, below
  pytest.skip("torchvision is not installed", allow_module_level=True)

from attn_contrastive import config_checks  # pylint: disable=g-import-not-at-top
from attn_contrastive.export import formats  # pylint: disable=g-import-not-at-top
from attn_contrastive.export import torch_models  # pylint: disable=g-import-not-at-top
from attn_contrastive.models import forward  # pylint: disable=g-import-not-at-top
from attn_contrastive.models.attention import spatial_softmax  # pylint: disable=g-import-not-at-top
from attn_contrastive.models.build import build_model  # pylint: disable=g-import-not-at-top
from attn_contrastive.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
from attn_contrastive.train import loop  # pylint: disable=g-import-not-at-top

#: The tests that share the ``workdirs`` fixture run on one worker; the others anywhere.
SHARED_RUNS = pytest.mark.xdist_group("test_export")
torchvision = torch_models.torchvision
#: Parity: the largest difference within this fraction of the largest output (float32).
RTOL = 1e-4


def close(ours, theirs) -> float:
  """The largest difference over the largest magnitude of the project's output."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  return float(np.abs(ours - theirs).max() / np.abs(ours).max())


def _varied(variables, seed):
  """BatchNorm scales, biases, means and variances drawn away from 1 and 0, so that a
  BatchNorm read under the wrong name shows."""
  rng = np.random.default_rng(seed)

  def vary(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name in ("bias", "mean"):
      return rng.normal(0, 0.3, leaf.shape).astype(np.float32)
    return leaf

  return jax.tree_util.tree_map_with_path(vary, variables)


def write_run(workdir, config, seed=0):
  """A run's workdir (config.json, a checkpoint at step 3) with filled, varied variables."""
  model = build_model(config)
  variables = _varied(helpers.filled_variables(model, (1, helpers.SIZE, helpers.SIZE, 3),
                                               seed), seed)
  helpers.save_run(workdir, config, variables)
  return str(workdir), model, variables


def pretrain_config():
  c = helpers.tiny_config("pretrain")
  c.attention.update(dict(enabled=True, width=4))
  return c


def supervised_config():
  c = helpers.tiny_config("supervised")
  c.attention.update(dict(enabled=True, width=4, stages=("conv4",)))
  return c


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  out = {
      "pretrain": write_run(root / "simclr", pretrain_config(), 1),
      "supervised": write_run(root / "supervised", supervised_config(), 2),
      "teacher": write_run(root / "teacher", helpers.tiny_teacher_config(), 3)}
  linear = root / "linear"
  os.makedirs(linear / "linear_cached")
  rng = np.random.default_rng(4)
  kernel = rng.normal(size=(32, 4)).astype(np.float32)
  bias = rng.normal(size=4).astype(np.float32)
  np.savez(linear / "linear_cached" / "classifier.npz", kernel=kernel, bias=bias)
  (linear / "config.json").write_text(json.dumps(
      {"task": "linear_eval", "run_dir": out["pretrain"][0]}))
  out["linear_eval"] = (str(linear), kernel, bias)
  return out


def images(n=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, helpers.SIZE, helpers.SIZE, 3),
                                               dtype=np.uint8)


def _predicted(model, variables, x, output: str | None = None):
  """The project's float32 outputs for ``x`` (all, or ``output``), as one program."""
  return jax.device_get(jax.jit(forward.predict(model, np.float32, output))(variables, x))


@SHARED_RUNS
def test_torchvision_export_of_simclr_computes_the_same(workdirs, tmp_path):
  run_dir, model, variables = workdirs["pretrain"]
  formats.export(run_dir, "torchvision", str(tmp_path))
  modules = torch_models.load(str(tmp_path))
  x = images()
  ours = _predicted(model, variables, x)
  with torch.no_grad():
    feats = torch_models.stage_outputs(modules["encoder"], torch_models.normalize(x))
    pooled = modules["encoder"](torch_models.normalize(x))
    projection = modules["projection"](pooled)
    maps = {s: torch_models.spatial_softmax(h(feats[s]))
            for s, h in modules["attention"].items()}
  assert close(ours["pooled"], pooled) < RTOL
  assert close(ours["pooled"], feats["pooled"]) < RTOL
  assert close(ours["embedding"], projection) < RTOL
  assert sorted(maps) == ["conv3", "conv4"]
  for stage, m in maps.items():
    assert close(spatial_softmax(ours["attention_logits"][stage]), m) < RTOL


def _onnx_outputs(folder, x):
  ort = pytest.importorskip("onnxruntime")
  session = ort.InferenceSession(os.path.join(folder, "model.onnx"),
                                 providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  return dict(zip(names, session.run(None, {"images": x})))


@SHARED_RUNS
def test_onnx_export_of_simclr_with_heads_takes_any_batch(workdirs, tmp_path):
  run_dir, model, variables = workdirs["pretrain"]
  formats.export(run_dir, "onnx", str(tmp_path))
  x = images()
  ours = _predicted(model, variables, x)
  for rows in (slice(0, 1), slice(None)):  # traced with a batch of 2
    theirs = _onnx_outputs(str(tmp_path), x[rows])
    assert sorted(theirs) == ["attention_conv3", "attention_conv4", "pooled", "projection"]
    assert close(ours["pooled"][rows], theirs["pooled"]) < RTOL
    assert close(ours["embedding"][rows], theirs["projection"]) < RTOL
    for stage in ("conv3", "conv4"):
      assert close(spatial_softmax(ours["attention_logits"][stage][rows]),
                   theirs[f"attention_{stage}"]) < RTOL


@SHARED_RUNS
def test_supervised_run_with_heads_in_torch_and_onnx(workdirs, tmp_path):
  run_dir, model, variables = workdirs["supervised"]
  formats.export(run_dir, "torchvision", str(tmp_path / "tv"))
  formats.export(run_dir, "onnx", str(tmp_path / "onnx"))
  x = images(seed=7)
  ours = _predicted(model, variables, x)
  modules = torch_models.load(str(tmp_path / "tv"))
  with torch.no_grad():
    logits = modules["encoder"](torch_models.normalize(x))
    feats = torch_models.stage_outputs(modules["encoder"], torch_models.normalize(x))
    head = modules["attention"]["conv4"](feats["conv4"])
  assert close(ours["logits"], logits) < RTOL
  assert close(ours["pooled"], feats["pooled"]) < RTOL
  assert close(ours["attention_logits"]["conv4"], head) < RTOL
  theirs = _onnx_outputs(str(tmp_path / "onnx"), x)
  assert sorted(theirs) == ["attention_conv4", "logits", "pooled"]
  assert close(ours["logits"], theirs["logits"]) < RTOL
  assert close(spatial_softmax(ours["attention_logits"]["conv4"]),
               theirs["attention_conv4"]) < RTOL


@SHARED_RUNS
def test_teacher_log_density_in_torch_and_onnx(workdirs, tmp_path):
  run_dir, model, variables = workdirs["teacher"]
  formats.export(run_dir, "torchvision", str(tmp_path / "tv"))
  formats.export(run_dir, "onnx", str(tmp_path / "onnx"))
  x = images(seed=8)
  ours = _predicted(model, variables, x, "log_density")
  modules = torch_models.load(str(tmp_path / "tv"))
  with torch.no_grad():
    _, log_density = modules["teacher"](torch_models.normalize(x))
  assert ours.shape == (3, 8, 8)
  assert close(ours, log_density) < RTOL
  assert close(ours, _onnx_outputs(str(tmp_path / "onnx"), x)["log_density"]) < RTOL


@SHARED_RUNS
def test_linear_eval_classifier_and_the_hugging_face_folder(workdirs, tmp_path):
  linear_dir, kernel, bias = workdirs["linear_eval"]
  run_dir, model, variables = workdirs["pretrain"]
  results = tmp_path / "results" / "robustness"
  os.makedirs(results)
  (results / "results.json").write_text(json.dumps({
      "task": "robustness", "source_workdir": run_dir, "source_step": 3,
      "dataset": {"name": "salient_objects/classification", "splits": ["validation"]},
      "linear/mCE": 0.8125, "wall_time_s": 1.0}))
  written = formats.export(linear_dir, "hf", str(tmp_path / "hf"),
                           [str(tmp_path / "results")])
  assert sorted(os.path.basename(p) for p in written) == [
      "README.md", "config.json", "model.safetensors"]
  card = (tmp_path / "hf" / "README.md").read_text()
  assert "| linear/mCE | 0.8125 |" in card and "hf upload" in card and "CVPR" in card
  modules = torch_models.load(str(tmp_path / "hf"))
  x = images(seed=9)
  pooled = np.asarray(_predicted(model, variables, x, "pooled"))
  with torch.no_grad():
    logits = modules["classifier"](modules["encoder"](torch_models.normalize(x)))
  assert close(pooled @ kernel + bias, logits) < RTOL
  formats.export(linear_dir, "onnx", str(tmp_path / "onnx"))
  assert close(pooled @ kernel + bias, _onnx_outputs(str(tmp_path / "onnx"), x)["logits"]) < RTOL


def _torch_tensors(model, seed):
  from attn_contrastive.export import torch_names
  variables = helpers.filled_variables(model, (1, 32, 32, 3), seed=seed)  # shapes traced only
  params = variables["params"]
  return {k: torch.as_tensor(v) for k, v in torch_names.to_torch(
      params, variables["batch_stats"], torch_names.encoder_pairs(params)).items()}


def test_resnet18_loads_strictly_in_torchvision_and_timm():
  from attn_contrastive.export import collect
  from attn_contrastive.models.resnet import ResNet
  timm = pytest.importorskip("timm")
  tensors = _torch_tensors(ResNet(depth=18, width=64, num_classes=10), seed=18)
  layout = collect.resnet_layout(ml_collections.ConfigDict(
      dict(depth=18, width=64, stem_kernel=7, stem_stride=2, stem_pool=True)))
  assert collect.torchvision_name(layout) == "resnet18"
  torchvision.models.resnet18(num_classes=10).load_state_dict(tensors, strict=True)
  timm.create_model("resnet18", pretrained=False, num_classes=10).load_state_dict(
      tensors, strict=True)


def test_bottleneck_names_are_torchvisions():
  """A narrow ResNet-50: conv3/bn3 and the first stage's projection shortcut."""
  from attn_contrastive.models.resnet import ResNet
  tensors = _torch_tensors(ResNet(depth=50, width=4, stem_kernel=3, stem_stride=1,
                                  stem_pool=False), seed=50)
  assert "layer1.0.downsample.0.weight" in tensors and "layer4.2.bn3.running_var" in tensors
  torch_models.resnet(depth=50, width=4, stem_kernel=3, stem_stride=1,
                      stem_pool=False).load_state_dict(tensors, strict=True)


class _State(types.SimpleNamespace):
  def replace(self, **kwargs):
    return _State(**dict(vars(self), **kwargs))


class _NoCheckpoint:
  def latest_step(self):
    return None


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_weights_init_export_round_trip(tmp_path, suffix):
  """torchvision weights → init_checkpoint of a supervised run → export: the same
  tensors; the attention head keeps its own start."""
  from safetensors.torch import save_file
  config = supervised_config()
  model = build_model(config)
  theirs = torch_models.resnet(**helpers.TINY_RESNET, num_classes=4).state_dict()
  rng = np.random.default_rng(5)
  theirs = {k: torch.as_tensor(rng.normal(0.5, 0.2, v.shape).astype(np.float32))
            if v.is_floating_point() else v for k, v in theirs.items()}
  path = str(tmp_path / f"weights{suffix}")
  torch.save(theirs, path) if suffix == ".pth" else save_file(theirs, path)
  start = helpers.filled_variables(model, (1, helpers.SIZE, helpers.SIZE, 3), seed=6)
  config.init_checkpoint = f"torchvision:{path}"
  state = loop._restore(config, _State(**jax.device_put(start)), _NoCheckpoint())
  run_dir = tmp_path / "run"
  os.makedirs(run_dir)
  loop.write_config(str(run_dir), config)
  ckpt = ckpt_lib.Checkpointer(str(run_dir), async_save=False)
  ckpt.save(1, {"params": state.params, "batch_stats": state.batch_stats, "step": np.int32(1)})
  ckpt.close()
  formats.export(str(run_dir), "torchvision", str(tmp_path / "out"))
  from safetensors.torch import load_file
  exported = load_file(str(tmp_path / "out" / "encoder.safetensors"))
  assert sorted(exported) == sorted(theirs)
  for key, value in theirs.items():
    assert torch.equal(exported[key], value), key
  np.testing.assert_array_equal(state.params["attention"]["attention_conv4"]["Conv_0"]["kernel"],
                                start["params"]["attention"]["attention_conv4"]["Conv_0"]["kernel"])


def test_torchvision_weights_start_the_teachers_encoder_only(tmp_path):
  from attn_contrastive.export import torch_names
  from attn_contrastive.train import torchvision_init
  from safetensors.torch import save_file
  theirs = {k: torch.rand(v.shape) if v.is_floating_point() else v for k, v in
            torch_models.resnet(**helpers.TINY_RESNET).state_dict().items()}
  path = str(tmp_path / "encoder.safetensors")
  save_file(theirs, path)
  start = helpers.filled_variables(build_model(helpers.tiny_teacher_config()),
                                   (1, helpers.SIZE, helpers.SIZE, 3))
  new = torchvision_init.init_variables(path, start, "teacher")
  enc = torch_names.to_torch(new["params"]["encoder"], new["batch_stats"]["encoder"],
                             torch_names.encoder_pairs(new["params"]["encoder"]))
  assert sorted(enc) == sorted(theirs)
  for key, value in theirs.items():
    np.testing.assert_array_equal(enc[key], value.numpy(), err_msg=key)
  assert new["params"]["head"] is start["params"]["head"]  # the decoder starts fresh


def test_weights_saved_from_a_wrapped_model_are_read_under_torchvisions_names(tmp_path):
  """A DistributedDataParallel model's checkpoint (``{"state_dict": {"module.…"}}``)
  and a torch.compile'd one's (``_orig_mod.…``) read as the bare model's."""
  from attn_contrastive.train import torchvision_init
  bare = torch_models.resnet(**helpers.TINY_RESNET).state_dict()
  for wrapper, layout in (("module.", "state_dict"), ("_orig_mod.", None)):
    wrapped = {wrapper + k: v for k, v in bare.items()}
    path = str(tmp_path / f"{wrapper.strip('._')}.pth")
    torch.save({layout: wrapped, "epoch": 3} if layout else wrapped, path)
    read = torchvision_init.read_state_dict(path)
    assert sorted(read) == sorted(bare)
    for key, value in bare.items():
      np.testing.assert_array_equal(read[key], value.numpy(), err_msg=key)


def test_torchvision_weights_of_another_layout_are_refused(tmp_path):
  from attn_contrastive.train import torchvision_init
  path = str(tmp_path / "r18.pth")
  torch.save(torch_models.resnet(18, width=8).state_dict(), path)
  model = build_model(helpers.tiny_config("supervised"))
  start = helpers.filled_variables(model, (1, helpers.SIZE, helpers.SIZE, 3))
  with pytest.raises(ValueError, match="has shape .* set model.depth and model.width"):
    torchvision_init.init_variables(path, start, "supervised")
  with pytest.raises(ValueError, match="cannot start from torchvision weights"):
    torchvision_init.init_variables(path, start, "pretrain")
  pretrain = helpers.tiny_config("pretrain")
  pretrain.init_checkpoint = f"torchvision:{path}"
  assert any("torchvision weights start the encoder of supervised or teacher runs only" in p
             for p in config_checks.problems(pretrain))
