"""Where arrays live: the devices' one 'data' axis, and host arrays put onto it.

As big_vision's sharding.py: the training split, each batch of indices, the
evaluation splits and the training state reach the devices here and nowhere
else. XLA's sharding propagation does the rest.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def data_mesh() -> jax.sharding.Mesh:
  """All devices on one 'data' axis."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def to_devices(host_array: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """An array that every process holds alike on the host, onto the devices of `sharding`.

  Each process fills its own devices. jax.device_put would first compare the
  value across processes, by a collective per array.
  """
  host_array = np.asarray(host_array)
  return jax.make_array_from_callback(host_array.shape, sharding, lambda i: host_array[i])


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """`tree` whole on every device of `mesh`, through host memory: a device_put of arrays on one
  process's devices onto several processes' devices made broken arrays (jax 0.10.2)."""
  return jax.tree.map(lambda a: to_devices(a, NamedSharding(mesh, P())), jax.device_get(tree))
