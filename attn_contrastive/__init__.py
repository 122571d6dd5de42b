"""attn_contrastive: teacher-generated spatial-attention labels for contrastive
and supervised training (Yao et al., CVPR 2023), in JAX/Flax.

Importing the package applies the XLA:CPU setting of
:mod:`attn_contrastive.xla_cpu_flags` (Eigen convolution kernels) before JAX starts;
``ATTN_CONTRASTIVE_HOST_DEFAULTS=0`` skips it. It also gives clu's metric writers
:mod:`attn_contrastive.summaries`' TensorBoard writer, which needs no TensorFlow.

:func:`load` opens a finished run for inference on the user's own images
(:mod:`attn_contrastive.inference`); JAX and the networks are imported only
when it is called, so importing the package stays cheap.
"""
from attn_contrastive import summaries as _summaries
from attn_contrastive import xla_cpu_flags as _xla_cpu_flags

_xla_cpu_flags.configure()
_summaries.install()


def load(run_dir: str, batch_size: int = 32):
  """A teacher, pretrain or supervised run's workdir as an
  :class:`attn_contrastive.inference.Predictor`: ``saliency(images)``,
  ``embed(images)``, ``attention(images)`` on uint8 RGB images of any sizes."""
  from attn_contrastive import inference  # pylint: disable=g-import-not-at-top
  return inference.load(run_dir, batch_size)
