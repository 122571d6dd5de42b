"""The XLA:CPU setting that makes training fast on CPU hosts, applied on import.

jaxlib hands convolutions to YNNPACK, whose convolution kernels gain little
from more cores; Eigen's threaded convolutions use them all. ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` selects
Eigen for convolutions only: YNNPACK keeps its dots, reductions and elementwise
fusions, which are faster there. The flag only concerns the CPU backend
(timings: ``docs/performance.md``, ``benchmarks/README.md``).

It is added to ``XLA_FLAGS`` when ``attn_contrastive`` is imported: XLA reads
its flags once, when JAX opens its first backend, so importing JAX's
backend first leaves it out (with a warning). A user's own
``--xla_cpu_experimental_ynn_fusion_type`` is left alone, and
``ATTN_CONTRASTIVE_HOST_DEFAULTS=0`` skips the setting.

It is added only where XLA:CPU will be JAX's only backend, which
:func:`cpu_only` decides from what JAX itself will read when it starts,
without starting it: ``JAX_PLATFORMS`` (every platform listed is ``cpu``),
else ``JAX_PLATFORM_NAME`` (absent or ``cpu``) and no TPU or GPU backend
installed (``libtpu``, ``jax_cuda12_plugin``, ``jax_cuda13_plugin``,
``jax_rocm*``, a ``jax_plugins`` module, ``TPU_LIBRARY_PATH`` or
``PJRT_NAMES_AND_LIBRARY_PATHS``). On a TPU or GPU host the flag would not
speed anything up, and every backend that starts parses ``XLA_FLAGS``: one
built from another XLA than jaxlib's (libtpu) may abort on a flag it does
not know. ``JAX_PLATFORM_NAME=cpu`` alone only makes CPU the default: the
other backends installed still start, so the flag is left out there too.

Process-wide glibc ``malloc`` settings are not applied, though they save
page faults on large buffers: they would change how the whole process uses
memory (freed memory never handed back). ``docs/performance.md`` shows how
to apply them to one run.
"""
from __future__ import annotations

import importlib.util
import os
import pkgutil
import sys
import warnings
from collections.abc import Mapping

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

#: Python modules that give JAX a TPU or GPU backend (``jax[tpu]``, ``jax[cuda12]``, …).
ACCELERATOR_MODULES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin")
#: Prefixes of such modules whose name carries a version (``jax_rocm60_plugin``, …).
ACCELERATOR_PREFIXES = ("jax_rocm",)


def accelerator_installed(environ: Mapping[str, str] | None = None) -> bool:
  """Whether JAX would find a TPU or GPU backend here; nothing is imported."""
  environ = os.environ if environ is None else environ
  if any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_MODULES):
    return True
  if any(info.name.startswith(ACCELERATOR_PREFIXES) for info in pkgutil.iter_modules()):
    return True
  plugins = importlib.util.find_spec("jax_plugins")  # PJRT plugins' namespace package
  if plugins is not None and any(pkgutil.iter_modules(plugins.submodule_search_locations or [])):
    return True
  tpu_library = environ.get("TPU_LIBRARY_PATH", "")
  if tpu_library and os.path.isfile(tpu_library):
    return True
  return bool(environ.get("PJRT_NAMES_AND_LIBRARY_PATHS", "").strip())


def cpu_only(environ: Mapping[str, str] | None = None) -> bool:
  """Whether XLA:CPU will be the only backend JAX starts (decided before it starts)."""
  environ = os.environ if environ is None else environ
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return all(p.strip() == "cpu" for p in platforms.split(",") if p.strip())
  if environ.get("JAX_PLATFORM_NAME", "").strip().lower() not in ("", "cpu"):
    return False
  return not accelerator_installed(environ)


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
  """Applies the setting where XLA:CPU is the only backend, unless
  ``ATTN_CONTRASTIVE_HOST_DEFAULTS=0``."""
  if os.environ.get("ATTN_CONTRASTIVE_HOST_DEFAULTS", "1") == "0":
    return
  if cpu_only():
    set_xla_flags()
