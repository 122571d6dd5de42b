"""kNN classification and retrieval metrics of embeddings: exact, on device, chunked over queries.

The metric kernels behind a kNN monitor (InstDisc / DINO) and a retrieval
evaluation, as pure functions of embeddings and labels; an evaluator makes
the embeddings and calls them. Both compare embeddings by cosine similarity:
the norms divide the dot products, so inputs need not be normalised and a
large bank is never copied (:func:`l2_normalize` is there for callers that
store normalised embeddings).

Each walks the queries in chunks of ``chunk`` inside one ``jax.jit`` (a
``lax.map``), so only one chunk's similarities to the whole bank exist at a
time, whatever the number of queries. The bank (gallery) may be a global
array whose leading axis is sharded over a mesh (``train/mesh.py``'s
``data`` axis): its layout is read from its ``NamedSharding`` and kept, so
each device scores the chunk against its own rows only, and across
processes each holds its own rows only (``mesh.rows_from_processes``). The
queries are replicated; the results come back replicated, readable on every
process.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

#: Floor of a norm, so that a zero embedding has similarity 0 to everything.
_EPS = 1e-12
#: Exact float32 dot products (TF32 or bf16 passes would reorder near-ties).
_PRECISION = jax.lax.Precision.HIGHEST
#: Recall levels of the interpolated precision-recall curve: 0, 0.1, ..., 1.0.
_CURVE_POINTS = 11


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = _EPS) -> jax.Array:
  """``x`` over its L2 norm along ``axis`` (norms below ``eps`` count as ``eps``)."""
  x = jnp.asarray(x)
  sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True)
  return (x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))).astype(x.dtype)


class _Layout(NamedTuple):
  """Where the bank's rows live: a mesh and the mesh axis (or axes) splitting them.

  ``mesh`` is None for a bank that is not a ``NamedSharding``'d global array;
  ``axis`` is None when its rows are not split (replicated, or a row count the
  shards do not divide), and the kernels then see the bank whole.
  """
  mesh: Mesh | None
  axis: Any
  shards: int

  def constrain(self, x: jax.Array, *spec) -> jax.Array:
    """``x`` laid out as ``spec`` on the bank's mesh (a no-op without a mesh)."""
    if self.mesh is None:
      return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P(*spec)))


def _layout(bank: Any) -> _Layout:
  """The bank's row split, read from its sharding."""
  sharding = getattr(bank, "sharding", None)
  if not isinstance(sharding, NamedSharding):
    return _Layout(None, None, 1)
  axis = sharding.spec[0] if len(sharding.spec) else None
  names = () if axis is None else axis if isinstance(axis, tuple) else (axis,)
  shards = math.prod(sharding.mesh.shape[name] for name in names)
  if shards == 1 or bank.shape[0] % shards:
    return _Layout(sharding.mesh, None, 1)
  return _Layout(sharding.mesh, axis, shards)


def _inverse_norms(x: jax.Array) -> jax.Array:
  """``1 / max(|x_i|, eps)`` per row, float32."""
  sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)
  return jax.lax.rsqrt(jnp.maximum(sq, _EPS * _EPS))


def _cosine(queries: jax.Array, bank: jax.Array, bank_inv: jax.Array) -> jax.Array:
  """Cosine similarities ``[C, N]`` of a query chunk to the bank, float32."""
  dots = jnp.einsum("cd,nd->cn", queries.astype(bank.dtype), bank, precision=_PRECISION,
                    preferred_element_type=jnp.float32)
  return dots * _inverse_norms(queries)[:, None] * bank_inv[None, :]


def _in_chunks(x: jax.Array, chunk: int) -> jax.Array:
  """``x`` zero-padded to whole chunks along its leading axis: ``[num_chunks, chunk, ...]``."""
  pad = -x.shape[0] % chunk
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape(-1, chunk, *x.shape[1:])


