"""kNN classification and retrieval metrics against brute-force NumPy, chunked and sharded.

The references loop over queries, sort each ranking explicitly and apply the
textbook definitions in float64. Every case shares a few shapes (40 queries
or the 64-item gallery itself, D = 8) and the same static arguments, so the
whole file compiles a handful of programs.
"""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from attn_contrastive.evaluators import retrieval_metrics as rm
from attn_contrastive.train import mesh as mesh_lib

NUM_QUERIES, NUM_ITEMS, DIM = 40, 64, 8
NUM_CLASSES = 7
K, CHUNK, KS = 10, 16, (1, 10, 100)


def _data(seed=0):
  """Unnormalised embeddings; gallery classes 0-4 plus one item of class 6, queries also 5."""
  rng = np.random.default_rng(seed)
  scale = rng.uniform(0.5, 2, (NUM_ITEMS, 1))
  gallery = (rng.normal(size=(NUM_ITEMS, DIM)) * scale).astype(np.float32)
  gallery_labels = rng.integers(0, 5, NUM_ITEMS).astype(np.int32)
  gallery_labels[3] = 6  # alone in its class: R = 1 for class-6 queries; skipped leave-one-out
  queries = rng.normal(size=(NUM_QUERIES, DIM)).astype(np.float32)
  query_labels = rng.integers(0, 5, NUM_QUERIES).astype(np.int32)
  query_labels[[0, 7]] = 5  # no relevant item: skipped
  query_labels[11] = 6
  return queries, query_labels, gallery, gallery_labels


def _cosine(a, b):
  a = a.astype(np.float64) / np.linalg.norm(a.astype(np.float64), axis=1, keepdims=True)
  b = b.astype(np.float64) / np.linalg.norm(b.astype(np.float64), axis=1, keepdims=True)
  return a @ b.T


def _ranking(sim_row, query, exclude_self):
  """Gallery indices by descending similarity, ties by index, without the query itself."""
  items = [j for j in range(len(sim_row)) if not (exclude_self and j == query)]
  return sorted(items, key=lambda j: (-sim_row[j], j))


def _knn_reference(queries, bank, bank_labels, k, temperature, exclude_self, num_top=5):
  sim = _cosine(queries, bank)
  ranked = []
  for i in range(len(queries)):
    votes = np.zeros(NUM_CLASSES)
    for j in _ranking(sim[i], i, exclude_self)[:k]:
      votes[bank_labels[j]] += np.exp(sim[i, j] / temperature)
    ranked.append(np.argsort(-votes, kind="stable")[:num_top])
  return np.array(ranked)


def _retrieval_reference(queries, query_labels, gallery, gallery_labels, ks, exclude_self):
  sim = _cosine(queries, gallery)
  rows, skipped = [], 0
  for i in range(len(queries)):
    relevant = [gallery_labels[j] == query_labels[i] for j in _ranking(sim[i], i, exclude_self)]
    r = sum(relevant)
    if r == 0:
      skipped += 1
      continue
    precision = [sum(relevant[:n + 1]) / (n + 1) for n in range(len(relevant))]
    recall = [sum(relevant[:n + 1]) / r for n in range(len(relevant))]
    ap = np.mean([p for p, rel in zip(precision, relevant) if rel])
    p_at = [sum(relevant[:k]) / k for k in ks]
    r_precision = sum(relevant[:r]) / r
    curve = [max(p for p, rc in zip(precision, recall) if rc >= level)
             for level in np.arange(11) / 10]
    rows.append([ap, *p_at, r_precision, *curve])
  means = np.mean(rows, axis=0)
  out = {"map": means[0], **{f"precision@{k}": v for k, v in zip(ks, means[1:])},
         "r_precision": means[1 + len(ks)], "pr_curve": list(means[2 + len(ks):]),
         "num_queries": len(rows), "num_skipped": skipped}
  return out


def _assert_metrics_close(got, want, rtol=1e-5):
  assert set(got) == set(want)
  assert (got["num_queries"], got["num_skipped"]) == (want["num_queries"], want["num_skipped"])
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=1e-6, err_msg=key)
  assert len(got["pr_curve"]) == 11 and all(isinstance(v, float) for v in got["pr_curve"])


def _cases(data):
  """(queries, query labels, exclude_self) of the separate-gallery and leave-one-out cases."""
  queries, query_labels, gallery, gallery_labels = data
  return {"separate": (queries, query_labels, False),
          "leave_one_out": (gallery, gallery_labels, True)}


