"""First-moment blocks: the EMA, the heavy-ball trace, and bias correction."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..core._base import (
    EmptyState,
    MomentTransformation,
    safe_increment,
    zero_count,
)
from ..core._dtypes import (
    Hyperparameters,
    as_hyperparameter,
    cast,
    compute_dtype,
    per_dtype,
    real_dtype,
)
from ..core._structural import either
from ..core._validate import (
    _concrete,
    check_decay,
    check_dtype,
)
from ..storage._storage import MomentStorage, filled, init_buffers, is_storage, storage_for
from ._map import update_moment

__all__ = [
    "AccumulateState",
    "BiasCorrectionState",
    "DampedTraceState",
    "EmaState",
    "TraceState",
    "accumulate",
    "bias_correction",
    "ema",
    "nesterov_ema",
    "trace",
]


def _complement(decay: Any) -> Any:
    """``1 - decay``, in Python when ``decay`` is a Python number (no rounding before the cast)."""
    return 1 - decay


def _resolve_storage(storage: MomentStorage | None, dtype: Any, name: str) -> MomentStorage:
    """The storage of a moment: ``storage``, or what ``dtype`` names (a dtype, or a storage such as
    `adamx.blockwise_8bit` passed as ``mu_dtype``/``nu_dtype``)."""
    if is_storage(dtype):
        if storage is not None:
            raise ValueError(
                f"Pass either `{name}` or `storage`, not both; `{name}` is a shorthand."
            )
        return dtype
    check_dtype(dtype, name)
    if storage is not None and dtype is not None:
        raise ValueError(f"Pass either `{name}` or `storage`, not both; `{name}` is a shorthand.")
    return storage if storage is not None else storage_for(dtype)


class EmaState(NamedTuple):
    """The state of `ema`: the moving average, one buffer per parameter (as stored)."""

    ema: Any


def ema(
    decay: float, *, dtype: Any = None, storage: MomentStorage | None = None
) -> MomentTransformation:
    r"""Exponential moving average of the updates: Adam's first moment.

    .. math::
        m_t = \beta\, m_{t-1} + (1 - \beta)\, u_t, \qquad m_0 = 0.

    Outputs :math:`m_t` (not bias-corrected; chain `bias_correction` for :math:`\hat m_t`).

    Args:
      decay: :math:`\beta`, in ``[0, 1)``.
      dtype: dtype of the stored average; ``None`` keeps each parameter's dtype (as optax).
      storage: a `MomentStorage` (instead of ``dtype``), e.g. a quantised one.

    Returns:
      A `MomentTransformation` with state `EmaState`.
    """
    check_decay(decay, "decay")
    storage = _resolve_storage(storage, dtype, "dtype")

    def init_fn(params):
        return EmaState(ema=init_buffers(storage, params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def average(u, m, b, c):  # c = 1 - b
            return b * m + c * u

        hp = (decay, _complement(decay))
        m, buffers = update_moment(average, updates, state.ema, storage, hyperparameters=hp)
        return m, EmaState(buffers)

    return MomentTransformation(init_fn, update_fn)


class TraceState(NamedTuple):
    """The state of `trace`: the momentum buffer, one per parameter (as stored)."""

    trace: Any


class DampedTraceState(NamedTuple):
    """The state of `trace` with ``dampening``: the step count (``int32``) and the buffer."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    trace: Any


