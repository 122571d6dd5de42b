"""A finished run on the user's own images: saliency maps, embeddings, attention maps.

:func:`load` opens a run's workdir (:func:`attn_contrastive.runs.open_run`)
and returns a :class:`Predictor`, whose methods take uint8 RGB images, a
list of ``H×W×3`` arrays of any sizes or one ``[B, H, W, 3]`` batch
(``H×W`` grey-scale is repeated over three channels), and run the network
in inference mode (:mod:`attn_contrastive.models.forward`), batched and
sharded over this process's devices:

* :meth:`Predictor.saliency` (a ``teacher`` run): each image's saliency
  density at its own size, summing to 1. The image is placed as the label
  task places it (its own aspect ratio, shorter side at the teacher's input,
  padded to a canvas, :class:`attn_contrastive.data.canvases.Placement`),
  the padding masked out
  (:func:`attn_contrastive.models.teacher.canvas_density`); the image's part
  of the teacher's map is resized to the image's size on the host
  (:func:`attn_contrastive.saliency.metrics.resize_to`) and renormalised.
* :meth:`Predictor.embed` (a ``pretrain`` or ``supervised`` run): one
  embedding per image, of the evaluation view linear evaluation and
  retrieval read (shorter side resized, centre crop at ``data.image_size``),
  through :meth:`attn_contrastive.runs.Run.embedding`.
* :meth:`Predictor.attention` (a run with attention heads): each head's map
  (spatial softmax of its logits) of the whole image resized to the run's
  input, brought back to the image's own size, summing to 1.

Batches are padded to a few sizes (:func:`canvases.padded_size`), so few
programs compile whatever the number of images.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from attn_contrastive import paths, runs
from attn_contrastive.data import augment
from attn_contrastive.data import canvases
from attn_contrastive.data import pipeline
from attn_contrastive.models import attention as attention_lib
from attn_contrastive.models import simclr as simclr_lib
from attn_contrastive.models import teacher as teacher_lib
from attn_contrastive.saliency import metrics
from attn_contrastive.train import mesh as mesh_lib

#: Images per jitted call unless told otherwise.
DEFAULT_BATCH_SIZE = 32

Images = Sequence[np.ndarray] | np.ndarray


def as_images(images: Images) -> list[np.ndarray]:
  """``images`` as a list of uint8 ``H×W×3`` arrays; refuses anything else, naming it."""
  if isinstance(images, np.ndarray) and images.ndim == 4:
    images = list(images)
  elif isinstance(images, np.ndarray):
    raise ValueError(f"images of shape {images.shape}: pass a list of H×W×3 uint8 arrays "
                     "or one [B, H, W, 3] batch (a single image as [image])")
  out = []
  for i, image in enumerate(images):
    image = np.asarray(image)
    if image.dtype != np.uint8:
      raise ValueError(f"image {i} is {image.dtype}: pass uint8 RGB pixels (0-255), e.g. "
                       "np.asarray(PIL.Image.open(path).convert('RGB'))")
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
      raise ValueError(f"image {i} has shape {image.shape}: each image must be H×W×3 (RGB) "
                       "or H×W (grey-scale)")
    out.append(image)
  return out


def own_size(density: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """A non-negative map resized to ``hw`` (bilinear) and renormalised to sum to 1."""
  resized = np.maximum(metrics.resize_to(density, hw), 0.0)
  total = resized.sum()
  return (resized / total if total > 0 else np.full(hw, 1.0 / (hw[0] * hw[1]))
          ).astype(np.float32)


class Predictor:
  """A finished run's network on uint8 images (see the module docstring).

  ``run``: the opened run; ``mesh``: the devices the batches are split over;
  ``batch_size``: images per jitted call (rounded to a multiple of the devices).
  """

  def __init__(self, run: runs.Run, mesh: Mesh, batch_size: int = DEFAULT_BATCH_SIZE):
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.run, self.mesh, self.batch_size = run, mesh, int(batch_size)
    self._jitted: dict[str, Callable] = {}

  @property
  def task(self) -> str:
    return self.run.task

  @property
  def stages(self) -> tuple[str, ...]:
    """The stages with attention heads (empty for a run without them)."""
    attn = self.run.config.get("attention")
    if self.task == "teacher" or attn is None or not attn.get("enabled", False):
      return ()
    return tuple(attn.stages)

  def _need(self, what: str, tasks: tuple[str, ...]) -> None:
    if self.task not in tasks:
      raise ValueError(f"{what} needs a {' or '.join(tasks)} run; {self.run.run_dir} is a "
                       f"{self.task!r} run")

  def _jit(self, name: str, fn: Callable) -> Callable:
    """``fn(variables, *batch)`` jitted once, its batch split over the mesh."""
    if name not in self._jitted:
      data, whole = mesh_lib.data_sharding(self.mesh), mesh_lib.replicated(self.mesh)
      self._jitted[name] = jax.jit(fn, in_shardings=(whole, data, data), out_shardings=data)
    return self._jitted[name]

  def _batched(self, name: str, fn: Callable, variables: Any, arrays: list[np.ndarray],
               extra: list[np.ndarray] | None = None) -> list[Any]:
    """``fn`` over same-shape ``arrays`` (and a per-image ``extra``), in padded batches;
    one host result per array."""
    step = self._jit(name, fn)
    extra = extra if extra is not None else [np.zeros(2, np.int32)] * len(arrays)
    out = []
    for lo in range(0, len(arrays), self.batch_size):
      idx = list(range(lo, min(lo + self.batch_size, len(arrays))))
      size = canvases.padded_size(len(idx), self.batch_size, self.mesh.size)
      idx += [idx[-1]] * (size - len(idx))
      result = jax.device_get(step(variables, np.stack([arrays[i] for i in idx]),
                                   np.stack([extra[i] for i in idx])))
      n = min(self.batch_size, len(arrays) - lo)
      out += [jax.tree.map(lambda x, j=j: np.asarray(x[j]), result) for j in range(n)]
    return out

  def saliency(self, images: Images, log: bool = False) -> list[np.ndarray]:
    """The teacher's saliency density of each image at its own size (sums to 1), float32;
    its log with ``log=True``."""
    self._need("saliency", ("teacher",))
    images = as_images(images)
    config = self.run.config
    place = canvases.Placement(teacher_lib.input_hw(config), canvases.DEFAULT_ASPECTS,
                               int(config.model.get("output_stride", 1)))
    placed = [place(image) for image in images]
    model = self.run.model

    def density(variables, canvas, image_hw):
      d, map_hw = teacher_lib.canvas_density(model, variables, canvas, image_hw)
      return {"density": d, "map_hw": map_hw}

    by_canvas: dict[tuple[int, ...], list[int]] = {}
    for i, (canvas, _) in enumerate(placed):
      by_canvas.setdefault(canvas.shape, []).append(i)
    maps: list[Any] = [None] * len(images)
    for members in by_canvas.values():
      outs = self._batched("saliency", density, self.run.variables,
                           [placed[i][0] for i in members],
                           [np.array(placed[i][1], np.int32) for i in members])
      for i, out in zip(members, outs):
        h, w = (int(v) for v in out["map_hw"])
        maps[i] = own_size(out["density"][:h, :w].astype(np.float64), images[i].shape[:2])
    if log:
      return [np.log(np.maximum(m, np.finfo(np.float32).tiny)) for m in maps]
    return maps

  def embed(self, images: Images, kind: str = "pooled") -> np.ndarray:
    """``[N, D]`` float32: each image's embedding (``pooled`` or ``projection``) of its
    evaluation view."""
    self._need("embed", ("pretrain", "supervised"))
    images = as_images(images)
    embed, variables = self.run.embedding(kind)
    crop = float(self.run.config.get("aug", {}).get("eval_crop_fraction", 0.875))
    views = [pipeline.to_uint8(augment.eval_view(image, out_size=self.run.image_size,
                                                 crop_fraction=crop)[0]) for image in images]
    if not views:
      return np.zeros((0, 0), np.float32)
    fn = lambda v, x, _: embed(v, x).astype(np.float32)  # noqa: E731
    return np.stack(self._batched(f"embed_{kind}", fn, variables, views))

  def attention(self, images: Images) -> dict[str, list[np.ndarray]]:
    """``{stage: maps}``: each attention head's map of each image at its own size (sums
    to 1), float32."""
    self._need("attention", ("pretrain", "supervised"))
    if not self.stages:
      raise ValueError(f"{self.run.run_dir} has no attention heads (its config's "
                       "attention.enabled is off): attention maps need a run trained with them")
    images = as_images(images)
    side = self.run.image_size
    views = [augment.whole_image(image, (side, side)) for image in images]
    fixed = {"project": None} if isinstance(self.run.model, simclr_lib.SimCLR) else {}
    logits_of = self.run.predict("attention_logits", **fixed)
    fn = lambda v, x, _: {s: attention_lib.spatial_softmax(m)  # noqa: E731
                          for s, m in logits_of(v, x).items()}
    outs = self._batched("attention", fn, self.run.variables, views)
    return {s: [own_size(out[s].astype(np.float64), image.shape[:2])
                for out, image in zip(outs, images)] for s in self.stages}


def load(run_dir: str, batch_size: int = DEFAULT_BATCH_SIZE,
         mesh: Mesh | None = None) -> Predictor:
  """The run in ``run_dir`` (a teacher, pretrain or supervised workdir, local or
  ``gs://``) ready to predict, on ``mesh`` (this process's devices by default)."""
  mesh = mesh or Mesh(np.array(jax.local_devices()), (mesh_lib.DATA_AXIS,))
  if not paths.exists(os.path.join(run_dir, runs.CONFIG_FILE)):
    raise FileNotFoundError(f"{run_dir} holds no {runs.CONFIG_FILE}: pass the workdir of a "
                            "finished teacher, pretrain or supervised run (it holds "
                            "config.json and checkpoints/)")
  config = runs.read_config(run_dir)
  if config.get("task") not in ("teacher", "pretrain", "supervised"):
    raise ValueError(f"{run_dir} is a {config.get('task')!r} run: point at the workdir of "
                     "a teacher, pretrain or supervised run (an evaluation's run_dir)")
  return Predictor(runs.open_run(run_dir, mesh), mesh, batch_size)
