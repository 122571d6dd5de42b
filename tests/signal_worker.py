"""One process of the SIGTERM tests (``tests/test_signals.py``): a piecewise task on one
of several processes, stopped as ``main`` stops it.

    python tests/signal_worker.py --job=JOB --workdir=W [--read_s=S] [--straight=W2] \
        [--coordinator=127.0.0.1:PORT --num_processes=2 --process_id=0]

Jobs, each on tiny in-memory data whose records are read slowly (``--read_s``
seconds each) so that a signal lands inside the work, and each holding the
workdir's lock as ``main`` does (process 0 for all):

* ``label``: the label task with a tiny teacher, :data:`SHARDS` shards.
* ``features``: a linear evaluation's feature extraction into a cache of
  :data:`SHARDS` shards, on the global mesh.
* ``robustness``: the robustness task's conditions (:data:`CORRUPTIONS` ×
  severities 1 and 2, generated, of half the images), each scored with a
  tiny encoder and a fixed linear classifier.
* ``study``: a study of one row and four stages, each stage a label job.

``--straight=W2`` then runs the same job again, unslowed, in ``W2`` (the
uninterrupted run the test compares with). Exit status as ``main``'s: 0, or
75 when preempted (:func:`preemption.run_stoppable`).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SHARDS = 12
IMAGES = 48
CORRUPTIONS = ("gaussian_noise", "pixelate")

_FLAGS = argparse.ArgumentParser()
_FLAGS.add_argument("--job", required=True,
                    choices=("label", "features", "robustness", "study"))
_FLAGS.add_argument("--workdir", required=True)
_FLAGS.add_argument("--straight")
_FLAGS.add_argument("--read_s", type=float, default=0.0)
_FLAGS.add_argument("--coordinator")
_FLAGS.add_argument("--num_processes", type=int, default=1)
_FLAGS.add_argument("--process_id", type=int, default=0)


def _images(read_s: float):
  from fakes import random_images
  return random_images(IMAGES, keys=True, read_s=read_s)


def label(workdir: str, read_s: float) -> None:
  import kill_worker
  from attn_contrastive.tasks import label as label_task
  from helpers import tiny_label_config
  c = tiny_label_config(num_shards=SHARDS, num_threads=1)
  c.teacher.data.image_size = kill_worker.IMAGE_SIZE
  label_task.write_maps(c, workdir, teacher=kill_worker.teacher(c), source=_images(read_s))


def _eval_cfg(max_examples: int = -1):
  import ml_collections
  return ml_collections.ConfigDict(dict(batch_size=4, max_examples=max_examples,
                                        num_threads=1))


def features(workdir: str, read_s: float) -> None:
  import kill_worker
  from attn_contrastive.evaluators import features as features_lib
  from attn_contrastive.train import mesh as mesh_lib
  variables, embed = kill_worker.encoder()
  features_lib.extract(embed, variables, _images(read_s), kill_worker.eval_view, _eval_cfg(),
                       mesh=mesh_lib.make_mesh(), cache_dir=workdir,
                       shard_size=IMAGES // SHARDS)


class _Scorer:
  """The tiny encoder and a fixed linear classifier of its pooled features; each
  condition's features take ``seconds`` more (a slow encoder: the conditions share
  their clean images, read once)."""

  def __init__(self, seconds: float):
    import kill_worker
    import numpy as np
    from attn_contrastive.train import mesh as mesh_lib
    self.variables, self.embed = kill_worker.encoder()
    self.mesh = mesh_lib.make_mesh()
    self.kernel = np.random.default_rng(0).normal(size=(8, IMAGES)).astype(np.float32)
    self.seconds = seconds

  def features(self, source, transform=None):
    import time
    from attn_contrastive.evaluators import features as features_lib
    time.sleep(self.seconds)
    return features_lib.extract(self.embed, self.variables, source,
                                transform or (lambda ex: ex), _eval_cfg(IMAGES // 2),
                                mesh=self.mesh)

  def top1(self, x, y) -> float:
    import numpy as np
    return float(np.mean(np.argmax(x[:, :8] @ self.kernel, -1) == y))


def robustness(workdir: str, read_s: float) -> None:
  from attn_contrastive import config as config_lib
  from attn_contrastive.data import pipeline
  from attn_contrastive.tasks import robustness as robustness_task
  c = config_lib.load_config_file(os.path.join(os.path.dirname(HERE), "configs",
                                               "robustness.py"))
  c.robustness.update(dict(source="generate", corruptions=CORRUPTIONS, severities=(1, 2),
                           retrieval=False))
  robustness_task.score_conditions(c, workdir, _Scorer(10 * read_s), _images(read_s),
                                   pipeline.EvalView(16, 1.0), CORRUPTIONS)


def study(workdir: str, read_s: float) -> None:
  from attn_contrastive import config as config_lib
  from attn_contrastive.tasks import study as study_lib
  c = config_lib.load_config_file(os.path.join(os.path.dirname(HERE), "configs", "study.py"))
  c.study.rows = ("contrastive",)
  c.study.stages = ("teacher", "label", "train", "linear_eval")
  study_lib.Study(c, workdir, run_stage=lambda _, stage_dir: label(stage_dir, read_s / 3)).run()


def main() -> None:
  args = _FLAGS.parse_args()
  import jax
  import multiprocess
  if args.num_processes > 1:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    multiprocess.share_compilation_cache()
  import helpers  # noqa: F401  (the tests' JAX settings)
  from attn_contrastive import paths, workdir_lock
  from attn_contrastive.train import preemption
  job = {"label": label, "features": features, "robustness": robustness,
         "study": study}[args.job]
  paths.makedirs(args.workdir)
  lock = workdir_lock.hold_for_run(args.workdir)
  preemption.run_stoppable(lambda: job(args.workdir, args.read_s))
  if lock is not None:
    lock.release()
  if args.straight:
    job(args.straight, 0.0)
  print("done", flush=True)


if __name__ == "__main__":
  main()