def _sharded(*arrays):
  sharding = NamedSharding(mesh_lib.make_mesh(8), P(mesh_lib.DATA_AXIS))
  return [jax.device_put(x, sharding) for x in arrays]


@pytest.mark.parametrize("case", ["separate", "leave_one_out"])
def test_knn_matches_a_brute_force_weighted_vote(case):
  data = _data()
  queries, _, exclude_self = _cases(data)[case]
  gallery, gallery_labels = data[2], data[3]
  temperature = 0.07 if case == "separate" else 0.2
  got = rm.knn_classify(queries, gallery, gallery_labels, num_classes=NUM_CLASSES, k=K,
                        temperature=temperature, exclude_self=exclude_self, chunk=CHUNK)
  want = _knn_reference(queries, gallery, gallery_labels, K, temperature, exclude_self)
  assert got.shape == (len(queries), 5) and got.dtype == np.int32
  np.testing.assert_array_equal(np.asarray(got), want)
  if exclude_self:  # an item's own label, alone in its class, gets no vote
    assert np.asarray(got)[3, 0] != 6


@pytest.mark.parametrize("case", ["separate", "leave_one_out"])
def test_retrieval_matches_brute_force_definitions(case):
  data = _data()
  queries, query_labels, exclude_self = _cases(data)[case]
  got = rm.retrieval_metrics(queries, query_labels, data[2], data[3], ks=KS,
                             exclude_self=exclude_self, chunk=CHUNK)
  want = _retrieval_reference(queries, query_labels, data[2], data[3], KS, exclude_self)
  _assert_metrics_close(got, want)
  assert got["num_skipped"] == (2 if case == "separate" else 1)


def test_chunk_sizes_that_do_not_divide_the_queries_change_nothing():
  queries, query_labels, gallery, gallery_labels = _data()
  knn = [np.asarray(rm.knn_classify(queries, gallery, gallery_labels, num_classes=NUM_CLASSES,
                                    k=K, chunk=chunk)) for chunk in (CHUNK, 64)]
  np.testing.assert_array_equal(knn[0], knn[1])
  metrics = [rm.retrieval_metrics(queries, query_labels, gallery, gallery_labels, ks=KS,
                                  chunk=chunk) for chunk in (CHUNK, 64)]
  _assert_metrics_close(metrics[0], metrics[1], rtol=1e-6)


def test_ties_are_broken_by_gallery_index_sharded_or_not():
  rng = np.random.default_rng(2)
  distinct = rng.normal(size=(6, DIM)).astype(np.float32)
  gallery = distinct[rng.integers(0, 6, NUM_ITEMS)]  # exact duplicates with mixed labels
  gallery_labels = rng.integers(0, 5, NUM_ITEMS).astype(np.int32)
  queries = distinct[rng.integers(0, 6, NUM_QUERIES)]
  query_labels = rng.integers(0, 5, NUM_QUERIES).astype(np.int32)
  want = _retrieval_reference(queries, query_labels, gallery, gallery_labels, KS, False)
  for g, labels in [(gallery, gallery_labels), _sharded(gallery, gallery_labels)]:
    _assert_metrics_close(rm.retrieval_metrics(queries, query_labels, g, labels, ks=KS,
                                               chunk=CHUNK), want)
  want = _knn_reference(queries, gallery, gallery_labels, K, 0.07, False)
  for g, labels in [(gallery, gallery_labels), _sharded(gallery, gallery_labels)]:
    got = rm.knn_classify(queries, g, labels, num_classes=NUM_CLASSES, k=K, chunk=CHUNK)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_separable_embeddings_are_retrieved_and_classified_perfectly():
  rng = np.random.default_rng(1)
  gallery_labels = rng.integers(0, 5, NUM_ITEMS).astype(np.int32)
  query_labels = rng.integers(0, 5, NUM_QUERIES).astype(np.int32)
  directions = np.eye(DIM, dtype=np.float32) * 3  # one orthogonal direction per class
  gallery, queries = directions[gallery_labels], directions[query_labels]
  for q, q_labels, exclude_self in [(queries, query_labels, False),
                                    (gallery, gallery_labels, True)]:
    metrics = rm.retrieval_metrics(q, q_labels, gallery, gallery_labels, ks=KS,
                                   exclude_self=exclude_self, chunk=CHUNK)
    assert metrics["map"] == pytest.approx(1.0) and metrics["precision@1"] == pytest.approx(1.0)
    assert metrics["r_precision"] == pytest.approx(1.0)
    np.testing.assert_allclose(metrics["pr_curve"], 1.0, rtol=1e-6)
    assert (metrics["num_queries"], metrics["num_skipped"]) == (len(q), 0)
    ranked = rm.knn_classify(q, gallery, gallery_labels, num_classes=NUM_CLASSES, k=K,
                             exclude_self=exclude_self, chunk=CHUNK)
    assert rm.topk_accuracy(ranked, q_labels) == {"top1": 1.0, "top5": 1.0}


