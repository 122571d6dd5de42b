"""The CPU weight-gradient kernel (``conv_wgrad.cc``): built on first use.

``conv.py`` computes most convolution gradients with XLA; for layers with
few channels XLA:CPU's weight gradient is several times slower than
PyTorch's, and a small C++ kernel (see the comment at the top of
``conv_wgrad.cc``) closes that gap (timings in ``benchmarks/README.md``).
It is an XLA FFI custom call, compiled here the first time it is needed,
with the C++ compiler of the machine (``$CXX``, else ``c++``/``g++``) and
``-march=native``, into a cache directory keyed by the source, the jaxlib
version and the CPU, then loaded and registered with JAX.

It is an optimisation only: when the machine cannot build it (not x86-64
with AVX2 and FMA, no compiler, the build fails) a warning says why, once,
and convolutions keep the pure-JAX gradient. ``ATTN_CONTRASTIVE_NATIVE=0``
turns it off; ``ATTN_CONTRASTIVE_CACHE`` moves the cache (default
``~/.cache/attn_contrastive``).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCE = Path(__file__).with_name("conv_wgrad.cc")
TARGET = "attn_contrastive_conv_wgrad_f32"
_SYMBOL = "AttnContrastiveConvWgradF32"


def _cpu_flags() -> set[str]:
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return set()
  for line in text.splitlines():
    if line.startswith("flags"):
      return set(line.split(":", 1)[1].split())
  return set()


def _compiler() -> str | None:
  """``$CXX`` if set (and only it), else the first of c++, g++, clang++."""
  if os.environ.get("CXX"):
    return shutil.which(os.environ["CXX"])
  return next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)


def _disabled() -> bool:
  return os.environ.get("ATTN_CONTRASTIVE_NATIVE", "1") == "0"


def unavailable_reason() -> str | None:
  """Why the kernel cannot be used here (``None`` when it can be built)."""
  if _disabled():
    return "disabled by ATTN_CONTRASTIVE_NATIVE=0"
  if platform.machine().lower() not in ("x86_64", "amd64"):
    return f"needs an x86-64 CPU, this is {platform.machine()}"
  if not {"avx2", "fma"} <= _cpu_flags():
    return "needs a CPU with AVX2 and FMA"
  if _compiler() is None:
    return ("no C++ compiler found: install g++ (or set CXX to one)"
            if not os.environ.get("CXX") else f"CXX={os.environ['CXX']} not found")
  return None


def _build(out: Path) -> None:
  """Compiles the kernel into ``out`` (atomically: several processes may race)."""
  cmd = [_compiler(), "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
         "-w", f"-I{jax.ffi.include_dir()}", str(SOURCE), "-lpthread"]
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    lib = Path(tmp) / out.name
    done = subprocess.run(cmd + ["-o", str(lib)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(lib, out)


def _library_path() -> Path:
  key = hashlib.sha256()
  key.update(SOURCE.read_bytes())
  key.update(jaxlib.__version__.encode())
  key.update(" ".join(sorted(_cpu_flags())).encode())
  key.update(platform.processor().encode())
  root = Path(os.environ.get("ATTN_CONTRASTIVE_CACHE",
                             Path.home() / ".cache" / "attn_contrastive"))
  return root / "native" / key.hexdigest()[:16] / "libconv_wgrad.so"


@functools.cache
def load() -> bool:
  """Builds (once per machine), loads and registers the kernel; ``False`` if not."""
  reason = unavailable_reason()
  if reason is None:
    try:
      path = _library_path()
      if not path.exists():
        logging.getLogger(__name__).info(
            "Compiling the CPU weight-gradient kernel into %s (once).", path)
        _build(path)
      lib = ctypes.cdll.LoadLibrary(str(path))
      jax.ffi.register_ffi_target(
          TARGET, jax.ffi.pycapsule(getattr(lib, _SYMBOL)), platform="cpu")
      return True
    except (OSError, RuntimeError, AttributeError) as e:
      reason = f"build or load failed: {e}"
  if not _disabled():
    warnings.warn(
        f"attn_contrastive: the CPU weight-gradient kernel is not used ({reason}); "
        "convolutions keep the pure-JAX gradient (slower on CPU, same result).",
        RuntimeWarning, stacklevel=2)
  return False


def threads() -> int:
  """CPU cores this process may run on."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:
    return max(1, os.cpu_count() or 1)


def supports(c: int, o: int, dtype) -> bool:
  """Shapes and dtypes the kernel handles (the caller still calls :func:`load`)."""
  return c % 4 == 0 and o % 16 == 0 and jnp.dtype(dtype) == jnp.float32


def weight_grad(xp: jax.Array, g: jax.Array, kernel: tuple[int, int],
                strides: tuple[int, int], n_threads: int | None = None) -> jax.Array:
  """``dw (kh, kw, C, O)`` from the padded input ``xp`` and output gradient ``g``.

  ``xp`` must hold every window: ``(Ho-1)*sh + kh`` rows and likewise columns
  (extra trailing rows/columns are ignored). Needs :func:`load` to have
  returned ``True``; runs on the CPU only.
  """
  (kh, kw), (sh, sw) = kernel, strides
  c, o = xp.shape[3], g.shape[3]
  # Under jax.vmap (e.g. per-example gradients) the call runs once per item.
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((kh, kw, c, o), jnp.float32),
                          vmap_method="sequential")
  return call(xp, g, kh=np.int64(kh), kw=np.int64(kw), sh=np.int64(sh),
              sw=np.int64(sw), threads=np.int64(n_threads or threads()))
