"""Many devices through JAX's own SPMD machinery: state shardings that follow the parameters,
ZeRO-1, and parameters held as flat buffers.
"""

from ._flat import FlatLayout as FlatLayout
from ._flat import FlatParams as FlatParams
from ._flat import flatten as flatten
from ._sharding import bytes_per_device as bytes_per_device
from ._sharding import init_sharded as init_sharded
from ._sharding import state_shardings as state_shardings
from ._sharding import zero1_shardings as zero1_shardings

__all__ = [
    "FlatLayout",
    "FlatParams",
    "bytes_per_device",
    "flatten",
    "init_sharded",
    "state_shardings",
    "zero1_shardings",
]
