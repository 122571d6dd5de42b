"""The report's text: ``report.md`` (tables for reading) and ``report.csv`` (one number a line).

The markdown shows each cell as ``mean ± std (n=k)`` over seeds, accuracies
in percent with one decimal and saliency metrics with three; a single seed
shows its value alone, ``68.2 (n=1)``. The CSV has the same numbers at full
precision in long format: ``table,row,metric,mean,std,n,seeds,paper``, with
``metric`` the key of ``results.json``, ``std`` empty for one seed, ``seeds``
joined by ";" and ``paper`` the paper's number the metric compares with.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Mapping, Sequence

from attn_contrastive.report import collect
from attn_contrastive.report import tables as tables_lib

CSV_COLUMNS = ("table", "row", "metric", "mean", "std", "n", "seeds", "paper")
_STAGE_NAMES = {"linear_eval": "linear evaluation", "robustness": "robustness",
                "retrieval": "retrieval", "alignment": "alignment", "train": "training",
                "shift": "distribution shift", "finetune": "fine-tuning"}
_DASH = "—"


def cell_text(cell: tables_lib.Cell | None, percent: bool) -> str:
  """``62.0 ± 2.0 (n=3)``; ``62.0 (n=1)``; a dash for no value."""
  if cell is None:
    return _DASH
  digits = 1 if percent else 3
  if cell.std is None:
    return f"{cell.mean:.{digits}f} (n={cell.n})"
  return f"{cell.mean:.{digits}f} ± {cell.std:.{digits}f} (n={cell.n})"


def _seeds(seeds: Sequence[Any]) -> str:
  return ", ".join(str(s) for s in sorted(set(seeds), key=collect.seed_key))


def _header(collection: collect.Collection, roots: Sequence[str]) -> list[str]:
  entries = collection.entries
  teachers = [e for e in entries if e.row == collect.TEACHER]
  training = collection.of("train")
  evaluations = len(entries) - len(teachers) - len(training)
  rows: dict[str, list] = {}
  for e in sorted(entries, key=lambda e: collect.row_order(e.row)):
    if e.row in collect.ROWS:
      rows.setdefault(e.row, []).append(e.seed)
  listed = "; ".join(f"{row} (seeds {_seeds(seeds)})" for row, seeds in rows.items())
  return [
      "# Results: teacher-generated attention labels (Yao et al., CVPR 2023)", "",
      f"{len(entries)} workdirs under {', '.join(f'`{r}`' for r in roots)}: "
      f"{evaluations} evaluations, {len(teachers)} teacher, {len(training)} training runs. "
      f"{len(rows)} rows: {listed or 'none'}.", "",
      "Each cell: mean ± sample standard deviation (ddof = 1) over seeds, with the "
      "number of seeds; a single seed shows its value alone. Accuracies, precisions "
      "and mCE in %; saliency metrics as they are (KLD: lower is better).", ""]


def _datasets(table: tables_lib.Table) -> str:
  stages: dict[str, list[str]] = {}
  for kind, dataset in table.datasets.items():
    stages.setdefault(dataset, []).append(_STAGE_NAMES[kind])
  return "; ".join(f"`{d}` ({', '.join(s)})" for d, s in stages.items())


def _paper_column(table: tables_lib.Table) -> tuple[str, dict[str, str]] | None:
  rows = table.rows()
  if table.spec.name == "classification":
    return "paper, ImageNet top-1", {r: tables_lib.PAPER_TOP1.get(r, "") for r in rows}
  if table.spec.name == "robustness" and any(r in tables_lib.PAPER_C for r in rows):
    return ("paper, ImageNet-C (4 columns)",
            {r: " / ".join(tables_lib.PAPER_C.get(r, ())) for r in rows})
  return None


def _map_of(table: tables_lib.Table, row: str) -> str:
  """The kind of map scored: as recorded, else heads for rows with attention."""
  if row in table.maps:
    return table.maps[row]
  if row == collect.TEACHER:
    return "teacher output"
  if row == tables_lib.CENTRE_BIAS:
    return ""
  return "heads" if "attn." in row else "activations"


def table_lines(table: tables_lib.Table) -> list[str]:
  """One markdown table, its data and its notes."""
  title = table.spec.title + (f" — {table.name.split(':', 1)[1]}" if ":" in table.name else "")
  heads = ["row"] + (["map"] if table.spec.name == "alignment" else [])
  heads += [m.label for m in table.metrics]
  paper = _paper_column(table)
  heads += [paper[0]] if paper else []
  lines = [f"## {title}", "", f"Data: {_datasets(table)}.", "",
           "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
  for row in table.rows():
    cells = [row] + ([_map_of(table, row)] if table.spec.name == "alignment" else [])
    cells += [cell_text(table.cells[row].get(m.key), m.percent) for m in table.metrics]
    cells += [paper[1].get(row) or _DASH] if paper else []
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  if table.spec.name == "robustness":
    lines += ["The paper does not name its four ImageNet-C columns; reading them as the "
              "noise / blur / weather / digital category means is ours. Categories and "
              "mean: accuracy over their corruptions × 5 severities; mCE: corruption "
              "error relative to AlexNet's over the 15 benchmark corruptions.", ""]
    lines += [f"Protocol: {p}" for p in table.protocols] + ([""] if table.protocols else [])
    lines += [f"Not scored for {row}: {', '.join(names)} (absent from the ImageNet-C tree it "
              "was given; its extra column covers the rest)." for row, names in
              table.missing.items()] + ([""] if table.missing else [])
  if table.spec.name == "alignment":
    lines += ["Map: the attention heads' maps for runs with heads, the activation attention "
              "(Σ_c A_c²) otherwise; the centre bias is scored on each workdir's images.", ""]
  return lines


def markdown(collection: collect.Collection, tables: Sequence[tables_lib.Table],
             figures: Mapping[str, str | None], figure_notes: Mapping[str, str],
             roots: Sequence[str]) -> str:
  """The whole ``report.md``."""
  lines = _header(collection, roots)
  lines += [f"Note: {note}." for note in tables_lib.subset_notes(collection)]
  lines += [""] if lines[-1] else []
  if not tables:
    lines += ["No evaluation results found.", ""]
  for table in tables:
    lines += table_lines(table)
  gaps = tables_lib.missing_stages(collection)
  if gaps:
    lines += ["## Missing stages", ""]
    lines += [f"- {row}: {'; '.join(notes)}" for row, notes in gaps.items()] + [""]
  lines += ["## Figures", ""]
  for name, path in figures.items():
    if path:
      lines += [f"![{name}]({name}.png)", "", figure_notes.get(name, ""), ""]
    else:
      lines += [f"- `{name}.png` not drawn: {figure_notes.get(name, '')}", ""]
  lines += _left_out(collection)
  return "\n".join(lines).rstrip() + "\n"


def _left_out(collection: collect.Collection) -> list[str]:
  lines = []
  if collection.ignored:
    lines.append(f"- {collection.ignored} other `results.json` ignored (no evaluation outline:"
                 " a probe's own training loop, another task)")
  for kept, dropped in collection.replaced:
    lines.append(f"- `{dropped.workdir}` replaced by `{kept.workdir}` (same stage, "
                 f"dataset, row and seed; the later step or newer file is kept)")
  for path, why in collection.skipped:
    lines.append(f"- `{path}` unreadable: {why}")
  return (["## Left out", ""] + lines + [""]) if lines else []


def _number(x: float | None) -> str:
  return "" if x is None else f"{x:.10g}"


def csv_lines(tables: Sequence[tables_lib.Table]) -> list[dict[str, str]]:
  """The CSV's lines as dicts of :data:`CSV_COLUMNS`."""
  lines = []
  for table in tables:
    for row in table.rows():
      for m in table.metrics:
        cell = table.cells[row].get(m.key)
        if cell is None:
          continue
        seeds = ";".join(str(s) for s in cell.seeds)
        lines.append(dict(table=table.name, row=row, metric=m.key, mean=_number(cell.mean),
                          std=_number(cell.std), n=str(cell.n), seeds=seeds,
                          paper=tables_lib.paper(row, m.key)))
  return lines


def csv_text(lines: Sequence[Mapping[str, str]]) -> str:
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(lines)
  return out.getvalue()
