"""Classification: top-1 and top-5 accuracy and cross-entropy of a classifier over a split."""
from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from attn_contrastive import losses
from attn_contrastive.evaluators import common
from attn_contrastive.train import mesh as mesh_lib

#: ``(state, uint8 images [B, H, W, 3]) -> logits [B, num_classes]``.
PredictFn = Callable[[Any, jax.Array], jax.Array]


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int = 5
                  ) -> tuple[jax.Array, jax.Array]:
  """Per example, 1.0 where the label is the top class and where it is among the top ``k``."""
  _, top = jax.lax.top_k(logits, min(k, logits.shape[-1]))
  hits = top == labels[:, None]
  return hits[:, 0].astype(jnp.float32), jnp.any(hits, -1).astype(jnp.float32)


class ClassificationEvaluator:
  """Top-1 and top-5 accuracy and mean cross-entropy over the evaluation split.

  ``transform(record)`` makes an example with ``image`` and ``label``;
  ``predict`` runs jitted over each global batch, and the per-batch sums are
  reduced on device. Returns ``{"accuracy", "top5", "loss"}`` (``accuracy``
  is top-1; with fewer than 5 classes top-5 is 1); :attr:`results` stays
  empty (the flat scalars are the whole result).
  """

  def __init__(self, predict: PredictFn, source, transform: Callable[[Any], common.Example],
               eval_cfg, *, mesh=None):
    self.source, self.transform, self.eval_cfg = source, transform, eval_cfg
    self.mesh = mesh or mesh_lib.make_mesh()
    self.global_batch = int(eval_cfg.batch_size)
    mesh_lib.check_batch_divisible(self.global_batch, self.mesh)
    self.num_examples = common.num_examples(source, eval_cfg.max_examples)
    self.results: dict[str, Any] = {}

    def eval_step(state, batch):
      logits = predict(state, batch["image"])
      top1, top5 = top_k_correct(logits, batch["label"])
      nll = jax.vmap(losses.cross_entropy)(logits[:, None], batch["label"][:, None])
      return tuple(jnp.sum(x * batch["mask"]) for x in (top1, top5, nll, 1.0))

    self._eval_step = jax.jit(eval_step)

  def __call__(self, state) -> dict[str, float]:
    """Top-1, top-5 and loss over the split's first ``num_examples`` examples."""
    totals = np.zeros(4)
    load = lambda i: self.transform(self.source[i])  # noqa: E731
    threads = max(int(self.eval_cfg.num_threads), 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      for examples, mask in common.split_batches(load, self.num_examples, self.global_batch,
                                                 pool):
        batch = {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}
        batch["mask"] = mask.astype(np.float32)
        sums = self._eval_step(state, mesh_lib.to_global(batch, self.mesh))
        totals += np.array(jax.device_get(sums))
    top1, top5, loss = totals[:3] / totals[3]
    return {"accuracy": float(top1), "top5": float(top5), "loss": float(loss)}
