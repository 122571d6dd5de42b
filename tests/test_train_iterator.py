"""The training stream reads each record inside its per-record step and keeps grain's
own order and generators: the batches of grain's source-wrapping pipeline, bit for bit.
"""
import grain
import ml_collections
import numpy as np

from attn_contrastive.data import pipeline

SEED, BATCH = 7, 4


def _source(n: int = 11) -> list[dict[str, np.ndarray]]:
  """``n`` records of a random 24×20 uint8 image and a label (in memory)."""
  rng = np.random.default_rng(0)
  return [{"image": rng.integers(0, 256, (24, 20, 3), dtype=np.uint8), "label": i}
          for i in range(n)]


def _transform() -> pipeline.SupervisedView:
  return pipeline.SupervisedView(16, ml_collections.ConfigDict({"area_min": 0.08}))


def _grains_own(source, start_batch: int, n: int) -> list[dict[str, np.ndarray]]:
  """The same stream built on grain's source dataset, the records read by grain."""
  ds = grain.MapDataset.source(source).seed(SEED).shuffle().repeat(None)
  ds = ds.random_map(_transform()).batch(BATCH, drop_remainder=True)
  return [ds[start_batch + i] for i in range(n)]


def test_batches_equal_grains_source_pipeline_from_any_start():
  source = _source()
  for start in (0, 5):  # 5: a resumed run, epochs later
    it = pipeline.train_iterator(source, _transform(), seed=SEED, global_batch=BATCH,
                                 num_threads=1, prefetch=1, start_batch=start)
    got = [next(it) for _ in range(3)]
    want = _grains_own(source, start, 3)
    for g, w in zip(got, want):
      assert g["image"].shape == (BATCH, 16, 16, 3) and g["image"].dtype == np.uint8
      np.testing.assert_array_equal(g["label"], w["label"])
      np.testing.assert_array_equal(g["image"], w["image"])
    if start == 0:  # the first epoch's first 8 records: each drawn once
      assert len(set(np.concatenate([g["label"] for g in got[:2]]).tolist())) == 8
