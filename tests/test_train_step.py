"""The jitted data-parallel step: 8 devices equal 1, and resume is exact."""
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_contrastive.data import pipeline
from attn_contrastive.models.resnet import ResNet
from attn_contrastive.models.simclr import simclr_from_config
from attn_contrastive.tasks import pretrain, supervised
from attn_contrastive.train import loop
from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train import optim
from attn_contrastive.train import step as step_lib
from attn_contrastive.train.state import create_train_state

from fakes import random_images
from helpers import SIZE, TINY_RESNET, run_steps, tiny_config, zip_leaves


def _assert_trees_close(a, b, rtol=2e-4, atol=2e-5):
  """Leaf by leaf; the defaults are for 8 devices against 1 after two steps at a low
  rate: sums over rows in another order (about n·eps each), measured ≤ 0.1 of it."""
  for x, y in zip_leaves(a, b):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("task", ["pretrain", "supervised"])
def test_eight_devices_equal_one(task):
  assert jax.device_count() == 8
  config = tiny_config(task)
  rng = np.random.default_rng(0)
  if task == "pretrain":
    model = simclr_from_config(config.model)
    loss_fn = pretrain.make_loss_fn(model, config)
    batch = {k: rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
             for k in ("view1", "view2")}
  else:
    model = ResNet(**TINY_RESNET, num_classes=4)
    loss_fn = supervised.make_loss_fn(model, config)
    batch = {"image": rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8),
             "label": rng.integers(0, 4, (16,), dtype=np.int32)}
  _, p8, s8, m8 = run_steps(8, config, model, loss_fn, batch)
  p0, p1, s1, m1 = run_steps(1, config, model, loss_fn, batch)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  _assert_trees_close(p8, p1)
  _assert_trees_close(s8, s1)
  # The steps really moved the parameters.
  diffs = [np.abs(x - y).max() for x, y in zip_leaves(p0, p1)]
  assert max(diffs) > 1e-3


def _toy_task(config):
  model = simclr_from_config(config.model)
  return loop.TaskSpec(
      model=model, loss_fn=pretrain.make_loss_fn(model, config),
      train_source=random_images(64, 24, seed=3, classes=4, random_labels=True),
      train_transform=pipeline.ContrastiveViews(SIZE, config.aug),
      sample_input=jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))


def test_resume_after_kill_matches_straight_run(tmp_path):
  config = tiny_config()
  straight, _ = loop.run(config, str(tmp_path / "straight"), _toy_task(config))
  killed_dir = str(tmp_path / "killed")
  loop.run(config, killed_dir, _toy_task(config), stop_at=2)
  resumed, _ = loop.run(config, killed_dir, _toy_task(config))
  assert int(resumed.step) == int(straight.step) == 4
  for a, b in zip_leaves(*jax.device_get(((straight.params, straight.batch_stats),
                                            (resumed.params, resumed.batch_stats)))):
    np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
  config = tiny_config()
  loop.run(config, str(tmp_path), _toy_task(config), stop_at=2)
  task = _toy_task(config)
  good_loss = task.loss_fn
  task.loss_fn = lambda *a: (lambda l, aux: (l * jnp.nan, aux))(*good_loss(*a))
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"at step 3 \(not finite: grad_norm, loss.*\).*step 2"):
    loop.run(config, str(tmp_path), task)
  from attn_contrastive.train.checkpoint import Checkpointer
  assert Checkpointer(str(tmp_path)).latest_step() == 2


class _DenseBN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))


def _dense_bn_loss(model):
  def loss_fn(params, batch_stats, batch, rng):
    del rng
    out, upd = model.apply({"params": params, "batch_stats": batch_stats}, batch["x"],
                           train=True, mutable=["batch_stats"])
    poison = jnp.where(jnp.any(batch["bad"]), jnp.nan, 1.0)
    return jnp.mean(jnp.square(out - 1.0)) * poison, (upd["batch_stats"], {})
  return loss_fn


def test_a_skipped_step_changes_nothing_but_the_step_and_the_count():
  config = tiny_config("supervised")
  config.train.skip_nonfinite_steps = 3
  model = _DenseBN()
  schedule = optim.make_schedule(config.optim, 16, 4, 1)
  tx = optax.apply_if_finite(optim.make_optimizer(config.optim, schedule), 4)
  mesh = mesh_lib.make_mesh(1)
  state = create_train_state(model, tx, jax.ShapeDtypeStruct((1, 5), jnp.float32), 0,
                             mesh_lib.replicated(mesh))
  step = jax.jit(step_lib.make_train_step(_dense_bn_loss(model), schedule, skip_nonfinite=True))
  rng = jax.random.PRNGKey(0)
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 5))
  good, bad = {"x": x, "bad": jnp.zeros(16, bool)}, {"x": x * 3, "bad": jnp.ones(16, bool)}
  state, _ = step(state, good, rng)
  before = jax.device_get((state.params, state.batch_stats))
  state, metrics = step(state, bad, rng)
  assert not np.isfinite(float(metrics["loss"]))
  after = jax.device_get((state.params, state.batch_stats))
  for a, b in zip_leaves(before, after):
    np.testing.assert_array_equal(a, b)
  assert int(state.step) == 2 and loop.skipped_steps(state) == 1
  state, metrics = step(state, good, rng)
  assert np.isfinite(float(metrics["loss"])) and loop.skipped_steps(state) == 1
  moved = jax.device_get(state.params)
  assert any(np.abs(a - b).max() > 0 for a, b in zip_leaves(before[0], moved))


