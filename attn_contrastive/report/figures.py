"""The report's figures: attention maps side by side, precision-recall, accuracy by severity.

Drawn with matplotlib's Agg canvas through :class:`matplotlib.figure.Figure`
(no pyplot, so no global backend state), saved as PNG at a modest
resolution; a figure whose PNG would exceed :data:`MAX_BYTES` is re-encoded
with a 256-colour palette, and drawn smaller if it still does. Each function
returns the file written, or None and the reason it could not be drawn.
"""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from attn_contrastive import paths
from attn_contrastive.report import collect
from attn_contrastive.report import tables as tables_lib

DPI = 80
MAX_BYTES = 280_000
MAX_IMAGES = 4
GUIDED, BASELINE = "Contrastive attn. teacher", "Contrastive"
_COLOURS = dict(zip(collect.ROWS, ("tab:blue", "tab:green", "tab:orange", "tab:red",
                                   "tab:purple", "tab:brown", "tab:pink")))


def colour(row: str) -> str:
  """The row's colour, the same in every figure."""
  return _COLOURS.get(row, "black")


def _legend_outside(ax, handles: Sequence) -> None:
  """The legend to the right of the axes, where it covers no data."""
  ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0, frameon=False)


def _png(fig: Figure, dpi: int) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  return buf.getvalue()


def _palette(data: bytes) -> bytes:
  """The PNG re-encoded with 256 colours (photographs in a figure compress poorly)."""
  from PIL import Image
  image = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=256)
  buf = io.BytesIO()
  image.save(buf, format="PNG", optimize=True)
  return buf.getvalue()


def _save(fig: Figure, path: str) -> str:
  """Writes the figure at :data:`DPI`, or smaller while it exceeds :data:`MAX_BYTES`."""
  for dpi in (DPI, 64, 48):
    data = _png(fig, dpi)
    if len(data) > MAX_BYTES:
      data = _palette(data)
    if len(data) <= MAX_BYTES:
      break
  paths.write_atomic(path, data)
  return path


def _main_dataset(entries: Sequence[collect.Entry]) -> str | None:
  """The dataset most of the entries used (ties: the first by name)."""
  names = sorted(e.dataset for e in entries)
  return max(dict.fromkeys(names), key=names.count) if names else None


def _curves(entries: Sequence[collect.Entry], key: str, length: int) -> dict[str, np.ndarray]:
  """Per row, the per-seed curves of ``key`` stacked; entries without one are left out."""
  by_row: dict[str, list] = {}
  for e in sorted(entries, key=lambda e: collect.seed_key(e.seed)):
    value = tables_lib.lookup(e.results, key)
    if isinstance(value, list) and len(value) == length and all(
        tables_lib.number(v) is not None for v in value):
      by_row.setdefault(e.row, []).append(np.asarray(value, np.float64))
  return {row: np.stack(by_row[row]) for row in sorted(by_row, key=collect.row_order)}


def pr_curves(collection: collect.Collection, path: str) -> tuple[str | None, str]:
  """Interpolated precision at recall 0, 0.1, …, 1: clean queries solid, corrupted dashed;
  one panel per dataset (ImageNet or the synthetic data beside CIFAR-10, whose
  corrupted queries are CIFAR-10-C's)."""
  datasets = sorted({e.dataset for kind in ("retrieval", "robustness")
                     for e in collection.of(kind)})
  panels = []
  for d in datasets:
    clean = _curves(collection.of("retrieval", d), "retrieval/pr_curve", 11)
    corrupt = _curves(collection.of("robustness", d), "retrieval_c/pr_curve", 11)
    if clean or corrupt:
      panels.append((d, clean, corrupt))
  if not panels:
    return None, "no retrieval or robustness results with an 11-point precision-recall curve"
  fig = Figure(figsize=(5.2 * len(panels) + 3.2, 4.2), layout="constrained")
  recall = np.linspace(0.0, 1.0, 11)
  seeds, kinds = {}, set()
  for ax, (dataset, clean, corrupt) in zip(np.atleast_1d(fig.subplots(1, len(panels))),
                                           panels):
    for style, curves in (("-", clean), ("--", corrupt)):
      kinds.update([style] if curves else [])
      for row, c in curves.items():
        ax.plot(recall, 100 * c.mean(0), style, color=colour(row), marker=".")
        seeds[row] = max(seeds.get(row, 0), len(c))
    ax.set(xlabel="recall", ylabel="interpolated precision (%)", xlim=(0, 1))
    ax.set_title(f"Precision-recall on {dataset}, mean over seeds", fontsize=10)
    ax.grid(alpha=0.3)
  handles = [Line2D([], [], color=colour(row), marker=".", label=f"{row} (n={n})")
             for row, n in sorted(seeds.items(), key=lambda rn: collect.row_order(rn[0]))]
  handles += [Line2D([], [], color="0.3", linestyle=style, label=what)
              for style, what in (("-", "clean queries"), ("--", "corrupted queries"))
              if style in kinds]
  _legend_outside(ax, handles)  # beside the last panel
  data = "; ".join(f"`{d}`" + " (clean and corrupted queries)" * bool(c and k) +
                   " (corrupted queries)" * bool(k and not c) for d, c, k in panels)
  return _save(fig, path), f"Precision-recall per row, mean over seeds, on {data}."


