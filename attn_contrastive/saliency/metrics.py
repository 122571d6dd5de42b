"""Saliency metrics of the MIT saliency benchmark, on NumPy arrays.

One image at a time, following the definitions of Bylinskii et al., "What do
different evaluation metrics tell us about saliency models?" (TPAMI 2018) and
the benchmark's MATLAB code (``NSS.m``, ``CC.m``, ``KLdiv.m``,
``similarity.m``, ``AUC_Judd.m``, ``AUC_Borji.m``, ``AUC_shuffled.m``,
``InfoGain.m``).

Names: ``P`` is the predicted saliency map, ``Q`` a continuous ground-truth
map, ``F`` a binary fixation map (``True`` / non-zero where an observer
fixated). All computation is in float64.

Conventions (where the MATLAB code returns NaN or is silent, this module
picks a defined result and says so):

* **Sizes.** A saliency map (and the information-gain baseline) whose size
  differs from the ground truth is first resized to the ground truth's size,
  as the MIT code does. The MIT code uses MATLAB ``imresize`` (bicubic with
  anti-aliasing); this module uses bilinear interpolation
  (``cv2.INTER_LINEAR``, see :func:`resize_to`), which keeps non-negative maps
  non-negative. Ground-truth maps and fixation maps are never resized: two
  ground truths of different sizes (``gt_map`` vs ``fixation_map``, or
  ``fixation_map`` vs ``other_fixation_map``) raise ``ValueError``.
* **Shapes.** Maps are 2-D ``H x W``; a trailing channel axis of size 1
  (``H x W x 1``) is dropped. Anything else, or an empty map, raises
  ``ValueError``.
* **NaN / inf** anywhere in an input raises ``ValueError``.
* **Fixation maps** must be non-negative; every non-zero pixel counts as one
  fixated location (a count map is treated like its support, as in MIT's
  ``logical(fixationMap)``). A fixation map without fixations raises
  ``ValueError("fixation map has no fixations")`` in every metric that needs
  fixations (NSS, the AUCs, information gain); a map where every pixel is
  fixated raises in the AUCs, which need non-fixated pixels.
* **Constant maps** (all values equal, up to a relative ``1e-12``): NSS and
  CC return ``0.0`` (MIT divides by a zero standard deviation and gets NaN);
  AUC-Judd, AUC-Borji and shuffled AUC return ``0.5`` (chance; MIT's jitter
  gives a random ranking whose expectation is 0.5); SIM and information gain
  turn a constant map into the uniform density (MIT's min-max normalisation
  would divide by zero); KLD normalises a constant map to the uniform
  density, as MIT does.
* **Negative values** are allowed in every metric that shifts or min-max
  normalises its inputs (NSS, CC, SIM, the AUCs, information gain). KLD
  treats its inputs as unnormalised densities, so a negative value in either
  map raises ``ValueError``; a ground truth summing to zero raises too, while
  an all-zero prediction is kept as is (as in MIT), giving a large finite
  score.
* **Standard deviation** uses ``ddof=0`` (NumPy, pysaliency); MATLAB's
  ``std`` uses ``ddof=1``, which scales NSS by ``sqrt((N-1)/N)``, a relative
  difference below ``2e-6`` for a 480 x 640 map.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

#: MATLAB's ``eps`` as written in the MIT benchmark code.
EPS = 2.2204e-16

#: Relative peak-to-peak spread under which a map counts as constant.
_CONSTANT_RTOL = 1e-12

#: Size of the tie-breaking jitter in AUC-Judd, relative to the map's range.
_JUDD_JITTER = 1e-7

# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def _as_map(x: np.ndarray, name: str) -> np.ndarray:
  """Returns ``x`` as a finite 2-D float64 array, or raises ValueError."""
  arr = np.asarray(x)
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim != 2:
    raise ValueError(f"{name} must be 2-D (H x W), got shape {arr.shape}")
  if arr.size == 0:
    raise ValueError(f"{name} is empty (shape {arr.shape})")
  if arr.dtype == bool:
    arr = arr.astype(np.float64)
  if not np.issubdtype(arr.dtype, np.number):
    raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
  arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} contains NaN or infinite values")
  return arr


def _as_fixation_map(x: np.ndarray, name: str = "fixation_map") -> np.ndarray:
  """Returns a binary fixation map as a bool array (non-zero = fixated)."""
  arr = _as_map(x, name)
  if np.any(arr < 0):
    raise ValueError(f"{name} has negative values; it must be binary (or counts)")
  return arr > 0


def _require_fixations(fix: np.ndarray, name: str = "fixation map") -> None:
  """Raises ValueError when a binary fixation map has no fixated pixel."""
  if not fix.any():
    raise ValueError(f"{name} has no fixations")


def _require_non_fixated(fix: np.ndarray) -> None:
  """Raises ValueError when every pixel is fixated (no negatives for AUC)."""
  if fix.all():
    raise ValueError("fixation map fixates every pixel; AUC needs non-fixated pixels")


def resize_to(saliency_map: np.ndarray, shape: Sequence[int],
              name: str = "saliency_map") -> np.ndarray:
  """Checks a 2-D map and resizes it to ``shape = (H, W)`` with bilinear interpolation.

  The host-side resize of saliency maps: a prediction whose size differs
  from the ground truth's is resized to it before scoring (the MIT code
  resizes with MATLAB ``imresize``), one float64 map at a time. Maps inside
  jitted code are resized with
  :func:`attn_contrastive.saliency.jax_metrics.resize_maps` instead; the
  two agree on upsampling. A map that already has the target shape is
  returned unchanged (as float64).
  """
  arr = _as_map(saliency_map, name)
  height, width = int(shape[0]), int(shape[1])
  if arr.shape == (height, width):
    return arr
  return cv2.resize(arr, (width, height), interpolation=cv2.INTER_LINEAR)


def _is_constant(x: np.ndarray) -> bool:
  """True when all values are equal up to a tiny relative tolerance.

  The tolerance absorbs round-off from resizing, which would otherwise turn
  a constant map into amplified noise under z-scoring.
  """
  spread = float(x.max() - x.min())
  return spread <= _CONSTANT_RTOL * float(np.abs(x).max())


def _zscore(x: np.ndarray) -> np.ndarray:
  """Mean 0, standard deviation 1 (ddof=0); caller rules out constants."""
  return (x - x.mean()) / x.std()


def _minmax(x: np.ndarray) -> np.ndarray:
  """Rescales to [0, 1]; caller rules out constants."""
  lo = x.min()
  return (x - lo) / (x.max() - lo)


def _minmax_density(x: np.ndarray) -> np.ndarray:
  """Min-max normalises, then normalises to sum 1 (MIT ``similarity.m``).

  A constant map becomes the uniform density.
  """
  if _is_constant(x):
    return np.full(x.shape, 1.0 / x.size)
  y = _minmax(x)
  return y / y.sum()


# --------------------------------------------------------------------------
# Map-based metrics
# --------------------------------------------------------------------------


def nss(saliency_map: np.ndarray, fixation_map: np.ndarray) -> float:
  """Normalized scanpath saliency: mean z-scored prediction at fixations.

  The prediction is z-scored over all pixels (mean 0, std 1) and averaged
  over the fixated pixels. A constant prediction scores 0.0.
  """
  fix = _as_fixation_map(fixation_map)
  _require_fixations(fix)
  pred = resize_to(saliency_map, fix.shape)
  if _is_constant(pred):
    return 0.0
  return float(_zscore(pred)[fix].mean())


def cc(saliency_map: np.ndarray, gt_map: np.ndarray) -> float:
  """Pearson linear correlation coefficient between prediction and ground truth.

  Returns 0.0 when either map is constant (the correlation is undefined).
  """
  gt = _as_map(gt_map, "gt_map")
  pred = resize_to(saliency_map, gt.shape)
  if _is_constant(pred) or _is_constant(gt):
    return 0.0
  return float(np.mean(_zscore(pred) * _zscore(gt)))


def kld(saliency_map: np.ndarray, gt_map: np.ndarray) -> float:
  """Kullback-Leibler divergence KL(Q || P) of the prediction from the ground truth.

  Both maps are normalised to sum 1 and the score is
  ``sum(Q * log(eps + Q / (P + eps)))`` with ``eps = 2.2204e-16`` (natural
  log), exactly as MIT ``KLdiv.m``. Lower is better; 0 for ``P == Q``. The
  direction matters: it is the ground truth ``Q`` against the prediction
  ``P``, so predicting zero where ``Q`` has mass is punished heavily.
  """
  gt = _as_map(gt_map, "gt_map")
  pred = resize_to(saliency_map, gt.shape)
  if np.any(pred < 0):
    raise ValueError("saliency_map has negative values; KLD needs a non-negative map")
  if np.any(gt < 0):
    raise ValueError("gt_map has negative values; KLD needs a non-negative map")
  gt_sum = gt.sum()
  if gt_sum <= 0:
    raise ValueError("gt_map sums to zero; KLD needs a ground truth with mass")
  q = gt / gt_sum
  pred_sum = pred.sum()
  p = pred / pred_sum if pred_sum > 0 else pred
  return float(np.sum(q * np.log(EPS + q / (p + EPS))))


def sim(saliency_map: np.ndarray, gt_map: np.ndarray) -> float:
  """Similarity (histogram intersection) of the two maps as densities.

  Each map is min-max normalised to [0, 1], then normalised to sum 1; the
  score is ``sum(min(P, Q))``, in [0, 1], 1 for identical maps. A constant
  map is taken as the uniform density.
  """
  gt = _as_map(gt_map, "gt_map")
  pred = resize_to(saliency_map, gt.shape)
  return float(np.minimum(_minmax_density(pred), _minmax_density(gt)).sum())


def info_gain(saliency_map: np.ndarray, fixation_map: np.ndarray,
              baseline_map: np.ndarray) -> float:
  """Information gain over a baseline, in bits per fixation.

  As MIT ``InfoGain.m``: the prediction and the baseline (both resized to
  the fixation map's size if needed) are min-max normalised and turned into
  densities summing to 1, and the score is
  ``mean over fixations of log2(eps + P) - log2(eps + B)``. A constant map
  becomes the uniform density. The baseline scored against itself gives 0.
  """
  fix = _as_fixation_map(fixation_map)
  _require_fixations(fix)
  pred = _minmax_density(resize_to(saliency_map, fix.shape))
  base = _minmax_density(resize_to(baseline_map, fix.shape, "baseline_map"))
  return float(np.mean(np.log2(EPS + pred[fix]) - np.log2(EPS + base[fix])))


# --------------------------------------------------------------------------
# AUC family
# --------------------------------------------------------------------------


def _auc_inputs(saliency_map: np.ndarray,
                fixation_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(binary fixation map, prediction at its size) for AUC-Judd and AUC-Borji.

  Refuses a fixation map without fixations or without non-fixated pixels.
  """
  fix = _as_fixation_map(fixation_map)
  _require_fixations(fix)
  _require_non_fixated(fix)
  return fix, resize_to(saliency_map, fix.shape)


def auc_judd(saliency_map: np.ndarray, fixation_map: np.ndarray, jitter: bool = True,
             seed: int = 0) -> float:
  """AUC-Judd: ROC area with thresholds at the fixated pixels' values.

  The prediction is min-max normalised; with ``jitter`` a uniform random
  offset of at most ``1e-7`` (fixed ``seed``) breaks ties. For the i-th
  highest fixated value ``t``: true-positive rate ``i / n_fix`` and
  false-positive rate ``(#{pixels >= t} - i) / (n_pixels - n_fix)``; the
  curve is padded with (0, 0) and (1, 1) and integrated with the trapezoid
  rule. MIT adds its jitter before normalising; adding it after makes the
  result independent of the map's scale. A constant map scores 0.5.
  """
  fix, pred = _auc_inputs(saliency_map, fixation_map)
  if _is_constant(pred):
    return 0.5
  values = _minmax(pred)
  if jitter:
    values = values + np.random.default_rng(seed).random(values.shape) * _JUDD_JITTER
  flat = values.ravel()
  fixated = np.sort(flat[fix.ravel()])[::-1]
  n_fix, n_pix = fixated.size, flat.size
  # Number of pixels with a value >= each threshold.
  above = n_pix - np.searchsorted(np.sort(flat), fixated, side="left")
  rank = np.arange(1, n_fix + 1)
  tp = np.concatenate([[0.0], rank / n_fix, [1.0]])
  fp = np.concatenate([[0.0], (above - rank) / (n_pix - n_fix), [1.0]])
  return float(np.trapezoid(tp, fp))


def _auc_fixed_thresholds(positives: np.ndarray, negatives: np.ndarray, step: float) -> float:
  """ROC area of positive vs negative values at thresholds ``0:step:max``.

  The thresholds run from the largest multiple of ``step`` not above the
  largest value down to 0 (MATLAB ``fliplr(0:step:max)``); the curve is
  padded with (0, 0) and (1, 1).
  """
  top = max(float(positives.max()), float(negatives.max()))
  n_steps = int(np.floor(top / step + 1e-9))
  thresholds = step * np.arange(n_steps, -1, -1)
  tp = (positives[None, :] >= thresholds[:, None]).mean(axis=1)
  fp = (negatives[None, :] >= thresholds[:, None]).mean(axis=1)
  tp = np.concatenate([[0.0], tp, [1.0]])
  fp = np.concatenate([[0.0], fp, [1.0]])
  return float(np.trapezoid(tp, fp))


def _check_split_args(n_splits: int, step: float) -> None:
  """Validates the split count and threshold step of the sampled AUCs."""
  if n_splits < 1:
    raise ValueError(f"n_splits must be >= 1, got {n_splits}")
  if not step > 0:
    raise ValueError(f"step must be > 0, got {step}")


def auc_borji(saliency_map: np.ndarray, fixation_map: np.ndarray, n_splits: int = 100,
              step: float = 0.1, seed: int = 0) -> float:
  """AUC-Borji: fixations against uniformly sampled pixels.

  The prediction is min-max normalised. In each of ``n_splits`` splits as
  many negatives as fixations are drawn uniformly (with replacement) from
  all pixels; the ROC area at thresholds ``0:step:1`` is averaged over the
  splits. Sampling uses ``numpy.random.default_rng(seed)``. A constant map
  scores 0.5.
  """
  _check_split_args(n_splits, step)
  fix, pred = _auc_inputs(saliency_map, fixation_map)
  if _is_constant(pred):
    return 0.5
  flat = _minmax(pred).ravel()
  positives = flat[fix.ravel()]
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, flat.size, size=(n_splits, positives.size))
  return float(np.mean([_auc_fixed_thresholds(positives, flat[p], step) for p in picks]))


