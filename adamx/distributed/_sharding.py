"""Sharded optimizer state on JAX's own machinery: the state's shardings derived from the params'.

Nothing here moves data by itself: the functions compute ``jax.sharding.NamedSharding`` trees that
``jax.jit(..., out_shardings=...)``, ``jax.device_put`` and ``jax.shard_map`` then act on.

The rule that matches a state leaf to its parameter (docs/sharding.md): ``init`` maps over the
params leaf by leaf (docs/design.md, section 1), so every state leaf that belongs to a parameter
sits under a key path that *ends with* that parameter's key path (``[0][0].ema['dense']['w']``
belongs to ``['dense']['w']``; the longest such suffix wins). Then:

* a leaf with its parameter's shape takes the parameter's sharding (moments, traces, maxima);
* a leaf with its parameter's shape less one axis (Adafactor's row and column statistics) takes
  the parameter's partition spec less that axis, where the removed axis is unambiguous or every
  candidate gives the same spec;
* the codes and scales of a quantised moment follow the parameter's layer axis and its first
  axis after the layers, where their block layout keeps each device's elements together
  (`layout_specs`);
* every other leaf (step counts, PRNG keys, scalars, SOAP's ``n x n`` statistics, Adam-mini's block
  means) is replicated over the mesh.

`zero1_shardings` then adds a data axis to each non-scalar state leaf (ZeRO stage 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from ..core._base import GradientTransformation, OptState, Params
from ..core._trees import is_explicit, is_stored_moment
from ..storage._quantize import QuantizedBuffer, _layer_count, followed_spec, layout_specs

__all__ = ["bytes_per_device", "init_sharded", "state_shardings", "zero1_shardings"]

AxisNames = str | Sequence[str]


def _sharding_of(leaf: Any) -> Any:
    """The sharding a params leaf carries: a ``jax.Array``'s, a ``ShapeDtypeStruct``'s or ``None``."""
    return getattr(leaf, "sharding", None)


def _find_mesh(params: Any, mesh: Any) -> Any:
    if mesh is not None:
        return mesh
    for leaf in jax.tree.leaves(params):
        sharding = _sharding_of(leaf)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def _full_spec(spec: PartitionSpec, ndim: int) -> list[Any]:
    """``spec`` as a list of ``ndim`` entries (a spec may be shorter than the rank)."""
    entries = list(spec)
    if len(entries) > ndim:
        raise ValueError(
            f"The partition spec {spec} has {len(entries)} entries for a leaf of rank {ndim}; "
            "a spec names at most one entry per axis."
        )
    return entries + [None] * (ndim - len(entries))


def _one_axis_less(
    shape: tuple[int, ...], param_shape: tuple[int, ...], spec: list[Any]
) -> PartitionSpec | None:
    """The parameter's spec less the axis whose removal turns ``param_shape`` into ``shape``."""
    if len(shape) + 1 != len(param_shape):
        return None
    candidates = {
        tuple(spec[:k] + spec[k + 1 :])
        for k in range(len(param_shape))
        if param_shape[:k] + param_shape[k + 1 :] == shape
    }
    if len(candidates) != 1:
        return None  # no match, or a square leaf whose two readings shard differently
    return PartitionSpec(*candidates.pop())


def _replicated(mesh: Mesh | None, fallback: Any) -> Any:
    if mesh is not None:
        return NamedSharding(mesh, PartitionSpec())
    if isinstance(fallback, SingleDeviceSharding):
        return fallback
    raise ValueError(
        "`state_shardings` found no mesh: the params carry no `NamedSharding`. Place the params "
        "with `jax.device_put(params, NamedSharding(mesh, spec))`, give `ShapeDtypeStruct`s a "
        "`sharding=`, or pass `mesh=`."
    )


