"""Pieces several test files share: a tiny training config and a few steps of it."""
import jax
import jax.numpy as jnp

from attn_contrastive import config as config_lib
from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train import optim
from attn_contrastive.train import step as step_lib
from attn_contrastive.train.state import create_train_state

SIZE = 16


def tiny_config(task: str = "pretrain"):
  """A ResNet-10 of width 4 on 16-px images, batch 16, 4 steps, XLA's convolutions."""
  c = config_lib.base_config()
  c.task = task
  c.data.image_size = SIZE
  c.data.num_classes = 4
  c.model.update(dict(depth=10, width=4, stem_kernel=3, stem_stride=1, stem_pool=False,
                      proj_hidden_dim=16, proj_out_dim=8, conv_impl="xla"))
  c.input.update(dict(global_batch_size=16, num_threads=1, prefetch=1))
  c.optim.update(dict(base_lr=1.0, warmup_epochs=0.0))
  c.train.update(dict(num_steps=4, log_every=1, checkpoint_every=2, async_checkpoint=False))
  if task == "supervised":
    c.optim.update(dict(name="sgd", nesterov=True, weight_decay=1e-4))
  return c


def run_steps(n_devices: int, config, model, loss_fn, batch, *, steps: int = 2,
              schedule_args: tuple[int, int, int] = (16, 4, 1)):
  """``steps`` jitted steps of ``loss_fn`` on ``batch`` over ``n_devices``.

  Returns (initial params, params, batch stats, last metrics) on the host.
  ``schedule_args``: (global batch, total steps, steps per epoch) of the
  schedule, so that a test can reuse another run's compiled program.
  """
  mesh = mesh_lib.make_mesh(n_devices)
  schedule = optim.make_schedule(config.optim, *schedule_args)
  tx = optim.make_optimizer(config.optim, schedule)
  state = create_train_state(model, tx, jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32),
                             0, mesh_lib.replicated(mesh))
  init = jax.device_get(state.params)
  step = step_lib.jit_train_step(step_lib.make_train_step(loss_fn, schedule), mesh)
  rng = jax.device_put(jax.random.PRNGKey(1), mesh_lib.replicated(mesh))
  for _ in range(steps):
    state, metrics = step(state, mesh_lib.to_global(batch, mesh), rng)
  return init, *jax.device_get((state.params, state.batch_stats, metrics))