def robustness_severity(collection: collect.Collection, path: str) -> tuple[str | None, str]:
  """Accuracy against severity (0: clean), mean over seeds with a ± std band."""
  dataset = _main_dataset(collection.of("robustness"))
  by_row: dict[str, list] = {}
  for e in collection.of("robustness", dataset):
    clean = tables_lib.number(e.results.get("robustness/clean_top1"))
    severity = e.results.get("robustness/by_severity")
    if clean is not None and isinstance(severity, list) and len(severity) == 5 and all(
        tables_lib.number(v) is not None for v in severity):
      by_row.setdefault(e.row, []).append([clean] + [float(v) for v in severity])
  if not by_row:
    return None, "no robustness results with clean top-1 and accuracy by severity"
  fig = Figure(figsize=(8.4, 4.2), layout="constrained")
  ax = fig.subplots()
  x = np.arange(6)
  for row in sorted(by_row, key=collect.row_order):
    acc = 100 * np.asarray(by_row[row])
    mean = acc.mean(0)
    ax.plot(x, mean, "-o", color=colour(row), label=f"{row} (n={len(acc)})")
    if len(acc) > 1:
      std = acc.std(0, ddof=1)
      ax.fill_between(x, mean - std, mean + std, color=colour(row), alpha=0.2)
  images = _image_count(collection.of("robustness", dataset))
  ax.set(xlabel="severity (0: the clean images)", ylabel="top-1 accuracy (%)", xticks=x)
  ax.set_title("Accuracy by corruption severity (15 corruptions), mean ± std over seeds"
               + (f"\n(the first {images} validation images)" if images else ""), fontsize=10)
  ax.grid(alpha=0.3)
  _legend_outside(ax, ax.get_legend_handles_labels()[0])
  note = f"Accuracy by severity, mean ± std over seeds (`{dataset}`)."
  differs = tables_lib.subset_notes(collection)
  if differs:
    note += f" Severity 0: {differs[0]}."
  return _save(fig, path), note


def _image_count(entries: Sequence[collect.Entry]) -> str | None:
  """The number of validation images robustness scored ("200", or "200 or 300")."""
  counts = sorted({int(v) for e in entries
                   if (v := tables_lib.number(e.results.get("robustness/num_images")))})
  return " or ".join(map(str, counts)) or None


def _lowest_seed_examples(entries: Sequence[collect.Entry]) -> collect.Entry | None:
  """The entry of the lowest seed among those that saved ``examples.npz``."""
  for e in sorted(entries, key=lambda e: collect.seed_key(e.seed)):
    if paths.exists(os.path.join(e.workdir, collect.EXAMPLES)):
      return e
  return None


def _load_examples(entry: collect.Entry, kinds: Sequence[str]) -> tuple[dict, str] | str:
  """(arrays, the map key used), or the reason the file cannot serve."""
  path = os.path.join(entry.workdir, collect.EXAMPLES)
  try:
    arrays = paths.load_npz(path)
  except (OSError, ValueError) as e:
    return f"`{path}` unreadable ({type(e).__name__})"
  key = next((f"map/{k}" for k in kinds if f"map/{k}" in arrays), None)
  lacking = [k for k in ("image", "human", "index") if k not in arrays]
  if key is None or lacking:
    return f"`{path}` has no {' / '.join(lacking) or 'map/' + kinds[0]}"
  return arrays, key


