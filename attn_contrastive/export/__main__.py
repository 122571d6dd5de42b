"""``python -m attn_contrastive.export --run=DIR --format=torchvision|onnx|hf --out=DIR``.

``--run``: a pretrain, supervised or teacher run's workdir, or a linear_eval
run's (the run it evaluated, with its classifier); local or ``gs://``.
"""
from __future__ import annotations

from typing import Sequence

from absl import app, flags

_RUN = flags.DEFINE_string("run", None, "Workdir of the run to export.")
_FORMAT = flags.DEFINE_enum("format", None, ["torchvision", "onnx", "hf"],
                            "torchvision: safetensors state_dicts; onnx: model.onnx; hf: a "
                            "Hugging Face folder with a model card.")
_OUT = flags.DEFINE_string("out", None, "Folder the files are written to.")
_RESULTS = flags.DEFINE_list("results", None, "hf: folders searched for the run's "
                             "evaluations (results.json); the run's parent folder by default.")
flags.mark_flags_as_required(["run", "format", "out"])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from attn_contrastive.export import formats  # pylint: disable=g-import-not-at-top
  written = formats.export(_RUN.value, _FORMAT.value, _OUT.value, _RESULTS.value)
  print("\n".join(f"wrote {path}" for path in written))


if __name__ == "__main__":
  app.run(main)
