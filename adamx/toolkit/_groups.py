"""Parameter groups: `masked`, `partition`, `freeze` and `set_to_zero`.

A wrapper around a moment block passes the chain's gradient tap (``gradient=``, docs/design.md
section 2) to it, masked exactly like the updates, and stays a `MomentTransformation` itself, so
``chain(clip, masked(ema(b1), m), masked(bias_correction(b1), m), masked(second_moment, m))``
equals ``chain(clip, masked(scale_by_adam(), m))``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core._base import EmptyState, GradientTransformation, MomentTransformation
from ..core._chain import _keyword_filter
from ..core._trees import resolve as _resolve
from ..core._trees import structure_mismatch

__all__ = [
    "MaskedNode",
    "MaskedState",
    "PartitionState",
    "freeze",
    "masked",
    "partition",
    "set_to_zero",
]


class MaskedNode(NamedTuple):
    """A placeholder for a masked-out leaf: a pytree node with no children (optax's ``MaskedNode``).

    ``jax.tree.map`` skips it, so an inner transformation never sees, and keeps no state for, the
    leaves it stands for.
    """


class MaskedState(NamedTuple):
    """The state of `masked`: the inner transformation's state over the selected leaves only."""

    inner_state: Any


class PartitionState(NamedTuple):
    """The state of `partition`: ``{label: MaskedState}``, one entry per transformation."""

    inner_states: Any


def _structure_error(who: str, what: str, tree: Any, params: Any, cause: Exception) -> ValueError:
    return ValueError(
        f"`{who}` expected {what} with the structure of the parameters (or a prefix of it), "
        f"got {what} with structure {jax.tree.structure(tree)} for parameters with structure "
        f"{jax.tree.structure(params)} ({' '.join(str(cause).split())}). Build it from the parameters, e.g. "
        f"`jax.tree.map(lambda p: p.ndim > 1, params)`, or pass a function `params -> {what}`."
    )


def _as_bool(leaf: Any, who: str) -> bool:
    """A mask leaf as a Python bool; it must be static (a bool, or a concrete boolean scalar)."""
    if isinstance(leaf, bool | np.bool_):
        return bool(leaf)
    if isinstance(leaf, jax.core.Tracer):
        raise TypeError(
            f"`{who}` needs a static mask, got a traced value {leaf!r}; build the mask from "
            "Python bools (e.g. from the parameters' shapes), outside `jax.jit`."
        )
    if np.shape(leaf) == () and np.asarray(leaf).dtype == np.bool_:
        return bool(leaf)
    raise TypeError(
        f"`{who}` expected a mask of booleans (True: transform this leaf), got the leaf {leaf!r} "
        f"of type {type(leaf).__name__}; use `True`/`False`, e.g. "
        "`jax.tree.map(lambda p: p.ndim > 1, params)`."
    )


def _children(node: Any) -> tuple[list[Any], Any]:
    """The children of a pytree node, one level down, and the node's one-level structure."""
    return jax.tree.flatten(node, is_leaf=lambda x: x is not node)


def _align(mask: Any, tree: Any) -> Any:
    """``mask`` with each subtree that sits where ``tree`` has a `MaskedNode` collapsed to False.

    An outer `masked` or `partition` may have replaced a whole subtree of the params by one
    `MaskedNode` while an inner mask still describes its leaves; those leaves are not there to
    select. Where the structures differ otherwise, ``mask`` is returned as is (and `_select`
    reports the mismatch).
    """
    if isinstance(tree, MaskedNode):
        return False
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(mask)):  # a leaf of the mask (or None)
        return mask
    mask_children, mask_node = _children(mask)
    tree_children, tree_node = _children(tree)
    if mask_node != tree_node:
        return mask
    return mask_node.unflatten(
        [_align(m, t) for m, t in zip(mask_children, tree_children, strict=True)]
    )


def _select(tree: Any, mask: Any, who: str, what: str = "a mask") -> Any:
    """``tree`` with every subtree whose mask leaf is False replaced by a `MaskedNode`."""
    mask = _align(mask, tree)
    try:
        return jax.tree.map(lambda m, x: x if _as_bool(m, who) else MaskedNode(), mask, tree)
    except (ValueError, KeyError) as cause:
        raise _structure_error(who, what, mask, tree, cause) from None


