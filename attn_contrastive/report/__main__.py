"""``python -m attn_contrastive.report --runs=DIR[,DIR...] --out=DIR``: the report's CLI."""
from __future__ import annotations

from typing import Sequence

from absl import app, flags

from attn_contrastive.report import write_report

_RUNS = flags.DEFINE_list("runs", None, "Folders searched (recursively) for results.json.")
_OUT = flags.DEFINE_string("out", None, "Folder for report.md, report.csv and the figures.")
flags.mark_flags_as_required(["runs", "out"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  written = write_report(_RUNS.value, _OUT.value)
  drawn = sum(p is not None for p in written["figures"].values())
  print(f"report: {written['workdirs']} workdirs, {len(written['rows'])} rows, "
        f"{len(written['tables'])} tables, {drawn} figures -> {written['markdown']}")


if __name__ == "__main__":
  app.run(main)
