"""Weight decay: ``u + lambda * theta``; decoupled after the moments, L2 before them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from ..core._base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    safe_increment,
    zero_count,
)
from ..core._dtypes import Hyperparameters, cast, compute_dtype
from ..core._trees import map_like, resolve
from ..core._validate import check_non_negative
from ._scale import _evaluate

__all__ = [
    "AddDecayedWeightsState",
    "DecayAfterUpdateState",
    "add_decayed_weights",
    "decay_after_update",
]


class AddDecayedWeightsState(NamedTuple):
    """The state of `add_decayed_weights` with a schedule: the step count (``int32``)."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0, mask: Any = None
) -> GradientTransformation:
    r"""Add :math:`\lambda\,\theta_{t-1}` to the updates.

    Placed *after* the moments and before `scale_by_learning_rate` it is decoupled weight decay
    (AdamW, Loshchilov & Hutter 2019, in torch's and optax's form
    :math:`\theta_t = \theta_{t-1} - \eta_t(\text{direction} + \lambda\theta_{t-1})`); placed *before*
    the moments it is coupled L2 regularisation (torch ``Adam(weight_decay=...)``).

    Args:
      weight_decay: :math:`\lambda >= 0`, or a schedule of the step count (0-based).
      mask: a pytree of booleans like the params (``True``: decay this leaf), or a function
        ``params -> mask``; ``None`` decays every leaf. Typically biases and norm scales are masked
        out.

    Returns:
      A transformation with state `EmptyState` (or `AddDecayedWeightsState` for a schedule).
    """
    return _decay_block("add_decayed_weights", AddDecayedWeightsState, weight_decay, mask, _add)


def optional_decay(weight_decay: ScalarOrSchedule | None, mask: Any = None) -> tuple:
    """``(add_decayed_weights(weight_decay, mask),)`` when ``weight_decay`` is given, else ``()``.

    The one rule for optimizers whose decay block is optional (RAdam, AdaBelief, schedule-free
    AdamW, Prodigy): the block is there when the argument is given, whatever its value, so the
    state's tree structure is a function of the arguments given and never of their values (a Python
    0 and an array 0 from ``inject_hyperparams`` give the same tree). Left out (``None``, the
    default), ``update`` needs no params for it.
    """
    if weight_decay is None:
        if mask is not None:
            raise ValueError(
                "`mask` chooses the leaves that weight decay acts on, but `weight_decay` is not "
                "given; pass `weight_decay` (e.g. `weight_decay=1e-4`), or drop `mask`."
            )
        return ()
    return (add_decayed_weights(weight_decay, mask),)


class DecayAfterUpdateState(NamedTuple):
    """The state of `decay_after_update` with a schedule: the step count (``int32``)."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count


def decay_after_update(
    weight_decay: ScalarOrSchedule = 0.0, mask: Any = None
) -> GradientTransformation:
    r"""Decay the *updated* parameters by :math:`\lambda`, not scaled by the learning rate.

    .. math::
        u_t \leftarrow u_t - \lambda\, (\theta_{t-1} + u_t), \qquad\text{so}\qquad
        \theta_t = (1 - \lambda)(\theta_{t-1} + u_t).

    Placed last, after `scale_by_learning_rate` (LaProp's official ``p -= wd * p`` after the step).
    Unlike `add_decayed_weights` the decay is not multiplied by the learning rate, and it acts on
    the parameters after the step.

    Args:
      weight_decay: :math:`\lambda` in ``[0, 1]``, or a schedule of the step count (0-based).
      mask: a pytree of booleans like the params (``True``: decay this leaf), or a function
        ``params -> mask``; ``None`` decays every leaf.

    Returns:
      A transformation with state `EmptyState` (or `DecayAfterUpdateState` for a schedule).
    """
    return _decay_block("decay_after_update", DecayAfterUpdateState, weight_decay, mask, _after)


def _add(u: jax.Array, p: jax.Array, lam: jax.Array) -> jax.Array:
    return u + lam * p


def _after(u: jax.Array, p: jax.Array, lam: jax.Array) -> jax.Array:
    return u - lam * (p + u)


def _decay_block(
    name: str,
    state_type: type,
    weight_decay: ScalarOrSchedule,
    mask: Any,
    rule: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
) -> GradientTransformation:
    """The decay blocks' body: ``rule(u, p, lam)`` on each leaf ``mask`` chooses, in the compute
    dtype, with ``lam`` the weight decay (a schedule: evaluated at the count ``state_type`` keeps)."""
    check_non_negative(weight_decay, "weight_decay")
    scheduled = callable(weight_decay)

    def init_fn(params):
        del params
        return state_type(zero_count()) if scheduled else EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                f"`{name}` needs the parameters: call "
                "`update(grads, state, params)` with the current params."
            )
        decay = _evaluate(weight_decay, state.count, "weight-decay") if scheduled else weight_decay
        chosen = resolve(mask, params)

        hp = Hyperparameters(decay)  # converted once per compute dtype, not once per leaf

        def one(u, p):
            cdt = compute_dtype(u.dtype, p.dtype)
            return cast(rule(cast(u, cdt), cast(p, cdt), hp(cdt)[0]), u.dtype)

        if chosen is None:
            updates = map_like(one, updates, params, "params")
        else:
            updates = jax.tree.map(lambda u, p, m: one(u, p) if m else u, updates, params, chosen)
        new_state = state_type(safe_increment(state.count)) if scheduled else state
        return updates, new_state

    return GradientTransformation(init_fn, update_fn)
