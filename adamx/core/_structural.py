"""Structural arguments: values that decide the state's shapes or the program's structure.

``inject_hyperparams`` (optax's and adamx's) turns every number it is given, defaults included,
into an array in the state. An int that decides shapes (``batch_dims``, ``min_dim_size_to_factor``)
cannot be an array, so such arguments default to ``None`` (which neither wrapper injects) and
`structural` reads them here; an array given anyway gets an error that names the fix.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__: list[str] = []  # internal: used by the floors above, not public


def structural(value: Any, name: str, default: Any) -> Any:
    """``value``, or ``default`` for ``None``; an array (a traced one too) is refused with the fix."""
    if value is None:
        return default
    if isinstance(value, (jax.Array, jax.core.Tracer, np.ndarray, np.generic)):
        raise TypeError(
            f"`{name}` decides the shapes of the state, so it must be a Python value, got an array "
            f"({value!r}). `inject_hyperparams` (optax's and adamx's) turns the numbers it is given "
            f"into arrays: pass `static_args=('{name}',)` to it, or leave `{name}` at its default "
            "(None)."
        )
    return value


def either(name: str, value: Any, alias: str, alias_value: Any, default: Any) -> Any:
    """One argument under two names, adamx's ``name`` and optax's ``alias``: the one given, or
    ``default`` when neither is (both default to ``None``, so neither is injected)."""
    if value is not None and alias_value is not None:
        raise TypeError(
            f"`{name}` and `{alias}` are one argument under two names (`{alias}` is optax's); got "
            f"both ({value!r} and {alias_value!r}): pass only one."
        )
    chosen = alias_value if value is None else value
    return default if chosen is None else chosen


def check_count(value: Any, name: str, minimum: int, meaning: str) -> None:
    """A count used in arithmetic or a loop (never in a shape): a Python int, or an integer scalar
    array, concrete or traced (``inject_hyperparams`` makes one); concrete ones at least
    ``minimum``. ``meaning`` ends the error, e.g. "the number of Newton-Schulz iterations"."""
    is_array = isinstance(value, (jax.Array, jax.core.Tracer, np.ndarray, np.generic))
    if is_array:
        integer = np.ndim(value) == 0 and np.issubdtype(np.dtype(value.dtype), np.integer)
    else:
        integer = isinstance(value, int) and not isinstance(value, bool)
    if not integer:
        raise ValueError(
            f"`{name}` is {meaning} and must be an int >= {minimum} (or an integer scalar array), "
            f"got {value!r}."
        )
    if not isinstance(value, jax.core.Tracer) and int(value) < minimum:
        raise ValueError(f"`{name}` is {meaning} and must be >= {minimum}, got {value!r}.")