def auc_shuffled(saliency_map: np.ndarray, fixation_map: np.ndarray, other_fixation_map: np.ndarray,
                 n_splits: int = 100, step: float = 0.1, seed: int = 0) -> float:
  """Shuffled AUC: fixations against fixations of other images.

  Negatives are the prediction's values at the fixated locations of
  ``other_fixation_map`` (usually the union of fixations on other images,
  same size as ``fixation_map``); each split draws
  ``min(n_fix, n_other)`` of them without replacement. Otherwise as
  :func:`auc_borji`. Since the negatives share the centre bias of human
  fixations, a pure centre prior scores about 0.5. A constant map scores 0.5.
  """
  _check_split_args(n_splits, step)
  fix = _as_fixation_map(fixation_map)
  other = _as_fixation_map(other_fixation_map, "other_fixation_map")
  if other.shape != fix.shape:
    raise ValueError(
        f"other_fixation_map shape {other.shape} differs from fixation_map shape {fix.shape}")
  _require_fixations(fix)
  _require_fixations(other, "other fixation map")
  pred = resize_to(saliency_map, fix.shape)
  if _is_constant(pred):
    return 0.5
  flat = _minmax(pred).ravel()
  positives = flat[fix.ravel()]
  other_idx = np.flatnonzero(other.ravel())
  n_neg = min(positives.size, other_idx.size)
  rng = np.random.default_rng(seed)
  aucs = [
      _auc_fixed_thresholds(positives, flat[rng.permutation(other_idx)[:n_neg]], step)
      for _ in range(n_splits)
  ]
  return float(np.mean(aucs))


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def center_bias_map(height: int, width: int, sigma_fraction: float | tuple[float, float] = 0.25,
                    isotropic: bool = False) -> np.ndarray:
  """A Gaussian centre prior, the standard centre-bias baseline.

  Returns an ``H x W`` float64 density (sums to 1) of a Gaussian centred at
  the image centre ``((H-1)/2, (W-1)/2)`` in pixel coordinates. The standard
  deviations are ``sigma_fraction`` times the image height and width
  (anisotropic, following the image's aspect ratio); a pair gives
  separate fractions ``(for rows, for columns)``. With ``isotropic=True``
  both are ``sigma_fraction`` times ``min(H, W)`` (a pair is not allowed).
  """
  if height < 1 or width < 1:
    raise ValueError(f"height and width must be >= 1, got {height} x {width}")
  if isinstance(sigma_fraction, (tuple, list)):
    if isotropic:
      raise ValueError("isotropic=True takes a single sigma_fraction")
    frac_y, frac_x = (float(f) for f in sigma_fraction)
  else:
    frac_y = frac_x = float(sigma_fraction)
  if not (frac_y > 0 and frac_x > 0):
    raise ValueError(f"sigma_fraction must be > 0, got {sigma_fraction}")
  if isotropic:
    sigma_y = sigma_x = frac_y * min(height, width)
  else:
    sigma_y, sigma_x = frac_y * height, frac_x * width
  rows = (np.arange(height) - (height - 1) / 2.0) / sigma_y
  cols = (np.arange(width) - (width - 1) / 2.0) / sigma_x
  density = np.exp(-0.5 * (rows[:, None]**2 + cols[None, :]**2))
  return density / density.sum()


