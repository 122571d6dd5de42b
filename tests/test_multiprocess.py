"""Two processes of one device each compute what one process of two devices does.

Real processes on 127.0.0.1 (``jax.distributed``, gloo): training with a
checkpoint and a resume in between, a checkpoint written by two processes
resumed by one, the label task and a linear evaluation; retrieval, kNN and the
kNN monitor with the gallery split between the two processes.
"""
import json
import os

import numpy as np
import pytest

import multiprocess
from attn_contrastive.data import attention_maps as am

# Its tests share a costly module fixture: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("test_multiprocess")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The same plan on 2 processes × 1 device and on 1 process × 2 devices."""
  root = tmp_path_factory.mktemp("layouts")
  two, one = str(root / "two"), str(root / "one")
  phase1 = os.path.join(two, "phase1")
  multiprocess.run([
      ["train", {"workdir": phase1, "steps": 4, "stop_at": 2}],
      ["copy", {"src": phase1, "dst": os.path.join(two, "run")}],
      ["train", {"workdir": os.path.join(two, "run"), "steps": 4}],
      ["label", {"workdir": os.path.join(two, "maps")}],
      ["eval", {"workdir": os.path.join(two, "eval"), "run_dir": phase1}],
      ["gallery", {"workdir": os.path.join(two, "gallery")}],
  ], processes=2, devices=1, log_dir=str(root), tag="two")
  multiprocess.run([
      ["copy", {"src": phase1, "dst": os.path.join(one, "from_two")}],
      ["train", {"workdir": os.path.join(one, "from_two"), "steps": 4}],
      ["train", {"workdir": os.path.join(one, "straight"), "steps": 4}],
      ["label", {"workdir": os.path.join(one, "maps")}],
      ["eval", {"workdir": os.path.join(one, "eval"), "run_dir": phase1}],
      # The probe again, on the two processes' cached features: the same inputs.
      ["copy", {"src": os.path.join(two, "eval", "features"),
                "dst": os.path.join(one, "eval_same_features", "features")}],
      ["eval", {"workdir": os.path.join(one, "eval_same_features"), "run_dir": phase1}],
  ], processes=1, devices=2, log_dir=str(root), tag="one")
  return two, one


