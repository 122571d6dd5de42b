"""Starting real multi-process runs of ``distributed_worker.py`` on 127.0.0.1.

Processes talk through ``jax.distributed`` (a coordinator on a free local port)
and XLA:CPU's gloo collectives: the same code paths as hosts of a pod, on CPU
devices. Also what every process of the tests shares: XLA:CPU's quickest
compilation (:func:`xla_flags`) and, across the processes of one run, the
persistent compilation cache (:func:`share_compilation_cache`).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")

#: XLA:CPU's quickest compilation, in the test runner (tests/conftest.py) and in every
#: process a test starts: LLVM at -O0, and the elemental IR emitters for fusions instead
#: of the MLIR fusion emitters, which take several times longer on the tests' small
#: programs. The tiny programs compile for much longer than they run: only faster
#: machine code is given up; the operations are the same, rounded in float32 either way
#: (the tests' tolerances are those of float rounding, not of one emitter's code).
COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int) -> str:
  """``XLA_FLAGS`` of a test process of ``devices`` CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}"


def share_compilation_cache() -> None:
  """Lets the processes of one run read each other's entries of the persistent
  compilation cache (conftest.py's), as one process of many devices reads its own.

  JAX keys an entry by, among others, the fingerprint of XLA:CPU's topology, which
  differs from process to process: process 1 would then find nothing that process 0
  wrote (only process 0 writes) and compile every program again at each restart of
  a test's run. Here the devices of the run (global ids, their processes) stand for
  that fingerprint: the same in every process, and the cache lives in this host's
  temporary folder, keyed as well by the jaxlib version and the XLA flags. Call it
  after ``jax.distributed.initialize`` (it starts no backend: the package's XLA flags
  may still be added); a one-process run keeps JAX's own key.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import cache_key  # pylint: disable=g-import-not-at-top
  if not jax.distributed.is_initialized():
    return

  def hash_devices(hash_obj, devices) -> None:
    hash_obj.update(repr([(d.platform, d.device_kind, d.id, d.process_index)
                          for d in devices.flat]).encode())

  cache_key._hash_accelerator_config = hash_devices  # pylint: disable=protected-access


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(plan, processes: int, devices: int, log_dir: str, tag: str):
  """Starts ``processes`` workers of ``devices`` CPU devices each; returns the Popens."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices))
  port, procs = free_port(), []
  for p in range(processes):
    args = [sys.executable, WORKER, f"--plan={json.dumps(plan)}"]
    if processes > 1:
      args += [f"--coordinator=127.0.0.1:{port}", f"--num_processes={processes}",
               f"--process_id={p}"]
    log = open(os.path.join(log_dir, f"{tag}.p{p}.log"), "w")
    procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env))
  return procs


def wait(procs, timeout: float = 480.0) -> list[int]:
  """Every process's exit status (killing all of them past ``timeout``).

  The timeout catches a hang, not slowness: a plan that takes about a minute on a quiet
  2-core host takes several on a slower or busy one, and must still pass there."""
  deadline = time.monotonic() + timeout
  codes = []
  for p in procs:
    try:
      codes.append(p.wait(max(deadline - time.monotonic(), 0.1)))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  return codes


def run(plan, processes: int, devices: int, log_dir: str, tag: str) -> None:
  """Runs a plan to the end; fails with the workers' logs if any process fails."""
  codes = wait(start(plan, processes, devices, log_dir, tag))
  if any(codes):
    raise AssertionError(f"{tag}: exit statuses {codes}\n" + logs(log_dir, tag))


def logs(log_dir: str, tag: str) -> str:
  out = []
  for name in sorted(os.listdir(log_dir)):
    if name.startswith(tag + ".p"):
      with open(os.path.join(log_dir, name)) as f:
        out.append(f"--- {name}\n" + f.read()[-3000:])
  return "\n".join(out)


def wait_for(path: str, procs, timeout: float = 480.0) -> None:
  """Waits until ``path`` exists (failing if the workers end first). The timeout
  catches a hang, as :func:`wait`'s: a busy or slower host may take minutes."""
  deadline = time.monotonic() + timeout
  while not os.path.exists(path):
    if all(p.poll() is not None for p in procs) or time.monotonic() > deadline:
      raise AssertionError(f"{path} never appeared")
    time.sleep(0.05)


def send(proc, sig: signal.Signals) -> None:
  proc.send_signal(sig)
