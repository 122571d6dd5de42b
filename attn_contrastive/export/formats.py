"""``export(run_dir, format, out)``: the one call behind ``python -m
attn_contrastive.export``."""
from __future__ import annotations

from attn_contrastive import paths
from attn_contrastive.export import collect as collect_lib
from attn_contrastive.export import model_card

FORMATS = ("torchvision", "onnx", "hf")


def export(run_dir: str, fmt: str, out: str, results: list[str] | None = None) -> list[str]:
  """Exports the run in ``run_dir`` to ``out`` in ``fmt`` (:data:`FORMATS`); returns the
  files written. ``results``: folders searched for the evaluations' ``results.json``
  (the model card of ``hf``; the run's parent folder by default)."""
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}: choose one of {FORMATS}")
  exported = collect_lib.collect(run_dir)
  paths.makedirs(out)
  if fmt == "torchvision":
    return collect_lib.write_torchvision(exported, out)
  if fmt == "onnx":
    # torch, only for this format.
    from attn_contrastive.export import onnx_model  # pylint: disable=g-import-not-at-top
    return onnx_model.write(exported, out)
  return model_card.write_folder(exported, out, results)