def _merge(mask: Any, new: Any, old: Any) -> Any:
    """Take ``new`` where ``mask`` is True and ``old`` elsewhere (``mask`` a prefix of both)."""
    return jax.tree.map(lambda m, n, o: n if bool(m) else o, mask, new, old)


def masked(
    inner: GradientTransformation,
    mask: Any,
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Apply ``inner`` only to the leaves where ``mask`` is True; pass the others through unchanged.

    Like ``optax.masked``: ``inner`` sees a tree in which every masked-out leaf is a `MaskedNode`,
    so it keeps no state for those leaves. The gradient tap ``gradient=`` that `adamx.chain` passes
    is masked the same way, and if ``inner`` is a `MomentTransformation` the result is one too, so
    masked moment blocks compose inside a chain exactly like unmasked ones.

    Args:
      inner: the transformation to apply to the selected leaves.
      mask: a pytree of booleans with the structure of the params (or a prefix of it), ``True``
        where ``inner`` applies; or a function ``params -> mask`` (called with the params, or with
        the updates when ``update`` gets no params). The mask must be static (Python bools).
      mask_compatible_extra_args: also mask the other keyword arguments whose tree structure is
        that of the updates (``gradient=`` is always masked).

    Returns:
      A transformation with state `MaskedState`; a `MomentTransformation` if ``inner`` is one.
    """
    keep = _keyword_filter(inner.update)

    def resolve(tree):
        return _resolve(mask, tree)

    def init_fn(params):
        if not jax.tree.leaves(params):
            # A leafless placeholder (optax.tree_map_params) or a fully masked-out subtree.
            return MaskedState(inner_state=inner.init(params))
        return MaskedState(inner_state=inner.init(_select(params, resolve(params), "masked")))

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        if not jax.tree.leaves(updates):
            # Nothing to select from: a subtree an outer `masked` or `partition` masked out.
            if gradient is not None:
                extra_args["gradient"] = gradient
            new_inner, inner_state = inner.update(
                updates, state.inner_state, params, **keep(extra_args)
            )
            return new_inner, MaskedState(inner_state=inner_state)
        chosen = _align(resolve(updates if params is None else params), updates)
        inner_updates = _select(updates, chosen, "masked")
        inner_params = None if params is None else _select(params, chosen, "masked")
        if mask_compatible_extra_args:
            structure = jax.tree.structure(updates)
            extra_args = {
                k: _select(v, chosen, "masked") if jax.tree.structure(v) == structure else v
                for k, v in extra_args.items()
            }
        if gradient is not None:
            extra_args["gradient"] = _select(gradient, chosen, "masked")
        new_inner, inner_state = inner.update(
            inner_updates, state.inner_state, inner_params, **keep(extra_args)
        )
        return _merge(chosen, new_inner, updates), MaskedState(inner_state=inner_state)

    kind = (
        MomentTransformation if isinstance(inner, MomentTransformation) else GradientTransformation
    )
    return kind(init_fn, update_fn)


def _listing(labels: Any) -> str:
    return "[" + ", ".join(sorted(map(repr, labels))) + "]"


def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any,
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Apply a different transformation to each group of parameters (torch's param groups).

    Like ``optax.partition``: each leaf carries a label, and ``transforms[label]`` transforms
    exactly the leaves with that label (it sees the others as `MaskedNode`, and keeps no state for
    them). The gradient tap ``gradient=`` is partitioned the same way; if every transformation is a
    `MomentTransformation`, so is the result.

    Args:
      transforms: ``{label: transformation}``.
      param_labels: a pytree of labels with the structure of the params (or a prefix of it), or a
        function ``params -> labels``. Every label must be a key of ``transforms``.
      mask_compatible_extra_args: as in `masked`.

    Returns:
      A transformation with state `PartitionState`: ``{label: MaskedState}``.
    """
    transforms = dict(transforms)
    if not transforms:
        raise ValueError(
            "`partition` expected at least one transformation, got an empty mapping; pass e.g. "
            "`{'decay': adamx.adamw(1e-3), 'no_decay': adamx.adam(1e-3)}`."
        )

    def resolve(tree):
        labels = _resolve(param_labels, tree)
        unknown = {label for label in jax.tree.leaves(labels) if label not in transforms}
        if unknown:
            raise ValueError(
                f"`partition` got parameter labels {_listing(unknown)} with no transformation; "
                f"`transforms` has the keys {_listing(transforms)}. "
                "Add a transformation for each label, or relabel those parameters."
            )
        return labels

    def group(labels, label, tree):
        chosen = jax.tree.map(lambda leaf: leaf == label, labels)
        # Check the labels against the tree here, so the error names `partition` and labels.
        _select(tree, chosen, "partition", "labels")
        return masked(
            transforms[label], chosen, mask_compatible_extra_args=mask_compatible_extra_args
        )

    def init_fn(params):
        if not jax.tree.leaves(params):
            return PartitionState({k: MaskedState(tx.init(params)) for k, tx in transforms.items()})
        labels = resolve(params)
        return PartitionState({k: group(labels, k, params).init(params) for k in transforms})

    def update_fn(updates, state, params=None, **extra_args):
        if not jax.tree.leaves(updates):
            new_states = {}
            for label, tx in transforms.items():
                updates, new_states[label] = masked(tx, True).update(
                    updates, state.inner_states[label], params, **extra_args
                )
            return updates, PartitionState(new_states)
        if params is not None and jax.tree.structure(updates) != jax.tree.structure(params):
            raise structure_mismatch(updates, params, "params")
        labels = resolve(updates if params is None else params)
        new_states = {}
        # The groups are disjoint: each one rewrites only its own leaves of `updates`.
        for label in transforms:
            updates, new_states[label] = group(labels, label, updates).update(
                updates, state.inner_states[label], params, **extra_args
            )
        return updates, PartitionState(new_states)

    moments = all(isinstance(tx, MomentTransformation) for tx in transforms.values())
    kind = MomentTransformation if moments else GradientTransformation
    return kind(init_fn, update_fn)


def set_to_zero() -> GradientTransformation:
    """Replace every update by zeros of its shape and dtype (optax's); keeps no state."""

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(jnp.zeros_like, updates), state

    return GradientTransformation(init_fn, update_fn)


_NO_MASK = object()


def freeze(optimizer: GradientTransformation, mask: Any = _NO_MASK) -> GradientTransformation:
    """Train with ``optimizer`` except where ``mask`` is True: those leaves get zero updates.

    It is ``partition({"train": optimizer, "frozen": set_to_zero()}, labels)`` (optax's
    ``selective_transform``), so ``optimizer`` allocates no state for frozen leaves and its weight
    decay never moves them. ``chain(zero_frozen, optimizer)`` would do neither: the optimizer would
    keep moments for every leaf, and decoupled weight decay would still shrink frozen weights.

    Args:
      optimizer: the optimizer for the trainable leaves, e.g. ``adamx.adamw(1e-3)``.
      mask: a pytree of booleans like the params (or a prefix), ``True`` for frozen leaves; or a
        function ``params -> mask``.

    Returns:
      A transformation with state `PartitionState` (keys ``"train"`` and ``"frozen"``).
    """
    if mask is _NO_MASK:
        raise TypeError(
            "`freeze` takes the optimizer and the mask of frozen leaves, got only one argument; "
            "write `adamx.freeze(adamx.adamw(1e-3), frozen_mask)` (not `chain(freeze(mask), opt)`, "
            "which would keep optimizer state for frozen leaves)."
        )
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            f"`freeze` expected an optimizer with `init` and `update` as its first argument, got "
            f"{optimizer!r}; write `adamx.freeze(adamx.adamw(1e-3), frozen_mask)`."
        )

    def to_labels(frozen: Any) -> Any:
        return jax.tree.map(lambda m: "frozen" if _as_bool(m, "freeze") else "train", frozen)

    return partition(
        {"train": optimizer, "frozen": set_to_zero()},
        lambda params: to_labels(_resolve(mask, params)),
    )
