"""attn_contrastive: teacher-generated spatial-attention labels for contrastive
and supervised training (Yao et al., CVPR 2023), in JAX/Flax.

Importing the package applies the CPU process settings of
:mod:`attn_contrastive.host` (XLA:CPU convolution kernels, malloc reuse)
before JAX starts; ``ATTN_CONTRASTIVE_HOST_DEFAULTS=0`` skips them.
"""
from attn_contrastive import host as _host

_host.configure()
