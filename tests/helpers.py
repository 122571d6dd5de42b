"""Pieces several test files share: the tiny models and their configs, a few steps of
training, filled variables without a compiled init. (In-memory splits: fakes.py.)"""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from attn_contrastive import config as config_lib
from attn_contrastive.train import mesh as mesh_lib
from attn_contrastive.train import optim
from attn_contrastive.train import step as step_lib
from attn_contrastive.train.state import create_train_state

SIZE = 16

#: The tests' ResNet: ResNet-10 of width 4 with a 3×3 stem of stride 1 and no pooling,
#: so that 16-px images give stages of 16, 8, 4 and 2 px (conv2 … conv5).
TINY_RESNET = dict(depth=10, width=4, stem_kernel=3, stem_stride=1, stem_pool=False)
#: ``config.model`` of the tests' SimCLR: the tiny ResNet, a 16 → 8 projection head and
#: XLA's convolutions.
TINY_MODEL = dict(TINY_RESNET, proj_hidden_dim=16, proj_out_dim=8, conv_impl="xla")


def tiny_config(task: str = "pretrain"):
  """A ResNet-10 of width 4 on 16-px images, batch 16, 4 steps, XLA's convolutions."""
  c = config_lib.base_config()
  c.task = task
  c.data.image_size = SIZE
  c.data.num_classes = 4
  c.model.update(TINY_MODEL)
  c.input.update(dict(global_batch_size=16, num_threads=1, prefetch=1))
  c.optim.update(dict(base_lr=1.0, warmup_epochs=0.0))
  c.train.update(dict(num_steps=4, log_every=1, checkpoint_every=2, async_checkpoint=False))
  if task == "supervised":
    c.optim.update(dict(name="sgd", nesterov=True, weight_decay=1e-4))
  return c


def standardise(images) -> jnp.ndarray:
  """uint8 images as the networks see them, written out: each channel less ImageNet's
  mean, over its standard deviation (float32)."""
  mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
  std = np.array([0.229, 0.224, 0.225], np.float32) * 255
  return (jnp.asarray(images).astype(jnp.float32) - mean) / std


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


def zip_leaves(*trees):
  """The trees' leaves side by side, once the trees are known to have one structure
  (a ``zip`` of their leaves alone would stop at the shortest, and pair leaves of
  different names if one tree lacked a branch)."""
  structures = [jax.tree.structure(t) for t in trees]
  assert all(s == structures[0] for s in structures), structures
  return zip(*(jax.tree.leaves(t) for t in trees))


def bilinear(m: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """A map resized by bilinear interpolation, pixel centres at half-integers and edges
  clamped (upsampling as OpenCV's and jax.image's linear resize do), written out."""

  def taps(n_in, n_out):
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), x - lo

  r0, r1, fr = taps(m.shape[0], out_hw[0])
  c0, c1, fc = taps(m.shape[1], out_hw[1])
  rows = m[r0] * (1 - fr)[:, None] + m[r1] * fr[:, None]
  return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


def nss(saliency: np.ndarray, fixations: np.ndarray) -> float:
  """Normalised scanpath saliency written out: the map z-scored over its pixels (standard
  deviation with ddof 0), averaged over the fixated pixels ``(row, col)`` (a pixel
  fixated twice counts once, as in a binary fixation map)."""
  s = np.asarray(saliency, np.float64)
  z = (s - s.mean()) / s.std()
  rows, cols = np.unique(np.asarray(fixations).reshape(-1, 2), axis=0).T
  return float(z[rows, cols].mean())


def write_run(workdir, task: str, config=None):
  """A run's workdir as training leaves it (``config.json``, a checkpoint at step 3) of
  a tiny ``task`` model (``pretrain`` or ``supervised``; ``config`` instead of
  :func:`tiny_config`'s, a teacher's too) with filled variables, for the evaluation
  tasks and inference, without training. Returns (workdir, model, variables)."""
  from attn_contrastive.models.build import build_model  # pylint: disable=g-import-not-at-top
  config = config if config is not None else tiny_config(task)
  model = build_model(config)
  variables = filled_variables(model, (1, SIZE, SIZE, 3))
  save_run(workdir, config, variables)
  return str(workdir), model, variables


