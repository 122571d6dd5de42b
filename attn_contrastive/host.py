"""The XLA:CPU setting that makes training fast here, applied on import.

jaxlib 0.10 hands convolutions to YNNPACK, whose kernels ran on one core on
the 2-core x86-64 VM of ``benchmarks/README.md``: a 512×8×8×32 3×3
convolution took 13 ms on two cores and 15 ms on one, and 7 ms with Eigen's
threaded kernel, which this flag selects:
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``. YNNPACK
keeps its dots, reductions and elementwise fusions (turning those off too
was slower). The flag only concerns the CPU backend.

It is added to ``XLA_FLAGS`` when ``attn_contrastive`` is imported: XLA reads
its flags once, when JAX opens its first backend, so importing JAX's
backend first leaves it out (with a warning). A user's own
``--xla_cpu_experimental_ynn_fusion_type`` is left alone, and
``ATTN_CONTRASTIVE_HOST_DEFAULTS=0`` skips the setting.

Not applied: glibc ``mallopt`` settings that keep freed memory in the
process (no mmap'd blocks, no trimming) removed ~110k page faults (0.3-0.4 s
of system time) per synthetic step and made JAX and PyTorch alike ~10%
faster, but they change how the whole process uses memory (it never hands
freed memory back); ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647``
applies them to a run from outside.
"""
from __future__ import annotations

import os
import sys
import warnings

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _backends_started() -> bool:
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def set_xla_flags() -> bool:
  """Adds :data:`YNN_FLAG` to ``XLA_FLAGS``; False if it cannot take effect."""
  current = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in current:
    return True  # the user's choice
  if _backends_started():
    warnings.warn(
        "attn_contrastive was imported after JAX started its backends, so XLA:CPU "
        f"keeps YNNPACK convolutions (slower on CPU). Import attn_contrastive "
        f"first, or set XLA_FLAGS='{YNN_FLAG}'.", stacklevel=3)
    return False
  os.environ["XLA_FLAGS"] = f"{current} {YNN_FLAG}".strip()
  return True


def configure() -> None:
  """Applies the setting unless ``ATTN_CONTRASTIVE_HOST_DEFAULTS=0``."""
  if os.environ.get("ATTN_CONTRASTIVE_HOST_DEFAULTS", "1") == "0":
    return
  set_xla_flags()
