"""TensorBoard event files without TensorFlow, for clu's metric writers.

The loop and the evaluators write their metrics through ``clu.metric_writers``
(log lines, TensorBoard files, ``periodic_actions``' progress). That package
imports its TensorFlow summary writer, and with it TensorFlow, on import:
seconds of start-up in every process, for files that are only protocol
buffers in TFRecord framing. :func:`install`, run when the package is
imported, puts :class:`SummaryWriter` in its place before ``clu.metric_writers``
is first imported: the same event files, written from tensorboard's protocol
buffers and plugin metadata through :mod:`etils.epath` (local or remote), and
TensorFlow is loaded only by what needs it (building a tfds dataset).
"""
from __future__ import annotations

import io
import os
import socket
import sys
import threading
import time
import types
from typing import Any, Mapping

import numpy as np

_CLU_MODULE = "clu.metric_writers.summary_writer"


def install() -> None:
  """Makes :class:`SummaryWriter` clu's ``SummaryWriter`` (and so
  ``create_default_writer``'s).

  Before ``clu.metric_writers`` is imported, its TensorFlow module is never
  loaded; after, the names are replaced where clu looks them up, so that every
  process writes its files the same way whatever it imported first.
  """
  clu_writers = sys.modules.get("clu.metric_writers")
  if clu_writers is None:
    module = types.ModuleType(_CLU_MODULE, "clu's SummaryWriter name, given to "
                              f"{__name__}.SummaryWriter.")
    module.SummaryWriter = SummaryWriter
    sys.modules.setdefault(_CLU_MODULE, module)
    return
  clu_writers.SummaryWriter = SummaryWriter
  sys.modules["clu.metric_writers.utils"].SummaryWriter = SummaryWriter


def _record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
  import struct
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _png(image: np.ndarray) -> bytes:
  """uint8 as it is; floats clipped to [0, 1] and scaled as ``tf.summary.image``
  does (``tf.image.convert_image_dtype``: times 255.5, truncated)."""
  from PIL import Image
  if image.dtype != np.uint8:
    image = (np.clip(image.astype(np.float32), 0.0, 1.0) * np.float32(255.5)).astype(np.uint8)
  if image.shape[-1] == 1:
    image = image[..., 0]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


class SummaryWriter:
  """clu's ``MetricWriter`` interface over one TensorBoard event file in ``logdir``.

  Scalars, images, texts and hyperparameters are written as TensorFlow 2's
  summary ops write them (a tensor and its plugin's metadata); videos, audio
  and histograms, which no task writes, are refused with a warning, as clu's
  writer does for videos. Events are buffered, as TensorFlow's writer buffers
  them, and written on :meth:`flush`, and by the write that makes
  :data:`MAX_QUEUE` wait or finds the oldest waiting for :data:`FLUSH_S`
  (appended to a local file; a remote file is uploaded whole again).
  """

  MAX_QUEUE = 10
  FLUSH_S = 120.0
  _count = 0
  _lock = threading.Lock()

  def __init__(self, logdir: str):
    from etils import epath
    from attn_contrastive import paths
    with SummaryWriter._lock:
      SummaryWriter._count += 1
      count = SummaryWriter._count
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.{count}.v2")
    self._dir = epath.Path(logdir)
    self._dir.mkdir(parents=True, exist_ok=True)
    self._path = self._dir / name
    self._remote = paths.is_remote(logdir)
    self._pending: list[bytes] = []
    self._written = b""
    from tensorboard.compat.proto import event_pb2
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    self.flush()

  def _add(self, event) -> None:
    if not self._pending:
      self._oldest = time.monotonic()
    self._pending.append(_record(event.SerializeToString()))
    if (len(self._pending) >= self.MAX_QUEUE
        or time.monotonic() - self._oldest >= self.FLUSH_S):
      self.flush()

  def _summary(self, step: int, tag: str, tensor, metadata) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)
    self._add(event_pb2.Event(wall_time=time.time(), step=int(step),
                              summary=summary_pb2.Summary(value=[value])))

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None) -> None:
    from tensorboard.util import tensor_util
    for key, value in values.items():
      md = metadata.get(key) if metadata is not None else None
      self._summary(step, key, tensor_util.make_tensor_proto(np.asarray(value)), md)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    from tensorboard.plugins.scalar import metadata
    from tensorboard.util import tensor_util
    md = metadata.create_summary_metadata(display_name=None, description=None)
    for key, value in scalars.items():
      self._summary(step, key, tensor_util.make_tensor_proto(np.float32(value)), md)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Each value: one image [H, W, C] or a batch [N, H, W, C], C in 1, 3, 4."""
    from tensorboard.plugins.image import metadata
    from tensorboard.util import tensor_util
    md = metadata.create_summary_metadata(display_name=None, description=None)
    for key, value in images.items():
      value = np.asarray(value)
      batch = value[None] if value.ndim == 3 else value
      if batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image summary {key!r} has shape {value.shape}: "
                         "expected [H, W, C] or [N, H, W, C] with C in 1, 3, 4")
      h, w = batch.shape[1:3]
      data = [str(w).encode(), str(h).encode()] + [_png(im) for im in batch]
      self._summary(step, key, tensor_util.make_tensor_proto(np.array(data, dtype=object)),
                    md)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    from tensorboard.plugins.text import metadata
    from tensorboard.util import tensor_util
    md = metadata.create_summary_metadata(display_name=None, description=None)
    for key, value in texts.items():
      self._summary(step, key, tensor_util.make_tensor_proto(
          np.array(value.encode(), dtype=object)), md)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    from clu.internal import utils
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2
    summary = summary_v2.hparams_pb(dict(utils.flatten_dict(hparams)))
    self._add(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))

  def _unsupported(self, kind: str) -> None:
    from absl import logging
    logging.log_first_n(logging.WARNING, f"SummaryWriter does not write {kind}.", 1)

  def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
    del step, videos
    self._unsupported("videos")

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
    del step, audios, sample_rate
    self._unsupported("audio")

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Mapping[str, int] | None = None) -> None:
    del step, arrays, num_buckets
    self._unsupported("histograms")

  def flush(self) -> None:
    """Writes the buffered events."""
    if not self._pending:
      return
    data, self._pending = b"".join(self._pending), []
    if self._remote:
      self._written += data
      self._path.write_bytes(self._written)
    else:
      with open(self._path, "ab") as f:
        f.write(data)

  def close(self) -> None:
    self.flush()
