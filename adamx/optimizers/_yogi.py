"""Yogi: Adam whose second moment changes additively, by a sign-controlled step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from ..blocks._map import update_moment
from ..blocks._moments import _complement, _resolve_storage, bias_correction, ema
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import scale_by_second_moment
from ..core._base import GradientTransformation, MomentTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._validate import check_decay, check_non_negative
from ..storage._storage import MomentStorage, filled, init_buffers

__all__ = ["YogiMomentState", "scale_by_yogi", "yogi", "yogi_moment"]


class YogiMomentState(NamedTuple):
    """The state of `yogi_moment`: :math:`v`, one buffer per parameter (as stored)."""

    nu: Any


def yogi_moment(
    decay: float = 0.999,
    *,
    initial_value: float = 1e-6,
    dtype: Any = None,
    storage: MomentStorage | None = None,
) -> MomentTransformation:
    r"""Yogi's estimator of the second moment: an additive, sign-controlled average.

    .. math::
        v_t = v_{t-1} - (1 - \beta_2)\, \mathrm{sign}(v_{t-1} - x_t)\, x_t, \qquad
        v_0 = v_{\text{init}},

    for inputs :math:`x_t \ge 0` (:math:`|g_t|^2` inside `scale_by_second_moment`). Adam's EMA
    moves :math:`v` by :math:`(1 - \beta_2)(x_t - v_{t-1})`, in proportion to :math:`v_{t-1}`;
    Yogi's step has the same sign but size :math:`(1 - \beta_2)\, x_t`, so :math:`v` grows or
    shrinks by at most that much per step whatever its value. :math:`v` stays positive when
    :math:`v_0 > 0`. Outputs :math:`v_t` (chain `bias_correction` for optax's :math:`\hat v_t`).

    Args:
      decay: :math:`\beta_2`, in ``[0, 1)``.
      initial_value: :math:`v_{\text{init}} >= 0` (optax: ``1e-6``).
      dtype: dtype of the stored :math:`v`; ``None`` keeps each parameter's dtype.
      storage: a `MomentStorage` (instead of ``dtype``).

    Returns:
      A `MomentTransformation` with state `YogiMomentState`.
    """
    check_decay(decay, "decay")
    storage = filled(_resolve_storage(storage, dtype, "dtype"), initial_value)

    def init_fn(params):
        return YogiMomentState(nu=init_buffers(storage, params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(x, v, c):  # c = 1 - b2
            s = c * x
            # v - sign(v - x) s, spelled as selects: an overflowed |g|^2 = inf keeps v = inf
            # (a zero update, as Adam's) where inf - inf would make it NaN.
            return jnp.where(v > x, v - s, jnp.where(v < x, v + s, v))

        hp = (_complement(decay),)
        v, buffers = update_moment(
            step, updates, state.nu, storage, hyperparameters=hp, keep_compute_dtype=True
        )
        return v, YogiMomentState(buffers)

    return MomentTransformation(init_fn, update_fn)


def scale_by_yogi(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""Yogi's direction, :math:`\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`.

    The chain ``ema(b1)`` (started at ``initial_accumulator_value``), ``bias_correction(b1)``,
    ``scale_by_second_moment(estimator=chain(yogi_moment(b2), bias_correction(b2)))``; same
    signature and numbers as ``optax.scale_by_yogi``. See `yogi` for the update and arguments.

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(mu), BiasCorrectionState(count),
      SecondMomentState((YogiMomentState(nu), BiasCorrectionState(count))))``.
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    check_non_negative(initial_accumulator_value, "initial_accumulator_value")
    first = ema(
        b1, storage=filled(_resolve_storage(None, mu_dtype, "mu_dtype"), initial_accumulator_value)
    )
    estimator = chain(
        yogi_moment(b2, initial_value=initial_accumulator_value, dtype=nu_dtype),
        bias_correction(b2),
    )
    return chain(
        first,
        bias_correction(b1),
        scale_by_second_moment(eps=eps, eps_root=eps_root, estimator=estimator),
    )


@descent_example("yogi(learning_rate=0.1)", "4.4202 3.8818 3.3853")
def yogi(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    *,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""Yogi (Zaheer et al., 2018): Adam with an additive second moment, as ``optax.yogi``.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        v_t &= v_{t-1} - (1 - \beta_2)\, \mathrm{sign}(v_{t-1} - |g_t|^2)\, |g_t|^2, \\
        \hat m_t &= \frac{m_t}{1 - \beta_1^t}, \quad \hat v_t = \frac{v_t}{1 - \beta_2^t}, &
        \theta_t &= \theta_{t-1} - \eta_t\, \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}}
        + \epsilon}

    with :math:`m_0 = v_0 = v_{\text{init}}` = ``initial_accumulator_value`` (``1e-6``, not 0)
    and :math:`\epsilon = 10^{-3}` by default (not Adam's ``1e-8``). :math:`v` moves by exactly
    :math:`(1 - \beta_2)|g_t|^2` per step, towards :math:`|g_t|^2`: it cannot collapse after a
    spike as fast as Adam's, nor be swamped by one. Bias-correcting these non-zero-started
    averages is optax's choice (and pytorch-optimizer's, which agrees with optax); whether the
    paper's algorithm corrects them is not settled here.

    Reference: matches ``optax.yogi`` (0.2.8) step for step
    (``tests/test_yogi.py``); torch has no Yogi.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the first moment, in ``[0, 1)``.
      b2: :math:`\beta_2`, the rate of the second moment, in ``[0, 1)``.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\epsilon_{root}`, added inside the root.
      initial_accumulator_value: :math:`v_{\text{init}} >= 0`, the start of :math:`m` and
        :math:`v`.
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation`: ``chain(scale_by_yogi(...), scale_by_learning_rate(lr))``.

    References:
      Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive Methods for Nonconvex Optimization",
      NeurIPS 2018,
      https://proceedings.neurips.cc/paper/2018/file/90365351ccc7437a1309dc64e4db32a3-Paper.pdf
      (no arXiv version)
    """
    return chain(
        scale_by_yogi(
            b1,
            b2,
            eps,
            eps_root,
            initial_accumulator_value,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )
