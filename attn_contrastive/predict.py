r"""Inference on a folder of images: ``python -m attn_contrastive.predict``.

Usage:

  python -m attn_contrastive.predict --run=/tmp/teacher --images=~/photos --out=/tmp/maps
  python -m attn_contrastive.predict --run=/tmp/pretrain --images=~/photos \
      --out=/tmp/embeddings --query=~/photos/cat.jpg --k=5

``--images`` is a folder of images, directly or in subfolders, in any format
the data readers take (:func:`attn_contrastive.data.image_folder.images_under` lists them,
:func:`attn_contrastive.data.images.decode` decodes them to RGB). A file that
cannot be decoded is named in a warning, counted against ``--max_bad_images``
(as ``data.max_bad_images`` in training) and left out; ``summary.json`` in
``--out`` lists them. What ``--out`` receives depends on the run
(:mod:`attn_contrastive.inference` computes it):

* a ``teacher`` run: ``saliency/<name>.png``, each image's saliency map at
  its own size (8-bit, scaled so that its maximum is 255), with ``--npy``
  also ``saliency/<name>.npy``, its log-density (float32, ``exp`` sums to
  1), and ``overlays/<name>.png``, the map over the image;
* a ``pretrain`` or ``supervised`` run: ``embeddings.npz`` (``embeddings``
  ``[N, D]`` of ``--embedding``, ``file_names`` ``[N]``, in the folder's
  sorted order); for a run with attention heads, ``attention/<stage>/<name>.png``
  and ``overlays/<stage>/<name>.png``; with ``--query=IMAGE``, the ``--k``
  images of the folder nearest to it by cosine similarity
  (:func:`attn_contrastive.evaluators.retrieval_metrics.nearest`), printed
  and written to ``neighbours.json``.

``<name>`` is the image's path under the folder without its extension (with
it, where two files differ only by extension).
"""
from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Iterable, Sequence

import numpy as np
from absl import logging

from attn_contrastive import config_checks, paths
from attn_contrastive.data import images as images_lib

#: Images decoded and predicted per step of the progress bar, in batches.
CHUNK_BATCHES = 4


def progress_bar(total: int, description: str) -> Any:
  """A progress bar of ``total`` images: ``update(n)``, ``close()``. On a terminal only."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=description, unit="img", disable=None)


def output_names(files: Sequence[str]) -> list[str]:
  """Each file's output name: its path without the extension, or with it where two
  files would share a name."""
  stems = [os.path.splitext(f)[0] for f in files]
  counts: dict[str, int] = {}
  for s in stems:
    counts[s] = counts.get(s, 0) + 1
  return [s if counts[s] == 1 else f for s, f in zip(stems, files)]


def as_png(image: np.ndarray) -> bytes:
  """A uint8 ``H×W`` or ``H×W×3`` array as PNG bytes."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def to_8bit(saliency: np.ndarray) -> np.ndarray:
  """A non-negative map scaled so that its maximum is 255, rounded to uint8."""
  peak = float(saliency.max())
  return np.round(255.0 * saliency / max(peak, 1e-30)).astype(np.uint8)