def fixations_to_map(fixations_rc: np.ndarray, height: int, width: int) -> np.ndarray:
  """Turns integer (row, col) fixation coordinates into a binary map.

  ``fixations_rc`` is an ``N x 2`` array of 0-based ``(row, col)``
  positions (``N`` may be 0). Returns an ``H x W`` bool array, ``True`` at
  every fixated pixel (repeats collapse). Coordinates outside the image or
  non-integer values raise ValueError.
  """
  fixes = np.asarray(fixations_rc)
  if fixes.size == 0:
    return np.zeros((height, width), dtype=bool)
  if fixes.ndim != 2 or fixes.shape[1] != 2:
    raise ValueError(f"fixations_rc must have shape (N, 2), got {fixes.shape}")
  if not np.issubdtype(fixes.dtype, np.integer):
    if not np.all(np.isfinite(fixes)) or np.any(fixes != np.round(fixes)):
      raise ValueError("fixations_rc must hold integer (row, col) coordinates")
    fixes = fixes.astype(np.int64)
  rows, cols = fixes[:, 0], fixes[:, 1]
  outside = (rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)
  if outside.any():
    bad = fixes[np.argmax(outside)].tolist()
    raise ValueError(
        f"{int(outside.sum())} fixation(s) outside the {height} x {width} image, e.g. {bad}")
  out = np.zeros((height, width), dtype=bool)
  out[rows, cols] = True
  return out


