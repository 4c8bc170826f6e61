"""Tree helpers: mapping updates against state or params, with a clear error when they differ."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._dtypes import is_inexact

__all__: list[str] = []  # internal: used by the floors above, not public


def is_stored_moment(x: Any) -> bool:
    """Whether ``x`` is one parameter's moment in a stored form (`adamx.RoundedBuffer`,
    `adamx.QuantizedBuffer`): a node whose keys (``codes``, ``value``) are not the parameter's."""
    return getattr(type(x), "stored_moment", False)


def is_explicit(sharding: Any) -> bool:
    """Whether ``sharding`` is part of its values' type: a mesh of ``Explicit`` axes only (where
    ``lax.cond``'s branches and the operands of an operation must agree on it). ``False`` for
    ``None``, an ``Auto`` mesh, and a jax without mesh axis types."""
    types = getattr(getattr(sharding, "mesh", None), "axis_types", ())
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    return bool(types) and explicit is not None and all(t == explicit for t in types)


def _stops_here(x: Any) -> bool:
    return x is None or is_stored_moment(x)


def _paths(tree: Any) -> list[str]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_stops_here)
    return [jax.tree_util.keystr(path) or "<root>" for path, _ in leaves]


def _listing(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"`{p}`" for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def is_flat(x: Any) -> bool:
    """Whether ``x`` is an `adamx.FlatParams` (``adamx.distributed``), known by its class marker."""
    return getattr(type(x), "flat_params", False)


def contains_flat(tree: Any) -> bool:
    """Whether ``tree`` is or holds a `FlatParams`."""
    return any(is_flat(x) for x in jax.tree.leaves(tree, is_leaf=is_flat))


def check_not_flat(tree: Any, who: str, why: str) -> None:
    """Raise if ``tree`` holds a `FlatParams`: ``who`` needs each parameter's own shape (``why``)."""
    if contains_flat(tree):
        raise TypeError(
            f"`{who}` works on each parameter as a whole ({why}), so it cannot run on "
            "`FlatParams`, whose buffers concatenate many parameters. Keep the params as a tree "
            "for this optimizer (`flat.unflatten()`), or use an elementwise one (adam, adamw, "
            "lion, ...)."
        )


def structure_mismatch(
    updates: Any, reference: Any, reference_name: str, updates_name: str = "gradients"
) -> ValueError:
    """A sentence naming the key paths missing from ``updates`` and those it has in excess."""
    ours, theirs = _paths(updates), _paths(reference)
    ours_set, theirs_set = set(ours), set(theirs)
    missing = [p for p in theirs if p not in ours_set]
    extra = [p for p in ours if p not in theirs_set]
    parts = []
    if missing and extra:  # a renamed key: where the two first differ
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
        parts.append(
            f"the {updates_name} have `{ours[first]}` where the {reference_name} has "
            f"`{theirs[first]}`"
        )
    if missing:
        parts.append(f"missing: the {updates_name} lack {_listing(missing)}")
    if extra:
        parts.append(
            f"extra: the {updates_name} have {_listing(extra)}, not in the {reference_name}"
        )
    if parts:
        where = "; ".join(parts)
    else:  # the same key paths in other containers (a tuple for a list, another node type)
        pairs = zip(ours, theirs, strict=False)
        differs = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
        at = ours[differs] if differs is not None else "<root>"
        where = (
            f"the key paths are the same but the containers differ (first at `{at}`): "
            f"the {updates_name} are a {jax.tree.structure(updates, is_leaf=_stops_here)}, the "
            f"{reference_name} a {jax.tree.structure(reference, is_leaf=_stops_here)}"
        )
    return ValueError(
        f"The {updates_name} do not have the structure of the {reference_name}: {where}. Pass "
        f"{updates_name} shaped like the params given to `init` (or call `init` again for new "
        "params)."
    )


def _rounds_to_integers(dtype: Any, expected: Any) -> bool:
    """Whether a leaf of ``dtype`` meant for a floating-point ``expected`` leaf is integer or bool
    (its update would be rounded to integers: zero, silently)."""
    return (
        dtype is not None
        and expected is not None
        and dtype != expected
        and is_inexact(expected)
        and not is_inexact(dtype)
    )


def _is_structure_error(error: Exception) -> bool:
    """A tree-structure error from `jax.tree.map` (jax 0.10's "structure", older jax's "Dict key
    mismatch" and "Custom node type mismatch")."""
    text = str(error)
    return "structure" in text or "mismatch" in text


def wrong_shape(path: Any, shape: Any, expected: Any, name: str = "gradient") -> ValueError:
    """The error for a leaf of the wrong shape (a transposed gradient), naming its key path."""
    where = jax.tree_util.keystr(tuple(path)) or "<root>"
    return ValueError(
        f"Expected the {name} `{where}` to have its parameter's shape {tuple(expected)}, but got "
        f"shape {tuple(shape)}; pass {name}s shaped like the params given to `init` (a "
        "transposed leaf needs `.T`, a flattened one `.reshape`)."
    )


def non_float_gradient(
    path: Any, dtype: Any, expected: Any, name: str = "gradient", reference: str = "parameter"
) -> TypeError:
    """The error for an integer or boolean leaf where its parameter is floating-point."""
    where = jax.tree_util.keystr(tuple(path)) or "<root>"
    return TypeError(
        f"Expected the {name} `{where}` to be floating-point like its {reference} "
        f"({np.dtype(expected).name}), but got dtype {np.dtype(dtype).name}, which would round "
        f"the update to integers (zero, silently); pass floating-point {name}s, e.g. from "
        "`jax.grad`, or cast with `.astype(jnp.float32)`."
    )


def check_like(tree: Any, params: Any, name: str = "gradient") -> None:
    """Refuse ``tree`` (gradients, or updates) unless it is laid out like ``params``: the same key
    paths, each leaf of its parameter's shape, and floating-point where the parameter is.

    Trace-time Python (shapes, dtypes and structure are static): it adds nothing to the jaxpr.
    ``None`` leaves on either side are not checked. The error names the key path and both shapes
    (`ValueError`), both dtypes (`TypeError`), or the missing and extra key paths (`ValueError`).
    """

    def one(path, x, r):
        if x is None or r is None or is_stored_moment(r):
            return None
        shape, expected = getattr(x, "shape", None), getattr(r, "shape", None)
        if shape is not None and expected is not None and tuple(shape) != tuple(expected):
            raise wrong_shape(path, shape, expected, name)
        dtype, expected_dtype = getattr(x, "dtype", None), getattr(r, "dtype", None)
        if _rounds_to_integers(dtype, expected_dtype):
            raise non_float_gradient(path, dtype, expected_dtype, name)
        return None

    try:
        jax.tree_util.tree_map_with_path(one, tree, params, is_leaf=_stops_here)
    except ValueError as error:
        if not _is_structure_error(error) or str(error).startswith("Expected the"):
            raise
        raise structure_mismatch(tree, params, "params", f"{name}s") from None


def non_float_parameter(path: Any, dtype: Any) -> TypeError:
    """The integer/boolean-leaf rule's error (docs/design.md, section 5), naming the leaf's key path."""
    return TypeError(
        f"The parameter `{jax.tree_util.keystr(tuple(path)) or '<root>'}` has dtype {dtype}, but "
        "optimizers update floating-point (or complex) parameters only. Keep it out of the "
        "optimizer: pass it as None, mask it with `adamx.masked` or `adamx.freeze`, or split the "
        "model with `eqx.filter(model, eqx.is_inexact_array)`."
    )


def map_like(fn: Callable[..., Any], updates: Any, reference: Any, name: str, *rest: Any) -> Any:
    """``jax.tree.map(fn, updates, reference, *rest)``; a mismatch names its key path.

    A structure mismatch names the missing and extra key paths. Per leaf, an integer or boolean
    update where the reference leaf is floating-point is refused (its result would be rounded to
    integers), and a failure of ``fn`` on a leaf whose shape differs from its reference leaf's (a
    transposed gradient) is reported with the key path and both shapes: trace-time Python, which
    costs the jaxpr nothing.
    """

    def one(path, u, r, *more):
        dtype, expected = getattr(u, "dtype", None), getattr(r, "dtype", None)
        if _rounds_to_integers(dtype, expected):
            raise non_float_gradient(path, dtype, expected, "gradient", f"{name} leaf")
        try:
            return fn(u, r, *more)
        except (TypeError, ValueError) as error:
            shape, reference_shape = getattr(u, "shape", None), getattr(r, "shape", None)
            if (
                shape is None
                or reference_shape is None
                or tuple(shape) == tuple(reference_shape)
                or "shape" not in str(error)
            ):
                raise
            raise wrong_shape(path, shape, reference_shape) from error

    try:
        return jax.tree_util.tree_map_with_path(one, updates, reference, *rest)
    except ValueError as error:
        if str(error).startswith("Expected the"):
            raise
        if not _is_structure_error(error):
            raise
        raise structure_mismatch(updates, reference, name) from None


def resolve(spec: Any, tree: Any) -> Any:
    """``spec(tree)`` if ``spec`` is a function of the params, else ``spec`` (a tree itself).

    A mask or label tree may be callable (an Equinox module built with ``jax.tree.map`` from a
    model), and a function may be a pytree (Equinox and Optimistix turn closures into modules): a
    callable counts as a tree when it is a pytree node laid out like ``tree`` (or a prefix of it).
    """
    if is_flat(tree):
        return tree.resolve(spec)
    if not callable(spec):
        return spec
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(spec)):
        return spec(tree)
    try:
        jax.tree.map(lambda *_: None, spec, tree)
    except (ValueError, TypeError, KeyError):
        return spec(tree)
    return spec