def save_run(workdir, config, variables) -> None:
  """``config.json`` and ``variables`` as the checkpoint at step 3, in a new ``workdir``."""
  import os  # pylint: disable=g-import-not-at-top
  from attn_contrastive.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from attn_contrastive.train import loop  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir)
  loop.write_config(str(workdir), config)
  ckpt = ckpt_lib.Checkpointer(str(workdir), async_save=False)
  ckpt.save(3, {"params": variables["params"], "batch_stats": variables["batch_stats"],
                "step": np.int32(3)})
  ckpt.close()


@contextlib.contextmanager
def mocked_tfds(num_examples: int, splits: tuple[str, ...]):
  """tfds builders served by ``tfds.testing.mock_data`` (``num_examples`` random records
  per split), as the project's sources open them: ``mock_data`` leaves a builder
  unprepared, splitless and TFRecord, which these patches answer."""
  from unittest import mock  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  split_dict = tfds.core.SplitDict([tfds.core.SplitInfo(name=s, shard_lengths=[num_examples],
                                                        num_bytes=0) for s in splits])
  info = tfds.core.DatasetInfo
  with tfds.testing.mock_data(num_examples=num_examples), \
       mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True), \
       mock.patch.object(info, "splits", new_callable=mock.PropertyMock,
                         return_value=split_dict), \
       mock.patch.object(info, "file_format", new_callable=mock.PropertyMock,
                         return_value=tfds.core.FileFormat.ARRAY_RECORD):
    yield


def filled_variables(model, shape, seed: int = 0):
  """Deterministic variables without compiling the model's random init.

  Shapes come from ``jax.eval_shape`` (tracing only); kernels are He-normal
  from NumPy, BatchNorm scales and variances 1, biases and means 0. Keeps the
  tests fast on CPU, where compiling many ``jax.random`` initialisers is slow.
  """
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                               train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(leaf.shape, np.float32)
    if name in ("bias", "mean"):
      return np.zeros(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def tiny_label_config(**label):
  """configs/label.py with a ResNet-10 teacher of width 4 on 16-px images, 8-px maps;
  ``label`` overrides fields of ``config.label`` (num_shards, shape, …) and of
  ``config.eval`` (batch_size, num_threads)."""
  import os  # pylint: disable=g-import-not-at-top
  configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  c = config_lib.load_config_file(os.path.join(configs, "label.py"))
  c.teacher.data.image_size = SIZE
  c.teacher.model.update(dict(TINY_RESNET, decoder_width=4, output_stride=2, conv_impl="xla"))
  c.label.update(dict(map_size=8, num_shards=3))
  c.eval.batch_size = 8
  for key, value in label.items():
    (c.eval if key in c.eval else c.label)[key] = value
  return c


def tiny_teacher_config():
  """A ResNet-10 saliency teacher of width 4 on 16-px images, batch 16, 16 SGD steps."""
  c = config_lib.base_config()
  c.task = "teacher"
  c.data.image_size = SIZE
  c.data.image_width = 0
  c.model.update(dict(TINY_RESNET, conv_impl="xla", decoder_width=8, output_stride=2))
  c.loss.update(dict(kld_weight=1.0, cc_weight=0.2, nss_weight=0.1))
  c.aug.update(dict(area_min=0.5, hflip=True))
  c.input.update(dict(global_batch_size=16, num_threads=1, prefetch=1))
  c.optim.update(dict(name="sgd", base_lr=1.6, nesterov=True, weight_decay=0.0,
                      warmup_epochs=0.0))
  c.train.update(dict(num_steps=16, log_every=4, checkpoint_every=100, async_checkpoint=False))
  c.eval.update(dict(batch_size=16, max_examples=-1, num_images=2, center_bias_sigma=0.25,
                     shuffle_pool=8, shuffle_others=3, num_threads=1))
  return c
