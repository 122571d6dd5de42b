"""A reduced ``configs/study.py`` run as its own process, for the test that kills it.

  python tests/study_kill_worker.py DATA_DIR WORKDIR [--read_s=S] [--figure_s=S]

The study is the demo's chain at its smallest: the attention
teacher row alone, one seed, the tiny models of ``tests/helpers.py``, a few
steps, four label shards, four feature shards per split, four robustness
conditions, and the report (retrieval and alignment left out). Its data are
two small builds of the synthetic generator (:func:`build_data`) in
DATA_DIR. It runs through ``main.execute``, as ``python -m
attn_contrastive.main`` runs it: the workdir's lock, stop handling, exit status.

``--read_s`` makes every record read and image corruption take that long and
``--figure_s`` each report figure, so that a test can kill the study inside
a stage on a fast machine as on a slow one; neither changes what is written.
Only the standard library is imported at the top: the test imports
:func:`study_config` and :func:`build_data` for its uninterrupted run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  import ml_collections

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

HUMAN = "salient_objects/tiny_human"
CLASSES = "salient_objects/tiny_classes"
ROW = "contrastive_attn_teacher"
STAGES = ("teacher", "label", "train", "linear_eval", "robustness", "report")
#: Images of the classification data's splits; the label task's and the feature
#: cache's shards of its train split.
NUM_TRAIN, NUM_VALIDATION = 64, 32
LABEL_SHARDS = 4
FEATURE_SHARD = 16
CORRUPTIONS, SEVERITIES = ("gaussian_noise", "fog"), (1, 3)
TRAIN_STEPS, CHECKPOINT_EVERY = 6, 2


def build_data(data_dir: str) -> None:
  """The two datasets, in array_record under ``data_dir``: a human-attention set (the
  teacher's) and a classification set of 4 classes (the rows'), 24-px images."""
  from attn_contrastive.data import synthetic
  for name, num_train, num_validation, seed in ((HUMAN, 32, 16, 1),
                                                (CLASSES, NUM_TRAIN, NUM_VALIDATION, 0)):
    config = synthetic.SalientObjectsConfig(
        name=name.split("/")[1], description="a reduced study's data", image_size=24,
        num_classes=4, num_train=num_train, num_validation=num_validation, seed=seed)
    synthetic.SalientObjects(config=config, data_dir=data_dir).download_and_prepare(
        file_format="array_record")


def study_config(data_dir: str) -> ml_collections.ConfigDict:
  """configs/study.py reduced, on the data of :func:`build_data`: one row and seed,
  every stage but retrieval and alignment, the tiny models, few steps, shards and
  conditions, no online probe or robustness retrieval; the tests' compilation cache
  (the environment's) rather than one in the workdir, so that every run shares it."""
  from attn_contrastive import config as config_lib
  from helpers import TINY_MODEL, TINY_RESNET
  c = config_lib.load_config_file(os.path.join(os.path.dirname(HERE), "configs", "study.py"))
  c.study.update(dict(rows=(ROW,), stages=STAGES, compilation_cache=False))
  small_eval = dict(batch_size=16, num_threads=1)
  small_input = dict(global_batch_size=16, num_threads=1, prefetch=1, num_workers=0)
  teacher_model = dict(TINY_RESNET, conv_impl="xla", decoder_width=8, output_stride=2)
  for teacher in (c.teacher, c.label.teacher):
    teacher.data.update(dict(name=HUMAN, data_dir=data_dir, image_size=16))
    teacher.model.update(teacher_model)
  c.teacher.input.update(small_input)
  c.teacher.train.update(dict(num_steps=4, checkpoint_every=2, log_every=2,
                              async_checkpoint=False))
  c.teacher.eval.update(dict(small_eval, max_examples=16, num_images=2, shuffle_pool=8,
                             shuffle_others=3))
  c.label.data.update(dict(name=CLASSES, data_dir=data_dir))
  c.label.label.update(dict(map_size=8, num_shards=LABEL_SHARDS))
  c.label.eval.update(small_eval)
  row = c.rows[ROW]
  row.data.update(dict(name=CLASSES, data_dir=data_dir, image_size=16, num_classes=4))
  row.model.update(TINY_MODEL)
  row.input.update(small_input)
  row.train.update(dict(num_steps=TRAIN_STEPS, checkpoint_every=CHECKPOINT_EVERY,
                        keep_checkpoints=TRAIN_STEPS, log_every=2, async_checkpoint=False,
                        online_probe=False))
  row.eval.update(dict(small_eval, knn_bank_size=16))
  row.attention.update(dict(width=4, map_size=8))
  c.linear_eval.data.update(dict(name=CLASSES, data_dir=data_dir))
  c.linear_eval.eval.update(dict(small_eval, max_examples=-1))
  c.linear_eval.linear_cached.update(dict(l2_grid=(1e-3,), max_iters=20,
                                          shard_size=FEATURE_SHARD))
  c.robustness.data.update(dict(name=CLASSES, data_dir=data_dir))
  c.robustness.robustness.update(dict(corruptions=CORRUPTIONS, severities=SEVERITIES,
                                      retrieval=False))
  c.robustness.eval.update(dict(small_eval, max_examples=16))
  return c


class _SlowReads:
  """``source`` whose every record takes ``seconds`` to read."""

  def __init__(self, source, seconds: float):
    self._source, self._seconds = source, seconds

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    time.sleep(self._seconds)
    return self._source[index]

  def __getattr__(self, name):
    return getattr(self._source, name)


def slow_reads(seconds: float) -> None:
  """Every record of every split that the tasks open takes ``seconds`` to read, and
  every corruption of an image to make."""
  from attn_contrastive.data import image_corruptions, sources
  opened, corrupt = sources.open_split, image_corruptions.corrupt

  def open_split(*args, **kwargs):
    split = opened(*args, **kwargs)
    split.source = _SlowReads(split.source, seconds)
    return split

  def corrupt_slowly(*args, **kwargs):
    time.sleep(seconds)
    return corrupt(*args, **kwargs)

  sources.open_split = open_split
  image_corruptions.corrupt = corrupt_slowly


def slow_figures(seconds: float) -> None:
  """Each figure of the report takes ``seconds`` more to draw."""
  from attn_contrastive import report

  def slowed(draw):
    def draw_slowly(*args, **kwargs):
      time.sleep(seconds)
      return draw(*args, **kwargs)
    return draw_slowly

  for name, draw in list(report.FIGURES.items()):
    report.FIGURES[name] = slowed(draw)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("data_dir")
  parser.add_argument("workdir")
  parser.add_argument("--read_s", type=float, default=0.0)
  parser.add_argument("--figure_s", type=float, default=0.0)
  args = parser.parse_args()
  from absl import flags, logging
  from attn_contrastive import main as main_lib
  flags.FLAGS(sys.argv[:1])  # absl's defaults, as main's app.run leaves them
  logging.use_absl_handler()
  if args.read_s:
    slow_reads(args.read_s)
  if args.figure_s:
    slow_figures(args.figure_s)
  main_lib.execute(study_config(args.data_dir), args.workdir, "configs/study.py")


if __name__ == "__main__":
  main()
