"""The paper's four tables from the collected entries: mean ± std over seeds per row.

Each table takes its numbers from one stage's evaluations (the retrieval
table also from robustness, whose corrupted queries it ranks). Entries of
one stage on two datasets never share a mean: a table whose stages saw
several datasets is split into one table per dataset, named
``<table>:<dataset>`` (CIFAR-10's retrieval beside its CIFAR-10-C queries).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Mapping, Sequence

from attn_contrastive import config_checks
from attn_contrastive.report import collect

CENTRE_BIAS = "Centre bias"

#: The paper's ImageNet top-1 (linear evaluation for the contrastive rows).
PAPER_TOP1 = {
    "Contrastive": "67.61 ± 0.04", "Contrastive attn. teacher": "68.23 ± 0.08",
    "Contrastive attn. co-train": "66.35 ± 0.12", "Supervised (ResNet-50)": "75.91 ± 0.10",
    "Supervised attn. teacher": "76.02 ± 0.04", "Supervised (ResNet-18)": "69.17 ± 0.07",
    "Supervised (ResNet-18) attn. teacher": "69.30 ± 0.04",
}
#: The paper's four ImageNet-C accuracy columns; it does not name them, and
#: the report reads them as the noise / blur / weather / digital means.
PAPER_C = {
    "Contrastive": ("28.23", "26.16", "43.08", "60.42"),
    "Contrastive attn. teacher": ("29.15", "27.10", "44.04", "60.50"),
}
PAPER_C_KEYS = ("robustness/noise", "robustness/blur", "robustness/weather",
                "robustness/digital")
_TOP1_KEYS = ("linear/top1", "linear_cached/top1", "supervised/top1")


@dataclasses.dataclass(frozen=True)
class Metric:
  """A column: the key of a stage's ``results.json`` (nested keys joined by "/")."""
  kind: str
  key: str
  label: str
  percent: bool = True


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str
  title: str
  metrics: tuple[Metric, ...]


def _alignment(key: str, label: str) -> Metric:
  return Metric("alignment", key, label, percent=False)


SPECS = (
    Spec("classification", "Classification: top-1 (%)", (
        Metric("linear_eval", "linear/top1", "linear top-1"),
        Metric("linear_eval", "linear_cached/top1", "cached linear top-1"),
        Metric("linear_eval", "supervised/top1", "supervised top-1"))),
    Spec("robustness", "Robustness: accuracy on corrupted images (%)", tuple(
        Metric("robustness", f"robustness/{k}", label) for k, label in (
            ("clean_top1", "clean"), ("noise", "noise"), ("blur", "blur"),
            ("weather", "weather"), ("digital", "digital"), ("extra", "extra"),
            ("mean", "mean (15)"), ("mce", "mCE"), ("relative_mce", "relative mCE")))),
    Spec("alignment", "Alignment of the model's attention with human attention", (
        _alignment("alignment/model/nss", "NSS"), _alignment("alignment/model/cc", "CC"),
        _alignment("alignment/model/kld", "KLD"),
        _alignment("alignment/model/auc_judd", "AUC-Judd"),
        _alignment("alignment/model/auc_shuffled", "sAUC"),
        _alignment("alignment/activations/nss", "NSS, activations"),
        _alignment("alignment/gradcam/nss", "NSS, Grad-CAM"))),
    Spec("retrieval", "Retrieval (%)", (
        Metric("retrieval", "retrieval/map", "mAP"),
        Metric("retrieval", "retrieval/precision@1", "P@1"),
        Metric("retrieval", "retrieval/precision@10", "P@10"),
        Metric("retrieval", "retrieval/r_precision", "R-precision"),
        Metric("retrieval", "knn/top1", "kNN top-1"),
        Metric("robustness", "retrieval_c/map", "mAP, corrupted queries"),
        Metric("robustness", "retrieval_c/precision@10", "P@10, corrupted queries"))),
    Spec("finetune", "Label-efficient fine-tuning: top-1 (%)", (
        Metric("finetune", "eval/accuracy", "fine-tuned top-1"),
        Metric("finetune", "eval/top5", "fine-tuned top-5"))),
    Spec("shift", "Distribution shift: top-1 (%)", tuple(
        Metric("shift", f"shift/{k}", label) for k, label in (
            ("imagenet_v2", "ImageNet-V2"), ("imagenet_a", "ImageNet-A (200)"),
            ("imagenet_r", "ImageNet-R (200)"), ("imagenet_sketch", "ImageNet-Sketch"),
            ("real", "ReaL")))),
)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One row's values of one metric, one per seed (per workdir for the centre bias)."""
  values: tuple[float, ...]
  seeds: tuple[Any, ...]

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float:
    return statistics.fmean(self.values)

  @property
  def std(self) -> float | None:
    """The sample standard deviation (ddof=1); None for a single value."""
    return statistics.stdev(self.values) if self.n > 1 else None


