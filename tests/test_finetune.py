"""Label-efficient fine-tuning (configs/finetune.py): SimCLR's protocol, a tiny run from a
SimCLR run's encoder, and the ImageNet subsets read through tfds mocked (no download)."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from attn_contrastive import config as config_lib
from attn_contrastive import config_checks
from attn_contrastive.train import optim
from helpers import mocked_tfds

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config(arg=""):
  return config_lib.load_config_file(os.path.join(CONFIGS, "finetune.py") + arg)


def test_simclr_fine_tuning_recipe_on_the_imagenet_subsets():
  for subset, epochs in (("1pct", 60), ("10pct", 30)):
    c = _config(f":imagenet,{subset}")
    assert (c.task, c.data.name, c.data.eval_split) == (
        "supervised", f"imagenet2012_subset/{subset}", "validation")
    assert (c.optim.name, c.optim.nesterov, c.optim.momentum) == ("sgd", True, 0.9)
    assert c.optim.base_lr * c.input.global_batch_size / 256 == 0.8  # 0.05 × B/256
    assert (c.optim.weight_decay, c.optim.warmup_epochs, c.train.num_epochs) == (0, 0, epochs)
    assert (c.model.depth, c.finetune.after_block, c.aug.strength) == (50, -1, 0.0)
  c = _config(":imagenet,1pct")
  c.finetune.after_block = 5
  assert any("finetune.after_block" in p for p in config_checks.problems(c))


def test_blocks_up_to_after_block_are_frozen():
  params = {"stem_conv": {"kernel": 1.0}, "conv2_block0": {"kernel": 1.0},
            "conv5_block1": {"bias": 1.0}, "classifier": {"kernel": 1.0}}
  labels = optim.frozen_labels(params, 1)
  assert {k: v[next(iter(v))] for k, v in labels.items()} == {
      "stem_conv": "frozen", "conv2_block0": "frozen", "conv5_block1": "trained",
      "classifier": "trained"}
  assert set(jax.tree.leaves(optim.frozen_labels(params, -1))) == {"trained"}
  assert set(jax.tree.leaves(optim.frozen_labels(params, 4))) == {"frozen", "trained"}


def _tiny(after_block, run_dir):
  from helpers import TINY_MODEL
  c = _config()
  c.model.update(TINY_MODEL)
  c.data.update(dict(image_size=16, num_classes=4))
  c.init_checkpoint = run_dir
  c.finetune.after_block = after_block
  c.input.update(dict(global_batch_size=16, num_threads=1, prefetch=1))
  c.train.update(dict(num_steps=2, log_every=1, checkpoint_every=2, async_checkpoint=False))
  return c


def _train(c, workdir):
  from attn_contrastive.data import pipeline
  from attn_contrastive.models.build import build_model
  from attn_contrastive.tasks import supervised
  from attn_contrastive.train import loop
  from fakes import colours
  model = build_model(c)
  task = loop.TaskSpec(model=model, loss_fn=supervised.make_loss_fn(model, c),
                       train_source=colours(32, 0),
                       train_transform=pipeline.SupervisedView(16, c.aug, None),
                       sample_input=jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  state, _ = loop.run(c, str(workdir), task)
  return jax.device_get(state.params), jax.device_get(state.batch_stats)


def test_fine_tuning_starts_from_the_encoder_under_a_zero_classifier(tmp_path):
  """A tiny SimCLR run's encoder loads into the supervised ResNet with a zero classifier;
  with after_block=4 two steps of fine-tuning train the classifier alone."""
  from attn_contrastive.train import loop
  from helpers import write_run
  run_dir, _, variables = write_run(tmp_path / "simclr", "pretrain")
  encoder = jax.device_get(variables["params"]["encoder"])
  c = _tiny(4, run_dir)
  start = loop._from_encoder(run_dir, {"params": {**encoder, "classifier": {
      "kernel": np.ones((32, 4), np.float32), "bias": np.ones(4, np.float32)}},
                                       "batch_stats": variables["batch_stats"]["encoder"]})
  assert not np.any(start["params"]["classifier"]["kernel"])
  np.testing.assert_array_equal(start["params"]["stem_conv"]["kernel"],
                                encoder["stem_conv"]["kernel"])
  head_only, head_only_stats = _train(c, tmp_path / "head_only")
  for name, leaf in encoder.items():
    for a, b in zip(jax.tree.leaves(leaf), jax.tree.leaves(head_only[name])):
      np.testing.assert_array_equal(a, b)
  assert np.any(head_only["classifier"]["kernel"])
  # Frozen blocks are layers at inference, as in SimCLR: their BatchNorm statistics stay.
  stats = jax.device_get(variables["batch_stats"]["encoder"])
  for name, leaf in stats.items():
    for a, b in zip(jax.tree.leaves(leaf), jax.tree.leaves(head_only_stats[name])):
      np.testing.assert_array_equal(a, b, err_msg=name)
  # after_block=1: the stem and conv2 keep their statistics, the later blocks' move.
  _, partly = _train(_tiny(1, run_dir), tmp_path / "partly")
  for name in stats:
    moved = any(not np.array_equal(a, b) for a, b in
                zip(jax.tree.leaves(stats[name]), jax.tree.leaves(partly[name])))
    assert moved == (optim.FINETUNE_BLOCKS[name.split("_")[0]] > 1), name


def _mocked(n=8):
  return mocked_tfds(n, ("train", "validation"))


def test_the_subsets_read_through_tfds_mocked():
  from attn_contrastive.tasks import supervised
  for subset in ("1pct", "10pct"):
    c = _config(f":imagenet,{subset}")
    with _mocked():
      task = supervised.build_task(c)
      example = task.train_transform(task.train_source[3], np.random.default_rng(0))
    assert len(task.train_source) == 8
    assert example["image"].shape == (224, 224, 3) and 0 <= example["label"] < 1000
