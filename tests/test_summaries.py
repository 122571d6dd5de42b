"""The TensorBoard writer without TensorFlow against clu's TensorFlow one: the same
events, as TensorBoard reads them."""
import io

import numpy as np
import pytest
from clu import metric_writers
from PIL import Image

from attn_contrastive import summaries


def _write(writer) -> None:
  rng = np.random.default_rng(0)
  writer.write_hparams({"lr": "0.1", "model": {"width": "4"}})
  writer.write_scalars(3, {"loss": 0.625, "top1": np.float32(0.25)})
  writer.write_images(3, {"strips": rng.random((2, 5, 7, 3)).astype(np.float32) * 1.2 - 0.1})
  writer.write_images(4, {"map": rng.integers(0, 256, (6, 4, 1), dtype=np.uint8)})
  writer.write_texts(5, {"note": "héllo"})
  writer.close()


def _events(logdir) -> dict:
  """{tag: (step, plugin, value)}, PNGs decoded, hparams without their start time."""
  from tensorboard.backend.event_processing import event_accumulator as ea
  from tensorboard.plugins.hparams import plugin_data_pb2
  from tensorboard.util import tensor_util
  acc = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["tensors"]:
    (event,) = acc.Tensors(tag)
    plugin = acc.SummaryMetadata(tag).plugin_data
    value = tensor_util.make_ndarray(event.tensor_proto)
    if plugin.plugin_name == "images":
      value = [bytes(v) for v in value[:2]] + [
          np.asarray(Image.open(io.BytesIO(v))).tolist() for v in value[2:]]
    elif plugin.plugin_name == "hparams":
      info = plugin_data_pb2.HParamsPluginData.FromString(plugin.content).session_start_info
      value = (info.group_name, sorted((k, v.string_value) for k, v in info.hparams.items()))
    else:
      value = value.tolist()
    out[tag] = (event.step, plugin.plugin_name, value)
  return out


def test_clu_writes_tensorboard_files_without_tensorflow(tmp_path):
  """clu's default writer is this package's (installed on import); its events read
  back exactly as clu's TensorFlow writer's (float images converted as
  ``tf.summary.image`` does, so a rounding instead of truncation shows)."""
  from clu.metric_writers.tf import summary_writer as tf_writer
  assert metric_writers.SummaryWriter is summaries.SummaryWriter
  _write(metric_writers.SummaryWriter(str(tmp_path / "ours")))
  _write(tf_writer.SummaryWriter(str(tmp_path / "tf")))
  ours, theirs = _events(tmp_path / "ours"), _events(tmp_path / "tf")
  assert sorted(ours) == ["_hparams_/session_start_info", "loss", "map", "note", "strips",
                          "top1"]
  assert ours == theirs
  assert ours["loss"] == (3, "scalars", 0.625)
  assert ours["_hparams_/session_start_info"][2][1] == [("lr", "0.1"), ("model.width", "4")]


def test_bad_image_shape_is_refused_with_the_shapes_it_takes(tmp_path):
  writer = summaries.SummaryWriter(str(tmp_path))
  with pytest.raises(ValueError, match=r"expected \[H, W, C\] or \[N, H, W, C\]"):
    writer.write_images(0, {"x": np.zeros((4, 4), np.uint8)})


def test_events_reach_the_file_unflushed_once_ten_wait(tmp_path):
  """As TensorFlow's writer: a run that dies before its flush keeps all but the last few."""
  writer = summaries.SummaryWriter(str(tmp_path))
  (path,) = tmp_path.glob("events.out.tfevents.*")
  opened = path.stat().st_size  # the file's version event
  writer.write_scalars(1, {f"s{i}": i for i in range(writer.MAX_QUEUE - 1)})
  assert path.stat().st_size == opened
  writer.write_scalars(2, {"last": 1.0})
  assert b"last" in path.read_bytes()