def test_skipping_stops_past_its_limit(tmp_path):
  config = tiny_config()
  config.train.skip_nonfinite_steps = 1
  task = _toy_task(config)
  good_loss = task.loss_fn
  task.loss_fn = lambda *a: (lambda l, aux: (l * jnp.nan, aux))(*good_loss(*a))
  with pytest.raises(loop.NonFiniteLossError,
                     match="2 steps skipped .* by step 2, more than "
                           "train.skip_nonfinite_steps=1"):
    loop.run(config, str(tmp_path), task)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
  """A workdir's checkpoint resumes only under the config that wrote it (up to where
  things are and how often the loop reports), unless asked."""
  config = tiny_config()
  loop.run(config, str(tmp_path), _toy_task(config), stop_at=2)
  changed = tiny_config()
  changed.optim.base_lr = 0.5
  changed.loss.temperature = 0.3
  changed.train.log_every = 2        # reporting only: allowed
  changed.input.num_threads = 2
  with pytest.raises(ValueError, match=r"differing keys:\n  loss.temperature: 0.2 → 0.3\n"
                                       r"  optim.base_lr: 1.0 → 0.5\nUse another --workdir"):
    loop.run(changed, str(tmp_path), _toy_task(changed))
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["optim"]["base_lr"] == 1.0            # the refusal wrote nothing
  changed.train.resume_with_changes = True
  state, _ = loop.run(changed, str(tmp_path), _toy_task(changed))
  assert int(state.step) == 4


def test_init_checkpoint_of_another_model_names_the_first_mismatch(tmp_path):
  config = tiny_config()
  loop.run(config, str(tmp_path / "a"), _toy_task(config), stop_at=2)
  wider = tiny_config()
  wider.model.width = 8
  wider.init_checkpoint = str(tmp_path / "a")
  with pytest.raises(ValueError, match=r"does not match this model: \w+/encoder/\S+ has "
                                       r"shape \([^)]*4,?\) there and \([^)]*8,?\) here"):
    loop.run(wider, str(tmp_path / "b"), _toy_task(wider))


def test_a_truncated_checkpoint_is_named_with_the_step_to_fall_back_to(tmp_path):
  import shutil
  from attn_contrastive.train import checkpoint as ckpt_lib
  config = tiny_config()
  loop.run(config, str(tmp_path), _toy_task(config), stop_at=4)   # checkpoints 2 and 4
  files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "checkpoints" / "4" / "state")
           for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"step 4 .* cannot be read .*delete \S+/checkpoints/4 to resume "
                           r"from step 2"):
    loop.run(config, str(tmp_path), _toy_task(config))
  shutil.rmtree(tmp_path / "checkpoints" / "4")
  state, _ = loop.run(config, str(tmp_path), _toy_task(config))
  assert int(state.step) == 4


def _disk_usage(path):
  return sum(os.stat(os.path.join(d, f)).st_blocks * 512
             for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.parametrize("async_save", [False, True])
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, async_save):
  """On a real filesystem too small for a second checkpoint (a tmpfs the test mounts):
  a clear error naming the full disk, and the first checkpoint intact and restorable."""
  import subprocess
  from attn_contrastive.train import checkpoint as ckpt_lib
  config = tiny_config()
  config.train.async_checkpoint = async_save
  probe = tmp_path / "probe"
  loop.run(config, str(probe), _toy_task(config), stop_at=2)
  size = _disk_usage(probe) + _disk_usage(probe / "checkpoints") // 2
  mnt = tmp_path / "small_disk"
  mnt.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                    capture_output=True).returncode:
    pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
  try:
    with pytest.raises(ckpt_lib.CheckpointError,
                       match="of step 4 .* failed: the disk is full. The checkpoint of step 2 "
                             "is intact and a restart resumes from it; free space"):
      loop.run(config, str(mnt), _toy_task(config))
    variables = ckpt_lib.load_variables(str(mnt))
    saved = ckpt_lib.load_variables(str(probe))
    # The next start clears the half-written save (orbax does it in the background).
    restart = ckpt_lib.Checkpointer(str(mnt))
    for _ in range(100):
      if sorted(os.listdir(mnt / "checkpoints")) == ["2"]:
        break
      time.sleep(0.1)
    restart.close()
    assert sorted(os.listdir(mnt / "checkpoints")) == ["2"]
    for a, b in zip_leaves(variables, saved):
      np.testing.assert_array_equal(a, b)
  finally:
    subprocess.run(["umount", "-l", str(mnt)])
