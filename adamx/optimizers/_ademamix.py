"""AdEMAMix: Adam whose numerator mixes in a slow, uncorrected EMA of the gradient."""

from __future__ import annotations

import math
from collections.abc import Callable
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
    MomentTransformation,
    ScalarOrSchedule,
    safe_increment,
    zero_count,
)
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._validate import check_decay, check_non_negative
from ..storage._storage import MomentStorage, init_buffers

__all__ = ["AddSlowEmaState", "add_slow_ema", "ademamix", "scale_by_ademamix"]

_SCHEDULE_STEPS = ("count", "step")


def _as_float(step: jax.Array) -> jax.Array:
    """A step count as JAX's default float (float64 under ``jax_enable_x64``)."""
    return jnp.asarray(step).astype(jnp.result_type(float))


def _linear_warmup(final: float, warmup: int) -> Callable[[jax.Array], jax.Array]:
    r"""The paper's :math:`\alpha(s) = \min(s/T, 1)\, \alpha` (``linear_warmup_scheduler``)."""

    def schedule(step):
        a = _as_float(step) / warmup
        return jnp.where(step < warmup, a * final, jnp.full_like(a, final))

    return schedule


def _half_life(beta: float, log_eps: float = 0.0) -> float:
    """The half-life of an EMA of decay ``beta``, less one: ``ln(1/2) / ln(beta + log_eps) - 1``."""
    return math.log(0.5) / math.log(beta + log_eps) - 1


def _half_life_warmup(
    start: float, final: float, warmup: int, log_eps: float = 0.0
) -> Callable[[jax.Array], jax.Array]:
    r"""The paper's :math:`\beta_3(s)`: the half-life of the EMA interpolated linearly from that of
    ``start`` to that of ``final`` over ``warmup`` steps (``linear_hl_warmup_scheduler``)."""
    h_start, h_final = _half_life(start, log_eps), _half_life(final, log_eps)

    def schedule(step):
        a = _as_float(step) / warmup
        h = (1 - a) * h_start + a * h_final
        beta = jnp.power(jnp.full_like(h, 0.5), 1 / (h + 1))
        return jnp.where(step < warmup, beta, jnp.full_like(beta, final))

    return schedule


