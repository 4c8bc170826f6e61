"""The validation rule (docs/design.md, section 6): concrete hyperparameters are checked when built.

Traced values and schedules cannot be checked at construction; they are the caller's responsibility.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

__all__: list[str] = []  # internal: used by the floors above, not public


def _concrete(value: Any, name: str | None = None) -> float | None:
    """``value`` as a Python float if it is a concrete real scalar, else ``None`` (traced, callable).

    ``name`` is the argument's name, which the error of a value of the wrong kind gives.
    """
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    what = "a real number" if name is None else f"`{name}` to be a real number"
    if isinstance(value, bool):
        raise TypeError(f"Expected {what}, got the bool {value!r}; pass a float such as 0.9.")
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything numpy cannot read is reported below
        array = None
    if array is None or array.dtype.kind not in "iuf":
        hint = f" such as {value}" if isinstance(value, str) and _is_float(value) else ""
        raise TypeError(
            f"Expected {what}, got {value!r} of type {type(value).__name__}; "
            f"pass a Python float{hint} or a scalar array"
            + (" (or a schedule)." if name is not None and "rate" in name else ".")
        )
    if array.shape != ():
        raise ValueError(
            f"Expected {'a scalar' if name is None else f'`{name}` to be a scalar'}, got an array "
            f"of shape {array.shape}; pass one number (per-parameter values are not supported)."
        )
    return float(array)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_learning_rate(value: Any, name: str = "learning_rate") -> None:
    """A learning rate is a finite number >= 0 or a schedule (a callable of the step count)."""
    _check_at_least_zero(
        value, name, " or a schedule", ". To maximise an objective, minimise its negative "
        "instead (or chain `adamx.scale(-1.0)` after the optimizer).",
    )  # fmt: skip


def check_decay(value: Any, name: str, *, upper_inclusive: bool = False) -> None:
    """A decay rate (``b1``, ``b2``, momentum) lies in ``[0, 1)`` (or ``[0, 1]`` where allowed)."""
    number = _concrete(value, name)
    if number is None:
        return
    upper_ok = number <= 1 if upper_inclusive else number < 1
    if not (math.isfinite(number) and number >= 0 and upper_ok):
        interval = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(
            f"`{name}` is a decay rate and must lie in {interval}, got {number!r}; typical values "
            "are 0.9 to 0.999 (0 keeps no memory)."
        )


def check_non_negative(value: Any, name: str) -> None:
    """``eps``, ``eps_root``, ``weight_decay``: a finite number >= 0 (or a schedule where allowed)."""
    _check_at_least_zero(value, name, "", "; pass a non-negative value (0 turns it off).")


def _check_at_least_zero(value: Any, name: str, alternative: str, advice: str) -> None:
    """Refuse a concrete ``value`` that is not a finite number >= 0 (``alternative``: what else is
    accepted; ``advice``: how to fix it)."""
    number = _concrete(value, name)
    if number is not None and not (math.isfinite(number) and number >= 0):
        raise ValueError(
            f"`{name}` must be a finite number >= 0{alternative}, got {number!r}{advice}"
        )


def check_dtype(value: Any, name: str) -> None:
    """A moment dtype (``mu_dtype``, ``nu_dtype``) is ``None`` or a floating-point dtype."""
    if value is None:
        return
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind != "f" and dtype.name != "bfloat16":
        raise TypeError(
            f"`{name}` must be None or a floating-point dtype such as jnp.float32 or "
            f"jnp.bfloat16, got {value!r}."
        )