def _attention_sources(collection: collect.Collection) -> tuple[list, list[str]]:
  """[(column title, arrays, map key)] of teacher, guided and baseline; what is missing."""
  alignment = collection.of("alignment")
  dataset = _main_dataset([e for e in alignment if e.row in (GUIDED, BASELINE)])
  teachers = [e for e in alignment if e.row == collect.TEACHER]
  teachers = [e for e in teachers if e.dataset == dataset] or teachers
  wanted = (("teacher", teachers, ("teacher",)),
            (f"guided ({GUIDED})", [e for e in alignment if e.row == GUIDED
                                             and e.dataset == dataset], ("heads",)),
            (f"baseline ({BASELINE})", [e for e in alignment if e.row == BASELINE
                                        and e.dataset == dataset],
             ("heads", "activations", "gradcam")))
  found, missing = [], []
  for title, entries, kinds in wanted:
    entry = _lowest_seed_examples(entries)
    if entry and isinstance(primary := entry.results.get("alignment/primary"), str):
      kinds = (primary,) + kinds if title.startswith("baseline") else kinds
    loaded = _load_examples(entry, kinds) if entry else "no workdir with examples.npz"
    if isinstance(loaded, str):
      missing.append(f"{title.split(' (')[0]}: {loaded}")
    else:
      arrays, key = loaded
      label = key.split("/", 1)[1]
      found.append((f"{title}\n{label} map, seed {entry.seed}", arrays, key))
  return found, missing


def _normalised(m: np.ndarray) -> np.ndarray:
  m = np.asarray(m, np.float64)
  span = m.max() - m.min()
  return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def _overlay(ax, image: np.ndarray | None, density: np.ndarray | None) -> None:
  ax.set_axis_off()
  if image is None:
    return
  h, w = image.shape[:2]
  grey = image.mean(-1) if image.ndim == 3 else image
  ax.imshow(grey, cmap="gray", vmin=0, vmax=255, extent=(0, w, h, 0))
  if density is not None:
    ax.imshow(_normalised(density), cmap="jet", alpha=0.5, extent=(0, w, h, 0),
              interpolation="bilinear")
  else:
    ax.text(w / 2, h / 2, "not this image", ha="center", va="center", fontsize=7, color="w")


def _same_image(a: np.ndarray, b: np.ndarray) -> bool:
  return a.shape != b.shape or bool(np.array_equal(a, b))


def attention(collection: collect.Collection, path: str) -> tuple[str | None, str]:
  """Image | human | teacher | guided model | baseline, on the first validation images."""
  found, missing = _attention_sources(collection)
  if not found:
    return None, "no alignment or teacher workdir with examples.npz (" + "; ".join(missing) + ")"
  base = found[0][1]
  indices = [int(i) for i in base["index"][:MAX_IMAGES]]
  ncols = 2 + len(found)
  fig = Figure(figsize=(1.9 * ncols, 1.9 * len(indices) + 0.9))
  axes = fig.subplots(len(indices), ncols, squeeze=False)
  titles = ["image", "human"] + [title for title, _, _ in found]
  for r, index in enumerate(indices):
    image = np.squeeze(base["image"][r])
    axes[r, 0].imshow(image, cmap="gray" if image.ndim == 2 else None)
    axes[r, 0].set(xticks=[], yticks=[])
    axes[r, 0].set_ylabel(f"validation #{index}", fontsize=7)
    _overlay(axes[r, 1], image, base["human"][r])
    for c, (_, arrays, key) in enumerate(found):
      where = np.flatnonzero(arrays["index"] == index)
      ok = where.size and _same_image(arrays["image"][where[0]], base["image"][r])
      _overlay(axes[r, 2 + c], image, arrays[key][where[0]] if ok else None)
  for c, title in enumerate(titles):
    row = next((r for r in (GUIDED, BASELINE) if f"({r})" in title), None)
    axes[0, c].set_title(title, fontsize=7, color=colour(row) if row else "black")
  suptitle = "Attention on validation images (maps over the image, each min-max scaled)"
  if missing:
    suptitle += "\nleft out: " + "; ".join(m.split(":")[0] for m in missing)
  fig.suptitle(suptitle, fontsize=8)
  fig.tight_layout()
  note = "Attention maps of the first validation images."
  if missing:
    note += " Columns left out: " + "; ".join(missing) + "."
  return _save(fig, path), note