class AddSlowEmaState(NamedTuple):
    """The state of `add_slow_ema`: the step count (``int32``) and the slow EMA :math:`m_2`."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    ema: Any


def add_slow_ema(
    decay: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    *,
    schedule_step: str = "count",
    dtype: Any = None,
    storage: MomentStorage | None = None,
) -> MomentTransformation:
    r"""Add :math:`\alpha_t` times a slow, uncorrected EMA of the gradient: AdEMAMix's block.

    .. math::
        m_{2,t} = \beta_{3,t}\, m_{2,t-1} + (1 - \beta_{3,t})\, g_t, \qquad
        u_t \leftarrow u_t + \alpha_t\, m_{2,t}, \qquad m_{2,0} = 0.

    :math:`g_t` is the gradient of this block's run in `adamx.chain` (used on its own, its input);
    :math:`u_t` the updates flowing in (AdEMAMix's :math:`\hat m_{1,t}`). ``decay`` and ``alpha``
    may be schedules, evaluated at the 0-based count (``schedule_step="count"``) or at the 1-based
    step (``"step"``).

    Args:
      decay: :math:`\beta_3` in ``[0, 1)``, or a schedule.
      alpha: :math:`\alpha >= 0`, or a schedule.
      schedule_step: ``"count"`` (0-based) or ``"step"`` (1-based): what the schedules see.
      dtype: dtype of the stored :math:`m_2`; ``None`` keeps each parameter's dtype.
      storage: a `MomentStorage` (instead of ``dtype``).

    Returns:
      A `MomentTransformation` with state `AddSlowEmaState`.
    """
    if not callable(decay):
        check_decay(decay, "b3")
    if not callable(alpha):
        check_non_negative(alpha, "alpha")
    if schedule_step not in _SCHEDULE_STEPS:
        raise ValueError(
            "`schedule_step` must be 'count' (schedules see 0, 1, 2, ...: optax and the official "
            f"JAX code) or 'step' (1, 2, 3, ...: the official PyTorch code), got {schedule_step!r}."
        )
    storage = _resolve_storage(storage, dtype, "dtype")

    def init_fn(params):
        return AddSlowEmaState(count=zero_count(), ema=init_buffers(storage, params))

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del params, extra_args
        gradient = updates if gradient is None else gradient
        step = state.count if schedule_step == "count" else safe_increment(state.count)
        b3 = _evaluate(decay, step, "b3") if callable(decay) else decay
        mix = _evaluate(alpha, step, "alpha") if callable(alpha) else alpha

        def add_slow(u, m2, g, b, alpha):
            m2 = b * m2 + (1 - b) * g.astype(u.dtype)
            return u + alpha * m2, m2

        hp = (b3, mix)
        new_updates, slow = update_moment(
            add_slow, updates, state.ema, storage, gradient, hyperparameters=hp
        )
        return new_updates, AddSlowEmaState(safe_increment(state.count), slow)

    return MomentTransformation(init_fn, update_fn)


def _schedules(
    b1: float,
    b3: ScalarOrSchedule,
    alpha: ScalarOrSchedule,
    alpha_warmup: int | None,
    b3_warmup: int | None,
    half_life_eps: float,
) -> tuple[ScalarOrSchedule, ScalarOrSchedule]:
    """``(b3, alpha)`` with the paper's warm-up schedules built where a warm-up is given."""
    for name, warmup, value in (("alpha", alpha_warmup, alpha), ("b3", b3_warmup, b3)):
        if warmup is None:
            continue
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(
                f"`{name}_warmup` must be a number of steps >= 1 (or None for no warm-up), got "
                f"{warmup!r}."
            )
        if callable(value):
            raise ValueError(
                f"`{name}` is already a schedule; pass either a schedule for `{name}` or "
                f"`{name}_warmup`, not both."
            )
    if b3_warmup is not None:
        check_decay(b3, "b3")
        check_non_negative(half_life_eps, "half_life_eps")
        b3 = _half_life_warmup(b1, float(b3), b3_warmup, half_life_eps)  # type: ignore[arg-type]
    if alpha_warmup is not None:
        check_non_negative(alpha, "alpha")
        alpha = _linear_warmup(float(alpha), alpha_warmup)  # type: ignore[arg-type]
    return b3, alpha


def scale_by_ademamix(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    alpha_warmup: int | None = None,
    b3_warmup: int | None = None,
    schedule_step: str = "count",
    half_life_eps: float = 0.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""AdEMAMix's direction, :math:`(\hat m_{1,t} + \alpha_t m_{2,t}) / (\sqrt{\hat v_t +
    \epsilon_{root}} + \epsilon)`.

    The chain ``ema(b1)``, ``bias_correction(b1)``, ``add_slow_ema(b3, alpha)``,
    ``scale_by_second_moment(b2)``. See `ademamix` for the update and arguments (``alpha``
    defaults to 5, as `ademamix`; ``optax.contrib.scale_by_ademamix`` defaults to 6).

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(m1), BiasCorrectionState(count),
      AddSlowEmaState(count, m2), SecondMomentState((EmaState(nu), BiasCorrectionState(count))))``.
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    b3, alpha = _schedules(b1, b3, alpha, alpha_warmup, b3_warmup, half_life_eps)
    return chain(
        ema(b1, dtype=mu_dtype),
        bias_correction(b1),
        add_slow_ema(b3, alpha, schedule_step=schedule_step, dtype=mu_dtype),
        scale_by_second_moment(b2, eps=eps, eps_root=eps_root, nu_dtype=nu_dtype),
    )


@descent_example(
    "ademamix(learning_rate=0.1, alpha_warmup=100, b3_warmup=100)", "4.4200 3.8784 3.3760"
)
def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: float = 1e-8,
    *,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    alpha_warmup: int | None = None,
    b3_warmup: int | None = None,
    schedule_step: str = "count",
    half_life_eps: float = 0.0,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024): AdamW plus a slow EMA in the numerator.

    .. math::
        m_{1,t} &= \beta_1 m_{1,t-1} + (1 - \beta_1)\, g_t, &
        m_{2,t} &= \beta_{3,t}\, m_{2,t-1} + (1 - \beta_{3,t})\, g_t, \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2, &
        \theta_t &= \theta_{t-1} - \eta_t \left( \frac{m_{1,t}/(1 - \beta_1^t)
        + \alpha_t\, m_{2,t}}{\sqrt{v_t/(1 - \beta_2^t) + \epsilon_{root}} + \epsilon}
        + \lambda\, \theta_{t-1} \right)

    with zero initial moments. The slow EMA :math:`m_2` is *not* bias-corrected. With warm-ups
    (the paper's schedulers, recommended with :math:`T` the training length) :math:`\alpha_t =
    \min(s/T_\alpha, 1)\,\alpha` and :math:`\beta_{3,t}` interpolates the EMA's half-life
    :math:`h(\beta) = \ln\frac12 / \ln\beta - 1` linearly from :math:`h(\beta_1)` to
    :math:`h(\beta_3)` over :math:`T_{\beta_3}` steps, :math:`\beta_{3,t} = 2^{-1/(h+1)}`.
    :math:`\alpha = 0` is AdamW exactly.

    Where the references disagree adamx follows optax and the official JAX code: ``alpha=5``
    (the official PyTorch default is 2, ``optax.contrib.scale_by_ademamix``'s is 6) and schedules
    are evaluated at the 0-based count :math:`s = t - 1` (``schedule_step="count"``), like every
    adamx schedule. ``schedule_step="step"`` evaluates them at :math:`s = t`, as the official
    PyTorch code does (its warm-ups reach their final values one step earlier). The official
    PyTorch warm-up adds 1e-8 to :math:`\beta` inside the logarithm of the half-life, which changes
    :math:`1 - \beta_{3,t}` by about :math:`10^{-4}` (relative) during the warm-up; adamx uses the
    exact formula (as the official JAX code), and ``half_life_eps=1e-8`` gives the PyTorch one.

    Reference: matches ``optax.contrib.ademamix`` (0.2.8) with and without schedules, and a NumPy
    transcription of the official PyTorch update (``apple/ml-ademamix``) with its schedulers,
    ``schedule_step="step"`` and ``half_life_eps=1e-8`` (``tests/test_ademamix.py``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the fast EMA, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the second moment, in ``[0, 1)``.
      b3: :math:`\beta_3`, decay of the slow EMA, in ``[0, 1)``, or a schedule.
      alpha: :math:`\alpha >= 0`, the weight of the slow EMA, or a schedule.
      eps: :math:`\epsilon`, added to the root.
      weight_decay: :math:`\lambda >= 0` (decoupled, times :math:`\eta_t`), or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      alpha_warmup: :math:`T_\alpha`, steps of the linear warm-up of :math:`\alpha` from 0;
        ``None``: constant :math:`\alpha`.
      b3_warmup: :math:`T_{\beta_3}`, steps of the half-life warm-up of :math:`\beta_3` from
        :math:`\beta_1`; ``None``: constant :math:`\beta_3`.
      schedule_step: ``"count"`` (0-based, default) or ``"step"`` (1-based, official PyTorch):
        where the :math:`\alpha` and :math:`\beta_3` schedules are evaluated.
      half_life_eps: added to :math:`\beta` inside the logarithm of the :math:`\beta_3` warm-up
        (official PyTorch: ``1e-8``; default ``0``, the exact half-life).
      eps_root: :math:`\epsilon_{root}`, added inside the root.
      mu_dtype: dtype of :math:`m_1` and :math:`m_2` (default: the parameter's).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation`: ``chain(scale_by_ademamix(...), add_decayed_weights(weight_decay,
      mask), scale_by_learning_rate(learning_rate))``.

    References:
      Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025,
      https://arxiv.org/abs/2409.03137
    """
    return chain(
        scale_by_ademamix(
            b1,
            b2,
            b3,
            alpha,
            eps,
            eps_root,
            alpha_warmup=alpha_warmup,
            b3_warmup=b3_warmup,
            schedule_step=schedule_step,
            half_life_eps=half_life_eps,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
