"""Export to torchvision, timm, ONNX and a Hugging Face folder, and torchvision weights as
``init_checkpoint``: the copies compute what the project's networks compute."""
import json
import os
import sys
import types

import jax
import numpy as np
import pytest

from tests import helpers

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

pytestmark = pytest.mark.xdist_group("export")


def _import_torchvision():
  """torchvision, imported beside a CPU build of torch whose operators its wheel's C
  extension cannot register: its fake-tensor registrations of those operators (unused
  by the models) are skipped."""
  if "torchvision" not in sys.modules:
    try:
      import torchvision  # pylint: disable=unused-import
    except RuntimeError:
      for name in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[name]
      sys.modules["torchvision._meta_registrations"] = types.ModuleType("_meta_registrations")
  return pytest.importorskip("torchvision")


torchvision = _import_torchvision()

from attn_contrastive.export import formats  # pylint: disable=g-import-not-at-top
from attn_contrastive.export import torch_models  # pylint: disable=g-import-not-at-top
from attn_contrastive.models import forward  # pylint: disable=g-import-not-at-top
from attn_contrastive.models.attention import spatial_softmax  # pylint: disable=g-import-not-at-top
from attn_contrastive.models.build import build_model  # pylint: disable=g-import-not-at-top
from attn_contrastive.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
from attn_contrastive.train import loop  # pylint: disable=g-import-not-at-top

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
  os.makedirs(workdir)
  loop.write_config(str(workdir), config)
  ckpt = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  ckpt.save(3, {"params": variables["params"], "batch_stats": variables["batch_stats"],
                "step": np.int32(3)})
  ckpt.close()
  return str(workdir), model, variables


def pretrain_config():
  c = helpers.tiny_config("pretrain")
  c.attention.update(dict(enabled=True, width=4))
  return c


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  out = {
      "pretrain": write_run(root / "simclr", pretrain_config(), 1),
      "supervised": write_run(root / "supervised", helpers.tiny_config("supervised"), 2),
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


def test_torchvision_export_of_simclr_computes_the_same(workdirs, tmp_path):
  run_dir, model, variables = workdirs["pretrain"]
  formats.export(run_dir, "torchvision", str(tmp_path))
  modules = torch_models.load(str(tmp_path))
  x = images()
  ours = jax.device_get(forward.predict(model, np.float32)(variables, x))
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
