"""LaProp: momentum applied to the normalised gradient, after the authors' code."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import unzip
from ..blocks._moments import _complement, _resolve_storage, bias_correction, ema
from ..blocks._scale import _evaluate, scale_by_learning_rate
from ..blocks._second_moment import scale_by_second_moment
from ..blocks._weight_decay import decay_after_update
from ..core._base import (
    GradientTransformation,
    MomentTransformation,
    ScalarOrSchedule,
    safe_increment,
    zero_count,
)
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._dtypes import Hyperparameters, compute_dtype, real_dtype
from ..core._trees import map_like
from ..core._validate import check_decay, check_learning_rate, check_non_negative
from ..storage._storage import MomentStorage, init_buffers, stored_dtypes

__all__ = ["WeightedEmaState", "laprop", "scale_by_laprop", "weighted_ema"]


class WeightedEmaState(NamedTuple):
    r"""The state of `weighted_ema`: the step count (``int32``), the weighted average :math:`m` (as
    stored) and, per parameter, the scalar :math:`c`, the average of the weights."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    ema: Any
    weight: Any


def weighted_ema(
    decay: float,
    weight: ScalarOrSchedule,
    *,
    dtype: Any = None,
    storage: MomentStorage | None = None,
) -> MomentTransformation:
    r"""A moving average of the updates weighted by :math:`w_t`, corrected by the same average of
    :math:`w`: LaProp's momentum with the learning rate inside.

    .. math::
        m_t = \beta\, m_{t-1} + (1 - \beta)\, w_t u_t, \qquad
        c_t = \beta\, c_{t-1} + (1 - \beta)\, w_t, \qquad
        \text{output } m_t / c_t,

    with :math:`m_0 = c_0 = 0` (output 0 while :math:`c_t = 0`). For a constant :math:`w` this is
    ``chain(ema(decay), bias_correction(decay))``, since :math:`c_t = w (1 - \beta^t)`; with a
    schedule it is the bias-corrected average of the updates weighted by the learning rates they
    were taken with.

    Args:
      decay: :math:`\beta`, in ``[0, 1)``.
      weight: :math:`w_t >= 0`, a number or a schedule of the step count (0 on the first update).
      dtype: dtype of the stored :math:`m`; ``None`` keeps each parameter's dtype.
      storage: a `MomentStorage` (instead of ``dtype``).

    Returns:
      A `MomentTransformation` with state `WeightedEmaState`.
    """
    check_decay(decay, "decay")
    check_learning_rate(weight, "weight")
    storage = _resolve_storage(storage, dtype, "dtype")

    def init_fn(params):
        def scalar(p):
            return jnp.zeros((), real_dtype(compute_dtype(jnp.result_type(p))))

        return WeightedEmaState(
            count=zero_count(),
            ema=init_buffers(storage, params),
            weight=jax.tree.map(scalar, params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        w = _evaluate(weight, state.count, "weight") if callable(weight) else weight

        hp = Hyperparameters(decay, _complement(decay), w)  # converted once per dtype

        def one(u, stored, c_stored):
            cdt = compute_dtype(u.dtype, c_stored.dtype, *stored_dtypes(stored))
            rdt = real_dtype(cdt)
            keep, take, w_t = hp(rdt)
            weighted = (take * w_t).astype(cdt) * u.astype(cdt)
            m = keep.astype(cdt) * storage.read(stored, cdt) + weighted
            c = keep * c_stored.astype(rdt) + take * w_t
            positive = c > 0
            out = jnp.where(positive, m / jnp.where(positive, c, 1).astype(cdt), 0)
            return out.astype(u.dtype), storage.write(m, stored), c.astype(c_stored.dtype)

        triples = map_like(one, updates, state.ema, "optimizer state", state.weight)
        new_updates, buffers, weights = unzip(updates, triples, 3)
        return new_updates, WeightedEmaState(safe_increment(state.count), buffers, weights)

    return MomentTransformation(init_fn, update_fn)


def scale_by_laprop(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-15,
    *,
    learning_rate: ScalarOrSchedule | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""LaProp's direction: momentum of the gradient *after* it is divided by the second moment.

    With ``learning_rate`` ``None`` or a number: ``chain(scale_by_second_moment(b2, eps=eps),
    ema(b1), bias_correction(b1))``, i.e. :math:`\hat g_t = g_t/(\sqrt{\hat v_t} + \epsilon)`, then
    :math:`m_t/(1 - \beta_1^t)` with :math:`m_t = \beta_1 m_{t-1} + (1 - \beta_1)\hat g_t`. With a
    schedule, the momentum is `weighted_ema` by the schedule (the official code's learning rate
    inside the momentum and its moving-average correction). See `laprop`.

    Returns:
      A `MomentTransformation`; its state is ``(SecondMomentState((EmaState(nu),
      BiasCorrectionState(count))), EmaState(mu), BiasCorrectionState(count))``, or with a
      schedule ``(SecondMomentState(...), WeightedEmaState(count, mu, c))``.
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    check_non_negative(eps, "eps")
    normalise = scale_by_second_moment(b2, eps=eps, nu_dtype=nu_dtype)
    if callable(learning_rate):
        return chain(normalise, weighted_ema(b1, learning_rate, dtype=mu_dtype))
    return chain(normalise, ema(b1, dtype=mu_dtype), bias_correction(b1))


@descent_example("laprop(learning_rate=0.1)", "4.4200 3.8895 3.4066")
def laprop(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-15,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""LaProp (Ziyin, Wang & Ueda, 2020): Adam with momentum and adaptivity separated.

    .. math::
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2, &
        \hat g_t &= \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}, \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, \eta_t\, \hat g_t, &
        c_t &= \beta_1 c_{t-1} + (1 - \beta_1)\, \eta_t, \\
        \theta'_t &= \theta_{t-1} - \eta_t\, \frac{m_t}{c_t}, &
        \theta_t &= (1 - \lambda)\, \theta'_t,

    with :math:`m_0 = v_0 = c_0 = 0`. Unlike Adam, the momentum averages the *normalised* gradient
    :math:`\hat g_t`. This is the authors' code (Z-T-WANG/LaProp-Optimizer ``laprop.py``): the
    learning rate sits inside the momentum and :math:`c_t`, an average of the learning rates, is the
    bias correction, so a schedule weights each :math:`\hat g_s` by its :math:`\eta_s` (for a
    constant :math:`\eta`, :math:`c_t = \eta (1 - \beta_1^t)` and the step is Adam-like,
    :math:`\eta\, m'_t / (1 - \beta_1^t)`). The weight decay acts *after* the step and is *not*
    multiplied by the learning rate (``p -= wd * p``).

    Where implementations differ: pytorch-optimizer's ``LaProp`` puts :math:`\epsilon` before the
    bias correction of :math:`v` and decays by :math:`\eta\lambda\theta_{t-1}` (AdamW-style; in adamx
    ``chain(scale_by_laprop(...), add_decayed_weights(wd), scale_by_learning_rate(lr))`` gives the
    latter). At a step where the learning rate is exactly 0 the official code moves the
    parameters by :math:`m_t` (its ``lr != 0`` guard); adamx does not move them. A learning rate
    changed between steps through `inject_hyperparams` is taken as constant by the momentum; pass a
    schedule to get the official weighting. The official ``amsgrad`` and ``centered`` options are
    not provided (``centered`` does not run in the official code).

    Reference: matches a NumPy transcription of the official ``LaProp.step`` in float64, with a
    cosine schedule and weight decay (``tests/test_laprop.py``).
    Defaults follow the official code (:math:`\beta = (0.9, 0.999)`, :math:`\epsilon = 10^{-15}`,
    no decay; its default ``lr`` is ``4e-4``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the momentum, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the second moment, in ``[0, 1)``.
      eps: :math:`\epsilon >= 0`, added to the root.
      weight_decay: :math:`\lambda` in ``[0, 1]`` (not multiplied by :math:`\eta`), or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).

    Returns:
      ``chain(scale_by_laprop(b1, b2, eps, learning_rate=learning_rate),
      scale_by_learning_rate(learning_rate), decay_after_update(weight_decay, mask))``.

    References:
      Ziyin, Wang & Ueda, "LaProp: Separating Momentum and Adaptivity in Adam", 2020,
      https://arxiv.org/abs/2002.04839
    """
    return chain(
        scale_by_laprop(
            b1, b2, eps, learning_rate=learning_rate, mu_dtype=mu_dtype, nu_dtype=nu_dtype
        ),
        scale_by_learning_rate(learning_rate),
        decay_after_update(weight_decay, mask),
    )
