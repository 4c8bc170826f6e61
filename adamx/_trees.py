"""Tree helpers: mapping updates against state or params, with a clear error when they differ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from ._flat import FlatParams, resolve_flat


def is_stored_moment(x: Any) -> bool:
    """Whether ``x`` is one parameter's moment in a stored form (`adamx.RoundedBuffer`,
    `adamx.QuantizedBuffer`): a node whose keys (``codes``, ``value``) are not the parameter's."""
    return getattr(type(x), "stored_moment", False)


def _stops_here(x: Any) -> bool:
    return x is None or is_stored_moment(x)


def _paths(tree: Any) -> list[str]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_stops_here)
    return [jax.tree_util.keystr(path) or "<root>" for path, _ in leaves]


def structure_mismatch(updates: Any, reference: Any, reference_name: str) -> ValueError:
    """A sentence naming the first key path where ``updates`` and ``reference`` differ."""
    ours, theirs = _paths(updates), _paths(reference)
    pairs = zip(ours, theirs, strict=False)  # the shorter list ends the search
    first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    if first is not None:
        where = (
            f"the gradients have `{ours[first]}` where the {reference_name} has `{theirs[first]}`"
        )
    elif len(ours) < len(theirs):
        where = f"the gradients lack `{theirs[len(ours)]}`, which the {reference_name} has"
    else:
        where = f"the gradients have `{ours[len(theirs)]}`, which the {reference_name} lacks"
    return ValueError(
        f"The gradients do not have the structure of the {reference_name}: {where}. Pass "
        f"gradients shaped like the params given to `init` (or call `init` again for new params)."
    )


def non_float_parameter(path: Any, dtype: Any) -> TypeError:
    """The integer/boolean-leaf rule's error (docs/design.md, section 5), naming the leaf's key path."""
    return TypeError(
        f"The parameter `{jax.tree_util.keystr(tuple(path)) or '<root>'}` has dtype {dtype}, but "
        "optimizers update floating-point (or complex) parameters only. Keep it out of the "
        "optimizer: pass it as None, mask it with `adamx.masked` or `adamx.freeze`, or split the "
        "model with `eqx.filter(model, eqx.is_inexact_array)`."
    )


def map_like(fn: Callable[..., Any], updates: Any, reference: Any, name: str, *rest: Any) -> Any:
    """``jax.tree.map(fn, updates, reference, *rest)``; a structure mismatch names its key path."""
    try:
        return jax.tree.map(fn, updates, reference, *rest)
    except ValueError as error:
        if "structure" not in str(error) and "Custom node type mismatch" not in str(error):
            raise
        raise structure_mismatch(updates, reference, name) from None


def resolve(spec: Any, tree: Any) -> Any:
    """``spec(tree)`` if ``spec`` is a function of the params, else ``spec`` (a tree itself).

    A mask or label tree may be callable (an Equinox module built with ``jax.tree.map`` from a
    model), and a function may be a pytree (Equinox and Optimistix turn closures into modules): a
    callable counts as a tree when it is a pytree node laid out like ``tree`` (or a prefix of it).
    """
    if isinstance(tree, FlatParams):
        return resolve_flat(spec, tree)
    if not callable(spec):
        return spec
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(spec)):
        return spec(tree)
    try:
        jax.tree.map(lambda *_: None, spec, tree)
    except (ValueError, TypeError, KeyError):
        return spec(tree)
    return spec