def _check(queries, bank, bank_labels, exclude_self: bool, chunk: int, query_labels=None,
           num_items: int | None = None) -> int:
  """Refuses shapes the kernels cannot pair up; returns the bank's real item count."""
  if np.ndim(queries) != 2 or np.ndim(bank) != 2 or np.shape(queries)[1] != np.shape(bank)[1]:
    raise ValueError(f"queries and bank must be [Q, D] and [N, D], got {np.shape(queries)} "
                     f"and {np.shape(bank)}")
  if np.shape(bank_labels) != np.shape(bank)[:1]:
    raise ValueError(f"bank labels must be [{np.shape(bank)[0]}], got {np.shape(bank_labels)}")
  if query_labels is not None and np.shape(query_labels) != np.shape(queries)[:1]:
    raise ValueError(f"query labels must be [{np.shape(queries)[0]}], got "
                     f"{np.shape(query_labels)}")
  n = np.shape(bank)[0] if num_items is None else int(num_items)
  if not 0 < n <= np.shape(bank)[0]:
    raise ValueError(f"num_items must be in [1, {np.shape(bank)[0]}] (the rows that are not "
                     f"padding), got {num_items}")
  if exclude_self and np.shape(queries)[0] != n:
    raise ValueError("exclude_self needs the queries to be the bank (row i is bank item i), "
                     f"got {np.shape(queries)[0]} queries and {n} items")
  if chunk < 1:
    raise ValueError(f"chunk must be positive, got {chunk}")
  return n


@functools.partial(jax.jit, static_argnames="k")
def _nearest(queries, bank, k: int):
  return jax.lax.top_k(_cosine(queries, bank, _inverse_norms(bank)), k)


