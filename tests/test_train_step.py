"""The jitted data-parallel step: 8 devices equal 1, the fused step equals the paper's
definitions written out, and resume is exact."""
import functools
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
from attn_contrastive.train.state import TrainState, create_train_state

from fakes import random_images
from helpers import (SIZE, TINY_RESNET, filled_variables, run_steps, standardise, tiny_config,
                     zip_leaves)


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


# ---------------------------------------------------------------------------
# One fused step (NT-Xent + L_attn, LARS, the schedule, global BatchNorm) against
# the paper's definitions written here.
# ---------------------------------------------------------------------------

EPS32 = float(np.finfo(np.float32).eps)
PEAK_LR, TOTAL_STEPS = 1.0 * 16 / 256, 4  # base_lr × batch / 256 (linear scaling)


def _fused_config():
  """SimCLR with heads on conv3/conv4; every constant of the step away from its default
  (a wire that drops one is seen): temperature, α, β, BatchNorm momentum, LARS's weight
  decay, trust coefficient and momentum."""
  config = tiny_config()
  config.model.bn_momentum = 0.8
  config.loss.temperature = 0.5
  config.attention.update(dict(enabled=True, stages=("conv3", "conv4"), width=4, alpha=0.7,
                               beta=0.5, map_size=8))
  config.optim.update(dict(weight_decay=1e-2, trust_coefficient=0.02, momentum=0.7))
  config.train.num_steps = TOTAL_STEPS
  return config


def _cosine_lr(step):
  """The schedule, written out: no warm-up, cosine decay from the peak to 0."""
  return PEAK_LR * 0.5 * (1 + jnp.cos(jnp.pi * step / TOTAL_STEPS))


def _pillow_resize(maps, hw):
  """Teacher maps at a head's resolution: Pillow's antialiased bilinear filter."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.stack([np.asarray(Image.fromarray(m, mode="F").resize(hw[::-1], Image.BILINEAR))
                   for m in np.asarray(maps, np.float32)])


def _views(batch):
  """Both views as one batch of 2N rows, as the network sees them."""
  return standardise(jnp.concatenate([batch["view1"], batch["view2"]]))


def _paper_loss(model, config, params, batch_stats, batch, targets):
  """NT-Xent over the global batch + Σ_i (α·KLD(m'_i ‖ m_i) − β·NSS(m_i, p'_i)).

  NT-Xent at SimCLR's scale (the view-1 anchors' mean cross-entropy plus the
  view-2 anchors'): each anchor's positive is the other view of its image, its
  negatives the other 2N − 2 rows. m_i: the spatial softmax of head i's logits;
  m'_i: the teacher map at that head's resolution (``targets``) normalised to sum 1;
  p'_i = m'_i, a fixation density: NSS = Σ p'·z(m) / Σ p' with z the z-score.
  """
  out = model.apply({"params": params, "batch_stats": batch_stats}, _views(batch),
                    train=True, mutable=["batch_stats"])[0]
  z = out["embedding"] / jnp.linalg.norm(out["embedding"], axis=1, keepdims=True)
  n2 = z.shape[0]
  sim = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, z @ z.T / config.loss.temperature)
  positive = sim[jnp.arange(n2), (jnp.arange(n2) + n2 // 2) % n2]
  nt_xent = 2 * jnp.mean(jax.nn.logsumexp(sim, axis=1) - positive)
  attn = config.attention
  l_attn = 0.0
  for stage, logits in out["attention_logits"].items():
    flat = logits.reshape(n2, -1)
    m = jax.nn.softmax(flat, axis=1)
    q = targets[stage].reshape(n2, -1)
    q = q / q.sum(1, keepdims=True)
    kld = jnp.sum(jnp.where(q > 0, q * (jnp.log(jnp.where(q > 0, q, 1.0)) - jnp.log(m)), 0.0), 1)
    zm = (m - m.mean(1, keepdims=True)) / m.std(1, keepdims=True)
    nss = jnp.sum(q * zm, 1) / jnp.sum(q, 1)
    l_attn = l_attn + attn.alpha * kld.mean() - attn.beta * nss.mean()
  return nt_xent + l_attn


def _batchnorm_inputs(model, params, batch_stats, batch):
  """``{path of a BatchNorm: its input}`` in the training forward pass of the views."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      seen[context.module.path] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply({"params": params, "batch_stats": batch_stats}, _views(batch), train=True,
                mutable=["batch_stats"])
  return seen