def trace(
    decay: float,
    *,
    nesterov: bool = False,
    dampening: float | None = None,
    dtype: Any = None,
    storage: MomentStorage | None = None,
    accumulator_dtype: Any = None,
) -> MomentTransformation:
    r"""Heavy-ball momentum (Polyak; torch and optax's form): a trace of the updates.

    .. math::
        b_t = \mu\, b_{t-1} + (1 - \tau)\, u_t, \qquad
        \text{output } b_t \text{, or with Nesterov } u_t + \mu\, b_t,

    with :math:`b_0 = 0`. With dampening :math:`\tau > 0` the first step is undamped,
    :math:`b_1 = u_1`, as torch's ``SGD`` (which starts the buffer at the first gradient); with
    :math:`\tau = 0` the two starts coincide.

    Args:
      decay: :math:`\mu`, in ``[0, 1)``.
      nesterov: output the Nesterov look-ahead :math:`u_t + \mu b_t` (torch requires
        :math:`\tau = 0` for it, and so does adamx).
      dampening: :math:`\tau` in ``[0, 1]`` (torch's ``dampening``); ``None`` (the default):
        optax's undamped ``trace``. The state's layout follows the argument, not its value:
        `TraceState` without it, `DampedTraceState` when it is given (0 included).
      dtype: dtype of the stored buffer; ``None`` keeps each parameter's dtype.
        ``accumulator_dtype`` is optax's name for it.
      storage: a `MomentStorage` (instead of ``dtype``).

    Returns:
      A `MomentTransformation` with state `TraceState` (or `DampedTraceState` when ``dampening``
      is given).
    """
    check_decay(decay, "decay")
    dtype = either("dtype", dtype, "accumulator_dtype", accumulator_dtype, None)
    damped = dampening is not None  # the layout follows the argument given, never its value
    if damped:
        check_decay(dampening, "dampening", upper_inclusive=True)
    storage = _resolve_storage(storage, dtype, "dtype")
    tau = _concrete(dampening) if damped else None  # None when traced or not given
    if nesterov and tau is not None and tau != 0:
        raise ValueError(
            f"Nesterov momentum needs `dampening=0`, got `dampening={dampening}` (torch's rule: "
            "the look-ahead assumes an undamped buffer); drop one of the two."
        )

    def init_fn(params):
        buffers = init_buffers(storage, params)
        return DampedTraceState(zero_count(), buffers) if damped else TraceState(buffers)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        damping = Hyperparameters(_complement(dampening)) if damped else None
        first = state.count == 0 if damped else None  # one scalar, not one per leaf

        def step(u, b, mu):
            x = jnp.where(first, u, damping(u.dtype)[0] * u) if damped else u  # b_1 = u_1
            b = x + mu * b
            return (u + mu * b if nesterov else b), b

        out, buffers = update_moment(step, updates, state.trace, storage, hyperparameters=(decay,))
        if damped:
            return out, DampedTraceState(safe_increment(state.count), buffers)
        return out, TraceState(buffers)

    return MomentTransformation(init_fn, update_fn)


def require_gradient(gradient: Any, updates: Any, name: str) -> Any:
    """The gradient a look-ahead block reads beside the moment (a tree without leaves needs none).

    Raises when it is missing: the block was used outside `adamx.chain`, which passes it.
    """
    if gradient is not None:
        return gradient
    if not jax.tree.leaves(updates):
        return updates
    raise ValueError(
        f"`{name}` needs the gradient as well as the moment: compose it with "
        f"`adamx.chain(ema(b1), {name.split('(')[0]}(b1, ...), ...)`, which passes `gradient=` "
        "to it."
    )


