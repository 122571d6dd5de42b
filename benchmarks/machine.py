"""The machine a benchmark ran on: CPU model, SIMD flags, cores (printed beside figures).

Machines of the same name differ (one has AVX-512, another only AVX2), so
every CPU figure in ``benchmarks/README.md`` is recorded with these.
"""
from __future__ import annotations

import os
import platform
from typing import Any

SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx_vnni", "amx_tile")


def cpu_info() -> dict[str, Any]:
  """CPU model, SIMD flags (from /proc/cpuinfo) and the cores this process may use."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
          break
  except OSError:
    pass
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"model": model, "flags": [f for f in SIMD_FLAGS if f in flags],
          "cpu_count": os.cpu_count(), "usable_cores": usable}
