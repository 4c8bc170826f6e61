"""Rectification: RAdam's variance rectification of the adaptive step, and the square-root bias
correction (AdaBelief, cautious optimizers)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..core._base import (
    GradientTransformation,
    MomentTransformation,
    safe_increment,
    zero_count,
)
from ..core._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ..core._validate import _concrete, check_decay
from ._moments import BiasCorrectionState, _correction, init_count

__all__ = ["RectificationState", "rectification", "root_bias_correction"]

_FALLBACKS = ("sgd", "none")


# (k, B_2k): Bernoulli numbers for the series of rho_t near t = 0 (see `_sma_length`).
_BERNOULLI = (
    (1, 1 / 6),
    (2, -1 / 30),
    (3, 1 / 42),
    (4, -1 / 30),
    (5, 5 / 66),
    (6, -691 / 2730),
    (7, 7 / 6),
    (8, -3617 / 510),
)


def _sma_length(decay: Any, count: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    r"""``(rho_t, rho_inf)`` in ``dtype``: the length of the approximated simple moving average.

    :math:`\rho_\infty = 2/(1-\beta) - 1` and :math:`\rho_t = \rho_\infty - 2t\beta^t/(1-\beta^t)`.
    While :math:`\rho_t \ll \rho_\infty` (the steps where the threshold is decided) the textbook
    difference cancels: in float32 it loses ~1e-4 of :math:`\rho_6` for :math:`\beta = 0.999`.
    With :math:`c = -\log\beta` and :math:`x = tc`, :math:`\rho_t = \coth(c/2) - 2t/\mathrm{expm1}(x)`,
    whose Bernoulli series :math:`\rho_t = t + 2\sum_k B_{2k} c^{2k-1}(1 - t^{2k})/(2k)!` has no
    cancellation; it is used for :math:`x < 1` (eight terms: truncation ~1e-14 relative), the
    direct form above.
    """
    t = count.astype(dtype)
    if isinstance(decay, jax.core.Tracer) or jnp.ndim(decay) != 0:
        b = as_hyperparameter(decay, dtype)
        c = -jnp.log(b)
        rho_inf = (1 + b) / (1 - b)
    elif float(decay) == 0.0:  # no memory: rho_t = rho_inf = 1 for every t
        one = jnp.ones((), dtype)
        return one, one
    else:
        c = as_hyperparameter(-math.log(float(decay)), dtype)
        rho_inf = as_hyperparameter((1 + float(decay)) / (1 - float(decay)), dtype)
    x = t * c
    small = x < 1
    ts = jnp.where(small, t, 0)
    xs = ts * c  # <= 1: the powers below cannot overflow
    series = ts
    for k, b2k in _BERNOULLI:  # c^(2k-1) (1 - t^2k) = c^(2k-1) - x^2k / c
        weight = as_hyperparameter(2 * b2k / math.factorial(2 * k), dtype)
        series = series + weight * (c ** (2 * k - 1) - xs ** (2 * k) / c)
    direct = rho_inf - 2 * t / jnp.expm1(x)
    return jnp.where(small, series, direct), rho_inf


def _check_threshold(threshold: Any) -> None:
    number = _concrete(threshold)
    if number is not None and not (math.isfinite(number) and number >= 4):
        raise ValueError(
            f"`threshold` must be a finite number >= 4 (the rectifier needs rho_t >= 4), got "
            f"{number!r}; use 5.0 (torch, optax, the authors' code) or 4.0 (the paper)."
        )


def check_fallback(fallback: Any) -> None:
    if fallback not in _FALLBACKS:
        raise ValueError(
            f"`fallback` must be 'sgd' (step along the corrected momentum, torch and optax) or "
            f"'none' (no step, the authors' code), got {fallback!r}."
        )


class RectificationState(NamedTuple):
    """The state of `rectification`: the step count (``int32``) and the adaptive block's state."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    adaptive: Any


