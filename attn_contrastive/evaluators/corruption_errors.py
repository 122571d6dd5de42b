"""ImageNet-C's summary numbers from accuracies per corruption and severity.

Hendrycks & Dietterich (2019) normalise a model's errors by AlexNet's, so
that corruptions of different difficulty weigh alike:

* corruption error ``CE_c = Σ_s E_{s,c} / Σ_s E^AlexNet_{s,c}`` and ``mCE``,
  its mean over the 15 benchmark corruptions;
* relative ``CE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^AlexNet_{s,c} −
  E^AlexNet_clean)`` and relative mCE: how much a model *loses* under
  corruption, against what AlexNet loses.

The paper's robustness table has four ImageNet-C columns; we report the four
category means (noise, blur, weather, digital), the mean of the 4 extra
corruptions, the mean over the 15, and the accuracy per severity averaged
over the 15. On data other than ImageNet the AlexNet normalisation is kept
as a fixed scale (its numbers are not AlexNet's errors on that data).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from attn_contrastive.data.image_corruptions import BENCHMARK, CATEGORIES

#: AlexNet's top-1 error on ImageNet-C, averaged over the 5 severities
#: (Hendrycks & Dietterich 2019, the constants of their evaluation code).
ALEXNET_ERRORS = dict(zip(BENCHMARK, (
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816,
    0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500)))
#: AlexNet's clean ImageNet top-1 error (torchvision's model, 56.55% top-1), the
#: baseline of relative mCE.
ALEXNET_CLEAN_ERROR = 0.4345


def summarize(top1: Mapping[str, Sequence[float]], clean_top1: float) -> dict[str, object]:
  """The summary of ``{corruption: [top-1 at each severity]}`` and the clean top-1.

  Returns (accuracies and errors as fractions) ``noise``, ``blur``,
  ``weather``, ``digital``, ``extra`` (mean accuracy over a category's
  corruptions and severities; NaN where none was scored), ``mean`` (over
  the benchmark corruptions scored), ``by_severity`` (mean accuracy over
  them at each severity), ``ce`` / ``relative_ce`` (per corruption),
  ``mce`` / ``relative_mce`` (their means) and ``num_benchmark`` (how many
  of the 15 entered those means).
  """
  acc = {c: np.asarray(v, np.float64) for c, v in top1.items()}
  out: dict[str, object] = {}
  for category, names in CATEGORIES.items():
    scored = [acc[c] for c in names if c in acc]
    out[category] = float(np.mean(np.concatenate(scored))) if scored else float("nan")
  bench = [c for c in BENCHMARK if c in acc]
  if not bench:
    return dict(out, mean=float("nan"), by_severity=[], ce={}, relative_ce={},
                mce=float("nan"), relative_mce=float("nan"), num_benchmark=0)
  out["mean"] = float(np.mean([acc[c].mean() for c in bench]))
  out["by_severity"] = [float(v) for v in np.mean([acc[c] for c in bench], axis=0)]
  clean_error = 1.0 - float(clean_top1)
  ce = {c: float(np.mean(1.0 - acc[c]) / ALEXNET_ERRORS[c]) for c in bench}
  rel = {c: float((np.mean(1.0 - acc[c]) - clean_error)
                  / (ALEXNET_ERRORS[c] - ALEXNET_CLEAN_ERROR)) for c in bench}
  out.update(ce=ce, relative_ce=rel, mce=float(np.mean(list(ce.values()))),
             relative_mce=float(np.mean(list(rel.values()))), num_benchmark=len(bench))
  return out
