"""attn_contrastive: teacher-generated spatial-attention labels for contrastive
and supervised training (Yao et al., CVPR 2023), in JAX/Flax.

Importing the package applies the XLA:CPU setting of
:mod:`attn_contrastive.xla_cpu_flags` (Eigen convolution kernels) before JAX starts;
``ATTN_CONTRASTIVE_HOST_DEFAULTS=0`` skips it. It also gives clu's metric writers
:mod:`attn_contrastive.summaries`' TensorBoard writer, which needs no TensorFlow.
"""
from attn_contrastive import summaries as _summaries
from attn_contrastive import xla_cpu_flags as _xla_cpu_flags

_xla_cpu_flags.configure()
_summaries.install()