def _running_statistics(batch_stats, inputs, momentum):
  """Each BatchNorm's running mean and (biased) variance moved towards the statistics of
  its input over the whole global batch (every axis but the channels), in float64."""
  new = jax.tree.map(np.array, batch_stats)
  for path, x in inputs.items():
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    node = new
    for name in path:
      node = node[name]
    node["mean"] = momentum * node["mean"] + (1 - momentum) * x.mean(0)
    node["var"] = momentum * node["var"] + (1 - momentum) * x.var(0)
  return new


def _reference_steps(model, config, variables, batch, steps):
  """``steps`` steps written from the definitions: jax.grad of the paper's loss on one
  device, optax's LARS (weight decay and trust ratio on the weight matrices and kernels
  only) at the cosine rate above, running statistics over the global batch."""
  targets = {s: _pillow_resize(jnp.concatenate([batch["map1"], batch["map2"]]), hw)
             for s, hw in (("conv3", (8, 8)), ("conv4", (4, 4)))}
  matrices = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
  o = config.optim
  tx = optax.lars(_cosine_lr, weight_decay=o.weight_decay, weight_decay_mask=matrices,
                  trust_coefficient=o.trust_coefficient, eps=0.0, trust_ratio_mask=matrices,
                  momentum=o.momentum, nesterov=False)
  loss_and_grad = jax.jit(jax.value_and_grad(functools.partial(_paper_loss, model, config)))
  inputs_of = jax.jit(functools.partial(_batchnorm_inputs, model))

  @jax.jit
  def apply_lars(grads, opt_state, params):
    """optax's update as one program: run op by op, its hundreds of small operations
    would each compile on their own."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, stats = variables["params"], variables["batch_stats"]
  opt_state, losses = jax.jit(tx.init)(params), []
  for _ in range(steps):
    loss, grads = loss_and_grad(params, stats, batch, targets)
    new_stats = _running_statistics(stats, inputs_of(params, stats, batch),
                                    config.model.bn_momentum)
    params, opt_state = apply_lars(grads, opt_state, params)
    stats = new_stats
    losses.append(float(loss))
  return losses, jax.device_get(params), stats


def test_fused_step_equals_the_papers_loss_lars_and_global_batch_statistics():
  """Two steps of the project's jitted step on 8 devices (the batch split over them)
  against the same two steps written from the definitions on one device."""
  config = _fused_config()
  model = simclr_from_config(config.model, config.attention)
  rng = np.random.default_rng(5)
  batch = {k: rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
           for k in ("view1", "view2")}
  batch.update({k: rng.random((16, 8, 8)).astype(np.float32) for k in ("map1", "map2")})
  variables = filled_variables(model, (1, SIZE, SIZE, 3))
  mesh = mesh_lib.make_mesh(8)
  schedule = optim.make_schedule(config.optim, 16, TOTAL_STEPS, 1)
  state = jax.device_put(
      TrainState.create(apply_fn=model.apply, params=variables["params"],
                        batch_stats=variables["batch_stats"],
                        tx=optim.make_optimizer(config.optim, schedule)),
      mesh_lib.replicated(mesh))
  step = step_lib.jit_train_step(
      step_lib.make_train_step(pretrain.make_loss_fn(model, config), schedule), mesh)
  losses, rates = [], []
  for _ in range(2):
    state, metrics = step(state, mesh_lib.to_global(batch, mesh),
                          jax.device_put(jax.random.PRNGKey(0), mesh_lib.replicated(mesh)))
    losses.append(float(metrics["loss"]))
    rates.append(float(metrics["learning_rate"]))
  params, stats = jax.device_get((state.params, state.batch_stats))
  want_losses, want_params, want_stats = _reference_steps(model, config, variables, batch, 2)

  np.testing.assert_allclose(rates, [_cosine_lr(0), _cosine_lr(1)], rtol=1e-6)
  # The losses: the same sums (BatchNorm's over 32 rows × 16² px, NT-Xent's over 32
  # rows, the heads' over 64 px) in another order on 8 devices, about log2(n)·eps each
  # in a pairwise sum, and the float32 rounding of the definitions written otherwise
  # (a log-sum-exp against a softmax cross-entropy): rtol 1e-5 is 80 eps.
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  # The movement of every leaf over the two steps (not the values: LARS moves a kernel
  # by 1e-3 of its size, which a tolerance on the values could not see). Error model:
  # each step rounds p − u to half an ulp of |p| in either computation (2·eps·max|p|),
  # and the update is made of sums reordered and of gradients rounded otherwise, each
  # off by n·eps of the sum's magnitude at most for the longest sums (n = 32 rows ×
  # 16² px, 1e-3 of the leaf's largest movement).
  assert jax.tree.structure(params) == jax.tree.structure(want_params)
  init = variables["params"]
  for path, got in jax.tree_util.tree_leaves_with_path(params):
    p0, want = np.asarray(_at(init, path)), np.asarray(_at(want_params, path))
    moved = want - p0
    if path[0].key == "attention" and path[-2:] == (jax.tree_util.DictKey("Conv_1"),
                                                    jax.tree_util.DictKey("bias")):
      # A head's output bias shifts all its logits alike, which the spatial softmax
      # ignores: its gradient is zero up to rounding, and so is its movement here
      # and there (far below the 1e-3 that every other leaf moves by).
      assert np.abs(moved).max() < 1e-6 and np.abs(got - p0).max() < 1e-6, path
      continue
    rounding = 2 * EPS32 * max(np.abs(p0).max(), np.abs(want).max())
    assert np.abs(moved).max() > 100 * rounding, path  # the comparison can see the update
    np.testing.assert_allclose(got - p0, moved, rtol=1e-3,
                               atol=rounding + 1e-3 * np.abs(moved).max(), err_msg=str(path))
  # The running statistics: the batch's mean and variance of each BatchNorm's input,
  # computed over the 32 rows × h×w px in float32 by the step (flax: E[x²] − E[x]², which
  # cancels to about n·eps·E[x²]) and in float64 here.
  assert jax.tree.structure(stats) == jax.tree.structure(want_stats)
  for path, got in jax.tree_util.tree_leaves_with_path(stats):
    want = _at(want_stats, path)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=str(path))


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


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


def test_a_restored_state_has_a_fresh_states_types_so_resuming_reuses_its_program(tmp_path):
  """Every leaf restored from a checkpoint has the fresh state's dtype, weak type and
  sharding: the jitted step's inputs are then the same, and so is its program (a
  resumed run finds it in the persistent compilation cache instead of compiling)."""
  from attn_contrastive.train import checkpoint as ckpt_lib
  class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      return nn.BatchNorm(use_running_average=not train)(nn.Dense(3)(x))

  mesh = mesh_lib.make_mesh()
  fresh = create_train_state(Linear(), optax.sgd(0.1, momentum=0.9),
                             jax.ShapeDtypeStruct((1, 4), jnp.float32), 0,
                             mesh_lib.replicated(mesh))
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(2, fresh.replace(step=fresh.step + 2))
  restored, step = ckpt.restore(fresh)
  ckpt.close()
  assert step == int(restored.step) == 2

  def types(state):
    return [(jax.tree_util.keystr(path), x.dtype, x.weak_type, x.sharding)
            for path, x in jax.tree_util.tree_leaves_with_path(state)]

  assert types(restored) == types(fresh)
  assert (fresh.step.dtype, fresh.step.weak_type) == (jnp.int32, False)


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
