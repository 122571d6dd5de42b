"""grain input pipelines: per-example augmentation on the host, per-process
shards, per-host batches.

Where augmentation runs: on the host, in numpy/OpenCV, inside the grain
pipeline. ImageNet images have different sizes, so the random-resized crop
must see the decoded original before anything can be batched; doing the whole
view there keeps one code path for the image and its attention map, and
moves only uint8 crops to the device. Mean/std normalisation happens on
device, and so, with ``aug.views_on = "device"``, do a SimCLR view's colour
ops (drawn on the host all the same).

Reproducibility: every example's random draws come from ``random_map``, which
seeds a generator from the run seed and the example's *global* index in the
shuffled, repeated stream. Shards are taken after that, so the views do not
depend on the number of processes, and a restored iterator continues the
same stream.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing.util as mp_util
import os
import signal
import threading
import time
from typing import Any, Callable

import cv2
import grain
import jax
import numpy as np

from attn_contrastive.data import augment

Example = dict[str, Any]


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[0, 1] float image → uint8 (what crosses to the device)."""
  return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ContrastiveViews:
  """Two SimCLR views of each image.

  With ``aug.views_on = "device"`` the views are uint8 crops only, each with
  its drawn colour parameters (``colour1`` / ``colour2``, float32
  ``augment.COLOUR_PARAMS``) for the step to apply (``data/device_colour.py``).

  With ``map_size`` set, the example's ``attention_map`` follows each view's
  crop and flip into ``map1`` / ``map2`` (float32, ``map_size`` square); the
  random draws, and so the views, are the same with or without maps. An
  example's ``label``, if it has one, rides along (int32) for the online
  linear probe.
  """
  image_size: int
  aug: Any  # config.aug
  map_size: int | None = None

  @functools.cached_property
  def _view_args(self) -> dict[str, Any]:
    """The views' keyword arguments, read from ``aug`` once (a config lookup per
    record costs more than a crop box's draws)."""
    return dict(out_size=self.image_size, strength=self.aug.strength,
                p_jitter=self.aug.p_jitter, p_gray=self.aug.p_gray, p_blur=self.aug.p_blur,
                area_range=(self.aug.area_min, 1.0), map_size=self.map_size,
                jitter_impl=self.aug.jitter_impl)

  @functools.cached_property
  def _on_device(self) -> bool:
    return self.aug.get("views_on", "host") == "device"

  def __call__(self, example: Example, rng: np.random.Generator) -> Example:
    out = {}
    attn_map = example["attention_map"] if self.map_size else None
    on_device, args = self._on_device, self._view_args
    for i, name in enumerate(("view1", "view2"), 1):
      if on_device:
        out[name], map_view, out[f"colour{i}"] = augment.simclr_geometry(
            rng, example["image"], attn_map, **args)
      else:
        view, map_view = augment.simclr_view(rng, example["image"], attn_map, **args)
        out[name] = to_uint8(view)
      if map_view is not None:
        out[f"map{i}"] = map_view
    if "label" in example:
      out["label"] = np.int32(example["label"])
    return out


@dataclasses.dataclass(frozen=True)
class CoTrainViews:
  """Two SimCLR views of each image, plus one human-attention example.

  The co-train row: each example also draws a random record of
  ``human_source`` (``image`` + grey ``saliency_map``) and gives a
  random-resized crop and flip of it as ``human_image`` with the map cropped
  and flipped the same way as ``human_map`` (float32, ``map_size`` square).
  The example's own ``label`` rides along as in :class:`ContrastiveViews`.
  """
  image_size: int
  aug: Any  # config.aug
  map_size: int
  human_source: Any

  @functools.cached_property
  def _views(self) -> ContrastiveViews:
    return ContrastiveViews(self.image_size, self.aug)

  def __call__(self, example: Example, rng: np.random.Generator) -> Example:
    out = self._views(example, rng)
    human = self.human_source[int(rng.integers(len(self.human_source)))]
    view, map_view = augment.supervised_train_view(
        rng, human["image"], human["saliency_map"],
        out_size=self.image_size, area_range=(self.aug.area_min, 1.0),
        map_size=self.map_size)
    out.update(human_image=to_uint8(view), human_map=map_view)
    return out


