"""Where a step's leaves live, for the kernel: on one device, or per shard of a mesh.

The derived kernel (`_derived`) is elementwise, so on a mesh it runs once per shard inside
``jax.shard_map``: a shard of a leaf's parameter, gradient and state is updated from the same
shards alone. `layout` says whether (and on which mesh) that can be done; `spec` and `reshard`
place an operand in the partition the kernel runs in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__: list[str] = []  # internal: used by the floors above, not public

# jax < 0.6 has no mesh axis types, and its traced values carry no sharding.
AxisType: Any = getattr(jax.sharding, "AxisType", None)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the leaves live: ``mesh is None`` on one device (or already inside ``shard_map``)."""

    mesh: Any = None
    concrete: bool = True


def _full_spec(spec: Any, ndim: int) -> P:
    entries = list(spec) + [None] * (ndim - len(spec))
    return P(*(None if e is None else e for e in entries[:ndim]))


def _sharding_of(x: Any) -> tuple[Any, bool]:
    """``(sharding, concrete)``: a concrete array's own sharding, or a traced one's type."""
    if isinstance(x, jax.core.Tracer):
        if AxisType is None or not hasattr(jax, "typeof"):
            return None, False  # an older jax: a traced value carries no sharding
        return jax.typeof(x).sharding, False
    return getattr(x, "sharding", None), True


def layout(leaves: list[Any]) -> Layout | str:
    """How the kernel can reach ``leaves``: a `Layout`, or the reason it cannot (a sentence).

    On one device, or inside ``shard_map`` (every mesh axis manual), the kernel runs as it is. On a
    mesh whose shardings are visible (concrete arrays, or ``jit`` on a mesh of ``Explicit`` axes),
    it runs per shard inside ``jax.shard_map``. Under ``jit`` on an ``Auto`` mesh a traced leaf's
    sharding is not known until XLA partitions the program, and XLA would gather a custom call's
    operands onto every device: the jnp path takes that step, and keeps the state sharded.
    """
    meshes = set()
    concrete = True
    for x in leaves:
        sharding, is_concrete = _sharding_of(x)
        concrete = concrete and is_concrete
        if sharding is None:
            continue
        if is_concrete:
            if len(sharding.device_set) == 1:
                continue
            if not isinstance(sharding, NamedSharding):
                return (
                    f"a leaf is placed by a {type(sharding).__name__}; the fused kernel runs per "
                    "shard only for leaves placed by a `NamedSharding`"
                )
            meshes.add(sharding.mesh)
            continue
        mesh = sharding.mesh
        if mesh.empty or mesh.size == 1:
            continue
        types = set(mesh.axis_types)
        if types == {AxisType.Manual}:
            continue  # inside shard_map: the leaves are the shards
        if types != {AxisType.Explicit}:
            return (
                "under `jit` on a mesh with `Auto` (or partly manual) axes the leaves' shardings "
                "are not visible, and XLA would gather the kernel's operands onto every device; "
                "place the leaves on a mesh of `Explicit` axes (`jax.make_mesh`'s default), or "
                "call `step` inside `jax.shard_map`"
            )
        meshes.add(mesh)
    if len(meshes) > 1:
        return "the leaves are placed on different meshes; put them on one mesh"
    if not meshes:
        return Layout()
    if not hasattr(jax, "shard_map"):
        return f"jax {jax.__version__} has no `jax.shard_map` to run the kernel per shard"
    mesh = meshes.pop()
    if concrete != isinstance(mesh, jax.sharding.Mesh):
        return "the leaves mix traced and concrete arrays on a mesh"
    return Layout(mesh, concrete)


def spec(x: Any) -> P:
    """``x``'s partition over its mesh, one entry per dimension (replicated off a mesh)."""
    sharding, _ = _sharding_of(x)
    if isinstance(sharding, NamedSharding):
        return _full_spec(sharding.spec, jnp.ndim(x))
    return P(*([None] * jnp.ndim(x)))  # on one device of the mesh's program: replicated


def reshard(x: Any, where: Layout, partition: P) -> Any:
    """``x`` with the ``partition`` on the layout's mesh (itself if it has it already)."""
    sharding = NamedSharding(where.mesh, partition)
    if not where.concrete:
        return x if spec(x) == partition else jax.sharding.reshard(x, sharding)
    own = getattr(x, "sharding", None)
    if isinstance(own, NamedSharding) and own.mesh == where.mesh and spec(x) == partition:
        return x
    return jax.device_put(x, sharding)
