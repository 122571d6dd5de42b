"""ImageNet-C corruption throughput on one CPU core: ours vs `imagecorruptions`.

For each of the 19 corruptions, images per second of
``attn_contrastive.data.image_corruptions.corrupt`` on one synthetic uint8 RGB image
(gradients, a sine pattern, a square and noise; ``--size`` px square),
averaged over the five severities (total images over total time), and the
same for the reference package ``imagecorruptions`` (1.1.2) in the same run,
or "fails" where its code raises under the installed numpy / scikit-image.
With ``--patch_reference`` those failing functions are timed too, with the
two names they need (``np.float_``, ``gaussian(multichannel=True)``) put back
for the duration of the call, and marked "patched".

The process is pinned to one core and every library is asked for one thread
(OpenCV, OpenMP, MKL, OpenBLAS), so the figures are per core. Ours first
runs each corruption untimed for up to 30 calls / 0.3 s (this fills the cache
of resized frost textures, as a long evaluation would); then, severity by
severity, each implementation is called once untimed and timed for
``--repeats`` calls or until ``--budget`` seconds have passed, whichever
comes first, ours and the reference alternating so that background load hits
both alike.

Usage::

    python benchmarks/corruptions.py [--size 224] [--repeats 20] [--budget 0.5]

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
  os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from attn_contrastive.data import image_corruptions  # noqa: E402

cv2.setNumThreads(1)


def cpu_info() -> dict:
  """CPU model and the vector-extension flags that matter for numpy/OpenCV kernels."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
          model = value.strip()
        elif key == "flags":
          flags = set(value.split())
        if model and flags:
          break
  except OSError:
    pass
  return {"model": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
          "cpu_count": os.cpu_count()}


def pin_to_one_core() -> int | None:
  """Restrict this process to the first core it may use; returns that core."""
  if not hasattr(os, "sched_setaffinity"):
    return None
  core = min(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {core})
  return core


def synthetic_image(size: int) -> np.ndarray:
  """Gradients, a sine pattern, a red square and mild noise: texture every corruption changes."""
  yy, xx = np.mgrid[0:size, 0:size]
  base = np.stack([230 * xx / size + 10, 230 * yy / size + 10,
                   128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0)], -1)
  base[size // 4:size // 2, size // 4:size // 2] = (250, 30, 40)
  noise = np.random.default_rng(0).normal(0, 8, base.shape)
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def load_reference() -> Callable | None:
  """`imagecorruptions.corrupt`, or None when the package is not installed."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      import imagecorruptions
  except ImportError:
    return None
  return imagecorruptions.corrupt


@contextlib.contextmanager
def reference_compat():
  """Restores, while active, the numpy / scikit-image names imagecorruptions 1.1.2 uses."""
  import imagecorruptions.corruptions as icc
  from skimage.filters import gaussian

  def gaussian_multichannel(image, sigma=1, multichannel=None, **kwargs):
    if multichannel:
      kwargs["channel_axis"] = -1
    return gaussian(image, sigma=sigma, **kwargs)

  original = icc.gaussian
  icc.gaussian = gaussian_multichannel
  np.float_ = np.float64
  try:
    yield
  finally:
    icc.gaussian = original
    del np.float_


def time_calls(fn: Callable[[], object], repeats: int, budget: float) -> tuple[int, float]:
  """Calls `fn` up to `repeats` times or until `budget` seconds; returns (calls, seconds)."""
  calls, start = 0, time.perf_counter()
  elapsed = 0.0
  while calls < repeats and (calls == 0 or elapsed < budget):
    fn()
    calls += 1
    elapsed = time.perf_counter() - start
  return calls, elapsed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=20, help="max timed calls per severity")
  parser.add_argument("--budget", type=float, default=0.5,
                      help="max timed seconds per severity and implementation")
  parser.add_argument("--only", default="", help="comma-separated corruption names")
  parser.add_argument("--patch_reference", action="store_true",
                      help="also time the reference functions that fail, with their names restored")
  args = parser.parse_args()

  cpu = cpu_info()
  core = pin_to_one_core()
  print(f"cpu: {cpu['model']} | avx2: {cpu['avx2']} | avx512f: {cpu['avx512f']} | "
        f"cores on machine: {cpu['cpu_count']} | pinned to core: {core}")
  print(f"numpy {np.__version__}, opencv {cv2.__version__}, image {args.size}x{args.size}, "
        f"up to {args.repeats} calls / {args.budget}s per severity", flush=True)

  reference = load_reference()
  names = args.only.split(",") if args.only else list(image_corruptions.ALL)
  image = synthetic_image(args.size)
  rng = np.random.default_rng(0)
  np.random.seed(0)  # The reference draws from numpy's global state.

  print(f"{'corruption':18s} {'ours img/s':>11s} {'reference img/s':>16s} {'speed-up':>9s}")
  results = {}
  for name in names:
    # Untimed: fills frost's texture cache (five textures drawn at random) and warms imports.
    time_calls(lambda: image_corruptions.corrupt(image, name, 3, rng), 30, 0.3)
    ours = [0, 0.0]
    theirs: list | str = [0, 0.0] if reference is not None else "not installed"
    patched, failure = False, ""
    for severity in image_corruptions.SEVERITIES:
      def run_ours():
        return image_corruptions.corrupt(image, name, severity, rng)

      def run_theirs():
        return reference(image, corruption_name=name, severity=severity)

      run_ours()
      calls, seconds = time_calls(run_ours, args.repeats, args.budget)
      ours[0] += calls
      ours[1] += seconds
      if isinstance(theirs, list):
        try:
          with warnings.catch_warnings(), (
              reference_compat() if patched else contextlib.nullcontext()):
            warnings.simplefilter("ignore")
            run_theirs()
            calls, seconds = time_calls(run_theirs, args.repeats, args.budget)
          theirs[0] += calls
          theirs[1] += seconds
        except Exception as e:  # noqa: BLE001 -- any failure of the reference is reported.
          failure = f"fails ({type(e).__name__})"
          if args.patch_reference and not patched and severity == 1:
            patched = True
            with warnings.catch_warnings(), reference_compat():
              warnings.simplefilter("ignore")
              run_theirs()
              calls, seconds = time_calls(run_theirs, args.repeats, args.budget)
            theirs[0] += calls
            theirs[1] += seconds
          else:
            theirs = failure
    ours_rate = ours[0] / ours[1]
    row = {"ours_images_per_s": ours_rate, "ours_calls": ours[0]}
    if isinstance(theirs, list):
      theirs_rate = theirs[0] / theirs[1]
      row.update(reference_images_per_s=theirs_rate, reference_calls=theirs[0])
      ref_text, ratio = f"{theirs_rate:16.1f}", f"{ours_rate / theirs_rate:8.2f}x"
      if patched:
        row["reference"] = f"{failure}, timed patched"
        ref_text = f"{theirs_rate:8.1f} patched"
    else:
      row["reference"] = theirs
      ref_text, ratio = f"{theirs:>16s}", f"{'':>9s}"
    results[name] = row
    print(f"{name:18s} {ours_rate:11.1f} {ref_text} {ratio}", flush=True)

  print(json.dumps({"cpu": cpu, "pinned_core": core, "size": args.size,
                    "repeats": args.repeats, "budget_s": args.budget,
                    "numpy": np.__version__, "opencv": cv2.__version__,
                    "load_avg_1m": os.getloadavg()[0], "results": results}))


if __name__ == "__main__":
  main()