def overlay(image: np.ndarray, map_8bit: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """The image with a map of its size over it, in OpenCV's jet colours (uint8 RGB)."""
  import cv2  # pylint: disable=g-import-not-at-top
  heat = cv2.cvtColor(cv2.applyColorMap(map_8bit, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
  mixed = (1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
  return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _write(path: str, data: bytes) -> None:
  paths.makedirs(os.path.dirname(path))
  paths.write_atomic(path, data)


def read_image(folder: str, name: str) -> np.ndarray:
  """``folder/name`` decoded to uint8 RGB; raises :class:`images_lib.BadImageError`."""
  return images_lib.decode(paths.read_bytes(os.path.join(folder, name)), name)


def _decoded(folder: str, files: Sequence[str], start: int, log: images_lib.BadImageLog,
             pool: concurrent.futures.Executor) -> list[tuple[int, np.ndarray]]:
  """``(index, image)`` of the files that decode; the others counted in ``log``."""
  def one(i):
    try:
      return i, read_image(folder, files[i - start]), None
    except images_lib.BadImageError as err:
      return i, None, err

  out = []
  for i, image, err in pool.map(one, range(start, start + len(files))):
    if err is not None:
      log.add(i, err)
    else:
      out.append((i, image))
  return out


def _chunks(n: int, size: int) -> Iterable[range]:
  return (range(lo, min(lo + size, n)) for lo in range(0, n, size))


def _write_saliency(out: str, name: str, image: np.ndarray, log_density: np.ndarray,
                    npy: bool) -> None:
  """The teacher's map of one image: PNG, overlay and (``npy``) the log-density."""
  map_8bit = to_8bit(np.exp(log_density))
  _write(os.path.join(out, "saliency", name + ".png"), as_png(map_8bit))
  _write(os.path.join(out, "overlays", name + ".png"), as_png(overlay(image, map_8bit)))
  if npy:
    import io  # pylint: disable=g-import-not-at-top
    buffer = io.BytesIO()
    np.save(buffer, log_density.astype(np.float32))
    _write(os.path.join(out, "saliency", name + ".npy"), buffer.getvalue())


def _write_attention(out: str, name: str, image: np.ndarray,
                     maps: dict[str, np.ndarray]) -> None:
  for stage, m in maps.items():
    map_8bit = to_8bit(m)
    _write(os.path.join(out, "attention", stage, name + ".png"), as_png(map_8bit))
    _write(os.path.join(out, "overlays", stage, name + ".png"),
           as_png(overlay(image, map_8bit)))


def _predict_chunk(predictor, good: list[tuple[int, np.ndarray]], names: Sequence[str],
                   out: str, npy: bool, embedding: str) -> np.ndarray | None:
  """Writes one chunk's maps (and attention maps); returns its embeddings (encoder runs)."""
  images = [image for _, image in good]
  if predictor.task == "teacher":
    for (i, image), m in zip(good, predictor.saliency(images, log=True)):
      _write_saliency(out, names[i], image, m, npy)
    return None
  if predictor.stages:
    maps = predictor.attention(images)
    for j, (i, image) in enumerate(good):
      _write_attention(out, names[i], image, {s: maps[s][j] for s in maps})
  return predictor.embed(images, embedding)


def _neighbours(predictor, query: str, bank: np.ndarray, names: Sequence[str], k: int,
                embedding: str) -> list[dict[str, Any]]:
  """The ``k`` images of ``bank`` (named ``names``) nearest to the image file ``query``."""
  from attn_contrastive.evaluators import retrieval_metrics  # pylint: disable=g-import-not-at-top
  q = predictor.embed([images_lib.decode(paths.read_bytes(query), query)], embedding)
  sim, idx = retrieval_metrics.nearest(q, bank, k)
  return [{"file_name": names[j], "similarity": float(s)} for s, j in zip(sim[0], idx[0])]


def predict_folder(run_dir: str, folder: str, out: str, *, npy: bool = False,
                   query: str | None = None, k: int = 5, embedding: str = "pooled",
                   batch_size: int = 32, num_threads: int = 4,
                   max_bad_images: int = images_lib.DEFAULT_MAX_BAD_IMAGES,
                   predictor=None) -> dict[str, Any]:
  """Writes the run's outputs for every image of ``folder`` into ``out`` (see the module
  docstring); returns what ``summary.json`` holds.

  ``predictor``: an :class:`attn_contrastive.inference.Predictor` already loaded
  (else ``run_dir`` is opened).
  """
  # Imported here: JAX starts when a run is opened, not when the flags are read.
  from attn_contrastive import inference  # pylint: disable=g-import-not-at-top
  from attn_contrastive.data import image_folder  # pylint: disable=g-import-not-at-top

  predictor = predictor or inference.load(run_dir, batch_size)
  if query and predictor.task == "teacher":
    raise ValueError("--query ranks images by their embeddings: pass a pretrain or "
                     "supervised run, not a teacher run")
  files, ignored = image_folder.images_under(folder)
  names = output_names(files)
  log = images_lib.BadImageLog(folder, max_bad_images)
  paths.makedirs(out)
  kept, embeddings = [], []
  bar = progress_bar(len(files), predictor.task)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for chunk in _chunks(len(files), batch_size * CHUNK_BATCHES):
      good = _decoded(folder, files[chunk.start:chunk.stop], chunk.start, log, pool)
      if good:
        embeddings.append(_predict_chunk(predictor, good, names, out, npy, embedding))
        kept += [i for i, _ in good]
      bar.update(len(chunk))
  bar.close()
  summary = {"run": predictor.run.run_dir, "task": predictor.task, "images": len(kept),
             "bad_images": [log.bad[i][0] for i in sorted(log.bad)], "ignored_files": ignored}
  if predictor.task != "teacher" and kept:
    bank, kept_files = np.concatenate(embeddings), [files[i] for i in kept]
    paths.save_npz_atomic(os.path.join(out, "embeddings.npz"), embeddings=bank,
                          file_names=np.array(kept_files))
    if query:
      summary.update(query=query, neighbours=_neighbours(predictor, query, bank, kept_files,
                                                         k, embedding))
      paths.write_json(os.path.join(out, "neighbours.json"),
                       {"query": query, "neighbours": summary["neighbours"]})
  paths.write_json(os.path.join(out, "summary.json"), summary)
  if log.count:
    logging.warning("%d images could not be decoded: %s", log.count, summary["bad_images"])
  return summary


def define_flags(flag_values=None) -> dict[str, Any]:
  """The command line's flags, in ``flag_values`` (absl's global flags by default):
  defined only when this module runs as the program, so importing it defines none."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flag_values if flag_values is not None else flags.FLAGS
  return dict(
      run=flags.DEFINE_string("run", None, "Workdir of a teacher, pretrain or supervised run "
                              "(config.json and checkpoints/), local or gs://.", flag_values=fv),
      images=flags.DEFINE_string("images", None, "Folder of images (any depth).",
                                 flag_values=fv),
      out=flags.DEFINE_string("out", None, "Folder for the maps, embeddings and summary.json.",
                              flag_values=fv),
      npy=flags.DEFINE_bool("npy", False, "Teacher runs: also each log-density as .npy.",
                            flag_values=fv),
      query=flags.DEFINE_string("query", None, "Encoder runs: an image whose nearest images "
                                "of the folder to list.", flag_values=fv),
      k=flags.DEFINE_integer("k", 5, "How many nearest images --query lists.", flag_values=fv),
      embedding=flags.DEFINE_enum("embedding", "pooled", list(config_checks.EMBEDDINGS),
                                  "Encoder runs: the embedding written and ranked.",
                                  flag_values=fv),
      batch_size=flags.DEFINE_integer("batch_size", 32, "Images per jitted call.",
                                      flag_values=fv),
      num_threads=flags.DEFINE_integer("num_threads", 4, "Threads that decode images.",
                                       flag_values=fv),
      max_bad_images=flags.DEFINE_integer(
          "max_bad_images", images_lib.DEFAULT_MAX_BAD_IMAGES, "Undecodable files left out "
          "before the run stops (as data.max_bad_images).", flag_values=fv))


def main(argv: Sequence[str], flag_values: dict[str, Any]) -> None:
  """Runs :func:`predict_folder` on the flags and prints a line per result."""
  from absl import app  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # the libraries' INFO lines; bad files still show
  v = {name: flag.value for name, flag in flag_values.items()}
  for name in ("run", "images", "out"):
    if not v[name]:
      raise app.UsageError(f"pass --{name}; e.g. --run=/tmp/teacher --images=~/photos "
                           "--out=/tmp/maps")
  summary = predict_folder(v["run"], os.path.expanduser(v["images"]),
                           os.path.expanduser(v["out"]), npy=v["npy"],
                           query=v["query"] and os.path.expanduser(v["query"]), k=v["k"],
                           embedding=v["embedding"], batch_size=v["batch_size"],
                           num_threads=v["num_threads"], max_bad_images=v["max_bad_images"])
  for n in summary.get("neighbours", []):
    print(f"{n['similarity']:.4f}  {n['file_name']}")
  bad = summary["bad_images"]
  print(f"{summary['task']} run: {summary['images']} images -> {v['out']}"
        + (f"; {len(bad)} could not be decoded: {', '.join(bad)}" if bad else ""))


if __name__ == "__main__":
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  _FLAGS = define_flags()
  _app.run(lambda argv: main(argv, _FLAGS))