@dataclasses.dataclass
class Table:
  """One table: its columns with data and ``cells[row][metric key]``."""
  name: str
  spec: Spec
  datasets: dict[str, str]
  metrics: list[Metric]
  cells: dict[str, dict[str, Cell]]
  protocols: list[str] = dataclasses.field(default_factory=list)
  #: Alignment: the kind of map scored per row (``alignment/primary``), where recorded.
  maps: dict[str, str] = dataclasses.field(default_factory=dict)
  #: Robustness: the corruptions a row's released ImageNet-C lacked, left out of its
  #: numbers (``robustness/missing``), by row.
  missing: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def rows(self) -> list[str]:
    return sorted(self.cells, key=lambda r: (r == CENTRE_BIAS, collect.row_order(r)))


def lookup(results: Mapping[str, Any], key: str) -> Any:
  """``results[key]``, or the nested value ``results["a/b"]["c"]`` for ``"a/b/c"``."""
  if key in results:
    return results[key]
  parts = key.split("/")
  for i in range(len(parts) - 1, 0, -1):
    head = "/".join(parts[:i])
    if isinstance(results.get(head), Mapping):
      return lookup(results[head], "/".join(parts[i:]))
  return None


def number(value: Any) -> float | None:
  """A finite real number, or None."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def paper(row: str, key: str) -> str:
  """The paper's number that the metric ``key`` of ``row`` compares with ("" if none)."""
  if key in _TOP1_KEYS:
    return PAPER_TOP1.get(row, "")
  if key in PAPER_C_KEYS and row in PAPER_C:
    return PAPER_C[row][PAPER_C_KEYS.index(key)]
  return ""


def _cell(entries: Sequence[collect.Entry], key: str, percent: bool) -> Cell | None:
  pairs = [(e, number(lookup(e.results, key))) for e in entries]
  pairs = sorted(((e, v) for e, v in pairs if v is not None),
                 key=lambda p: collect.seed_key(p[0].seed))
  if not pairs:
    return None
  scale = 100.0 if percent else 1.0
  return Cell(tuple(v * scale for _, v in pairs), tuple(e.seed for e, _ in pairs))


def _centre_bias(entries: Sequence[collect.Entry], metrics: Sequence[Metric]) -> dict:
  cells = {}
  for m in metrics:
    if m.key.startswith("alignment/model/"):
      key = "alignment/center_bias/" + m.key.rsplit("/", 1)[1]
      values = [v for e in entries if (v := number(lookup(e.results, key))) is not None]
      if values:
        cells[m.key] = Cell(tuple(values), ())
  return cells


