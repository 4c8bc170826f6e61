"""Scaling blocks: by a constant, by a schedule, by the learning rate."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..core._base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    safe_increment,
    zero_count,
)
from ..core._dtypes import Hyperparameters, cast, compute_dtype
from ..core._validate import check_learning_rate

__all__ = ["ScaleByScheduleState", "scale", "scale_by_learning_rate", "scale_by_schedule"]


def _multiply(updates: Any, factor: Any) -> Any:
    """``factor * u`` for every leaf, in the compute dtype, returned in each leaf's dtype."""

    hp = Hyperparameters(factor)  # converted once per compute dtype, not once per leaf

    def one(u):
        cdt = compute_dtype(u.dtype)
        return cast(cast(u, cdt) * hp(cdt)[0], u.dtype)

    return jax.tree.map(one, updates)


def scale(step_size: jax.typing.ArrayLike) -> GradientTransformation:
    """Multiply the updates by a constant ``step_size`` (any sign); keeps no state."""

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _multiply(updates, step_size), state

    return GradientTransformation(init_fn, update_fn)


class ScaleByScheduleState(NamedTuple):
    """The state of `scale_by_schedule`: how many updates were made (``int32``)."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count


def _evaluate(schedule: Any, count: jax.Array, name: str) -> jax.Array:
    value = schedule(count)
    if jnp.ndim(value) != 0:
        raise ValueError(
            f"The {name} schedule must return a scalar for a step count, got an array of shape "
            f"{jnp.shape(value)}; return one number per step."
        )
    return value


def scale_by_schedule(schedule: Any, *, name: str = "step-size") -> GradientTransformation:
    """Multiply the updates by ``schedule(count)``, with ``count = 0`` on the first update (optax's)."""

    def init_fn(params):
        del params
        return ScaleByScheduleState(count=zero_count())

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        factor = _evaluate(schedule, state.count, name)
        return _multiply(updates, factor), ScaleByScheduleState(safe_increment(state.count))

    return GradientTransformation(init_fn, update_fn)


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    r"""Multiply the updates by :math:`-\eta_t` (a descent step), ``learning_rate`` a number or schedule.

    A schedule is a function of the step count evaluated at ``0, 1, 2, ...`` (optax's convention);
    its state is `ScaleByScheduleState`, a float's is `EmptyState`.

    Args:
      learning_rate: :math:`\eta`, a finite number >= 0, or a schedule ``count -> eta``.
      flip_sign: multiply by :math:`-\eta` (descent). ``False`` multiplies by :math:`+\eta`.
    """
    check_learning_rate(learning_rate)
    sign = -1 if flip_sign else 1
    if callable(learning_rate):
        return scale_by_schedule(lambda count: sign * learning_rate(count), name="learning-rate")
    return scale(sign * learning_rate)
