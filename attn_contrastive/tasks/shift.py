"""Distribution shift: a linear evaluation's classifier on ImageNet's shifted test sets.

``config.run_dir`` is the workdir of a finished ``linear_eval`` run on ImageNet. Its
source run's frozen encoder and the classifier that run fitted (``shift.classifier``, as
robustness reads it) score each of ``shift.datasets``
(:data:`attn_contrastive.data.imagenet_shifts.SHIFTS`): ImageNet-V2 (matched frequency),
ImageNet-A and ImageNet-R on their 200 classes' logits, ImageNet-Sketch, and ReaL's
label sets. Each is read from tfds (prepared beforehand: ``prepare --dataset=...``) with
the linear evaluation's centre crop. ``results.json`` holds ``shift/<name>`` (top-1) and
``shift/num_images/<name>``.

Opening the run, ``config.json`` and the outline of ``results.json`` are the evaluation
skeleton's (:mod:`attn_contrastive.tasks.evaluation`).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from absl import logging

from attn_contrastive import runs
from attn_contrastive.data import imagenet_shifts
from attn_contrastive.evaluators import features
from attn_contrastive.tasks import evaluation


def subset_top1(logits: np.ndarray, labels: np.ndarray, classes: list[int]) -> float:
  """Top-1 over ``classes`` only: the prediction is the best of their logits (how
  ImageNet-A and ImageNet-R, whose images are of those classes, are scored)."""
  subset = np.asarray(classes)
  predictions = subset[np.argmax(logits[:, subset], -1)]
  return float(np.mean(predictions == labels))


def real_top1(predictions: np.ndarray, label_sets: list[set[int]]) -> tuple[float, int]:
  """(the share of predictions in their image's set of real labels, the images scored):
  images whose set is empty are left out, as ReaL's authors leave them out."""
  kept = [(p, s) for p, s in zip(predictions, label_sets) if s]
  if not kept:
    return float("nan"), 0
  return float(np.mean([int(p) in s for p, s in kept])), len(kept)


def _file_name(record) -> str:
  name = np.asarray(record["file_name"]).item()
  return name.decode() if isinstance(name, bytes) else str(name)


def _real_label_sets(source) -> tuple[dict[str, int], list[set[int]]]:
  """({file name: position}, each record's set of real labels), its images left
  encoded. An image is labelled with its position, which stays with it whichever record
  the image reader hands on in place of an undecodable one."""
  positions, sets = {}, []
  for i in range(len(source)):
    record = source[i]
    positions[_file_name(record)] = i
    sets.append({int(x) for x in np.asarray(record["real_label"]).ravel()})
  return positions, sets


def _raw_source(config, shift: imagenet_shifts.Shift):
  """The split's records with their images left encoded (ReaL's labels only)."""
  import tensorflow_datasets as tfds
  from attn_contrastive.data import sources
  builder = sources.get_builder(shift.tfds_name, config.data.data_dir or None)
  return builder.as_data_source(split=shift.split,
                                decoders={"image": tfds.decode.SkipDecoding()})


def score_shift(ev: evaluation.Evaluation, shift: imagenet_shifts.Shift, embed, frozen,
                classifier, view) -> tuple[float, int]:
  """(top-1, images scored) of one shifted test set."""
  kernel, bias = classifier
  if shift.name in ev.splits:
    source = ev.splits[shift.name]
  else:
    from attn_contrastive.data import sources
    source = sources.open_split(shift.tfds_name, shift.split, ev.config.data.data_dir or None,
                                max_bad_images=ev.config.data.get("max_bad_images"))
  transform = view
  if shift.scoring == "real":
    positions, sets = _real_label_sets(ev.splits.get(f"{shift.name}/labels")
                                       or _raw_source(ev.config, shift))
    transform = lambda r: view({"image": r["image"], "label": positions[_file_name(r)]})
  x, y = features.extract(embed, frozen, source, transform, ev.config.eval, mesh=ev.mesh)
  logits = x @ kernel + bias
  if shift.scoring == "subset":
    return subset_top1(logits, y, imagenet_shifts.class_indices(shift.classes)), len(y)
  if shift.scoring == "real":
    return real_top1(np.argmax(logits, -1), [sets[int(k)] for k in y])
  return float(np.mean(np.argmax(logits, -1) == y)), len(y)


def score(ev: evaluation.Evaluation, linear) -> dict[str, Any]:
  """Every shifted test set of ``shift.datasets``, scored with the linear evaluation at
  ``config.run_dir`` (``linear``: its config)."""
  from attn_contrastive.data import pipeline
  config = ev.config
  embed, frozen = ev.run.embedding("pooled")
  kernel, bias, protocol = runs.load_classifier(config.run_dir, config.shift.classifier)
  image_size = int(config.data.image_size or linear.data.image_size or ev.run.image_size)
  view = pipeline.EvalView(image_size, linear.aug.eval_crop_fraction)
  metrics: dict[str, Any] = {"shift/classifier": {"workdir": config.run_dir,
                                                  "protocol": protocol}}
  for name in config.shift.datasets:
    shift = imagenet_shifts.SHIFTS[name]
    top1, n = score_shift(ev, shift, embed, frozen, (kernel, bias), view)
    metrics[f"shift/{name}"], metrics[f"shift/num_images/{name}"] = top1, n
    logging.info("%s (%s): top-1 %.4f on %d images", name, shift.tfds_name, top1, n)
  return metrics


def evaluate(config, workdir: str, **kwargs) -> dict[str, Any]:
  """Scores the linear evaluation at ``config.run_dir`` on the shifted test sets; writes
  ``results.json`` (its source: the run that linear evaluation evaluated). ``kwargs``:
  those of :func:`~attn_contrastive.tasks.evaluation.run_evaluation`."""
  linear = runs.read_config(config.run_dir, reader=config.task)
  names = [imagenet_shifts.SHIFTS[n].tfds_name for n in config.shift.datasets]
  return evaluation.run_evaluation(
      config, workdir, functools.partial(score, linear=linear), split_names=names,
      run_dir=runs.evaluated_run_dir(linear), reader=linear.task, **kwargs)