def evaluate_all(saliency_map: np.ndarray, gt_map: np.ndarray, fixation_map: np.ndarray,
                 other_fixation_map: np.ndarray | None = None,
                 baseline_map: np.ndarray | None = None) -> dict[str, float]:
  """All metrics for one image, keyed by metric name.

  Always: ``nss``, ``cc``, ``kld``, ``sim``, ``auc_judd``, ``auc_borji``;
  ``auc_shuffled`` when ``other_fixation_map`` is given and ``info_gain``
  when ``baseline_map`` is given. ``gt_map`` and ``fixation_map`` must have
  the same shape; the prediction (and baseline) are resized to it.
  """
  gt = _as_map(gt_map, "gt_map")
  fix = _as_fixation_map(fixation_map)
  if gt.shape != fix.shape:
    raise ValueError(f"gt_map shape {gt.shape} differs from fixation_map shape {fix.shape}")
  scores = {
      "nss": nss(saliency_map, fix),
      "cc": cc(saliency_map, gt),
      "kld": kld(saliency_map, gt),
      "sim": sim(saliency_map, gt),
      "auc_judd": auc_judd(saliency_map, fix),
      "auc_borji": auc_borji(saliency_map, fix),
  }
  if other_fixation_map is not None:
    scores["auc_shuffled"] = auc_shuffled(saliency_map, fix, other_fixation_map)
  if baseline_map is not None:
    scores["info_gain"] = info_gain(saliency_map, fix, baseline_map)
  return scores
