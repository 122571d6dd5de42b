"""One process of a multi-process or preemption test: runs a plan of stages and exits.

    python tests/distributed_worker.py --plan='[["train", {...}], ...]' \
        [--coordinator=127.0.0.1:PORT --num_processes=2 --process_id=0]

Stages (each a real task on tiny in-memory data, as in the other tests):

* ``train``: SimCLR through the training loop (``workdir``, ``steps``, optional
  ``stop_at``, ``eval_every`` with a slow evaluation, ``slow_save``, a
  per-example ``delay`` so that a signal lands mid-run). Process 0 then writes
  ``final.npz`` (this process's replica of the parameters and BatchNorm
  statistics) and the loop writes ``results.json``.
* ``copy``: process 0 copies ``src`` to ``dst`` (a checkpoint taken to another
  layout), then every process waits for it.
* ``label``: the label task with a tiny teacher.
* ``eval``: linear evaluation (cached features + the softmax probe) of ``run_dir``.
* ``gallery``: retrieval and kNN against a gallery split between the processes (each
  building its own block, ``mesh.rows_from_processes``), and the kNN monitor on pixel
  features; every process writes ``<workdir>/gallery.p<i>.json`` (its scores and the
  rows it held).

Markers for the tests: ``<workdir>/evaluating`` while an evaluation runs,
``<workdir>/saving`` while a save is held. A preempted run exits 75, as main does.
A plan that imported TensorFlow fails: none of these stages needs it.
"""
import argparse
import collections
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fakes import colours  # noqa: E402  (NumPy only: before JAX starts)
import multiprocess  # noqa: E402

_FLAGS = argparse.ArgumentParser()
_FLAGS.add_argument("--plan", required=True)
_FLAGS.add_argument("--coordinator")
_FLAGS.add_argument("--num_processes", type=int, default=1)
_FLAGS.add_argument("--process_id", type=int, default=0)


def _touch(path, on):
  import jax
  if jax.process_index() > 0:  # one process marks
    return
  if on:
    open(path, "w").close()
  elif os.path.exists(path):
    os.remove(path)


def train(workdir, steps, stop_at=None, eval_every=-1, slow_save=0.0, delay=0.0, lr=0.05):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attn_contrastive.data import pipeline
  from attn_contrastive.models.simclr import simclr_from_config
  from attn_contrastive.tasks import pretrain
  from attn_contrastive.train import checkpoint as ckpt_lib
  from attn_contrastive.train import loop
  from helpers import SIZE, tiny_config

  config = tiny_config()
  config.train.update(dict(num_steps=steps, checkpoint_every=2, eval_every=eval_every))
  config.optim.base_lr = lr  # small: float noise between layouts stays small
  model = simclr_from_config(config.model)

  def evaluate(state):
    _touch(os.path.join(workdir, "evaluating"), True)
    time.sleep(0.5)  # long enough for a test to signal the run while it evaluates
    _touch(os.path.join(workdir, "evaluating"), False)
    return {"param_sum": float(sum(np.sum(x.addressable_data(0))
                                   for x in jax.tree.leaves(state.params)))}

  evaluate.results = {}
  if slow_save:
    real_save = ckpt_lib.Checkpointer.save

    def held_save(self, step, state):
      _touch(os.path.join(workdir, "saving"), True)
      time.sleep(slow_save)
      real_save(self, step, state)
      _touch(os.path.join(workdir, "saving"), False)

    ckpt_lib.Checkpointer.save = held_save
  task = loop.TaskSpec(
      model=model, loss_fn=pretrain.make_loss_fn(model, config),
      train_source=colours(64, 0, keys=True, read_s=delay),
      train_transform=pipeline.ContrastiveViews(SIZE, config.aug),
      sample_input=jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32),
      evaluate=evaluate if eval_every > 0 else None)
  state, _ = loop.run(config, workdir, task, stop_at=stop_at)
  if jax.process_index() == 0 and stop_at is None:
    local = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)),
                         {"params": state.params, "batch_stats": state.batch_stats})
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(local)[0]}
    np.savez(os.path.join(workdir, "final.npz"), **flat)


def copy(src, dst):
  import jax
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    shutil.copytree(src, dst)
  multihost_utils.sync_global_devices("copied " + dst)


