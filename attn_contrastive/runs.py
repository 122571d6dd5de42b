"""A finished run, opened from its workdir: the one way a stage reads another run.

A training run leaves ``config.json`` and ``checkpoints/`` in its workdir.
:func:`open_run` turns such a folder into a :class:`Run`: its config, its
network rebuilt from that config (:mod:`attn_contrastive.models.build`), the
variables of its latest checkpoint restored replicated onto this run's mesh
(whatever devices and processes wrote them), and that checkpoint's step. The
evaluation tasks score a :class:`Run`, and their ``results.json`` names it
(its resolved workdir, step and config) as the provenance of every number.

A linear evaluation's workdir holds, besides its own ``config.json`` (which
names the run it evaluated), its classifier of the pooled feature:
:func:`load_classifier` reads it for the stages that need a run's classes
(robustness, Grad-CAM).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from attn_contrastive import config_checks, paths
from attn_contrastive.models import forward
from attn_contrastive.models.build import build_model, encoder_of
from attn_contrastive.train import checkpoint as ckpt_lib
from attn_contrastive.train import mesh as mesh_lib

CONFIG_FILE = "config.json"
#: The cached-feature probe's classifier in a linear evaluation's workdir.
CACHED_CLASSIFIER = os.path.join("linear_cached", "classifier.npz")


def read_config(run_dir: str, reader: str | None = None) -> ml_collections.ConfigDict:
  """The ``config.json`` that a run wrote into its workdir.

  ``reader``: the evaluation task reading it; a run of a task it cannot
  evaluate (:data:`config_checks.EVALUATES`) is refused, naming what it needs.
  """
  path = os.path.join(run_dir, CONFIG_FILE)
  need = config_checks.evaluated_run(reader) if reader else "the workdir of a finished run"
  if not paths.exists(path):
    raise FileNotFoundError(f"{path} not found: --config.run_dir must be {need} (it "
                            "holds config.json and checkpoints/)")
  config = ml_collections.ConfigDict(paths.read_json(path))
  if reader and config.get("task") not in config_checks.EVALUATES[reader]:
    raise ValueError(f"{run_dir} is a {config.get('task')!r} run; {reader} needs {need}")
  return config


def evaluated_run_dir(config: ml_collections.ConfigDict) -> str:
  """The workdir of the run that an evaluation's config (its ``config.json``) evaluated.

  ``run_dir``; a ``config.json`` written before that key had its name calls it
  ``checkpoint`` (a study's earlier stages, resumed).
  """
  return config.get("run_dir") or config.get("checkpoint", "")


@flax.struct.dataclass
class EvalState:
  """The parts of a train state evaluators read, and an optional linear classifier.

  ``classifier``: ``{"kernel": [D, K], "bias": [K]}`` of a linear classifier
  of the pooled feature (Grad-CAM of a SimCLR run), or None.
  """
  params: Any
  batch_stats: Any
  step: Any
  classifier: Any = None


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished pretrain or supervised run, ready to evaluate (or a teacher run, to predict).

  ``run_dir`` is resolved (absolute, or a ``gs://`` URL); ``variables``
  (``params``, ``batch_stats``) are those of the checkpoint of ``step``.
  """
  run_dir: str
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: dict[str, Any]
  step: int

  @property
  def task(self) -> str:
    return self.config.task

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.config.model.dtype)

  @property
  def image_size(self) -> int:
    """The input side the run trained on."""
    return int(self.config.data.image_size)

  def predict(self, output: str | None = None, **fixed) -> forward.PredictFn:
    """The network in inference mode (:func:`attn_contrastive.models.forward.predict`)."""
    return forward.predict(self.model, self.dtype, output, **fixed)

  def state(self, classifier: dict[str, np.ndarray] | None = None) -> EvalState:
    """The variables as an :class:`EvalState`, with ``classifier`` if given."""
    return EvalState(self.variables["params"], self.variables["batch_stats"],
                     np.int32(self.step), classifier)

  def embedding(self, kind: str = "pooled") -> tuple[Callable, dict[str, Any]]:
    """``(embed, its variables)``; ``embed(variables, uint8 images) -> [B, D]``.

    ``pooled`` runs the encoder alone, as linear evaluation reads it (heads
    beyond it do not matter); ``projection`` runs the whole SimCLR model to
    its projection head (pretraining runs only).
    """
    if kind == "pooled":
      encoder, variables = encoder_of(self.model, self.variables)
      return forward.predict(encoder, self.dtype, "pooled"), variables
    if kind not in config_checks.EMBEDDINGS:
      raise ValueError(f"embedding {kind!r}: choose one of {config_checks.EMBEDDINGS}")
    if self.task != "pretrain":
      raise ValueError(f"embedding 'projection' needs a pretraining run; {self.task!r} runs "
                       "have no projection head: use 'pooled'")
    return self.predict("embedding", attend=None), self.variables


def open_run(run_dir: str, mesh: jax.sharding.Mesh, reader: str | None = None) -> Run:
  """The run in ``run_dir``: config, network, latest checkpoint replicated on ``mesh``.

  ``reader``: the evaluation task opening it (see :func:`read_config`).
  """
  config = read_config(run_dir, reader)
  variables = ckpt_lib.load_variables(run_dir, sharding=mesh_lib.replicated(mesh))
  return Run(run_dir=paths.resolve(run_dir), config=config, model=build_model(config),
             variables=variables, step=ckpt_lib.latest_step(run_dir))


def load_classifier(linear_dir: str, protocol: str = "auto"
                    ) -> tuple[np.ndarray, np.ndarray, str]:
  """``(kernel [D, C], bias [C], protocol)``: a linear evaluation's classifier of pooled
  features.

  ``protocol``: ``linear`` (the head trained in ``<linear_dir>/linear``),
  ``linear_cached`` (the softmax regression, standardisation folded in) or
  ``auto`` (``linear`` if that protocol ran, else ``linear_cached``). The
  logits of a frozen feature ``x`` are ``x @ kernel + bias``.
  """
  cached = os.path.join(linear_dir, CACHED_CLASSIFIER)
  has_linear = paths.isdir(os.path.join(linear_dir, "linear", "checkpoints"))
  if protocol == "auto":
    protocol = "linear" if has_linear else "linear_cached"
  if protocol == "linear" and has_linear:
    head = ckpt_lib.load_variables(os.path.join(linear_dir, "linear"))["params"]["head"]
    return np.asarray(head["kernel"]), np.asarray(head["bias"]), protocol
  if protocol == "linear_cached" and paths.exists(cached):
    saved = paths.load_npz(cached)
    return saved["kernel"], saved["bias"], protocol
  if protocol not in config_checks.CLASSIFIER_PROTOCOLS:
    raise ValueError(f"classifier protocol {protocol!r}: choose one of "
                     f"{config_checks.CLASSIFIER_PROTOCOLS}")
  raise FileNotFoundError(
      f"no {protocol} classifier in {linear_dir}: point at the workdir of a finished "
      f"linear_eval run whose config.protocols included {protocol!r}")
