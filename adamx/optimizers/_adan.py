"""Adan: adaptive Nesterov momentum, with the official code's coefficients and proximal decay."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import update_moment
from ..blocks._moments import _resolve_storage, bias_correction, ema
from ..blocks._scale import _evaluate, scale_by_learning_rate
from ..blocks._second_moment import scale_by_second_moment
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import (
    GradientTransformation,
    ScalarOrSchedule,
    safe_increment,
    zero_count,
)
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._dtypes import as_hyperparameter, compute_dtype
from ..core._trees import map_like, resolve
from ..core._validate import check_decay, check_learning_rate, check_non_negative
from ..storage._storage import MomentStorage, init_buffers

__all__ = [
    "GradientDifferenceState",
    "ProximalStepState",
    "ScaleByAdanState",
    "adan",
    "gradient_difference",
    "proximal_step",
    "scale_by_adan",
]


class GradientDifferenceState(NamedTuple):
    """The state of `gradient_difference`: the step count (``int32``) and the last gradient."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    previous: Any


def gradient_difference(
    *, dtype: Any = None, storage: MomentStorage | None = None
) -> GradientTransformation:
    r"""The difference of consecutive gradients, Adan's :math:`d_t`.

    .. math::
        d_t = g_t - g_{t-1}, \qquad g_0 := g_1 \text{ (so } d_1 = 0\text{)}.

    Args:
      dtype: dtype of the stored :math:`g_{t-1}`; ``None`` keeps each parameter's dtype.
      storage: a `MomentStorage` (instead of ``dtype``).

    Returns:
      A `GradientTransformation` with state `GradientDifferenceState`.
    """
    storage = _resolve_storage(storage, dtype, "dtype")

    def init_fn(params):
        return GradientDifferenceState(zero_count(), init_buffers(storage, params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        first = state.count == 0

        def step(g, previous):  # d_t = g_t - g_{t-1}; d_1 = 0
            return jnp.where(first, jnp.zeros_like(g), g - previous), g

        differences, previous = update_moment(step, updates, state.previous, storage)
        return differences, GradientDifferenceState(safe_increment(state.count), previous)

    return GradientTransformation(init_fn, update_fn)


class ScaleByAdanState(NamedTuple):
    """The state of `scale_by_adan`, one entry per block.

    ``difference`` is `GradientDifferenceState` (:math:`g_{t-1}`); ``mu`` the state of
    ``chain(ema(b1), bias_correction(b1))`` on :math:`g` (:math:`m`); ``delta`` the same chain with
    ``b2`` on :math:`d` (:math:`v`); ``nu`` the `SecondMomentState` of :math:`n`.
    """

    difference: Any
    mu: Any
    delta: Any
    nu: Any


def scale_by_adan(
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""Adan's direction, :math:`(\hat m_t + \beta_2 \hat v_t) / (\sqrt{\hat n_t + \epsilon_{root}}
    + \epsilon)`.

    Built from the core blocks: `gradient_difference` gives :math:`d_t`; ``chain(ema(b1),
    bias_correction(b1))`` on :math:`g_t` gives :math:`\hat m_t`; the same with ``b2`` on
    :math:`d_t` gives :math:`\hat v_t`; ``scale_by_second_moment(b3)`` divides by the root of the
    corrected EMA of :math:`|g_t + \beta_2 d_t|^2`. See `adan` for the update.

    Returns:
      A `GradientTransformation` with state `ScaleByAdanState`.
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    check_decay(b3, "b3")
    difference = gradient_difference(dtype=mu_dtype)
    first = chain(ema(b1, dtype=mu_dtype), bias_correction(b1))
    delta = chain(ema(b2, dtype=mu_dtype), bias_correction(b2))
    denominator = scale_by_second_moment(b3, eps=eps, eps_root=eps_root, nu_dtype=nu_dtype)

    def init_fn(params):
        return ScaleByAdanState(
            difference=difference.init(params),
            mu=first.init(params),
            delta=delta.init(params),
            nu=denominator.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        d, difference_state = difference.update(updates, state.difference)
        m_hat, mu_state = first.update(updates, state.mu)
        v_hat, delta_state = delta.update(d, state.delta)

        def weighted(x, y):  # x + b2 y, in the compute dtype
            cdt = compute_dtype(x.dtype, y.dtype)
            return (x.astype(cdt) + as_hyperparameter(b2, cdt) * y.astype(cdt)).astype(x.dtype)

        direction = jax.tree.map(weighted, m_hat, v_hat)
        lookahead = jax.tree.map(weighted, updates, d)  # g_t + b2 d_t, whose square n averages
        scaled, nu_state = denominator.update(direction, state.nu, gradient=lookahead)
        return scaled, ScaleByAdanState(difference_state, mu_state, delta_state, nu_state)

    return GradientTransformation(init_fn, update_fn)


class ProximalStepState(NamedTuple):
    """The state of `proximal_step`: how many updates were made (``int32``, for schedules)."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count


def proximal_step(
    learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule = 0.0, mask: Any = None
) -> GradientTransformation:
    r"""The descent step with proximal (implicit) weight decay, Adan's default.

    .. math::
        \theta_t = \frac{\theta_{t-1} - \eta_t u_t}{1 + \eta_t \lambda}, \quad\text{i.e. the update}
        \quad -\eta_t\, \frac{u_t + \lambda\, \theta_{t-1}}{1 + \eta_t \lambda}.

    It takes the place of both ``add_decayed_weights(weight_decay)`` and
    ``scale_by_learning_rate(learning_rate)`` at the end of a chain (the decay needs the learning
    rate); the additive form :math:`-\eta_t (u_t + \lambda\theta_{t-1})` is those two blocks. With
    :math:`\lambda = 0` it equals ``scale_by_learning_rate`` exactly. Schedules are evaluated at
    the 0-based count.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all. Leaves not decayed get :math:`-\eta_t u_t`.

    Returns:
      A `GradientTransformation` with state `ProximalStepState`.
    """
    check_learning_rate(learning_rate)
    check_non_negative(weight_decay, "weight_decay")

    def init_fn(params):
        del params
        return ProximalStepState(count=zero_count())

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "`proximal_step` needs the parameters: call `update(grads, state, params)` with "
                "the current params."
            )
        lr = (
            _evaluate(learning_rate, state.count, "learning-rate")
            if callable(learning_rate)
            else learning_rate
        )
        wd = (
            _evaluate(weight_decay, state.count, "weight-decay")
            if callable(weight_decay)
            else weight_decay
        )
        chosen = resolve(mask, params)

        def step(u, p, decay=True):
            cdt = compute_dtype(u.dtype, p.dtype)
            eta = as_hyperparameter(lr, cdt)
            x = u.astype(cdt)
            if decay:
                lam = as_hyperparameter(wd, cdt)
                x = (x + lam * p.astype(cdt)) / (1 + eta * lam)
            return (-eta * x).astype(u.dtype)

        if chosen is None:
            updates = map_like(step, updates, params, "params")
        else:
            updates = jax.tree.map(lambda u, p, m: step(u, p, bool(m)), updates, params, chosen)
        return updates, ProximalStepState(safe_increment(state.count))

    return GradientTransformation(init_fn, update_fn)


@descent_example("adan(learning_rate=0.1, weight_decay=0.01)", "4.4112 3.8661 3.3635")
def adan(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    *,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    proximal: bool = True,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""Adan (Xie et al., 2022): Adam-style scaling of a Nesterov-corrected momentum.

    .. math::
        d_t &= g_t - g_{t-1} \quad (g_0 := g_1,\ d_1 = 0), &
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, d_t, &
        n_t &= \beta_3 n_{t-1} + (1 - \beta_3)\, |g_t + \beta_2 d_t|^2, \\
        u_t &= \frac{m_t / (1 - \beta_1^t) + \beta_2\, v_t / (1 - \beta_2^t)}
        {\sqrt{n_t / (1 - \beta_3^t) + \epsilon_{root}} + \epsilon}, &
        \theta_t &= \frac{\theta_{t-1} - \eta_t u_t}{1 + \eta_t \lambda}

    with :math:`m_0 = v_0 = n_0 = 0`. The :math:`\beta` are the official code's (the paper's are
    one minus these: its :math:`1 - \beta_2` is this :math:`\beta_2 = 0.92`). ``proximal=False``
    gives the additive decay :math:`\theta_t = \theta_{t-1} - \eta_t (u_t + \lambda \theta_{t-1})`
    (the official ``no_prox=True``, and optax's).

    optax 0.2.8's ``adan`` weights :math:`d_t` by :math:`1 - \beta_2 = 0.08` in :math:`n_t` and
    :math:`u_t` where the paper and the official code use :math:`\beta_2 = 0.92` (optax PR #1715), and
    adds ``eps_root=1e-8``; the two agree only where :math:`\beta_2 = 0.5`:
    ``adan(lr, b2=0.5, eps_root=1e-8, proximal=False)`` equals ``optax.adan(lr, b2=0.5)``.

    Reference: matches a NumPy transcription of the official ``sail-sg/Adan`` update (both decay
    forms) step for step (``tests/test_adan.py``). Defaults are the
    official ones; the official ``max_grad_norm`` is ``adamx.chain(adamx.clip_by_global_norm(c),
    adan(lr))``.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the gradient average, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the gradient-difference average and weight of :math:`d_t`.
      b3: :math:`\beta_3`, decay of the second moment, in ``[0, 1)``.
      eps: :math:`\epsilon`, added to the root.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      proximal: proximal decay (default, official) or additive (``False``, optax's).
      eps_root: :math:`\epsilon_{root}`, added inside the root (optax's default is ``1e-8``).
      mu_dtype: dtype of :math:`m`, :math:`v` and :math:`g_{t-1}` (default: the parameter's).
      nu_dtype: dtype of :math:`n` (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation`: ``chain(scale_by_adan(...), proximal_step(lr, weight_decay,
      mask))``, or with ``proximal=False`` ``chain(scale_by_adan(...),
      add_decayed_weights(weight_decay, mask), scale_by_learning_rate(lr))``.

    References:
      Xie, Zhou, Li, Lin & Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
      Deep Models", IEEE TPAMI 2024, https://arxiv.org/abs/2208.06677
    """
    direction = scale_by_adan(b1, b2, b3, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    if proximal:
        return chain(direction, proximal_step(learning_rate, weight_decay, mask))
    return chain(
        direction,
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