def state_shardings(tx: GradientTransformation, params: Params, *, mesh: Mesh | None = None) -> Any:
    """The sharding of every leaf of ``tx.init(params)``, derived from the params' shardings.

    A state leaf shaped like its parameter takes the parameter's sharding; a leaf shaped like its
    parameter less one axis (Adafactor's factored statistics) takes the parameter's spec less that
    axis; every other leaf (counts, scalars, keys, SOAP's statistics) is replicated over the mesh.
    The state is only traced (``jax.eval_shape``), never computed. See docs/sharding.md for the
    rule that matches a state leaf to its parameter.

    Args:
      tx: the optimizer.
      params: the parameters, as ``jax.Array`` leaves placed on their devices or as
        ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` leaves (nothing is allocated).
      mesh: the mesh to replicate unmatched leaves over; by default the mesh of the params'
        first ``jax.sharding.NamedSharding``.

    Returns:
      A tree like the state with a ``jax.sharding.Sharding`` at every leaf: pass it as
      ``out_shardings`` of a jitted ``init`` or ``update`` (`init_sharded` does the former).

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("model",))
      >>> params = {"w": jax.device_put(jnp.ones((4, 2)), NamedSharding(mesh, P(None, "model")))}
      >>> shardings = adamx.state_shardings(adamx.adam(1e-3), params)
      >>> [tuple(s.spec) for s in jax.tree.leaves(shardings)]  # mu, count, nu, count
      [(None, 'model'), (), (None, 'model'), ()]
    """
    mesh = _find_mesh(params, mesh)
    by_path: dict[tuple[Any, ...], Any] = {}
    fallback = None
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        sharding = _sharding_of(leaf)
        if sharding is None:
            raise ValueError(
                f"The parameter `{jax.tree_util.keystr(path) or '<root>'}` has no sharding "
                f"(got a {type(leaf).__name__}); pass arrays placed with `jax.device_put` or "
                "`jax.ShapeDtypeStruct(shape, dtype, sharding=...)` leaves."
            )
        by_path[tuple(path)] = (tuple(np.shape(leaf)), sharding)
        fallback = fallback or sharding
    shapes = jax.eval_shape(
        tx.init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    )
    replicated = _replicated(mesh, fallback) if by_path or mesh is not None else None
    # A moment in a stored form (bfloat16 with its counter, codes with scales) belongs to its
    # parameter as a whole: match the stored node's path, then its leaves by shape as usual.
    stored = {
        tuple(path)
        for path, node in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=is_stored_moment)[0]
        if is_stored_moment(node)
    }

    quantized = {
        tuple(path): node
        for path, node in jax.tree_util.tree_flatten_with_path(shapes, is_leaf=is_stored_moment)[0]
        if isinstance(node, QuantizedBuffer)
    }

    def one(path: tuple[Any, ...], leaf: Any) -> Any:
        shape = tuple(leaf.shape)
        full = path
        path = next((path[:k] for k in range(len(path), 0, -1) if path[:k] in stored), path)
        for start in range(len(path) + 1):  # the longest suffix first
            owner = by_path.get(tuple(path[start:]))
            if owner is None:
                continue
            param_shape, sharding = owner
            if shape == param_shape:
                return sharding
            if path in quantized and isinstance(sharding, NamedSharding):
                return _quantized_sharding(quantized[path], full[len(path) :], sharding)
            if isinstance(sharding, NamedSharding):
                spec = _one_axis_less(
                    shape, param_shape, _full_spec(sharding.spec, len(param_shape))
                )
                if spec is not None:
                    return NamedSharding(sharding.mesh, spec)
            break
        return replicated

    return jax.tree_util.tree_map_with_path(one, shapes)


def _quantized_sharding(node: QuantizedBuffer, rest: tuple[Any, ...], sharding: Any) -> Any:
    """The sharding of the codes or a scale (``rest``: its path inside ``node``) of a quantised
    moment whose parameter has ``sharding``: `layout_specs`' rule (docs/sharding.md)."""
    entries = _full_spec(sharding.spec, len(node.shape))
    pair = isinstance(node.scales, tuple)
    scales = tuple(tuple(x.shape) for x in node.scales) if pair else tuple(node.scales.shape)

    def size(entry: Any) -> int:
        return _axis_size(sharding.mesh, _entry_names(entry))

    codes_spec, scales_spec = layout_specs(
        node.shape, entries, tuple(node.codes.shape), scales, size
    )
    name = getattr(rest[0], "name", None)
    spec = codes_spec if name == "codes" else scales_spec[rest[1].idx] if pair else scales_spec
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def _axis_size(mesh: Any, axis: tuple[str, ...]) -> int:
    missing = [name for name in axis if name not in mesh.shape]
    if missing:
        raise ValueError(
            f"The mesh has axes {tuple(mesh.shape)}, not {missing}; pass the name of the mesh axis "
            "the data is split over (the batch axis), e.g. `axis='data'`."
        )
    return math.prod(mesh.shape[name] for name in axis)