def label(workdir):
  from attn_contrastive.models.teacher import teacher_from_config
  from attn_contrastive.tasks import label as label_task

  from helpers import filled_variables, tiny_label_config
  c = tiny_label_config(num_shards=5)
  model = teacher_from_config(c.teacher.model)
  variables = filled_variables(model, (1, 16, 16, 3))  # the same on every process
  label_task.write_maps(c, workdir, teacher=(model, variables),
                        source=colours(37, 3, keys=True))


def evaluate(workdir, run_dir):
  from attn_contrastive import config as config_lib
  from attn_contrastive.tasks import linear_eval

  configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  c = config_lib.load_config_file(os.path.join(configs, "linear_eval.py"))
  c.run_dir = run_dir
  c.protocols = ("linear_cached",)
  c.data.num_classes = 4
  c.eval.update(dict(batch_size=16, num_threads=1))
  c.linear_cached.update(dict(l2_grid=(1e-4, 1e-2), max_iters=50, shard_size=32))
  linear_eval.evaluate(
      c, workdir, splits={"train": colours(48, 1), "validation": colours(20, 2)},
      dataset_version="test")


def gallery(workdir):
  """test_retrieval_metrics' data, 61 of its 64 items as the gallery (62 rows with the
  padding, the last in process 1's block): this process's block only, scored as
  retrieval and kNN of the 40 queries; then the kNN monitor with pixels as features
  (45-image bank, 46 rows). The rows each held are written beside the scores."""
  import jax
  import ml_collections
  import numpy as np
  from attn_contrastive.evaluators import knn, retrieval_metrics as rm
  from attn_contrastive.train import mesh as mesh_lib
  from fakes import random_images
  from test_retrieval_metrics import CHUNK, K, KS, NUM_CLASSES, _data

  n = 61
  queries, query_labels, items, item_labels = _data()
  mesh = mesh_lib.make_mesh()
  rows = mesh_lib.process_rows(62, mesh)
  block = slice(rows.start, min(rows.stop, n))
  x = mesh_lib.rows_from_processes(items[block], 62, mesh)
  y = mesh_lib.rows_from_processes(item_labels[block], 62, mesh)
  out = {"rows": [rows.start, rows.stop],
         "held": sum(s.data.shape[0] for s in x.addressable_shards)}
  out["retrieval"] = rm.retrieval_metrics(queries, query_labels, x, y, ks=KS, chunk=CHUNK,
                                          num_items=n)
  out["knn"] = np.asarray(rm.knn_classify(queries, x, y, num_classes=NUM_CLASSES, k=K,
                                          chunk=CHUNK, num_items=n)).tolist()
  cfg = ml_collections.ConfigDict(dict(batch_size=8, max_examples=-1, num_threads=1, knn_k=7,
                                       knn_temperature=0.07, knn_bank_size=-1))
  monitor = knn.KnnEvaluator(
      lambda state, images: images.reshape(len(images), -1).astype(np.float32) - 127.5,
      random_images(45, 4, seed=0, classes=4, random_labels=True),
      random_images(13, 4, seed=1, classes=4, random_labels=True), dict, cfg, num_classes=4,
      mesh=mesh)
  out["monitor"] = monitor(collections.namedtuple("State", "step")(np.int32(0)))
  out["monitor_rows"], out["monitor_size"] = monitor.bank_rows, monitor.results["knn/bank_size"]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"gallery.p{jax.process_index()}.json"), "w") as f:
    json.dump(out, f)


def main():
  args = _FLAGS.parse_args()
  import jax
  if args.num_processes > 1:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    multiprocess.share_compilation_cache()
  from attn_contrastive.train import preemption
  stages = {"train": train, "copy": copy, "label": label, "eval": evaluate,
            "gallery": gallery}
  try:
    for name, kwargs in json.loads(args.plan):
      start = time.perf_counter()
      stages[name](**kwargs)
      print(f"stage {name}: {time.perf_counter() - start:.1f} s", flush=True)
  except preemption.Preempted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_PREEMPTED)
  # Training, labelling and evaluating need no TensorFlow (attn_contrastive.summaries):
  # seconds of start-up in every process if something imports it again.
  if "tensorflow" in sys.modules:
    sys.exit("these stages imported TensorFlow, which none of them needs")


if __name__ == "__main__":
  main()
