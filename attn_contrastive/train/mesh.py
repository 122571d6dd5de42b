"""The device mesh and the shardings of global arrays.

One axis, ``data``: the global batch is split over every device of every
process, and parameters are replicated. Because the step is ``jax.jit`` over
these global arrays, BatchNorm statistics and NT-Xent negatives span the
whole global batch without any ``axis_name``.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ``data`` mesh over all devices (or the first ``num_devices``)."""
  devices = jax.devices()
  if num_devices is not None:
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  """Refuses a global batch that the devices and processes cannot split evenly.

  Training and every evaluator call it; ``main`` has already refused such a
  batch by its key (``config_checks.layout_problems``), so this guards calls
  from elsewhere (tests, a mesh of some of the devices).
  """
  n_dev, n_proc = mesh.size, jax.process_count()
  if global_batch % n_dev or global_batch % n_proc:
    raise ValueError(
        f"global batch {global_batch} is not divisible by the {n_dev} devices "
        f"and {n_proc} processes; set the batch (--config.input.global_batch_size "
        f"for training, --config.eval.batch_size for evaluation) to a multiple of "
        f"{np.lcm(n_dev, n_proc)}")


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """Assembles each host's slice of the batch into global ``jax.Array``s."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def rows_on_mesh(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """``x`` on the devices: its rows sharded when they divide evenly, else replicated
  (a retrieval gallery, searched shard by shard)."""
  if len(x) % mesh.size:
    return jax.device_put(np.asarray(x), replicated(mesh))
  return jax.device_put(np.asarray(x), data_sharding(mesh))


def process_rows(num_rows: int, mesh: Mesh) -> slice:
  """The rows of a ``[num_rows, ...]`` array sharded on ``data`` that this process's
  devices hold: one contiguous block (``num_rows`` a multiple of the mesh size)."""
  if num_rows % mesh.size:
    raise ValueError(f"{num_rows} rows do not split over {mesh.size} devices; pad them to "
                     f"a multiple ({-(-num_rows // mesh.size) * mesh.size})")
  index_map = data_sharding(mesh).addressable_devices_indices_map((num_rows,))
  starts = sorted(index[0].start or 0 for index in index_map.values())
  per_device = num_rows // mesh.size
  if starts != list(range(starts[0], starts[0] + per_device * len(starts), per_device)):
    raise ValueError("this process's devices are not consecutive on the mesh; build the "
                     "mesh from jax.devices() in order (make_mesh)")
  return slice(starts[0], starts[0] + per_device * len(starts))


def rows_from_processes(block: np.ndarray, num_rows: int, mesh: Mesh) -> jax.Array:
  """A ``[num_rows, ...]`` global array sharded on ``data`` from each process's own
  block (:func:`process_rows`), zero-padded where the block ends early: no process
  ever holds the whole array."""
  rows = process_rows(num_rows, mesh)
  block = np.asarray(block)
  pad = (rows.stop - rows.start) - len(block)
  if pad < 0:
    raise ValueError(f"a block of {len(block)} rows for {rows.stop - rows.start} places")
  block = np.concatenate([block, np.zeros((pad, *block.shape[1:]), block.dtype)])
  return jax.make_array_from_process_local_data(data_sharding(mesh), block,
                                                (num_rows, *block.shape[1:]))


def to_host_local(array: jax.Array, mesh: Mesh) -> np.ndarray:
  """This host's rows of a batch-sharded global array (the inverse of :func:`to_global`)."""
  return np.asarray(multihost_utils.global_array_to_host_local_array(array, mesh, P(DATA_AXIS)))
