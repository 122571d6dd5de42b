"""The input-pipeline benchmark: it runs end to end on a handful of images, and its
ImageNet-like dataset is what the real pipeline reads."""
import os
import sys

import cv2
import numpy as np

from attn_contrastive.data import attention_maps as am
from attn_contrastive.data import sources

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import imagenet_like  # noqa: E402
import input_pipeline  # noqa: E402


def test_benchmark_runs_on_a_few_images(tmp_path):
  out = input_pipeline.main([
      "--num_images=12", "--batch=4", "--batches=2", "--warmup=1", "--settings=1x0",
      "--piece_images=6", "--crop_samples=100", "--maps_per_shard=5",
      f"--data_dir={tmp_path}"])
  assert out["num_images"] == 12 and 60 < out["mean_jpeg_kb"] < 180
  assert set(out["pieces_images_per_s"]) == {"jpeg_pillow", "jpeg_turbo", "decode", "views",
                                              "views_device", "decode_join",
                                              "decode_join_views",
                                              "decode_join_views_device"}
  assert all(r["cpu"] > 0 and r["wall"] > 0 for r in out["pieces_images_per_s"].values())
  assert [(r["views_on"], r["threads"], r["workers"]) for r in out["pipeline"]] == [
      ("host", 1, 0), ("device", 1, 0)]
  assert all(r["views_per_s"] > 0 and r["views_per_core_s"] > 0 for r in out["pipeline"])
  assert 0 < out["cores_for_target"]["device"] and out["cpu"]["model"]
  assert 0 < out["cores_for_target"]["host"]
  assert cv2.getNumThreads() == 1  # the pipeline's records run in parallel, not OpenCV's stripes


def test_dataset_records_and_maps_line_up(tmp_path):
  """JPEG records of ImageNet's shapes, read through ``sources.open_split`` (each
  record parsed as tfds parses it), joined index by index to maps written by the
  label task's writers (3 shards)."""
  images, joined, data_dir = imagenet_like.prepare(str(tmp_path), 7, maps_per_shard=3)
  assert len(images) == len(joined) == 7
  shapes = {(h, w) for h, w, _ in imagenet_like.SHAPES}
  for i in range(7):
    record = joined[i]
    assert record["image"].dtype == np.uint8 and record["image"].shape[2] == 3
    assert record["image"].shape[:2] in shapes
    assert record["attention_map"].shape == (64, 64) and record["attention_map"].max() == 255
  assert am.read_metadata(os.path.join(data_dir, "maps_3"))["num_shards"] == 3
  flat = images.source.source  # parsed straight from the tf.Example: as tfds parses it
  assert isinstance(flat, sources.FlatRecordSource)
  for i in range(7):
    mine, tfds_own = flat[i], flat.source[i]
    assert mine == tfds_own and {k: type(v) for k, v in mine.items()} == {
        "image": bytes, "label": int, "file_name": bytes}


def test_half_scale_decoding_rarely_fits_imagenet_shapes():
  """Both SimCLR crops of a ~500×375 image almost never shrink by more than 2× at
  224 px (so decoding at half scale would change the views); of a 1024×768 one,
  often."""
  share = input_pipeline.reduced_decode_share(((375, 500, 1.0), (768, 1024, 1.0)),
                                              samples=2000)
  assert share["375x500"] < 0.005 and share["768x1024"] > 0.3
