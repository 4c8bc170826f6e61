"""RMSprop (plain, centered, with momentum) from the core blocks."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._moments import _resolve_storage, ema, trace
from ..blocks._moments import bias_correction as _bias_correction
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import _abs_squared, _real_like, scale_by_second_moment
from ..core._base import GradientTransformation, MomentTransformation, ScalarOrSchedule, identity
from ..core._chain import chain
from ..core._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ..core._validate import check_decay, check_non_negative
from ..storage._storage import MomentStorage, filled

__all__ = ["StddevState", "rmsprop", "scale_by_rms", "scale_by_stddev"]


def _eps_split(eps: Any, eps_in_sqrt: bool) -> tuple[Any, Any]:
    """``(eps, eps_root)`` for `scale_by_second_moment`: eps inside the root or outside it."""
    return (0.0, eps) if eps_in_sqrt else (eps, 0.0)


def _estimator(decay, initial_scale, bias_correction, dtype, storage) -> GradientTransformation:
    check_non_negative(initial_scale, "initial_scale")
    storage = filled(_resolve_storage(storage, dtype, "nu_dtype"), initial_scale)
    moment = ema(decay, storage=storage)
    return chain(moment, _bias_correction(decay)) if bias_correction else chain(moment)


def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    nu_dtype: Any = None,
    storage: MomentStorage | None = None,
) -> MomentTransformation:
    r"""RMSprop's direction: divide by the root of a moving average of :math:`|g|^2`.

    .. math::
        v_t = \alpha v_{t-1} + (1 - \alpha) |g_t|^2,\quad v_0 = v_{\text{init}}, \qquad
        u_t \leftarrow \frac{u_t}{\sqrt{v_t + \epsilon}} \text{ (eps in sqrt) or }
        \frac{u_t}{\sqrt{v_t} + \epsilon}.

    It is `scale_by_second_moment` with estimator ``ema(decay)`` started at ``initial_scale``
    (bias-corrected when ``bias_correction``) and ``eps`` placed inside or outside the root.
    Same signature and numbers as ``optax.scale_by_rms``; torch's RMSprop is ``eps_in_sqrt=False``.

    Args:
      decay: :math:`\alpha`, in ``[0, 1)`` (optax 0.9, torch 0.99).
      eps: :math:`\epsilon >= 0`.
      initial_scale: :math:`v_{\text{init}} >= 0` (TF1's RMSprop started at 1).
      eps_in_sqrt: add ``eps`` inside the root (optax's default) or outside (torch's).
      bias_correction: divide :math:`v_t` by :math:`1 - \alpha^t` before the root.
      nu_dtype: dtype of the stored :math:`v` (default: the parameter's real dtype).
      storage: a `MomentStorage` for :math:`v` (instead of ``nu_dtype``).

    Returns:
      A `MomentTransformation` with state ``SecondMomentState((EmaState(nu),))`` (plus a
      ``BiasCorrectionState`` with ``bias_correction``).
    """
    check_decay(decay, "decay")
    check_non_negative(eps, "eps")
    eps_out, eps_root = _eps_split(eps, eps_in_sqrt)
    return scale_by_second_moment(
        eps=eps_out,
        eps_root=eps_root,
        estimator=_estimator(decay, initial_scale, bias_correction, nu_dtype, storage),
    )


def _upcast(g: jax.Array) -> jax.Array:
    return g.astype(compute_dtype(g.dtype))


class StddevState(NamedTuple):
    """The state of `scale_by_stddev`: the estimators of :math:`E[g]` and :math:`E[|g|^2]`."""

    mean: Any
    estimator: Any


def scale_by_stddev(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""Centered RMSprop's direction (Graves, 2013): divide by a running standard deviation.

    .. math::
        \bar g_t = \alpha \bar g_{t-1} + (1 - \alpha) g_t, \qquad
        v_t = \alpha v_{t-1} + (1 - \alpha) |g_t|^2, \qquad
        u_t \leftarrow \frac{u_t}{\sqrt{\max(v_t - |\bar g_t|^2, 0) + \epsilon}}
        \text{ or } \frac{u_t}{\sqrt{\max(v_t - |\bar g_t|^2, 0)} + \epsilon}.

    :math:`\bar g_0 = 0`, :math:`v_0 = v_{\text{init}}`; with ``bias_correction`` both averages are
    divided by :math:`1 - \alpha^t` first. :math:`g_t` is the gradient of this block's run in
    `adamx.chain`, :math:`u_t` the updates flowing in. Same signature and numbers as
    ``optax.scale_by_stddev``; torch's ``RMSprop(centered=True)`` is ``eps_in_sqrt=False``.

    Where implementations differ: rounding can make :math:`v_t - |\bar g_t|^2` slightly negative
    (a constant gradient); optax and torch then return NaN (eps outside), adamx clamps it at 0.

    Args:
      decay, eps, initial_scale, eps_in_sqrt, bias_correction, nu_dtype: as in `scale_by_rms`.
      mu_dtype: dtype of the stored :math:`\bar g` (default: the parameter's).

    Returns:
      A `MomentTransformation` with state `StddevState`.
    """
    check_decay(decay, "decay")
    check_non_negative(eps, "eps")
    eps_out, eps_root = _eps_split(eps, eps_in_sqrt)
    mean = ema(decay, dtype=mu_dtype)
    mean = chain(mean, _bias_correction(decay)) if bias_correction else chain(mean)
    second = _estimator(decay, initial_scale, bias_correction, nu_dtype, None)

    def init_fn(params):
        return StddevState(
            mean=mean.init(params), estimator=second.init(jax.tree.map(_real_like, params))
        )

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del extra_args
        gradient = updates if gradient is None else gradient
        m_hat, mean_state = mean.update(jax.tree.map(_upcast, gradient), state.mean, params)
        v_hat, second_state = second.update(
            jax.tree.map(_abs_squared, gradient), state.estimator, params
        )

        def scale(u, m, v):
            cdt = compute_dtype(u.dtype, m.dtype, v.dtype)
            rdt = real_dtype(cdt)  # the variance of a complex gradient is real
            v = v.astype(rdt)
            variance = jnp.maximum(v - _abs_squared(m.astype(cdt)).astype(rdt), 0)
            # |g|^2 overflowed (|g| > ~1.8e19 in float32): Inf - Inf would give NaN; keep v = Inf,
            # hence a zero update, as `scale_by_second_moment` gives.
            variance = jnp.where(jnp.isinf(v), v, variance)
            root = jnp.sqrt(variance + as_hyperparameter(eps_root, rdt))
            denominator = root + as_hyperparameter(eps_out, rdt)
            positive = denominator != 0  # a NaN denominator propagates
            safe = jnp.where(positive, denominator, 1).astype(cdt)
            x = jnp.where(positive, u.astype(cdt) / safe, jnp.zeros((), cdt))
            return x.astype(u.dtype)

        scaled = jax.tree.map(scale, updates, m_hat, v_hat)
        return scaled, StddevState(mean=mean_state, estimator=second_state)

    return MomentTransformation(init_fn, update_fn)


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    learning_rate_in_momentum: bool = True,
) -> GradientTransformation:
    r"""RMSprop (Tieleman & Hinton, 2012), plain or centered (Graves, 2013), with optional momentum.

    .. math::
        v_t &= \alpha v_{t-1} + (1 - \alpha) |g_t|^2, \qquad
        d_t = \frac{g_t}{\sqrt{v_t + \epsilon}} \ \text{(or } \tfrac{g_t}{\sqrt{v_t} + \epsilon}
        \text{ with } \texttt{eps\_in\_sqrt=False}\text{)}, \\
        \theta_t &= \theta_{t-1} - \eta_t d_t \quad \text{(no momentum)}, \qquad
        b_t = \mu b_{t-1} + \eta_t d_t, \quad \theta_t = \theta_{t-1} - b_t \quad
        \text{(momentum)}.

    ``centered=True`` replaces :math:`v_t` by :math:`v_t - |\bar g_t|^2` (`scale_by_stddev`);
    ``nesterov=True`` steps by :math:`\eta_t d_t + \mu b_t`. There is no bias correction by default,
    so the first steps are large (:math:`|d_1| = |g_1| / \sqrt{(1-\alpha) g_1^2}`).

    Reference: same signature, defaults and numbers as ``optax.rmsprop`` (0.2.8). torch's
    ``RMSprop(lr, alpha, eps, momentum, centered)`` (2.13) is
    ``rmsprop(lr, decay=alpha, eps=eps, eps_in_sqrt=False, momentum=momentum or None,
    centered=centered, learning_rate_in_momentum=False)`` (``tests/test_rmsprop.py``). Where they
    differ:

    * eps: optax (and this default) adds it inside the root, torch outside (optax issue #532);
    * decay default: 0.9 here and in optax, torch's ``alpha`` 0.99;
    * momentum: optax multiplies by :math:`\eta_t` *before* the buffer
      (:math:`b_t = \mu b_{t-1} + \eta_t d_t`), torch after it (:math:`b_t = \mu b_{t-1} + d_t`,
      :math:`\theta_t = \theta_{t-1} - \eta_t b_t`): equal for a constant learning rate, different
      with a schedule. ``learning_rate_in_momentum=False`` gives torch's form;
    * torch's ``weight_decay`` is coupled L2: ``adamx.chain(adamx.add_decayed_weights(wd),
      rmsprop(...))``.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      decay: :math:`\alpha`, in ``[0, 1)``.
      eps: :math:`\epsilon >= 0`.
      initial_scale: :math:`v_0` (TF1 used 1.0).
      eps_in_sqrt: ``eps`` inside the root (optax) or outside (torch).
      centered: divide by the running standard deviation instead of the RMS.
      momentum: :math:`\mu` in ``[0, 1)``, or ``None`` for none.
      nesterov: Nesterov momentum (optax's; needs ``momentum``).
      bias_correction: bias-correct the averages (optax's option).
      learning_rate_in_momentum: put :math:`\eta_t` inside the momentum buffer (optax) or outside
        (torch).

    Returns:
      ``chain(scale_by_rms or scale_by_stddev, scale_by_learning_rate, trace)`` (optax's order), or
      with ``learning_rate_in_momentum=False`` the trace before the learning rate.

    References:
      Tieleman & Hinton, "Lecture 6.5 - RMSprop", COURSERA: Neural Networks for Machine Learning, 2012.
      Graves, "Generating Sequences With Recurrent Neural Networks", 2013,
      https://arxiv.org/abs/1308.0850
    """
    if centered:
        direction = scale_by_stddev(decay, eps, initial_scale, eps_in_sqrt, bias_correction)
    else:
        direction = scale_by_rms(decay, eps, initial_scale, eps_in_sqrt, bias_correction)
    if momentum is None:
        if nesterov:
            raise ValueError(
                "`nesterov=True` needs momentum, got `momentum=None`; pass e.g. `momentum=0.9`."
            )
        velocity = identity()
    else:
        check_decay(momentum, "momentum")
        velocity = trace(momentum, nesterov=nesterov)
    lr = scale_by_learning_rate(learning_rate)
    if learning_rate_in_momentum:
        return chain(direction, lr, velocity)
    return chain(direction, velocity, lr)
