"""The shared evaluation plumbing and the classification evaluator, against NumPy."""
import concurrent.futures

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attn_contrastive.evaluators import classification, common
from attn_contrastive.train import mesh as mesh_lib
from fakes import random_images


def test_split_batches_visits_each_example_once_and_masks_the_padding():
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    batches = list(common.split_batches(lambda i: {"index": i}, 10, 4, pool))
  assert [len(examples) for examples, _ in batches] == [4, 4, 4]
  indices = [ex["index"] for examples, _ in batches for ex in examples]
  mask = np.concatenate([m for _, m in batches])
  assert indices == list(range(10)) + [0, 0]
  np.testing.assert_array_equal(mask, np.arange(12) < 10)


def test_num_examples_limits_and_refuses_an_empty_split():
  assert common.num_examples(range(10), -1) == 10
  assert common.num_examples(range(10), 4) == 4
  with pytest.raises(ValueError, match="empty"):
    common.num_examples([], -1)


def _toy(n=13):
  """Records whose first pixel holds the logits over three classes."""
  return random_images(n, 2, classes=3, random_labels=True)


def _expected(toy, n):
  logits = toy.images[:n, 0, 0].astype(np.float64) / 64
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  labels = toy.labels[:n]
  return (np.mean(logits.argmax(1) == labels),
          -np.mean(log_p[np.arange(n), labels]))


@pytest.mark.parametrize("n_devices,max_examples", [(8, -1), (1, -1), (8, 5)])
def test_classification_matches_numpy(n_devices, max_examples):
  toy = _toy()
  eval_cfg = ml_collections.ConfigDict(dict(batch_size=8, max_examples=max_examples,
                                            num_threads=1))
  evaluator = classification.ClassificationEvaluator(
      lambda state, images: images[:, 0, 0].astype(jnp.float32) / 64, toy, dict, eval_cfg,
      mesh=mesh_lib.make_mesh(n_devices))
  flat = evaluator({})
  accuracy, loss = _expected(toy, 13 if max_examples < 0 else max_examples)
  assert flat["accuracy"] == pytest.approx(accuracy)
  assert flat["loss"] == pytest.approx(loss, rel=1e-5)
  assert evaluator.results == {}