def _final(workdir):
  with np.load(os.path.join(workdir, "final.npz")) as z:
    return dict(z)


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _initial():
  """The training stage's variables before its first step, as the loop creates them
  (the same seed and initialiser), flattened as ``final.npz`` is."""
  import jax
  import jax.numpy as jnp
  import optax
  from attn_contrastive.models.simclr import simclr_from_config
  from attn_contrastive.train import mesh as mesh_lib
  from attn_contrastive.train.state import create_train_state
  from helpers import SIZE, tiny_config
  config = tiny_config()
  state = create_train_state(simclr_from_config(config.model), optax.identity(),
                             jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32),
                             config.seed, mesh_lib.replicated(mesh_lib.make_mesh(1)))
  tree = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  return {"/".join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_training_with_a_resume_matches_across_layouts(runs):
  two, one = runs
  straight = _final(os.path.join(one, "straight"))
  for other in (os.path.join(two, "run"), os.path.join(one, "from_two")):
    got = _final(other)
    assert got.keys() == straight.keys()
    # Rows sit on other devices: BatchNorm's, the gradient's and NT-Xent's sums run
    # in another order (about n·eps relative each), and 4 LARS steps at a low rate
    # (0.05 · 16/256) carry that into the parameters without amplifying it past
    # ~1e-6: rtol 2e-4, atol 2e-5 for the entries near zero leave a wide margin.
    for k in straight:
      np.testing.assert_allclose(got[k], straight[k], rtol=2e-4, atol=2e-5, err_msg=k)
    assert _results(other)["step"] == 4
    np.testing.assert_allclose(_results(other)["loss"], _results(
        os.path.join(one, "straight"))["loss"], rtol=1e-4)
  # What the steps did, leaf by leaf: the movement from the initial variables. The
  # comparison above cannot see a wrong update of a kernel (LARS moves it by about
  # 1e-5 of its size, under rtol 2e-4), this one does. Its error model: each of the 4
  # steps rounds p − u to half an ulp of |p| in either run (4·eps·max|p| in all), and
  # the update itself is a sum of the rows reordered across devices, off by at most
  # n·eps relative for the longest such sum (32 rows × 16×16 px: 1e-3).
  eps = np.finfo(np.float32).eps
  init = _initial()
  others = [_final(os.path.join(two, "run")), _final(os.path.join(one, "from_two"))]
  assert init.keys() == straight.keys()
  for k in straight:
    moved = straight[k] - init[k]
    atol = 4 * eps * max(np.abs(init[k]).max(), np.abs(straight[k]).max())
    assert np.abs(moved).max() > 10 * atol, (k, np.abs(moved).max(), atol)  # every leaf
    for got in others:
      np.testing.assert_allclose(got[k] - init[k], moved, rtol=1e-3, atol=atol, err_msg=k)


def test_only_process_zero_writes_logs_and_results(runs):
  two, _ = runs
  phase1 = os.path.join(two, "phase1")  # ("run" also holds phase 1's copied files)
  events = [f for f in os.listdir(phase1) if f.startswith("events.out.tfevents")]
  assert len(events) == 1, os.listdir(phase1)
  assert not os.path.exists(os.path.join(phase1, "results.json"))  # stopped at step 2
  assert sorted(os.listdir(os.path.join(two, "run", "checkpoints"))) == ["2", "4"]


def test_label_task_writes_every_map_once_whatever_the_layout(runs):
  two, one = runs
  a = am.AttentionMapSource(os.path.join(two, "maps"))
  b = am.AttentionMapSource(os.path.join(one, "maps"))
  keys = [a[i]["file_name"] for i in range(len(a))]
  assert keys == [f"img_{i:03d}.png" for i in range(37)]
  for i in range(len(a)):
    assert b[i]["file_name"] == keys[i]
    diff = np.abs(a[i]["attention_map"].astype(int) - b[i]["attention_map"].astype(int))
    assert diff.max() <= 1, i
  counts = _results(os.path.join(two, "maps"))
  assert counts["images_labelled"] == 37 and counts["shards_written"] == 5, counts


def test_evaluation_gives_the_same_metrics_on_two_processes(runs):
  """Features, then the probe on them, each against its error model.

  Features: each device runs the same per-example forward pass on the same
  rows in both layouts (BatchNorm in inference mode mixes no rows), so they
  differ at most by the rounding of another compilation of it: a K-term dot
  product rounds to about sqrt(K)·eps relative, 2e-6 for the widest (K = 288),
  rtol 1e-5; atol 1e-6 for ReLU outputs near zero.

  The probe on the same features: both layouts run one program on 2 devices
  with the same rows on each, and every cross-device sum has two addends,
  which IEEE addition sums alike in either order: equal to the bit, grid,
  choice of l2, iterations and scores. The probe fitted on each layout's own
  features is not compared number for number: on nearly separable features
  L-BFGS stops at max_iters, where an ulp in the features moves the held-out
  loss by percents and can turn a validation image's top-1 (measured).
  """
  two, one = runs
  for split, shards in (("train", 2), ("validation", 1)):  # 48 and 20 images, shards of 32
    for i in range(shards):
      name = os.path.join("eval", "features", split, f"{i:05d}.npz")
      with np.load(os.path.join(two, name)) as x, np.load(os.path.join(one, name)) as y:
        assert x.keys() == y.keys()
        for k in x:
          np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")
  a = _results(os.path.join(two, "eval"))
  b = _results(os.path.join(one, "eval_same_features"))
  keys = [k for k in a if k.startswith("linear_cached/") and "time" not in k]
  assert "linear_cached/grid" in keys and "linear_cached/top1" in keys
  for k in keys:
    assert a[k] == b[k], (k, a[k], b[k])
  own = _results(os.path.join(one, "eval"))  # each layout's own features
  assert own["linear_cached/l2"] == a["linear_cached/l2"]  # held-out losses 50x apart
  assert abs(own["linear_cached/top1"] - a["linear_cached/top1"]) <= 1 / 20 + 1e-9


def test_a_gallery_split_between_processes_scores_as_the_brute_force(runs):
  """Each process held only its block of the gallery (31 of 62 rows, one padding row
  in process 1's) and of the kNN monitor's bank (23 of 46), and both read the
  numbers of the one-process NumPy brute force over the 61 items (and 45 images)."""
  import test_retrieval_metrics as ref
  from fakes import random_images
  two, _ = runs
  got = []
  for p in (0, 1):
    with open(os.path.join(two, "gallery", f"gallery.p{p}.json")) as f:
      got.append(json.load(f))
  assert [g["rows"] for g in got] == [[0, 31], [31, 62]]
  assert [g["held"] for g in got] == [31, 31] and [g["monitor_rows"] for g in got] == [23, 23]
  n = 61
  queries, query_labels, items, item_labels = ref._data()
  want = ref._retrieval_reference(queries, query_labels, items[:n], item_labels[:n], ref.KS,
                                  False)
  want_knn = ref._knn_reference(queries, items[:n], item_labels[:n], ref.K, 0.07, False)
  for g in got:
    ref._assert_metrics_close(g["retrieval"], want)
    np.testing.assert_array_equal(g["knn"], want_knn)
  bank = random_images(45, 4, seed=0, classes=4, random_labels=True)
  val = random_images(13, 4, seed=1, classes=4, random_labels=True)
  want = ref._knn_reference(_pixels(val), _pixels(bank), bank.labels, 7, 0.07, False)
  for g in got:
    assert g["monitor"]["knn/top1"] == np.mean(want[:, 0] == val.labels)
    assert g["monitor_size"] == 45


def _pixels(split):
  """The monitor's features in the gallery stage: an image's centred pixels."""
  return split.images.reshape(len(split), -1).astype(np.float32) - 127.5
