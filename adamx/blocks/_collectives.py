"""Collectives over a mesh axis (inside shard_map or pmap), and None for none: what a per-layer or global statistic sums or maxes over."""

from __future__ import annotations

import jax

__all__: list[str] = []  # internal: used by the floors above, not public

AxisName = str | tuple[str, ...] | None


def psum(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """``x`` summed over the shards of ``axis_name`` inside ``shard_map`` (itself without one)."""
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def pmax(x: jax.Array, axis_name: AxisName) -> jax.Array:
    return x if axis_name is None else jax.lax.pmax(x, axis_name)


def axis_size(axis_name: AxisName) -> int:
    """The number of shards over ``axis_name`` inside ``shard_map`` (1 without one)."""
    if axis_name is None:
        return 1
    if hasattr(jax.lax, "axis_size"):
        return jax.lax.axis_size(axis_name)
    return jax.lax.psum(1, axis_name)  # jax < 0.6: a Python int, summed at trace time