@dataclasses.dataclass(frozen=True)
class SupervisedView:
  """Random-resized crop + flip, with the class label.

  With ``map_size`` set, the example's ``attention_map`` follows the crop and
  flip into ``map`` (float32, ``map_size`` square).
  """
  image_size: int
  aug: Any
  map_size: int | None = None

  def __call__(self, example: Example, rng: np.random.Generator) -> Example:
    view, map_view = augment.supervised_train_view(
        rng, example["image"], example["attention_map"] if self.map_size else None,
        out_size=self.image_size, area_range=(self.aug.area_min, 1.0),
        map_size=self.map_size)
    out = {"image": to_uint8(view), "label": np.int32(example["label"])}
    if map_view is not None:
      out["map"] = map_view
    return out


@dataclasses.dataclass(frozen=True)
class EvalView:
  """Deterministic resize + centre crop, with the label."""
  image_size: int
  crop_fraction: float = 0.875

  def __call__(self, example: Example) -> Example:
    view, _ = augment.eval_view(example["image"], out_size=self.image_size,
                                crop_fraction=self.crop_fraction)
    return {"image": to_uint8(view), "label": np.int32(example["label"])}


@dataclasses.dataclass(frozen=True)
class TeacherTrainView:
  """The saliency teacher's training view: random resized crop + flip of the image,
  its density map and its fixations.

  The crop's area is within ``area_range``, its aspect ratio within 3/4–4/3
  of ``image_hw``'s; the box and flip go to the image (resized to
  ``image_hw``), the density map and the fixations (both at ``map_hw``, the
  teacher's output resolution; fixations through
  :func:`augment.rasterize_fixations`). Returns ``image`` uint8 ``[H, W, 3]``,
  ``saliency_map`` float32 (the density, scaled to [0, 1]) and
  ``fixation_map`` float32 {0, 1}. Random draws, in order: crop box, flip
  (as :func:`augment.supervised_train_view`).
  """
  image_hw: tuple[int, int]
  map_hw: tuple[int, int]
  area_range: tuple[float, float] = (0.5, 1.0)
  hflip: bool = True

  def __call__(self, example: Example, rng: np.random.Generator) -> Example:
    image = np.asarray(example["image"])
    h, w = image.shape[:2]
    ratio = self.image_hw[1] / self.image_hw[0]
    box = augment.sample_crop_box(rng, h, w, self.area_range,
                                  aspect_range=(ratio * 3 / 4, ratio * 4 / 3))
    flip = bool(rng.random() < 0.5) and self.hflip
    view = augment.crop_resize(image, box, self.image_hw, flip=flip)
    sal = augment.gray_map(example["saliency_map"]).astype(np.float32)
    sal = sal * np.float32(1 / 255)
    sal = np.maximum(augment.crop_resize(sal, box, self.map_hw, flip=flip), 0.0)
    fix = augment.rasterize_fixations(example["fixations"], (h, w), box, flip, self.map_hw)
    return {"image": np.asarray(view, np.uint8), "saliency_map": sal.astype(np.float32),
            "fixation_map": fix}



def one_opencv_thread() -> None:
  """Turns OpenCV's own thread pool off in this process.

  The pipeline runs records in parallel (``input.num_threads`` threads,
  ``input.num_workers`` processes); OpenCV's pool would split each 224-px
  crop into stripes for threads that the pipeline's own threads already
  occupy, spending more CPU handing them out and waiting than it saves. The
  pixels are the same either way.
  """
  cv2.setNumThreads(1)


@dataclasses.dataclass(frozen=True)
class ReadThenTransform:
  """``random_map``'s function: reads record ``index`` of ``source``, then
  transforms it with the element's generator.

  The pipeline shuffles record indices and reads each record inside this one
  per-record step, instead of wrapping the source in grain's own source
  dataset: that dataset times every read and measures every record's bytes for
  its metrics, work done per record that the host's rate pays for. The graph
  keeps its shape (the range sits where the source would), so grain derives the
  same seeds, the same order and the same generators: the same views.
  """
  source: Any
  transform: Callable[[Example, np.random.Generator], Example]

  def __call__(self, index: int, rng: np.random.Generator) -> Example:
    return self.transform(self.source[index], rng)


def local_batch_size(global_batch: int) -> int:
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f"global batch {global_batch} is not divisible by "
                     f"{n} processes")
  return global_batch // n