def _entry_names(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def zero1_shardings(
    tx: GradientTransformation,
    params: Params,
    axis: AxisNames = "data",
    *,
    mesh: Mesh | None = None,
) -> Any:
    """`state_shardings` with each state leaf also split over the data axis ``axis`` (ZeRO-1).

    The parameters stay as they are (replicated over ``axis``, or model-sharded over other mesh
    axes); every non-scalar state leaf is split over ``axis`` too, so the state's memory per
    device falls by about the size of ``axis``. The rule, leaf by leaf:

    * the leaf's **largest axis that no mesh axis splits yet and whose length divides** by the
      size of ``axis`` is split over ``axis`` (ties: the earlier axis). Axes that model
      parallelism already splits are left alone, so the update's operands (a gradient split over
      ``model``, a moment split over ``model`` and ``data``) stay compatible under an
      ``Explicit`` mesh, where ``("model", "data")`` against ``"model"`` on one axis is an error;
    * a leaf with no such axis (odd lengths, scalars, step counts) keeps its sharding, so it is
      **replicated** over ``axis``: adamx never pads, because a padded moment would no longer have
      its parameter's shape and ``update`` maps moments against gradients leaf by leaf;
    * a leaf already split over ``axis`` is left as it is.

    Under ``jax.jit`` with these as the state's ``in_shardings``/``out_shardings`` and the params'
    own shardings for the params, XLA computes each moment's update on its shard and all-gathers
    the new params (the ZeRO-1 step); see docs/sharding.md.

    Args:
      tx: the optimizer.
      params: as for `state_shardings`.
      axis: the mesh axis (or a tuple of axes) the batch is split over.
      mesh: as for `state_shardings`.

    Returns:
      A tree like the state with a ``jax.sharding.NamedSharding`` at every leaf.
    """
    names = (axis,) if isinstance(axis, str) else tuple(axis)
    base = state_shardings(tx, params, mesh=mesh)
    shapes = jax.eval_shape(
        tx.init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    )

    def one(sharding: Any, leaf: Any) -> Any:
        if not isinstance(sharding, NamedSharding):
            raise ValueError(
                f"`zero1_shardings` needs params placed on a mesh (`NamedSharding`), got a state "
                f"leaf with {sharding}; place the params with `jax.device_put(params, "
                "NamedSharding(mesh, spec))` or pass `mesh=`."
            )
        size = _axis_size(sharding.mesh, names)
        spec = _full_spec(sharding.spec, len(leaf.shape))
        used = {name for entry in spec for name in _entry_names(entry)}
        if used & set(names):
            return sharding
        best = None
        for k, length in enumerate(leaf.shape):
            if (
                spec[k] is None
                and length % size == 0
                and (best is None or length > leaf.shape[best])
            ):
                best = k
        if best is None:
            return sharding
        spec[best] = names[0] if len(names) == 1 else names
        return NamedSharding(sharding.mesh, PartitionSpec(*spec))

    def node(sharding: Any, leaf: Any) -> Any:
        if isinstance(leaf, QuantizedBuffer):
            placed = _zero1_quantized(leaf, sharding, names)
            if placed is not None:
                return placed
            if is_explicit(sharding.codes):
                return sharding  # replicated over `names`: see `_zero1_quantized`
            return jax.tree.map(one, sharding, leaf)  # (XLA moves what the codecs need)
        return one(sharding, leaf)

    return jax.tree.map(node, base, shapes, is_leaf=lambda x: isinstance(x, QuantizedBuffer))


def _zero1_quantized(node: QuantizedBuffer, shardings: QuantizedBuffer, names: tuple) -> Any:
    """ZeRO-1 for a quantised moment: its codes and scales as a whole, laid out by `layout_specs`
    for its parameter split over ``names`` on its rows (its first axis after the layers), or else
    on its layers, where that axis is not split yet, so that a device's codes stay its own
    elements' (and on an ``Explicit`` mesh the bounded step runs it per shard). ``None`` where
    the layout cannot take the data axis (a block would straddle devices, or those axes are split
    over "model" already): then on an ``Auto`` mesh each leaf takes the rule of other leaves (the
    codes' largest free axis, a block's bytes, which XLA gathers where the codecs need it), and on
    an ``Explicit`` mesh they stay replicated over ``names`` (there a block's codes split from
    its scale were refused by the codecs: a `ShardingTypeError`)."""
    codes_sharding = shardings.codes
    if not isinstance(codes_sharding, NamedSharding):
        raise ValueError(
            f"`zero1_shardings` needs params placed on a mesh (`NamedSharding`), got a state "
            f"leaf with {codes_sharding}; place the params with `jax.device_put(params, "
            "NamedSharding(mesh, spec))` or pass `mesh=`."
        )
    mesh = codes_sharding.mesh
    codes_spec = _full_spec(codes_sharding.spec, len(node.codes.shape))
    used = {name for entry in codes_spec for name in _entry_names(entry)}
    if used & set(names):
        return shardings  # already split over the data axis
    shape = tuple(node.shape)
    pair = isinstance(node.scales, tuple)
    scales = tuple(tuple(x.shape) for x in node.scales) if pair else tuple(node.scales.shape)
    codes_shape = tuple(node.codes.shape)
    layers = _layer_count(shape, codes_shape[0])

    def size(entry: Any) -> int:
        return _axis_size(mesh, _entry_names(entry))

    # The parameter's split as the codes follow it, then the data axes added to its rows, or else
    # to its layers.
    entries = followed_spec(shape, codes_shape, codes_spec)
    for axis in ([layers] if layers < len(shape) else []) + ([0] if layers else []):
        if entries[axis] is not None:
            # Already split (over "model"): the moment it decodes would be split over ("model",
            # "data") where its gradient is over "model", which an `Explicit` mesh refuses to add.
            continue
        trial = list(entries)
        trial[axis] = names[0] if len(names) == 1 else names
        if shape[axis] % size(trial[axis]):
            continue
        new_codes, new_scales = layout_specs(shape, trial, codes_shape, scales, size)
        if set(names) <= {n for e in new_codes for n in _entry_names(e)}:
            split = [new_codes, *new_scales] if pair else [new_codes, new_scales]
            placed = [NamedSharding(mesh, PartitionSpec(*s)) for s in split]
            return QuantizedBuffer(placed[0], tuple(placed[1:]) if pair else placed[1], node.shape)
    return None


def init_sharded(tx: GradientTransformation, params: Params, shardings: Any = None) -> OptState:
    """``tx.init(params)`` under ``jax.jit``, each state leaf created directly on its devices.

    A jitted ``init`` without ``out_shardings`` returns the state replicated (a whole copy per
    device, or everything on one device, since zeros do not depend on the params); this one
    passes ``out_shardings``, so no device ever holds more than its shard.

    Args:
      tx: the optimizer.
      params: the parameters, placed on their devices.
      shardings: the state's shardings; ``None`` is ``state_shardings(tx, params)``.
        ``zero1_shardings(tx, params, "data")`` gives ZeRO-1.

    Returns:
      The state, every leaf a ``jax.Array`` with its sharding from ``shardings``.
    """
    if shardings is None:
        shardings = state_shardings(tx, params)
    # Some states copy the params (schedule-free's z, Prodigy's x0): init runs on them.
    return jax.jit(tx.init, out_shardings=shardings)(params)


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """The bytes each addressable device holds of ``tree``'s arrays, summed over its shards.

    Measured from ``addressable_shards``, so a replicated leaf counts on every device that holds
    a copy and a split leaf counts only its shard.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> sum(adamx.bytes_per_device({"m": jnp.zeros(4), "count": jnp.zeros((), jnp.int32)}).values())
      20
    """
    totals: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals
