"""Per-layer helpers: stacked-layer axes (``batch_dims``), one layer's axes, and a leaf's name.

One rule for ``batch_dims`` everywhere it is taken (Adafactor, LAMB/LARS, Adam-mini, MARS, Muon,
SOAP, blockwise low-bit storage): the number of leading axes of a leaf that index stacked layers
(``nn.scan``), given as an int, a function ``leaf -> int`` or, where the docstring says so, a tree
of ints shaped like the params (or a prefix of them). A count that is not an int (``True``, ``1.0``,
``"1"``) is a `TypeError`; one below 0 or above the leaf's rank is a `ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__: list[str] = []  # internal: used by the floors above, not public

BatchDims = int | Callable[[Any], int]
BatchDimsTree = int | Callable[[Any], int] | Any  # or a tree of ints (a prefix of the params)

_FIX = "pass the number of leading stacked-layer axes (e.g. `batch_dims=1` for an `nn.scan` stack)"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_batch_dims(batch_dims: Any, where: str = "") -> None:
    """At construction: ``batch_dims`` is an int >= 0 or a function of the leaf (checked per leaf)."""
    if callable(batch_dims):
        return
    if not _is_count(batch_dims):
        raise TypeError(
            f"`batch_dims` must be an int >= 0 or a function `leaf -> int`, got "
            f"{batch_dims!r}{where}; {_FIX}."
        )
    if batch_dims < 0:
        raise ValueError(f"`batch_dims` must be an int >= 0, got {batch_dims!r}{where}; {_FIX}.")


def batch_count(batch_dims: BatchDims, leaf: Any, name: str = "") -> int:
    """How many leading axes of ``leaf`` index stacked layers, checked against its rank."""
    count = batch_dims(leaf) if callable(batch_dims) else batch_dims
    what = f"`{name}` of shape {jnp.shape(leaf)}" if name else f"a leaf of shape {jnp.shape(leaf)}"
    if not _is_count(count):
        raise TypeError(
            f"`batch_dims` must give an int for every leaf, got {count!r} for {what}; {_FIX}."
        )
    if not 0 <= count <= jnp.ndim(leaf):
        raise ValueError(
            f"`batch_dims` gave {count!r} for {what}; it must be an int from 0 to the leaf's rank "
            f"{jnp.ndim(leaf)}. For trees that mix stacked and unstacked leaves pass a function "
            "such as `lambda x: 1 if x.ndim == 3 else 0`."
        )
    return count


def map_with_batch_dims(fn: Callable[[Any, int], Any], tree: Any, batch_dims: Any) -> Any:
    """``fn(leaf, batch_count)`` for every leaf of ``tree``.

    ``batch_dims`` is an int, a function ``leaf -> int``, or a tree of ints that is a prefix of
    ``tree`` (a leaf an outer `masked` replaced by a `MaskedNode` is skipped).
    """
    if callable(batch_dims) or _is_count(batch_dims):
        check_batch_dims(batch_dims)
        return jax.tree.map(lambda leaf: fn(leaf, batch_count(batch_dims, leaf)), tree)

    def subtree(number: Any, sub: Any) -> Any:
        check_batch_dims(number, " in the `batch_dims` tree")
        return jax.tree.map(lambda leaf: fn(leaf, batch_count(number, leaf)), sub)

    try:
        return jax.tree.map(subtree, batch_dims, tree)
    except ValueError as cause:
        if "batch_dims" in str(cause):
            raise
        raise ValueError(
            f"The `batch_dims` tree must have the structure of the params or a prefix of it, "
            f"got structure {jax.tree.structure(batch_dims)} for params with structure "
            f"{jax.tree.structure(tree)}; e.g. `{{'layers': 1, 'head': 0}}` for top-level keys "
            "'layers' and 'head', or pass a function `leaf -> int`."
        ) from None


def layer_axes(x: Any, batch: int) -> tuple[int, ...]:
    """The axes of one layer: all but the ``batch`` leading ones."""
    return tuple(range(batch, jnp.ndim(x)))


def path_name(path: Any) -> str:
    """A key path as the lower-cased dotted name the patterns are matched against.

    ``("params", "Block_0", "q_proj", "kernel")`` gives ``"params.block_0.q_proj.kernel"``.
    """
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts).lower()