def train_iterator(source, transform: Callable[[Example, np.random.Generator], Example],
                   *, seed: int, global_batch: int, num_threads: int = 2,
                   prefetch: int = 4, num_workers: int = 0,
                   start_batch: int = 0) -> grain.DatasetIterator:
  """An endless iterator of this host's training batches, from batch ``start_batch``.

  The stream is reshuffled every epoch; host ``p`` of ``P`` takes global
  positions ``p, p+P, …`` so the global batch is the same set of examples for
  any process count. A source from :func:`attn_contrastive.data.sources.open_split`
  has already put the next decodable record in place of any record whose image
  cannot be decoded (:mod:`attn_contrastive.data.images`), so every batch is
  full and the stream stays the same on resume.

  The stream is a function of the seed alone, so a resumed run needs no saved
  iterator state: after step ``s`` the next global batch is batch ``s``
  (``start_batch=s``), whatever the number of processes or worker processes
  before and after. OpenCV runs on one thread in every process that makes
  the views (:func:`one_opencv_thread`).
  """
  one_opencv_thread()
  ds = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(None)
  ds = ds.random_map(ReadThenTransform(source, transform))
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.batch(local_batch_size(global_batch), drop_remainder=True)
  if start_batch:
    ds = ds[start_batch:]
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=prefetch))
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                              worker_init_fn=functools.partial(init_worker, os.getpid()))
    it_ds = it_ds.map(_out_of_shared_memory)
    with _sigint_blocked():  # the workers start here, by the first batch
      it = iter(it_ds)
      first = next(it)
    return _Started(first, it)
  return iter(it_ds)


@contextlib.contextmanager
def _sigint_blocked():
  """Processes spawned meanwhile, from any thread, start with SIGINT blocked.

  A Ctrl-C reaches every process of the terminal's process group, grain's
  workers too, and a worker still starting (Python's own imports, before
  ``init_worker`` ignores SIGINT) would die of it with a traceback. grain
  spawns its workers from its own threads, whose signal mask this thread
  cannot set, so the spawn itself (``multiprocessing.util.spawnv_passfds``,
  which the ``spawn`` start method calls) blocks SIGINT in the calling thread
  for its duration, as CPython's resource tracker does for its own process:
  a child inherits the mask, and it stays blocked across ``exec``. Nothing is
  lost here: the signal reaches this process through its other threads.
  """
  if not hasattr(signal, "pthread_sigmask"):
    yield
    return
  spawn = mp_util.spawnv_passfds

  def spawn_blocked(path, args, passfds):
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
      return spawn(path, args, passfds)
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, previous)

  mp_util.spawnv_passfds = spawn_blocked
  try:
    yield
  finally:
    mp_util.spawnv_passfds = spawn


class _Started:
  """A started iterator: its first batch (already taken), then the rest."""

  def __init__(self, first: Example, rest):
    self._first, self._rest = [first], rest

  def __iter__(self):
    return self

  def __next__(self) -> Example:
    return self._first.pop() if self._first else next(self._rest)

  def close(self) -> None:
    self._first.clear()
    self._rest.close()


def _out_of_shared_memory(batch: Example) -> Example:
  """The batch in this process's own memory, its shared-memory blocks freed now.

  A worker hands each batch over in ``/dev/shm`` blocks that are freed when
  the last array viewing them is collected. Arrays on the CPU backend alias
  host memory, so the blocks of the last batches would outlive the run's end
  and be reported leaked (and freed) by multiprocessing's resource tracker;
  one copy per batch keeps the blocks' lifetime to this call.
  """
  return jax.tree.map(np.array, batch)


def init_worker(parent: int, worker_index: int, worker_count: int,
                poll_s: float = 1.0) -> None:
  """Sets up a grain worker process of the training process ``parent``
  (``mp_prefetch``'s ``worker_init_fn``) so that it ends with it, however it ends.

  grain stops its workers when their iterator is closed or the training
  process exits, normally or on an error. Two cases it leaves open:

  * Ctrl-C reaches every process of the terminal's process group: a worker
    interrupted while it hands a batch over can leave that batch's shared
    memory in ``/dev/shm`` for good, and one interrupted while it starts
    dies with a traceback. Workers start with SIGINT blocked
    (:func:`_sigint_blocked`) and ignore it from here on; the training
    process stops them as it exits.
  * A training process killed with SIGKILL (``kill -9``, the out-of-memory
    killer) would leave them blocked on a full queue for ever, holding their
    memory, and multiprocessing's resource tracker with them, so that their
    shared-memory batches were never freed. A daemon thread of the worker
    checks every ``poll_s`` seconds whether its parent has changed (an
    orphan is adopted by another process) and then exits at once; the
    resource tracker, its last user gone, frees the shared memory.

  Tested in ``tests/test_workers.py``.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  one_opencv_thread()

  def watch():
    while os.getppid() == parent:
      time.sleep(poll_s)
    os._exit(1)  # nothing of an orphan's work is wanted

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
