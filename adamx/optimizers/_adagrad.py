"""AdaGrad and AdaDelta from the core blocks."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import update_moment
from ..blocks._moments import _complement, _resolve_storage, accumulate
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import _abs_squared, _real_like, scale_by_second_moment
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import GradientTransformation, MomentTransformation, ScalarOrSchedule, identity
from ..core._chain import chain
from ..core._validate import check_decay, check_non_negative
from ..storage._storage import MomentStorage, init_buffers

__all__ = [
    "UpdateRmsState",
    "adadelta",
    "adagrad",
    "scale_by_adadelta",
    "scale_by_rss",
    "scale_by_update_rms",
]


def scale_by_rss(
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    eps_in_sqrt: bool = True,
    nu_dtype: Any = None,
    storage: MomentStorage | None = None,
) -> MomentTransformation:
    r"""AdaGrad's direction: divide by the root of the sum of squared gradients to date.

    .. math::
        G_t = G_{t-1} + |g_t|^2,\quad G_0 = G_{\text{init}}, \qquad
        u_t \leftarrow \frac{u_t}{\sqrt{G_t + \epsilon}} \text{ (eps in sqrt) or }
        \frac{u_t}{\sqrt{G_t} + \epsilon}.

    `scale_by_second_moment` with the estimator ``accumulate(initial_accumulator_value)``. The
    defaults are ``optax.scale_by_rss``'s; torch's AdaGrad is ``scale_by_rss(0.0, 1e-10,
    eps_in_sqrt=False)``. A coordinate whose denominator is 0 gets a zero update (optax's guard).

    Args:
      initial_accumulator_value: :math:`G_{\text{init}} >= 0` (optax 0.1, torch 0).
      eps: :math:`\epsilon >= 0` (optax 1e-7 inside the root, torch 1e-10 outside).
      eps_in_sqrt: ``eps`` inside the root (optax) or outside (torch, and the paper's :math:`\delta`).
      nu_dtype: dtype of the stored :math:`G` (default: the parameter's real dtype).
      storage: a `MomentStorage` for :math:`G` (instead of ``nu_dtype``).

    Returns:
      A `MomentTransformation` with state ``SecondMomentState((AccumulateState(sum),))``.
    """
    check_non_negative(initial_accumulator_value, "initial_accumulator_value")
    check_non_negative(eps, "eps")
    eps_out, eps_root = (0.0, eps) if eps_in_sqrt else (eps, 0.0)
    storage = _resolve_storage(storage, nu_dtype, "nu_dtype")
    return scale_by_second_moment(
        eps=eps_out,
        eps_root=eps_root,
        estimator=chain(accumulate(initial_accumulator_value, storage=storage)),
    )


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    eps_in_sqrt: bool = True,
) -> GradientTransformation:
    r"""AdaGrad (Duchi, Hazan & Singer, 2011), diagonal form.

    .. math::
        G_t = G_{t-1} + |g_t|^2, \qquad
        \theta_t = \theta_{t-1} - \eta_t \frac{g_t}{\sqrt{G_t + \epsilon}}
        \ \text{(or } \frac{g_t}{\sqrt{G_t} + \epsilon} \text{ with } \texttt{eps\_in\_sqrt=False}).

    Reference: same signature, defaults and numbers as ``optax.adagrad`` (0.2.8):
    :math:`G_0 = 0.1`, :math:`\epsilon = 10^{-7}` inside the root. ``torch.optim.Adagrad`` (2.13)
    is ``adagrad(lr, initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False)``, the paper's
    :math:`\delta` outside the root (``tests/test_adagrad.py`` checks both). torch's
    ``lr_decay`` is the schedule ``lambda t: lr / (1 + t * lr_decay)``; its ``weight_decay`` is
    coupled L2: ``adamx.chain(adamx.add_decayed_weights(wd), adagrad(...))``.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      initial_accumulator_value: :math:`G_0 >= 0`.
      eps: :math:`\epsilon >= 0`.
      eps_in_sqrt: ``eps`` inside the root (optax) or outside (torch, the paper).

    Returns:
      ``chain(scale_by_rss(...), scale_by_learning_rate(learning_rate))``.

    References:
      Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
      Optimization", JMLR 12, 2011.
    """
    return chain(
        scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=eps_in_sqrt),
        scale_by_learning_rate(learning_rate),
    )


class UpdateRmsState(NamedTuple):
    """The state of AdaDelta's second block: :math:`E[\\Delta x^2]`, one buffer per parameter."""

    ema: Any


def scale_by_update_rms(
    decay: float = 0.9,
    eps: float = 1e-6,
    *,
    dtype: Any = None,
    storage: MomentStorage | None = None,
) -> MomentTransformation:
    r"""Multiply by the RMS of the previous outputs: AdaDelta's numerator (Zeiler 2012).

    .. math::
        \Delta_t = \sqrt{x_{t-1} + \epsilon}\; u_t, \qquad
        x_t = \rho\, x_{t-1} + (1 - \rho) |\Delta_t|^2, \qquad x_0 = 0.

    Outputs :math:`\Delta_t`; the average is of its own outputs, *before* any learning rate.

    Args:
      decay: :math:`\rho`, in ``[0, 1)``.
      eps: :math:`\epsilon >= 0`, inside the root.
      dtype: dtype of the stored :math:`x` (default: the parameter's real dtype).
      storage: a `MomentStorage` for :math:`x` (instead of ``dtype``).

    Returns:
      A `MomentTransformation` with state `UpdateRmsState`.
    """
    check_decay(decay, "decay")
    check_non_negative(eps, "eps")
    storage = _resolve_storage(storage, dtype, "dtype")

    def init_fn(params):
        return UpdateRmsState(ema=init_buffers(storage, jax.tree.map(_real_like, params)))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(u, x, eps, rho, c):  # x is real: E[|delta|^2] of a complex leaf; c = 1 - rho
            delta = jnp.sqrt(x + eps).astype(u.dtype) * u
            return delta, rho * x + c * _abs_squared(delta)

        hp = (eps, decay, _complement(decay))
        deltas, buffers = update_moment(
            step, updates, state.ema, storage, hyperparameters=hp, real=True
        )
        return deltas, UpdateRmsState(buffers)

    return MomentTransformation(init_fn, update_fn)


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> MomentTransformation:
    r"""AdaDelta's direction: :math:`\sqrt{E[\Delta x^2]_{t-1} + \epsilon} / \sqrt{E[g^2]_t +
    \epsilon}\; g_t`.

    ``chain(scale_by_second_moment(rho, eps_root=eps, eps=0, bias_correction=False),
    scale_by_update_rms(rho, eps))``; same signature and numbers as ``optax.scale_by_adadelta``.
    See `adadelta`.

    Returns:
      A `MomentTransformation`; its state is ``(SecondMomentState((EmaState(e_g),)),
      UpdateRmsState(e_x))``.
    """
    check_decay(rho, "rho")
    check_non_negative(eps, "eps")
    return chain(
        scale_by_second_moment(rho, eps=0.0, eps_root=eps, bias_correction=False),
        scale_by_update_rms(rho, eps),
    )


def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
) -> GradientTransformation:
    r"""AdaDelta (Zeiler, 2012).

    .. math::
        E[g^2]_t &= \rho E[g^2]_{t-1} + (1 - \rho) |g_t|^2, \\
        \Delta_t &= \frac{\sqrt{E[\Delta^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}\, g_t,
        \qquad E[\Delta^2]_t = \rho E[\Delta^2]_{t-1} + (1 - \rho) |\Delta_t|^2, \\
        \theta_t &= \theta_{t-1} - \eta_t \Delta_t

    with :math:`g_t` the gradient plus :math:`\lambda \theta_{t-1}` (coupled L2 weight decay).
    :math:`\epsilon` is inside both roots and :math:`E[\Delta^2]` accumulates before the learning
    rate, as in torch and optax. The first step is tiny,
    :math:`|\Delta_1| \approx \sqrt{\epsilon / (1 - \rho)}`.

    Reference: matches ``optax.adadelta`` (0.2.8) and ``torch.optim.Adadelta`` (2.13) step for
    step (``tests/test_adadelta.py``); ``weight_decay`` is torch's (L2, before the moments). The
    paper's defaults are :math:`\rho = 0.95` and no learning rate. Where they differ:
    ``learning_rate=None`` is a descent step of size 1 here (torch's ``lr=1.0``); in optax 0.2.8
    ``None`` maps to ``identity()``, which drops the sign flip and *ascends*.

    Args:
      learning_rate: :math:`\eta` (``None``: 1), a number >= 0 or a schedule.
      rho: :math:`\rho`, in ``[0, 1)``.
      eps: :math:`\epsilon >= 0`.
      weight_decay: :math:`\lambda >= 0` (L2), or a schedule.
      weight_decay_mask: which leaves to decay (as in `add_decayed_weights`).

    Returns:
      ``chain(add_decayed_weights(weight_decay, weight_decay_mask), scale_by_adadelta(rho, eps),
      scale_by_learning_rate(learning_rate))`` (``identity()`` in place of the decay when
      ``weight_decay`` is 0, so ``params`` may be omitted; the state is ``EmptyState()`` either way).

    References:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012, https://arxiv.org/abs/1212.5701
    """
    no_decay = not callable(weight_decay) and isinstance(weight_decay, (int, float))
    decay = (
        identity()
        if no_decay and weight_decay == 0
        else add_decayed_weights(weight_decay, weight_decay_mask)
    )
    return chain(
        decay,
        scale_by_adadelta(rho, eps),
        scale_by_learning_rate(1.0 if learning_rate is None else learning_rate),
    )