def rectification(
    adaptive: GradientTransformation,
    decay: float = 0.999,
    *,
    threshold: float = 5.0,
    inclusive: bool = False,
    fallback: str = "sgd",
) -> MomentTransformation:
    r"""RAdam's rectifier around an adaptive block: :math:`r_t\, A(u_t)`, or a fallback early on.

    .. math::
        \rho_\infty = \frac{2}{1 - \beta} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta^t}{1 - \beta^t}, \qquad
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\, \rho_\infty}
        {(\rho_\infty - 4)(\rho_\infty - 2)\, \rho_t}}, \\
        u_t \leftarrow r_t\, A(u_t) \text{ if } \rho_t > \tau \text{ (or } \ge \tau
        \text{ when inclusive), else } u_t \text{ (``"sgd"``) or } 0 \text{ (``"none"``)}.

    :math:`A` is ``adaptive`` (for RAdam, `scale_by_second_moment`), which runs on every step so
    its moments keep up; inside `adamx.chain` it gets the gradient of this block's run. The
    fallback is linear in :math:`u_t`, so the block commutes with `bias_correction`.

    Args:
      adaptive: the transformation :math:`A`, usually a `MomentTransformation`.
      decay: :math:`\beta`, the decay of the second moment, in ``[0, 1)``.
      threshold: :math:`\tau >= 4`.
      inclusive: rectify when :math:`\rho_t \ge \tau` instead of :math:`\rho_t > \tau`.
      fallback: ``"sgd"`` (pass :math:`u_t` through) or ``"none"`` (output 0).

    Returns:
      A `MomentTransformation` with state `RectificationState`.
    """
    check_decay(decay, "decay")
    _check_threshold(threshold)
    check_fallback(fallback)
    passes_gradient = isinstance(adaptive, MomentTransformation)

    def init_fn(params):
        return RectificationState(count=zero_count(), adaptive=adaptive.init(params))

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del extra_args
        count = safe_increment(state.count)
        if passes_gradient:
            gradient = updates if gradient is None else gradient
            adapted, adaptive_state = adaptive.update(
                updates, state.adaptive, params, gradient=gradient
            )
        else:
            adapted, adaptive_state = adaptive.update(updates, state.adaptive, params)

        def one(u, a):
            cdt = compute_dtype(u.dtype, a.dtype)
            rdt = real_dtype(cdt)
            rho, rho_inf = _sma_length(decay, count, rdt)
            tau = as_hyperparameter(threshold, rdt)
            on = rho >= tau if inclusive else rho > tau
            ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
            r = jnp.sqrt(jnp.where(on, ratio, 1))  # off the rectified branch the ratio may be < 0
            off = u.astype(cdt) if fallback == "sgd" else jnp.zeros_like(u, cdt)
            return jnp.where(on, r.astype(cdt) * a.astype(cdt), off).astype(u.dtype)

        return jax.tree.map(one, updates, adapted), RectificationState(count, adaptive_state)

    return MomentTransformation(init_fn, update_fn)


def root_bias_correction(decay: float = 0.999) -> MomentTransformation:
    r"""Multiply by :math:`\sqrt{1 - \beta^t}`: a second moment's correction applied after its root.

    .. math::
        u_t \leftarrow \sqrt{1 - \beta^t}\; u_t.

    After an uncorrected ``scale_by_second_moment(bias_correction=False)`` it gives the
    ":math:`\hat\epsilon`" form :math:`\sqrt{1-\beta^t}\, u / (\sqrt{v_t} + \epsilon)` of Kingma &
    Ba's section 2, which torch's RAdam and the RAdam and AdaBelief authors' code use:
    :math:`\epsilon` enters before the correction of :math:`v`, i.e. as
    :math:`\epsilon / \sqrt{1 - \beta^t}` next to :math:`\sqrt{\hat v_t}`.

    Args:
      decay: :math:`\beta`, in ``[0, 1)``.

    Returns:
      A `MomentTransformation` with state `BiasCorrectionState` (the step count).
    """
    check_decay(decay, "decay")

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = safe_increment(state.count)

        def one(u):
            cdt = compute_dtype(u.dtype)
            root = jnp.sqrt(_correction(decay, count, real_dtype(cdt)))
            return (u.astype(cdt) * root.astype(cdt)).astype(u.dtype)

        return jax.tree.map(one, updates), BiasCorrectionState(count)

    return MomentTransformation(init_count, update_fn)