def _table(name: str, spec: Spec, metrics: Sequence[Metric], datasets: dict[str, str],
           collection: collect.Collection) -> Table:
  """Cells of every row with any of ``metrics`` on the given dataset of each stage."""
  chosen = {k: collection.of(k, d) for k, d in datasets.items()}
  cells: dict[str, dict[str, Cell]] = {}
  for m in metrics:
    entries = chosen.get(m.kind, [])
    for row in sorted({e.row for e in entries}, key=collect.row_order):
      cell = _cell([e for e in entries if e.row == row], m.key, m.percent)
      if cell is not None:
        cells.setdefault(row, {})[m.key] = cell
  if "alignment" in chosen:
    centre = _centre_bias(chosen["alignment"], metrics)
    if centre:
      cells[CENTRE_BIAS] = centre
  present = [m for m in metrics if any(m.key in by_key for by_key in cells.values())]
  protocols = sorted({str(p) for e in chosen.get("robustness", ())
                      if (p := e.results.get("robustness/protocol")) is not None})
  maps: dict[str, set] = {}
  for e in chosen.get("alignment", ()):
    if isinstance(primary := e.results.get("alignment/primary"), str):
      maps.setdefault(e.row, set()).add(primary)
  missing: dict[str, set] = {}
  for e in chosen.get("robustness", ()):
    if e.results.get("robustness/missing"):
      missing.setdefault(e.row, set()).update(e.results["robustness/missing"])
  return Table(name, spec, datasets, present, cells, protocols,
               {row: " / ".join(sorted(kinds)) for row, kinds in maps.items()},
               {row: sorted(names) for row, names in missing.items()})


def build(collection: collect.Collection) -> list[Table]:
  """Every table with data, in the report's order."""
  tables = []
  for spec in SPECS:
    kinds = list(dict.fromkeys(m.kind for m in spec.metrics))
    found = {k: sorted({e.dataset for e in collection.of(k)}) for k in kinds}
    if all(len(d) <= 1 for d in found.values()):
      parts = [(spec.name, {k: d[0] for k, d in found.items() if d}, spec.metrics)]
    else:  # one table per dataset: CIFAR-10's clean and CIFAR-10-C's queries side by side
      names = sorted({d for ds in found.values() for d in ds})
      parts = [(f"{spec.name}:{d}", {k: d for k in kinds if d in found[k]},
                [m for m in spec.metrics if d in found[m.kind]]) for d in names]
    for name, datasets, metrics in parts:
      table = _table(name, spec, metrics, datasets, collection)
      if table.cells:
        tables.append(table)
  return tables


def missing_stages(collection: collect.Collection) -> dict[str, list[str]]:
  """For each row found: the stages it lacks, wholly or for some of its seeds."""
  rows: dict[str, set] = {}
  for e in collection.entries:
    if e.row in collect.ROWS:
      rows.setdefault(e.row, set()).add(e.seed)
  gaps = {}
  for row in sorted(rows, key=collect.row_order):
    notes = []
    for stage in config_checks.EVALUATIONS:  # a study's; shift is run on its own
      have = {e.seed for e in collection.of(stage) if e.row == row}
      lacking = sorted(rows[row] - have, key=collect.seed_key)
      if not have:
        notes.append(f"no {stage}")
      elif lacking:
        notes.append(f"{stage} lacks seed{'s' * (len(lacking) > 1)} "
                     + ", ".join(map(str, lacking)))
    if notes:
      gaps[row] = notes
  return gaps


def _image_counts(entries: Sequence[collect.Entry], key: str) -> list[int]:
  return sorted({int(v) for e in entries if (v := number(e.results.get(key))) is not None})


def subset_notes(collection: collect.Collection) -> list[str]:
  """What differs between the images two tables score: robustness on fewer validation
  images (``eval.max_examples``) than linear evaluation, so that its clean top-1 (the
  severity figure's clean point) is not the classification table's linear top-1."""
  robust = _image_counts(collection.of("robustness"), "robustness/num_images")
  linear = _image_counts(collection.of("linear_eval"), "linear_cached/num_images")
  if not robust or not linear or robust == linear:
    return []
  n = " or ".join(map(str, robust))
  return [f"robustness scores the first {n} validation images and linear evaluation "
          f"{' or '.join(map(str, linear))}: robustness's clean top-1 (severity 0) is of "
          f"those {n}, not the linear top-1 of the classification table"]