class BiasCorrectionState(NamedTuple):
    """The state of `bias_correction`: the step count ``t`` of the last update (``int32``)."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count


def init_count(params: Any) -> BiasCorrectionState:
    """The ``init`` of a block whose state is only the step count (`bias_correction` and its kin)."""
    del params
    return BiasCorrectionState(count=zero_count())


def _correction(decay: Any, count: jax.Array, dtype: Any) -> jax.Array:
    """``1 - decay^count`` in ``dtype``, computed as ``-expm1(count * log(decay))``.

    The textbook ``1 - decay**count`` has a relative error of ~1e-5 in float32 in early steps (the
    rounding of ``decay`` to float32 is amplified by the cancellation, and XLA's ``pow`` rounds
    differently under ``jit`` and eagerly); ``expm1`` keeps ~1e-7. ``log(decay)`` of a Python
    number is taken in double precision on the host.
    """
    if isinstance(decay, jax.core.Tracer) or not jnp.ndim(decay) == 0:
        log_decay = jnp.log(as_hyperparameter(decay, dtype))
    elif float(decay) == 0.0:
        return jnp.ones((), dtype)
    else:
        log_decay = as_hyperparameter(math.log(float(decay)), dtype)
    return -jnp.expm1(count.astype(dtype) * log_decay)


def bias_correction(decay: float, *, nesterov: bool = False) -> MomentTransformation:
    r"""Correct a zero-initialised moving average for its bias: Kingma & Ba (2014), section 3.

    .. math::
        \hat m_t = \frac{m_t}{1 - \beta^t}.

    With ``nesterov=True`` it outputs the Nesterov look-ahead of the corrected moment, Dozat's (2016)
    form with constant momentum as in ``optax.adam(nesterov=True)``, reading :math:`g_t` from the
    gradient of its run (so it must sit inside `adamx.chain`, after `ema`):

    .. math::
        \bar m_t = \frac{\beta\, m_t}{1 - \beta^{t+1}} + \frac{(1 - \beta)\, g_t}{1 - \beta^t}.

    Correct each moment before combining them: Adam corrects :math:`m_t` here and :math:`v_t` inside
    `scale_by_second_moment`, before the square root. The division is written as a multiplication
    by :math:`1/(1 - \beta^t)`, which is what XLA compiles a division by a scalar into under
    ``jit``: so eager, jitted and fused-kernel steps give the same bits.

    Args:
      decay: the :math:`\beta` of the average being corrected.
      nesterov: output the look-ahead :math:`\bar m_t` instead of :math:`\hat m_t`.

    Returns:
      A `MomentTransformation` with state `BiasCorrectionState`.
    """
    check_decay(decay, "decay")

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del params, extra_args
        count = safe_increment(state.count)
        if not nesterov:
            # 1 / (1 - decay^t): one scalar per compute dtype, not one per leaf.
            inverse = per_dtype(lambda cdt: 1 / _correction(decay, count, cdt))

            def one(m):
                cdt = compute_dtype(m.dtype)
                return cast(cast(m, cdt) * inverse(cdt), m.dtype)

            return jax.tree.map(one, updates), BiasCorrectionState(count)
        gradient = require_gradient(gradient, updates, "bias_correction(nesterov=True)")
        next_count = safe_increment(count)

        def scalars(cdt):
            b = as_hyperparameter(decay, cdt)
            inverse_next = 1 / _correction(decay, next_count, cdt)
            # (1 - b) / (1 - b^t) first: g / (1 - b^t) alone overflows for |g| near the maximum.
            g_weight = as_hyperparameter(_complement(decay), cdt) / _correction(decay, count, cdt)
            return b, inverse_next, g_weight

        weights = per_dtype(scalars)  # once per compute dtype, not once per leaf

        def lookahead(m, g):
            cdt = compute_dtype(m.dtype, g.dtype)
            b, inverse_next, g_weight = weights(cdt)
            m_next = cast(m, cdt) * inverse_next
            return cast(b * m_next + g_weight * cast(g, cdt), m.dtype)

        return jax.tree.map(lookahead, updates, gradient), BiasCorrectionState(count)

    return MomentTransformation(init_count, update_fn)


class AccumulateState(NamedTuple):
    """The state of `accumulate`: the running sum, one buffer per parameter (as stored)."""

    sum: Any


def accumulate(
    initial_value: float = 0.0, *, dtype: Any = None, storage: MomentStorage | None = None
) -> MomentTransformation:
    r"""The running sum of the updates: AdaGrad's estimator of the second moment.

    .. math::
        s_t = s_{t-1} + u_t, \qquad s_0 = s_{\text{init}}.

    Outputs :math:`s_t`. Inside `scale_by_second_moment` (``estimator=accumulate(...)``) the updates
    are :math:`|g_t|^2`, so :math:`s_t = G_t`, AdaGrad's sum of squares (Duchi, Hazan & Singer 2011).

    Args:
      initial_value: :math:`s_{\text{init}} >= 0` (optax's AdaGrad uses 0.1, torch's 0).
      dtype: dtype of the stored sum; ``None`` keeps each parameter's dtype.
      storage: a `MomentStorage` (instead of ``dtype``).

    Returns:
      A `MomentTransformation` with state `AccumulateState`.
    """
    storage = filled(_resolve_storage(storage, dtype, "dtype"), initial_value)

    def init_fn(params):
        return AccumulateState(sum=init_buffers(storage, params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        total, buffers = update_moment(lambda u, s: s + u, updates, state.sum, storage)
        return total, AccumulateState(buffers)

    return MomentTransformation(init_fn, update_fn)


def nesterov_ema(decay: float) -> MomentTransformation:
    r"""The Nesterov look-ahead of an uncorrected EMA, after `ema`: Keller Jordan's Muon momentum.

    .. math::
        \bar m_t = \beta\, m_t + (1 - \beta)\, g_t

    (``grad.lerp_(momentum, beta)``), with :math:`m_t` the input and :math:`g_t` the gradient of
    this block's run in `adamx.chain`. ``bias_correction(decay, nesterov=True)`` is optax's
    corrected form.

    Returns:
      A `MomentTransformation` with state `EmptyState`.
    """
    check_decay(decay, "decay")

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del params, extra_args
        gradient = require_gradient(gradient, updates, "nesterov_ema")

        return interpolate(updates, gradient, decay), state

    return MomentTransformation(init_fn, update_fn)


def interpolate(updates: Any, gradient: Any, decay: Any, divisor: Any = None) -> Any:
    r""":math:`\beta\, m + (1 - \beta)\, g` for every leaf :math:`m` of ``updates`` and :math:`g` of
    ``gradient`` (a look-ahead), in the compute dtype and returned in :math:`m`'s; divided by
    ``divisor(dtype)`` (a scalar of the real compute dtype) when it is given."""
    hp = Hyperparameters(decay, _complement(decay))

    def one(m, g):
        cdt = compute_dtype(m.dtype, g.dtype)
        b, c = hp(cdt)
        x = b * cast(m, cdt) + c * cast(g, cdt)
        if divisor is not None:
            x = x / divisor(real_dtype(cdt)).astype(cdt)
        return cast(x, m.dtype)

    return jax.tree.map(one, updates, gradient)
