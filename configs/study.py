r"""The paper's whole chain on the bundled synthetic data, in one command (docs/chain.md).

  python -m attn_contrastive.main --config=configs/study.py --workdir=workdir/study

teacher → its maps of the training split → every table row × seed → linear
evaluation (cached features) → robustness → retrieval → alignment → the
report (``<workdir>/report/``). A stage whose results exist is skipped:
rerun the same command after a kill and the study goes on. Each stage's
config is here in full and any field can be overridden:
``--config.rows.contrastive.train.num_epochs=5``, ``--config.study.seeds=0,1``,
``--config.study.rows="('contrastive','contrastive_attn_teacher')"``.

Arguments (times on a 2-core AMD EPYC VM, docs/performance.md):
  ``demo`` (default; the README's first command): the three SimCLR rows, one
  seed, one epoch each, evaluations on subsets; about 6 minutes.
  ``full``: five rows × three seeds on whole splits; about an hour; its
  tables are those of docs/results.md.
  ``cifar10``: CIFAR-10 and CIFAR-10-C on one GPU (H100), ≈ 20 h estimated:
  the SALICON teacher (≈ 1 h), its maps of CIFAR-10, the Contrastive and
  Contrastive attn. teacher rows (SimCLR's recipe, ≈ 8 h each), linear
  evaluation, robustness, retrieval and the report (no alignment: CIFAR has
  no human maps). Prepare ``salicon`` and ``cifar10`` first (docs/datasets.md):
    python -m attn_contrastive.main --config=configs/study.py:cifar10 \
        --workdir=/tmp/study_cifar10 \
        --config.robustness.robustness.manual_dir=DIR_WITH_EXTRACTED_CIFAR_10_C
ImageNet runs the same stages as separate commands (docs/chain.md).
"""
import ml_collections

from attn_contrastive import config as config_lib

ROWS = {
    "contrastive": "contrastive.py",
    "contrastive_attn_teacher": "contrastive_attn_teacher.py",
    "contrastive_attn_cotrain": "contrastive_attn_cotrain.py",
    "supervised_r18": "supervised.py",
    "supervised_r18_attn_teacher": "supervised_attn_teacher.py",
}


def _demo(c: ml_collections.ConfigDict) -> None:
  """The three SimCLR rows, short schedules, evaluation subsets: the chain in minutes."""
  c.study.rows = ("contrastive", "contrastive_attn_teacher", "contrastive_attn_cotrain")
  c.teacher.train.num_epochs = 1.5
  c.teacher.eval.max_examples = 100
  for row in c.rows.values():
    row.train.update(dict(num_epochs=1.0 if row.task == "pretrain" else 2.0, eval_every=-1,
                          log_every=20))
  c.linear_eval.linear_cached.l2_grid = (1e-4, 1e-3, 1e-2)
  c.linear_eval.eval.max_examples = 5000
  c.robustness.eval.update(dict(max_examples=200, batch_size=200))
  c.retrieval.eval.max_examples = 500
  c.retrieval.retrieval.gallery_max_examples = 2000
  c.alignment.eval.max_examples = 100


def _full(c: ml_collections.ConfigDict) -> None:
  """Every row × 3 seeds on the rows' own synthetic schedules; robustness on 300 images."""
  c.study.seeds = (0, 1, 2)
  for row in c.rows.values():
    row.train.eval_every = -1  # the evaluations below replace the monitor
  c.robustness.eval.update(dict(max_examples=300, batch_size=300))


def _cifar10(c: ml_collections.ConfigDict) -> None:
  """The two SimCLR rows on CIFAR-10 with a SALICON teacher; CIFAR-10-C's robustness."""
  sibling = lambda name: config_lib.sibling_config(__file__, name, "cifar10")  # noqa: E731
  c.data.name = "cifar10"
  c.study.rows = ("contrastive", "contrastive_attn_teacher")
  c.study.stages = tuple(s for s in c.study.stages if s != "alignment")
  c.teacher = config_lib.sibling_config(__file__, "teacher.py", "salicon")
  c.label = sibling("label.py")
  c.rows = ml_collections.ConfigDict({name: sibling(ROWS[name]) for name in c.study.rows})
  for row in c.rows.values():
    row.train.eval_every = -1  # the evaluations below replace the monitor
  c.linear_eval = sibling("linear_eval.py")
  c.linear_eval.protocols = ("linear_cached",)
  c.robustness = sibling("robustness.py")
  c.retrieval = sibling("retrieval.py")


def get_config(arg: str | None = None):
  picked = config_lib.parse_arg(arg, {"scale": ("demo", "full", "cifar10")})
  c = ml_collections.ConfigDict()
  c.task = "study"
  c.seed = 0  # unused: each row's seed comes from study.seeds
  c.data = ml_collections.ConfigDict(dict(name="salient_objects/classification"))
  sibling = lambda name: config_lib.sibling_config(__file__, name)  # noqa: E731
  c.study = ml_collections.ConfigDict(dict(
      rows=tuple(ROWS), seeds=(0,), compilation_cache=True,
      stages=("teacher", "label", "train", "linear_eval", "robustness", "retrieval",
              "alignment", "report")))
  c.teacher = sibling("teacher.py")
  c.label = sibling("label.py")
  c.rows = ml_collections.ConfigDict({name: sibling(file) for name, file in ROWS.items()})
  c.linear_eval = sibling("linear_eval.py")
  c.linear_eval.protocols = ("linear_cached",)
  c.robustness = sibling("robustness.py")
  c.retrieval = sibling("retrieval.py")
  c.alignment = sibling("alignment.py")
  if picked["scale"] == "demo":
    _demo(c)
  elif picked["scale"] == "full":
    _full(c)
  else:
    _cifar10(c)
  return c
