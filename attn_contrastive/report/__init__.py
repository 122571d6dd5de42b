"""The paper's tables and figures from the results of many workdirs.

``python -m attn_contrastive.report --runs=DIR[,DIR...] --out=DIR`` (or
:func:`write_report`) finds every evaluation ``results.json`` under the
given folders, groups the evaluations by the paper's row of the run they
evaluated (:func:`row_of`) and by its seed, and writes

* ``report.md``: classification, robustness, alignment and retrieval
  tables, each cell the mean ± sample std over seeds, with the paper's
  numbers beside the rows it reports, and the stages each row lacks;
* ``report.csv``: the same numbers, one (table, row, metric) a line;
* ``attention.png``, ``pr_curves.png``, ``robustness_severity.png``.

It reads JSON and ``.npz`` files only: no JAX, no dataset.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from attn_contrastive import paths as paths_lib
from attn_contrastive.report import collect, figures, render, tables
from attn_contrastive.report.collect import ROWS, row_of

__all__ = ["ROWS", "row_of", "write_report"]

#: The figures, by file name without ".png", and the function drawing each.
FIGURES = {"attention": figures.attention, "pr_curves": figures.pr_curves,
           "robustness_severity": figures.robustness_severity}


def _as_data(table: tables.Table) -> dict[str, Any]:
  return {"datasets": dict(table.datasets), "columns": [m.key for m in table.metrics],
          "rows": {row: {key: {"mean": cell.mean, "std": cell.std, "n": cell.n,
                               "seeds": list(cell.seeds), "paper": tables.paper(row, key)}
                         for key, cell in table.cells[row].items()}
                   for row in table.rows()}}


def write_report(roots: Sequence[str], out_dir: str) -> dict[str, Any]:
  """Writes ``report.md``, ``report.csv`` and the figures to ``out_dir``.

  Returns the paths (``markdown``, ``csv``, ``figures``: name → path or None),
  why a figure was not drawn (``skipped``), the tables as data (``tables``:
  name → ``{"datasets", "columns", "rows": {row: {metric: {"mean", "std", "n",
  "seeds", "paper"}}}}``, values in the units of the markdown), the CSV's
  lines, the stages each row lacks, the number of workdirs read and what
  differs between the images two tables score (``notes``). A root
  that is not a folder raises FileNotFoundError.
  """
  roots = [str(roots)] if isinstance(roots, (str, os.PathLike)) else [str(r) for r in roots]
  for root in roots:
    if not paths_lib.isdir(root):
      raise FileNotFoundError(f"no folder {root!r} to search for results.json")
  collection = collect.scan(roots)
  built = tables.build(collection)
  paths_lib.makedirs(out_dir)
  paths, notes = {}, {}
  for name, draw in FIGURES.items():
    paths[name], notes[name] = draw(collection, os.path.join(out_dir, f"{name}.png"))
  md_path = os.path.join(out_dir, "report.md")
  paths_lib.write_text(md_path, render.markdown(collection, built, paths, notes, roots))
  lines = render.csv_lines(built)
  csv_path = os.path.join(out_dir, "report.csv")
  paths_lib.write_text(csv_path, render.csv_text(lines))
  return {"markdown": md_path, "csv": csv_path, "figures": paths,
          "skipped": {n: notes[n] for n, p in paths.items() if p is None},
          "tables": {t.name: _as_data(t) for t in built}, "csv_lines": lines,
          "missing": tables.missing_stages(collection),
          "workdirs": len(collection.entries), "notes": tables.subset_notes(collection),
          "rows": sorted({e.row for e in collection.entries if e.row in ROWS},
                         key=collect.row_order)}
