"""ADOPT: normalise by the previous second moment, then take momentum (the official update)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import update_moment
from ..blocks._moments import _complement, _resolve_storage, ema
from ..blocks._scale import _evaluate, scale_by_learning_rate
from ..blocks._second_moment import _abs_squared, _real_like, _sqrt, guards_zero, safe_divide
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import (
    GradientTransformation,
    MomentTransformation,
    ScalarOrSchedule,
    safe_increment,
    zero_count,
)
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._validate import check_decay, check_non_negative
from ..storage._storage import MomentStorage, init_buffers

__all__ = [
    "DelayedSecondMomentState",
    "adopt",
    "quarter_power",
    "scale_by_adopt",
    "scale_by_delayed_second_moment",
]


def quarter_power(step: jax.Array) -> jax.Array:
    r"""ADOPT's default clip value :math:`c_t = (t - 1)^{1/4}`, of the previous-step count."""
    return step**0.25


def _clip(n: jax.Array, c: jax.Array) -> jax.Array:
    """``n`` clipped to ``[-c, c]``; a complex ``n`` keeps its phase (its magnitude is clipped)."""
    if not jnp.iscomplexobj(n):
        return jnp.clip(n, -c, c)
    magnitude = jnp.abs(n)
    over = magnitude > c
    return jnp.where(over, n * (c / jnp.where(over, magnitude, 1)).astype(n.dtype), n)