@pytest.mark.parametrize("case", ["separate", "leave_one_out"])
def test_a_bank_sharded_over_8_devices_gives_the_unsharded_results(case):
  assert jax.device_count() >= 8, "tests/conftest.py sets 8 host devices"
  data = _data()
  queries, query_labels, exclude_self = _cases(data)[case]
  gallery, gallery_labels = data[2], data[3]
  sharded_gallery, sharded_labels = _sharded(gallery, gallery_labels)
  assert rm._layout(sharded_gallery).shards == 8
  runs = [(queries, query_labels, gallery, gallery_labels),
          (sharded_gallery, sharded_labels, sharded_gallery, sharded_labels) if exclude_self
          else (queries, query_labels, sharded_gallery, sharded_labels)]
  knn = [rm.knn_classify(q, g, labels, num_classes=NUM_CLASSES, k=K, exclude_self=exclude_self,
                         chunk=CHUNK) for q, _, g, labels in runs]
  np.testing.assert_array_equal(np.asarray(knn[0]), np.asarray(knn[1]))
  metrics = [rm.retrieval_metrics(q, q_labels, g, labels, ks=KS, exclude_self=exclude_self,
                                  chunk=CHUNK) for q, q_labels, g, labels in runs]
  _assert_metrics_close(metrics[1], metrics[0], rtol=1e-6)


@pytest.mark.parametrize("case", ["separate", "leave_one_out"])
def test_a_padded_sharded_gallery_ranks_only_its_items(case):
  """60 items padded to 64 rows over 8 devices (built as each process builds its block):
  the padding is in no ranking, so the numbers are the 60-item brute force's."""
  data = _data()
  n = 60
  queries, query_labels, exclude_self = _cases(data)[case]
  if exclude_self:
    queries, query_labels = queries[:n], query_labels[:n]
  mesh = mesh_lib.make_mesh(8)
  assert mesh_lib.process_rows(NUM_ITEMS, mesh) == slice(0, NUM_ITEMS)  # one process: all
  gallery = mesh_lib.rows_from_processes(data[2][:n], NUM_ITEMS, mesh)
  gallery_labels = mesh_lib.rows_from_processes(data[3][:n], NUM_ITEMS, mesh)
  assert rm._layout(gallery).shards == 8
  got = rm.retrieval_metrics(queries, query_labels, gallery, gallery_labels, ks=KS,
                             exclude_self=exclude_self, chunk=CHUNK, num_items=n)
  _assert_metrics_close(got, _retrieval_reference(queries, query_labels, data[2][:n],
                                                  data[3][:n], KS, exclude_self))
  got = rm.knn_classify(queries, gallery, gallery_labels, num_classes=NUM_CLASSES, k=K,
                        exclude_self=exclude_self, chunk=CHUNK, num_items=n)
  np.testing.assert_array_equal(np.asarray(got), _knn_reference(
      queries, data[2][:n], data[3][:n], K, 0.07, exclude_self))
  with pytest.raises(ValueError, match="pad them"):
    mesh_lib.process_rows(n, mesh)


def test_l2_normalize_and_shape_checks():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  np.testing.assert_allclose(np.asarray(rm.l2_normalize(x)), [[0.6, 0.8], [0.0, 0.0]],
                             rtol=1e-6)
  queries, query_labels, gallery, gallery_labels = _data()
  with pytest.raises(ValueError, match="exclude_self"):
    rm.knn_classify(queries, gallery, gallery_labels, num_classes=NUM_CLASSES,
                    exclude_self=True)
  with pytest.raises(ValueError, match="labels"):
    rm.retrieval_metrics(queries, query_labels[:5], gallery, gallery_labels)
  with pytest.raises(ValueError, match="num_items"):
    rm.retrieval_metrics(queries, query_labels, gallery, gallery_labels, num_items=65)
