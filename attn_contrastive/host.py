"""Process settings that make XLA:CPU training fast, applied on import.

Two settings, each measured on the synthetic SimCLR step on a 2-core x86-64
VM (``benchmarks/README.md`` has the figures):

* **XLA:CPU convolutions through Eigen, not YNNPACK.** jaxlib 0.10 hands
  convolutions to YNNPACK, whose kernels ran on one core here: a
  512×8×8×32 3×3 convolution took 13 ms on two cores and 15 ms on one, and
  12 → 7 ms with Eigen's threaded kernel, which this flag selects:
  ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``. YNNPACK
  keeps its dots, reductions and elementwise fusions (turning those off too
  was slower). The flag only concerns the CPU backend.
* **Large buffers stay in the process.** glibc's ``malloc`` serves blocks
  above ~32 MB with ``mmap`` and returns them with ``munmap``, so every step
  faulted its activations in again: ~110k page faults and 0.3-0.4 s of
  system time per step. ``mallopt`` with no mmap'd blocks, one arena and no
  trimming keeps freed memory for the next step (0 faults). The process
  then does not give memory back to the system until it exits, which suits
  a training job.

Both happen when ``attn_contrastive`` is imported, as early as possible:
XLA reads its flags once, when JAX opens its first backend. A user's own
``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` is left alone,
and ``ATTN_CONTRASTIVE_HOST_DEFAULTS=0`` turns both settings off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import warnings

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


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


def keep_freed_memory() -> bool:
  """glibc only: no mmap'd blocks, one arena, no trimming. True if applied."""
  if not sys.platform.startswith("linux"):
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False  # not glibc (e.g. musl): nothing to tune
  ok = mallopt(_M_MMAP_MAX, 0) == 1
  ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
  ok &= mallopt(_M_ARENA_MAX, 1) == 1
  return bool(ok)


def configure() -> None:
  """Applies both settings unless ``ATTN_CONTRASTIVE_HOST_DEFAULTS=0``."""
  if os.environ.get("ATTN_CONTRASTIVE_HOST_DEFAULTS", "1") == "0":
    return
  set_xla_flags()
  keep_freed_memory()