class DelayedSecondMomentState(NamedTuple):
    """The state of `scale_by_delayed_second_moment`: the step count (``int32``) and :math:`v`."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    nu: Any


def scale_by_delayed_second_moment(
    decay: float = 0.9999,
    *,
    eps: float = 1e-6,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.typing.ArrayLike] | None = None,
    nu_dtype: Any = None,
    storage: MomentStorage | None = None,
) -> MomentTransformation:
    r"""Divide the updates by the root of the *previous* second moment, then clip: ADOPT's block.

    .. math::
        n_t = \operatorname{clip}\!\left(\frac{u_t}{\max(\sqrt{v_{t-1}}, \epsilon)},\ c_t\right),
        \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2,

    for :math:`t \ge 2`. The first call only sets :math:`v_1 = |g_1|^2` and outputs zeros.
    :math:`c_t` = ``clip_value_fn(t - 1)``, the count of previous calls as a float (ADOPT's
    :math:`(t-1)^{1/4}` by default; ``use_clipping=False``: no clipping). :math:`\epsilon` is a floor on the
    root, not an addend. :math:`g_t` is the gradient of this block's run in `adamx.chain` (used on
    its own, its input). For complex gradients :math:`v` is real and the clip bounds
    :math:`|n_t|`, keeping the phase. With ``eps = 0`` a zero root gives a zero output, not NaN.

    Args:
      decay: :math:`\beta_2`, in ``[0, 1)``.
      eps: :math:`\epsilon >= 0`, the floor of :math:`\sqrt{v_{t-1}}`.
      use_clipping: clip (the default); ``False`` turns clipping off (optax's keyword).
      clip_value_fn: :math:`c` as a function of the previous-step count; ``None`` (the default):
        `quarter_power`. A function default would be taken for a schedule by
        ``inject_hyperparams``, hence ``None``.
      nu_dtype: dtype of the stored :math:`v`; ``None`` keeps the parameter's real dtype.
      storage: a `MomentStorage` for :math:`v` (instead of ``nu_dtype``).

    Returns:
      A `MomentTransformation` with state `DelayedSecondMomentState`.
    """
    check_decay(decay, "decay")
    check_non_negative(eps, "eps")
    clip = quarter_power if clip_value_fn is None else clip_value_fn
    storage = _resolve_storage(storage, nu_dtype, "nu_dtype")
    guard_zero = guards_zero(eps)

    def init_fn(params):
        nu = init_buffers(storage, jax.tree.map(_real_like, params))
        return DelayedSecondMomentState(count=zero_count(), nu=nu)

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del params, extra_args
        gradient = updates if gradient is None else gradient
        first = state.count == 0

        def step(u, v, g, eps, b, c):  # v is real; c = 1 - b
            n = safe_divide(u, jnp.maximum(_sqrt(v), eps).astype(u.dtype), guard_zero)
            if use_clipping:
                n = _clip(n, jnp.asarray(clip(state.count.astype(v.dtype))).astype(v.dtype))
            n = jnp.where(first, jnp.zeros_like(n), n)  # the first call makes no step
            g2 = _abs_squared(g).astype(v.dtype)
            return n, jnp.where(first, g2, b * v + c * g2)

        hp = (eps, decay, _complement(decay))
        scaled, nu = update_moment(
            step, updates, state.nu, storage, gradient, hyperparameters=hp, real=True
        )
        return scaled, DelayedSecondMomentState(safe_increment(state.count), nu)

    return MomentTransformation(init_fn, update_fn)


def scale_by_adopt(
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    *,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.typing.ArrayLike] | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""ADOPT's direction :math:`m_t`: ``chain(scale_by_delayed_second_moment(b2), ema(b1))``.

    The normalised gradient is zero on the first call, so :math:`m_1 = 0` and the first step is
    zero. :math:`m` is not bias-corrected. See `adopt` for the update and arguments.

    Returns:
      A `MomentTransformation`; its state is ``(DelayedSecondMomentState(count, nu),
      EmaState(mu))``.
    """
    check_decay(b1, "b1")
    return chain(
        scale_by_delayed_second_moment(
            b2, eps=eps, use_clipping=use_clipping, clip_value_fn=clip_value_fn, nu_dtype=nu_dtype
        ),
        ema(b1, dtype=mu_dtype),
    )


def _after_first_step(weight_decay: ScalarOrSchedule) -> Callable[[jax.Array], jax.Array]:
    """``weight_decay`` as a schedule that is 0 on the first call (when ADOPT makes no step)."""

    def schedule(count):
        value = (
            _evaluate(weight_decay, count, "weight-decay")
            if callable(weight_decay)
            else (weight_decay)
        )
        return jnp.where(count > 0, value, jnp.zeros_like(value))

    return schedule


@descent_example("adopt(learning_rate=0.1)", "5.0000 4.9402 4.8281")
def adopt(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    *,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.typing.ArrayLike] | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""ADOPT (Taniguchi et al., 2024): Adam normalised by the previous :math:`v`, momentum after.

    .. math::
        v_1 &= |g_1|^2, \quad m_1 = 0, \quad \theta_1 = \theta_0 \quad \text{(the first call
        makes no step)}, \\
        n_t &= \operatorname{clip}\!\left(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},\
        (t-1)^{1/4}\right), \qquad
        m_t = \beta_1 m_{t-1} + (1 - \beta_1)\, n_t, \\
        \theta_t &= \theta_{t-1} - \eta_t\, (m_t + \lambda\, \theta_{t-1}), \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2 \qquad (t \ge 2).

    :math:`\epsilon` is a floor on the root (a clamp, not an addend), :math:`m` is not
    bias-corrected, and the clip value is taken of the previous-step count :math:`t - 1`
    (``clip_value_fn``; ``use_clipping=False`` turns clipping off, the first arXiv version). The decoupled decay
    is skipped on the first call, as in the official code.

    Reference: matches a NumPy transcription of the official ``iShohei220/adopt`` update and
    ``optax.contrib.adopt`` (0.2.8) step for step, with and without clipping
    (``tests/test_adopt.py``); the two references agree. The official
    ``weight_decay`` with ``decouple=False`` (its default) is L2:
    ``adamx.chain(adamx.add_decayed_weights(wd), adopt(lr))``; ``decouple=True`` is this
    ``weight_decay``. optax's ``nesterov`` option is not provided. Defaults are the official ones.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the momentum, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the second moment, in ``[0, 1)``.
      eps: :math:`\epsilon`, the floor of :math:`\sqrt{v}`.
      weight_decay: :math:`\lambda >= 0` (decoupled), or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      use_clipping: clip (the default); ``False`` turns clipping off (optax's keyword; before
        issue 21 this was ``clip_value_fn=None``, which now means the default `quarter_power`).
      clip_value_fn: the clip value as a function of the previous-step count; ``None`` (the
        default): `quarter_power`, :math:`(t-1)^{1/4}`.
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation`: ``chain(scale_by_adopt(...), add_decayed_weights(decay skipped
      on the first call, mask), scale_by_learning_rate(lr))``.

    References:
      Taniguchi, Harada, Minegishi, Oshima, Jeong, Nagahara, Iiyama, Suzuki, Iwasawa & Matsuo,
      "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate", NeurIPS 2024,
      https://arxiv.org/abs/2411.02853
    """
    check_non_negative(weight_decay, "weight_decay")
    return chain(
        scale_by_adopt(
            b1,
            b2,
            eps,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        add_decayed_weights(_after_first_step(weight_decay), mask),
        scale_by_learning_rate(learning_rate),
    )
