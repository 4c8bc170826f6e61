"""Flat parameters: a tree of many leaves held in a few contiguous buffers (docs/design.md, 9).

Every array that crosses a ``jax.jit`` boundary costs a few microseconds of JAX's runtime (an
argument's handle in, a result's buffer out), whatever its size. A step over a 2000-leaf model
moves 6000 arrays (params, and two moments per parameter) and spends more time there than
updating the numbers. `flatten` packs the leaves into one 1-D buffer per dtype (and per group),
so an elementwise optimizer keeps two moments per buffer, and a step moves a handful of arrays.

``FlatParams`` is a pytree whose leaves are those buffers; ``unflatten()`` gives the original
tree back, as slices of them (inside ``jit``, XLA fuses the slices into their consumers, and the
gradient of a loss taken with respect to a ``FlatParams`` is a ``FlatParams``: the slices'
transpose is one concatenation per buffer).

Masks and labels (`add_decayed_weights`, `masked`, `partition`, the ``mask=`` of `adamw`) may
still be written for the original tree: `resolve` evaluates them on ``unflatten()`` and gives each
buffer the value its leaves share, or raises when a buffer's leaves disagree (flatten with
``group=`` the same mask). Transformations that work on each parameter's shape (trust ratios,
factored or blockwise statistics, orthogonalisation) refuse a ``FlatParams`` (`check_not_flat`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FlatLayout", "FlatParams", "flatten"]


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one leaf lives: its buffer's key, its offset there, its shape and dtype."""

    key: str
    offset: int
    shape: tuple[int, ...]
    dtype: Any

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True, eq=False)
class FlatLayout:
    """The static half of a `FlatParams`: the original tree's structure and each leaf's slot.

    It is a pytree node's auxiliary data, hashed and compared on every ``jit`` call: the hash is
    computed once, and equality starts from identity.
    """

    treedef: Any
    slots: tuple[Any, ...]  # one `_Slot` per leaf of the original tree, in its leaf order
    keys: tuple[str, ...]  # the buffers' keys, in order of first appearance

    def __post_init__(self):
        object.__setattr__(self, "_hash", hash((self.treedef, self.slots, self.keys)))
        members: dict[str, list[int]] = {key: [] for key in self.keys}
        for i, slot in enumerate(self.slots):
            members[slot.key].append(i)
        object.__setattr__(self, "_members", members)

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, FlatLayout) or hash(self) != hash(other):
            return False
        return (self.treedef, self.slots, self.keys) == (other.treedef, other.slots, other.keys)

    def members(self, key: str) -> list[int]:
        """The positions (in the original tree's leaf order) of the leaves held by ``key``."""
        return self._members[key]  # type: ignore[attr-defined]


@jax.tree_util.register_pytree_with_keys_class
class FlatParams:
    """A tree of parameters held as one 1-D buffer per dtype (and per group): see `flatten`.

    Its pytree leaves are the buffers, keyed by name (``"float32"``, or ``"<group>/float32"``
    with ``group=``); ``buffers`` maps the names to them. ``unflatten()`` gives the original tree.
    A `FlatParams` of other values (e.g. a mask of booleans, one per buffer) has the same structure.
    """

    flat_params = True  # what adamx.core recognises it by (`adamx.core._trees.is_flat`)

    def __init__(self, buffers: dict[str, Any], layout: FlatLayout):
        self.buffers = buffers
        self.layout = layout

    def tree_flatten_with_keys(self):
        keys = self.layout.keys
        return [(jax.tree_util.DictKey(k), self.buffers[k]) for k in keys], self.layout

    def tree_flatten(self):
        return [self.buffers[k] for k in self.layout.keys], self.layout

    @classmethod
    def tree_unflatten(cls, layout: FlatLayout, children: Any) -> FlatParams:
        return cls(dict(zip(layout.keys, children, strict=True)), layout)

    def unflatten(self) -> Any:
        """The original tree, each leaf a slice of its buffer reshaped to its shape."""
        leaves: list[Any] = [None] * len(self.layout.slots)
        for key in self.layout.keys:
            members = self.layout.members(key)
            sizes = [self.layout.slots[i].size for i in members]
            for i, piece in zip(
                members, _split(jnp.asarray(self.buffers[key]), sizes), strict=True
            ):
                leaves[i] = piece.reshape(self.layout.slots[i].shape)
        return self.layout.treedef.unflatten(leaves)

    def resolve(self, spec: Any) -> Any:
        """A mask or label ``spec`` for these buffers (`resolve_flat`)."""
        return resolve_flat(spec, self)

    def __repr__(self) -> str:
        entries = ", ".join(
            f"{k}: {getattr(self.buffers[k], 'shape', self.buffers[k])}" for k in self.layout.keys
        )
        return f"FlatParams({{{entries}}}, {len(self.layout.slots)} leaves)"


