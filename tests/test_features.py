"""Feature extraction over a split: order, labels, shards and resume."""
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attn_contrastive.evaluators import features
from attn_contrastive.train import mesh as mesh_lib
from fakes import Split


def _split(n):
  """Tiny images whose mean pixel encodes the index."""
  return Split(image=np.stack([np.full((4, 4, 3), i % 251, np.uint8) for i in range(n)]),
               label=np.arange(n) % 7)


def _embed(state, images):
  x = images.astype(jnp.float32).mean(axis=(1, 2))  # [B, 3], every channel = index
  return x * state["w"]


def _eval_cfg(batch, max_examples=-1):
  return ml_collections.ConfigDict(dict(batch_size=batch, max_examples=max_examples,
                                        num_threads=2))


@pytest.mark.parametrize("n_devices", [1, 8])
def test_features_come_back_in_split_order(n_devices):
  mesh = mesh_lib.make_mesh(n_devices)
  state = {"w": jnp.float32(2.0)}
  src = _split(37)  # not a multiple of the batch: the last batch is padded
  f, lab = features.extract(_embed, state, src, lambda ex: ex, _eval_cfg(16), mesh=mesh)
  np.testing.assert_array_equal(f[:, 0], 2.0 * np.arange(37))
  np.testing.assert_array_equal(lab, np.arange(37) % 7)
  f5, _ = features.extract(_embed, state, src, lambda ex: ex, _eval_cfg(8, 5), mesh=mesh)
  assert f5.shape == (5, 3)


def test_cached_shards_are_reused_and_checked(tmp_path):
  state = {"w": jnp.float32(1.0)}
  src = _split(30)
  cache = str(tmp_path / "train")
  f, _ = features.extract(_embed, state, src, lambda ex: ex, _eval_cfg(8), cache_dir=cache,
                          shard_size=12)
  assert sorted(os.listdir(cache)) == ["00000.npz", "00001.npz", "00002.npz"]
  # A finished shard is read back, not recomputed: other weights, same first shards.
  os.remove(os.path.join(cache, "00002.npz"))
  f2, _ = features.extract(_embed, {"w": jnp.float32(5.0)}, src, lambda ex: ex, _eval_cfg(8),
                           cache_dir=cache, shard_size=12)
  np.testing.assert_array_equal(f2[:24], f[:24])
  np.testing.assert_array_equal(f2[24:], 5.0 * f[24:])
  # One block of rows (a process's part of a gallery): read from the shards it overlaps.
  for rows in (slice(10, 27), slice(30, 32)):
    part, lab = features.extract(_embed, {"w": jnp.float32(5.0)}, src, lambda ex: ex,
                                 _eval_cfg(8), cache_dir=cache, shard_size=12, rows=rows)
    np.testing.assert_array_equal(part, f2[rows])
    np.testing.assert_array_equal(lab, np.arange(30)[rows] % 7)
    assert part.shape[1:] == f.shape[1:]
  with pytest.raises(ValueError, match="delete the folder"):
    features.extract(_embed, state, _split(30), lambda ex: ex, _eval_cfg(8), cache_dir=cache,
                     shard_size=10)