def nearest(queries: Any, bank: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
  """``(similarities [Q, k'], indices [Q, k'])``: each query's ``k'`` most cosine-similar
  bank items, best first (``k' = min(k, N)``).

  One ``[Q, N]`` similarity matrix, unchunked: for a few queries against a
  bank (a query image against a folder's embeddings).
  """
  _check(queries, bank, np.zeros(np.shape(bank)[:1]), False, 1)
  if k < 1:
    raise ValueError(f"k must be positive, got {k}")
  sim, idx = _nearest(jnp.asarray(queries, jnp.float32), jnp.asarray(bank, jnp.float32),
                      min(int(k), np.shape(bank)[0]))
  return np.asarray(sim), np.asarray(idx)


# ---------------------------------------------------------------------------------------------
# kNN classification.


def _absent(sim, index, item, *, exclude_self: bool, num_items: int):
  """``[C, n]``: the query itself (leave-one-out) and padding rows, absent from a ranking."""
  absent = item[None, :] >= num_items
  if exclude_self:
    absent = absent | (item[None, :] == index[:, None])
  return jnp.broadcast_to(absent, sim.shape)


def _items(n: int, axis: Any) -> jax.Array:
  """The gallery indices ``[n]`` of this shard's rows."""
  offset = 0 if axis is None else jax.lax.axis_index(axis) * n
  return offset + jnp.arange(n, dtype=jnp.int32)


def _shard_neighbours(queries, index, bank, bank_inv, labels, *, k: int, exclude_self: bool,
                      num_items: int, axis: Any) -> tuple[jax.Array, jax.Array]:
  """The ``k`` nearest of one shard's items to each query: similarities and labels, ``[C, k]``.

  Runs on each device's own rows of the bank (under ``shard_map`` when the
  bank is split, ``axis`` naming the mesh axis; on the whole bank otherwise).
  """
  sim = _cosine(queries, bank, bank_inv)
  absent = _absent(sim, index, _items(bank.shape[0], axis), exclude_self=exclude_self,
                   num_items=num_items)
  sim = jnp.where(absent, -jnp.inf, sim)
  top_sim, top_item = jax.lax.top_k(sim, min(k, bank.shape[0]))
  return top_sim, labels[top_item]


def _knn_chunk(queries, index, bank, bank_inv, labels, temperature, *, layout: _Layout,
               k: int, num_classes: int, num_top: int, exclude_self: bool,
               num_items: int) -> jax.Array:
  """Classes ``[C, num_top]`` ranked by the weighted vote of each query's ``k`` neighbours.

  A split bank's first ``top_k`` runs on each device's own rows
  (``shard_map``; a sharded ``top_k`` under plain ``jit`` gathers the whole
  ``[C, N]`` similarity first); only the ``[C, shards × k]`` candidates
  meet for the second, which picks the global ``k``.
  """
  neighbours = functools.partial(_shard_neighbours, k=k, exclude_self=exclude_self,
                                 num_items=num_items, axis=layout.axis)
  if layout.axis is not None:
    split, whole = P(layout.axis), P()
    neighbours = jax.shard_map(neighbours, mesh=layout.mesh,
                               in_specs=(whole, whole, split, split, split),
                               out_specs=(P(None, layout.axis), P(None, layout.axis)))
  top_sim, top_labels = neighbours(queries, index, bank, bank_inv, labels)
  if layout.shards > 1:
    top_sim, pick = jax.lax.top_k(top_sim, min(k, top_sim.shape[1]))
    top_labels = jnp.take_along_axis(top_labels, pick, axis=1)
  # The neighbours are kept apart from the vote: fused into it (an unsplit bank, where
  # no shard_map separates them), XLA:CPU runs the vote many times slower.
  top_sim, top_labels = jax.lax.optimization_barrier((top_sim, top_labels))
  # Relative to the nearest neighbour: the same ranking, no overflow at small temperatures.
  weights = jnp.exp((top_sim - top_sim[:, :1]) / temperature)
  votes = jnp.sum(jnp.where(top_labels[..., None] == jnp.arange(num_classes),
                            weights[..., None], 0.0), axis=1)
  return jax.lax.top_k(votes, num_top)[1]


@functools.partial(jax.jit, static_argnames=("layout", "k", "num_classes", "num_top",
                                             "exclude_self", "num_items", "chunk"))
def _knn(queries, bank, bank_labels, temperature, *, layout, k, num_classes, num_top,
         exclude_self, num_items, chunk):
  """:func:`knn_classify` on device: ``lax.map`` of :func:`_knn_chunk` over query chunks."""
  num_queries = queries.shape[0]
  queries = layout.constrain(queries, None, None)
  bank_inv = _inverse_norms(bank)
  body = functools.partial(_knn_chunk, layout=layout, k=k, num_classes=num_classes,
                           num_top=num_top, exclude_self=exclude_self, num_items=num_items)
  ranked = jax.lax.map(
      lambda xs: body(xs[0], xs[1], bank, bank_inv, bank_labels, temperature),
      (_in_chunks(queries, chunk), _in_chunks(jnp.arange(num_queries), chunk)))
  return layout.constrain(ranked.reshape(-1, num_top)[:num_queries], None, None)


def knn_classify(queries: jax.Array, bank: jax.Array, bank_labels: jax.Array, *,
                 num_classes: int, k: int = 200, temperature: float = 0.07, num_top: int = 5,
                 exclude_self: bool = False, chunk: int = 256,
                 num_items: int | None = None) -> jax.Array:
  """Weighted kNN classification (InstDisc, DINO): classes ranked per query, ``[Q, num_top]``.

  Each query's ``k`` most cosine-similar bank items vote for their labels
  with weight ``exp(sim / temperature)``; the votes are summed per class and
  the classes ranked, so column 0 is the prediction and the first five the
  top-5 (``num_top`` is capped at ``num_classes``; ties go to the lower
  class). ``exclude_self`` is leave-one-out for queries that are the bank
  itself: query ``i`` never counts item ``i``.

  Memory per device, for ``S`` shards of the bank's rows: the bank's own
  ``N/S × D`` rows, the replicated ``Q × D`` queries, and per chunk of ``C``
  queries ``C × N/S`` similarities, ``C × S × k`` candidates and ``C ×
  num_classes`` votes. ImageNet's 50k queries against its 1.28M-image bank
  take ``C × 1.28M / S`` floats at a time (256 queries on 8 devices: 160 MB).
  Temperature is traced: changing it does not recompile.

  Args:
    queries: ``[Q, D]`` embeddings.
    bank: ``[N, D]`` embeddings, possibly sharded on ``N`` (see the module).
    bank_labels: ``[N]`` integer labels in ``[0, num_classes)``, laid out like ``bank``.
    num_classes: how many classes vote.
    k: neighbours per query (capped at ``N``).
    temperature: of the vote weights.
    num_top: how many ranked classes to return.
    exclude_self: leave-one-out (needs ``Q == num_items``).
    chunk: queries scored at a time.
    num_items: the bank's rows that are items (default all); the rows after them are
      padding (a bank padded to whole rows per device) and never neighbours.

  Returns:
    int32 ``[Q, min(num_top, num_classes)]``, replicated.
  """
  n = _check(queries, bank, bank_labels, exclude_self, chunk, num_items=num_items)
  return _knn(queries, bank, bank_labels, jnp.float32(temperature), layout=_layout(bank),
              num_items=n,
              k=int(k), num_classes=int(num_classes), num_top=min(int(num_top), int(num_classes)),
              exclude_self=bool(exclude_self), chunk=int(chunk))


def topk_accuracy(ranked: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """``{"top<k>": fraction of queries whose label is among the first k ranked classes}``."""
  ranked, labels = np.asarray(ranked), np.asarray(labels)
  return {f"top{k}": float(np.mean(np.any(ranked[:, :k] == labels[:, None], axis=1)))
          for k in ks}


# ---------------------------------------------------------------------------------------------
# Retrieval.


#: The index of a padding slot among a query's positives: after every gallery item.
_NO_ITEM = np.iinfo(np.int32).max


def _before(sim_a, item_a, sim_b, item_b) -> jax.Array:
  """Whether ``a`` is ranked before ``b``: higher similarity, ties in gallery order."""
  return (sim_a > sim_b) | ((sim_a == sim_b) & (item_a < item_b))


def _rows_at(x: jax.Array, at: jax.Array) -> jax.Array:
  """``x[c, at[c, j]]``, gathered from ``x`` flattened (``take_along_axis`` would fold a
  ``[C, n, 2]`` index constant at compile time)."""
  rows = (jnp.arange(x.shape[0], dtype=jnp.int32) * x.shape[1])[:, None]
  return jnp.take(x.reshape(-1), rows + at, mode="clip")


def _count_before(pos_sim, pos_item, sim, item) -> jax.Array:
  """``[C, n]``: how many of the sorted positives ``[C, M]`` are ranked before each item.

  A binary search per item (``log2(M + 1)`` steps over ``[C, n]``), which
  stands in for sorting the gallery: "positive ``m`` is before item ``i``"
  is true for a prefix of the positives.
  """
  size = pos_sim.shape[1]
  lo = jnp.zeros(sim.shape, jnp.int32)
  hi = jnp.full(sim.shape, size, jnp.int32)
  for _ in range(max(size, 1).bit_length()):
    mid = (lo + hi) // 2
    at = jnp.minimum(mid, size - 1)
    ahead = _before(_rows_at(pos_sim, at), _rows_at(pos_item, at), sim, item) & (mid < hi)
    lo, hi = jnp.where(ahead, mid + 1, lo), jnp.where(ahead, hi, mid)
  return lo


def _shard_ranks(queries, query_labels, index, gallery, gallery_inv, gallery_labels, *,
                 cap: int, exclude_self: bool, num_items: int, axis: Any
                 ) -> tuple[jax.Array, jax.Array]:
  """The positives of each query, in ranking order, and the negatives ranked before each.

  Runs on each device's own gallery rows (under ``shard_map`` when the gallery
  is split, ``axis`` naming the mesh axis). Each shard's ``cap`` best
  positives are gathered from every shard and sorted (``[C, M]``, ``M =
  shards × cap``, padding last); each local negative falls between two of
  them, and its slot is counted. Returns the sorted positives' gallery
  indices (``_NO_ITEM`` for padding) and ``[C, M + 1]`` counts of negatives
  per slot, summed over the shards.
  """
  n = gallery.shape[0]
  sim = _cosine(queries, gallery, gallery_inv)
  item = _items(n, axis)[None, :]
  absent = _absent(sim, index, item[0], exclude_self=exclude_self, num_items=num_items)
  sim = jnp.where(absent, -jnp.inf, sim)  # ranked last and never relevant: as if not there
  relevant = (query_labels[:, None] == gallery_labels[None, :]) & ~absent
  # top_k keeps the lower index first among ties, so each shard's list is in ranking order.
  pos_sim, at = jax.lax.top_k(jnp.where(relevant, sim, -jnp.inf), min(cap, n))
  real = pos_sim > -jnp.inf  # the relevant items are never at -inf; the rest fill up
  pos_item = jnp.where(real, item[0, 0] + at, _NO_ITEM)
  if axis is not None:
    pos_sim = jax.lax.all_gather(pos_sim, axis, axis=1, tiled=True)
    pos_item = jax.lax.all_gather(pos_item, axis, axis=1, tiled=True)
  neg_sim, pos_item = jax.lax.sort((-pos_sim, pos_item), dimension=1, num_keys=2)
  slot = _count_before(-neg_sim, pos_item, sim, item)
  counts = jax.vmap(lambda s, w: jnp.zeros(pos_item.shape[1] + 1, jnp.int32).at[s].add(w))(
      slot, (~relevant).astype(jnp.int32))
  if axis is not None:
    counts = jax.lax.psum(counts, axis)
  return pos_item, counts


def _metrics_of_ranks(pos_item, counts, n: int, ks: tuple[int, ...]):
  """Per query ``[AP, P@k..., R-precision, curve...]`` and R, from the positives' ranks.

  Positive ``m`` (0-based, in ranking order) is at rank ``m + 1 +`` the
  negatives before it, so its precision is ``(m + 1) / rank``; every
  metric of the full ranking follows from these ``R`` numbers.
  """
  real = pos_item != _NO_ITEM
  num_relevant = jnp.sum(real, axis=1)
  m = jnp.arange(pos_item.shape[1], dtype=jnp.int32)
  rank = m + 1 + jnp.cumsum(counts, axis=1)[:, :-1]
  precision = jnp.where(real, (m + 1) / rank.astype(jnp.float32), 0.0)
  r = jnp.maximum(num_relevant, 1)
  average_precision = jnp.sum(precision, axis=1) / r
  within = lambda depth: jnp.sum(real & (rank <= depth), axis=1)  # noqa: E731
  precision_at = [within(min(k, n)) / k for k in ks]
  r_precision = within(r[:, None]) / r
  # Interpolated precision at recall t/10: the best precision from the first positive
  # whose count reaches t/10 of R (10 (m + 1) >= t R, as integers) to the last.
  best_from = jax.lax.cummax(precision, axis=1, reverse=True)
  tenths = jnp.arange(_CURVE_POINTS)
  first = jnp.maximum(-(-(tenths[None, :] * num_relevant[:, None]) // 10) - 1, 0)
  curve = jnp.take_along_axis(best_from, jnp.minimum(first, pos_item.shape[1] - 1), axis=1)
  per_query = jnp.concatenate(
      [jnp.stack([average_precision, *precision_at, r_precision], axis=1), curve], axis=1)
  return per_query, num_relevant


def _retrieval_chunk(queries, query_labels, index, valid, gallery, gallery_inv, gallery_labels,
                     *, layout: _Layout, ks: tuple[int, ...], cap: int, exclude_self: bool,
                     num_items: int) -> tuple[jax.Array, jax.Array]:
  """Sums over a chunk's queries: ``([AP, P@k..., R-precision, curve...], [used, skipped])``.

  No ranking is sorted: each positive's rank is the count of items ranked
  before it (:func:`_shard_ranks`), ``O(N log M)`` per query for ``M``
  positives instead of ``O(N log N)``, and only ``[C, M + 1]`` counts cross
  the devices.
  """
  ranks = functools.partial(_shard_ranks, cap=cap, exclude_self=exclude_self,
                            num_items=num_items, axis=layout.axis)
  if layout.axis is not None:
    split, whole = P(layout.axis), P()
    # The gathered positives are sorted alike on every device, the counts summed.
    ranks = jax.shard_map(ranks, mesh=layout.mesh, in_specs=(whole,) * 3 + (split,) * 3,
                          out_specs=(whole, whole), check_vma=False)
  pos_item, counts = ranks(queries, query_labels, index, gallery, gallery_inv, gallery_labels)
  per_query, num_relevant = _metrics_of_ranks(pos_item, counts, num_items, ks)
  used = valid & (num_relevant > 0)
  sums = jnp.sum(jnp.where(used[:, None], per_query, 0.0), axis=0)
  return sums, jnp.stack([jnp.sum(used), jnp.sum(valid & (num_relevant == 0))])


@functools.partial(jax.jit, static_argnames=("layout", "ks", "cap", "exclude_self",
                                             "num_items", "chunk"))
def _retrieval_sums(queries, query_labels, gallery, gallery_labels, *, layout, ks, cap,
                    exclude_self, num_items, chunk):
  """Per-chunk sums of :func:`_retrieval_chunk`, ``lax.map``-ed over query chunks."""
  num_queries = queries.shape[0]
  queries = layout.constrain(queries, None, None)
  query_labels = layout.constrain(query_labels, None)
  gallery_inv = _inverse_norms(gallery)
  index = jnp.arange(num_queries, dtype=jnp.int32)
  body = functools.partial(_retrieval_chunk, layout=layout, ks=ks, cap=cap,
                           exclude_self=exclude_self, num_items=num_items)
  sums, counts = jax.lax.map(
      lambda xs: body(*xs, gallery, gallery_inv, gallery_labels),
      (_in_chunks(queries, chunk), _in_chunks(query_labels, chunk), _in_chunks(index, chunk),
       _in_chunks(index < num_queries, chunk)))
  return layout.constrain(sums, None, None), layout.constrain(counts, None, None)


@functools.partial(jax.jit, static_argnames=("layout",))
def _largest_class_on_device(labels: jax.Array, *, layout: _Layout) -> jax.Array:
  """:func:`_largest_class` on device: runs of equal labels after a sort, per shard."""
  def largest(x):
    x = jnp.sort(x)
    i = jnp.arange(x.shape[0])
    new = jnp.concatenate([jnp.ones(1, bool), x[1:] != x[:-1]])
    most = jnp.max(i - jax.lax.cummax(jnp.where(new, i, 0)) + 1)
    return most if layout.axis is None else jax.lax.pmax(most, layout.axis)
  if layout.axis is None:
    return largest(labels)
  return jax.shard_map(largest, mesh=layout.mesh, in_specs=P(layout.axis), out_specs=P())(labels)


def _largest_class(labels: jax.Array, layout: _Layout) -> int:
  """The most items any one label has on one shard of the gallery (the positives' cap)."""
  return int(jax.device_get(_largest_class_on_device(labels, layout=layout)))


def retrieval_metrics(queries: jax.Array, query_labels: jax.Array, gallery: jax.Array,
                      gallery_labels: jax.Array, *, ks: Sequence[int] = (1, 10, 100),
                      exclude_self: bool = False, chunk: int = 256,
                      num_items: int | None = None) -> dict[str, Any]:
  """Exact retrieval metrics of queries against a gallery; relevant means the same label.

  Each query ranks the whole gallery by cosine similarity (descending, ties
  in gallery order). Reported, as means over the queries that have at least
  one relevant item (the others are skipped and counted):

  * ``map``: average precision over the full ranking (the mean, over the
    relevant items, of the precision at each one's rank);
  * ``precision@k`` for each of ``ks``: relevant items among the first ``k``,
    over ``k`` (also when the gallery is shorter than ``k``, as trec_eval);
  * ``r_precision``: precision at rank R, R the query's number of relevant items;
  * ``pr_curve``: the 11-point interpolated precision at recall 0, 0.1, ..., 1
    (at recall r, the best precision at any rank whose recall is at least r);
  * ``num_queries`` (scored) and ``num_skipped`` (no relevant item).

  ``exclude_self`` is leave-one-out for queries that are the gallery itself:
  query ``i`` ranks every item but ``i``. With ``num_items``, the gallery's
  rows from ``num_items`` on are padding (a gallery padded to whole rows per
  device, :func:`attn_contrastive.train.mesh.rows_from_processes`), in no ranking.

  No ranking is sorted: a positive's rank is one plus the count of items
  ranked before it, which gives every metric above exactly (ties included).
  Memory per device, for ``S`` shards of the gallery's rows, chunks of ``C``
  queries and ``M`` the most items of one label on one shard: ``C × N/S``
  similarities and slots, ``C × S × M`` gathered positives, the gallery's
  own ``N/S × D`` rows and the replicated ``Q × D`` queries.

  Returns:
    A dict of Python floats and ints, ``pr_curve`` a list of 11 floats;
    the means are NaN when no query was scored.
  """
  n = _check(queries, gallery, gallery_labels, exclude_self, chunk, query_labels, num_items)
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"ks must be positive, got {ks}")
  layout = _layout(gallery)
  sums, counts = _retrieval_sums(queries, query_labels, gallery, gallery_labels, layout=layout,
                                 ks=ks, cap=_largest_class(gallery_labels, layout),
                                 exclude_self=bool(exclude_self), num_items=n,
                                 chunk=int(chunk))
  sums = np.asarray(sums, np.float64).sum(axis=0)
  used, skipped = (int(c) for c in np.asarray(counts, np.int64).sum(axis=0))
  means = sums / used if used else np.full_like(sums, np.nan)
  out: dict[str, Any] = {"map": float(means[0])}
  out.update({f"precision@{k}": float(v) for k, v in zip(ks, means[1:1 + len(ks)])})
  out["r_precision"] = float(means[1 + len(ks)])
  out["pr_curve"] = [float(v) for v in means[2 + len(ks):]]
  out.update(num_queries=used, num_skipped=skipped)
  return out