def _split(buffer: Any, sizes: list[int]) -> list[Any]:
    """``buffer`` cut into consecutive pieces of ``sizes``; its transpose is a concatenation.

    On CPU with the native library, one call copies every piece (`_native_split`): XLA:CPU
    compiles ``jax.lax.split`` into one kernel per piece, which on a 2000-leaf model made the
    forward pass compile 5x longer than the tree's (docs/performance.md).
    """
    if len(sizes) == 1:
        return [buffer]
    if _native_split_usable(buffer):
        return list(_native_split(buffer, tuple(sizes)))
    if hasattr(jax.lax, "split"):
        return list(jax.lax.split(buffer, sizes))
    offsets = np.cumsum([0, *sizes])  # jax < 0.4.36: slices (their transpose is pad and add)
    return [buffer[int(a) : int(b)] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def _native_split_usable(buffer: Any) -> bool:
    """Whether ``buffer`` may take `_native_split`: on CPU, with the library, and not sharded.

    The call has no sharding rule, so XLA would gather a sharded buffer onto every device for it.
    With one device there is nothing to gather; with more, only a concrete, fully replicated
    buffer is known to be safe (inside ``jit`` its sharding is not known yet: `jax.lax.split`).
    """
    from ..kernels import _native

    if jax.default_backend() != "cpu" or not _native.status()[0]:
        return False
    if jax.device_count() == 1:
        return True
    sharding = None if isinstance(buffer, jax.core.Tracer) else getattr(buffer, "sharding", None)
    return bool(getattr(sharding, "is_fully_replicated", False))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _native_split(buffer: Any, sizes: tuple[int, ...]) -> tuple[Any, ...]:
    """``jax.lax.split(buffer, sizes, axis=-1)`` as one call of the native library's copy."""
    from ..kernels import _native

    lead = tuple(buffer.shape[:-1])
    call = jax.ffi.ffi_call(
        _native.SPLIT_TARGET,
        [jax.ShapeDtypeStruct((*lead, s), buffer.dtype) for s in sizes],
        vmap_method="broadcast_all",  # the kernel splits every row of a batched buffer
    )
    return tuple(call(buffer, total=np.int64(sum(sizes))))


@_native_split.defjvp
def _native_split_jvp(sizes, primals, tangents):
    # The tangent is split by `jax.lax.split`, which is linear and transposes to one
    # concatenation: the gradient is XLA's, and forward mode works too.
    (buffer,), (tangent,) = primals, tangents
    if tangent.dtype == jax.dtypes.float0:  # integer buffers
        pieces = [np.zeros((*tangent.shape[:-1], s), tangent.dtype) for s in sizes]
    else:
        pieces = list(jax.lax.split(tangent, sizes, axis=-1))
    return _native_split(buffer, sizes), tuple(pieces)


def flatten(params: Any, group: Any = None) -> FlatParams:
    """``params`` packed into one 1-D buffer per dtype (and per group label): a `FlatParams`.

    Use it for models of many small leaves, whose steps are dominated by JAX's per-array costs
    rather than by the arithmetic (docs/performance.md): keep the params flat across steps, build
    the optimizer's state from them (``tx.init(flat)``), and call the model on
    ``flat.unflatten()`` inside the jitted step. An elementwise optimizer then keeps two moment
    buffers instead of two per leaf, and `adamx.step` runs one fused kernel call per buffer.

    Args:
      params: a tree of arrays.
      group: ``None`` (one buffer per dtype), or labels for the leaves: a tree of strings, ints or
        booleans with the structure of ``params`` (or a prefix of it), or a function
        ``params -> labels``. Leaves with the same label and dtype share a buffer. Pass the
        weight-decay mask here (e.g. ``lambda p: jax.tree.map(lambda x: x.ndim > 1, p)``) so the
        decayed and undecayed leaves get buffers of their own.

    Returns:
      The `FlatParams`. Its buffers are new arrays: ``params`` is left as it is.

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
      >>> flat = adamx.flatten(params, group=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
      >>> flat
      FlatParams({False/float32: (3,), True/float32: (6,)}, 2 leaves)
      >>> opt = adamx.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
      >>> state = opt.init(flat)
      >>> loss = lambda f: jnp.sum(f.unflatten()["w"] ** 2)
      >>> flat, state = adamx.step(opt, jax.grad(loss)(flat), state, flat)
      >>> flat.unflatten()["w"].shape
      (2, 3)
    """
    if isinstance(params, FlatParams):
        raise TypeError(
            "`flatten` expected a tree of arrays, got a `FlatParams` (already flat); pass it as "
            "it is, or flatten `params.unflatten()` again to change its groups."
        )
    paths_leaves, treedef_ = jax.tree_util.tree_flatten_with_path(params)
    treedef: Any = treedef_
    labels = [None] * len(paths_leaves)
    if group is not None:
        from ..core._trees import resolve

        labels = _per_leaf(
            resolve(group, params),
            treedef,
            "`flatten` expected `group` to be labels with the structure of the params (or a "
            "prefix of it)",
            "Build it from the params, e.g. `jax.tree.map(lambda p: p.ndim > 1, params)`.",
        )
    slots: list[_Slot] = []
    members: dict[str, list[Any]] = {}
    fill: dict[str, int] = {}
    for (path, leaf), label in zip(paths_leaves, labels, strict=True):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(
                f"`flatten` expected a tree of arrays, got a {type(leaf).__name__} at "
                f"{jax.tree_util.keystr(path)}; convert it with `jnp.asarray` first."
            )
        if label is not None and not isinstance(label, (str, int, bool, np.bool_, np.integer)):
            raise TypeError(
                f"`flatten` expected a group label (a string, int or bool) for each leaf, got "
                f"{label!r} at {jax.tree_util.keystr(path)}; labels must be static."
            )
        dtype = np.dtype(leaf.dtype)
        key = dtype.name if label is None else f"{_label(label)}/{dtype.name}"
        slot = _Slot(key, fill.get(key, 0), tuple(int(d) for d in leaf.shape), dtype)
        slots.append(slot)
        fill[key] = slot.offset + slot.size
        members.setdefault(key, []).append(jnp.reshape(leaf, (-1,)))
    layout = FlatLayout(treedef, tuple(slots), tuple(members))
    buffers = {
        key: (jnp.concatenate(parts) if len(parts) > 1 else jnp.array(parts[0], copy=True))
        for key, parts in members.items()
    }
    return FlatParams(buffers, layout)


def _label(label: Any) -> str:
    return str(bool(label)) if isinstance(label, (bool, np.bool_)) else str(label)


def resolve_flat(spec: Any, flat: FlatParams) -> Any:
    """A mask or label ``spec`` for ``flat``: a `FlatParams` of one value per buffer.

    ``spec`` laid out like ``flat`` is returned as it is. Otherwise it describes the original tree
    (a function of it, or a tree with its structure or a prefix): each buffer gets the value its
    leaves share, and a buffer whose leaves disagree is an error.
    """
    if spec is None:
        return None
    layout = flat.layout
    if _laid_out_like(spec, flat):
        return spec
    if callable(spec):
        spec = _on_tree(spec, flat)
    per_leaf = _per_leaf(
        spec,
        layout.treedef,
        "A mask or label tree for `FlatParams` must have the structure of the flattened params "
        "(or a prefix of it), or one entry per buffer",
        "",
    )
    values: dict[str, Any] = {}
    for key in layout.keys:
        found = {_hashable(per_leaf[i]) for i in layout.members(key)}
        if len(found) != 1:
            raise ValueError(
                f"The mask or labels give the leaves of the flat buffer {key!r} different values "
                f"({sorted(map(str, found))}); a buffer takes one. Flatten with the same mask as "
                "groups: `adamx.flatten(params, group=mask)`."
            )
        values[key] = per_leaf[layout.members(key)[0]]
    return FlatParams(values, layout)


def _per_leaf(spec: Any, treedef: Any, expected: str, fix: str) -> list[Any]:
    """``spec`` (a tree with ``treedef``'s structure, or a prefix of it) as one value per leaf."""
    template = treedef.unflatten(list(range(treedef.num_leaves)))
    try:
        return treedef.flatten_up_to(
            jax.tree.map(lambda value, sub: jax.tree.map(lambda _: value, sub), spec, template)
        )
    except (ValueError, TypeError) as cause:
        raise ValueError(
            f"{expected}; got {jax.tree.structure(spec)} for params with structure {treedef} "
            f"({' '.join(str(cause).split())}). {fix}".rstrip()
        ) from None


def _on_tree(function: Any, flat: FlatParams) -> Any:
    """``function`` (a mask or labels of the original tree) applied to that tree, traced only.

    Applied to the buffers it would answer wrongly (``x.ndim > 1`` is False for every 1-D buffer).
    The tree it sees is ``unflatten()`` under ``jax.eval_shape``: abstract arrays with the leaves'
    shapes and dtypes, so nothing is sliced or copied, eagerly or inside a jitted step.
    """
    found: list[Any] = []

    def probe(buffers: FlatParams) -> jax.Array:
        found.append(function(buffers.unflatten()))
        return jnp.zeros(())

    jax.eval_shape(probe, flat)
    return found[0]


def _hashable(value: Any) -> Any:
    if isinstance(value, (np.bool_, np.generic)):
        return value.item()
    if isinstance(value, (jax.Array, np.ndarray)) and np.shape(value) == ():
        if isinstance(value, jax.core.Tracer):
            return id(value)
        return np.asarray(value).item()
    return value


def _laid_out_like(spec: Any, flat: FlatParams) -> bool:
    return isinstance(spec, FlatParams) and spec.layout == flat.layout
