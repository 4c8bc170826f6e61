"""NAdam and NAdamW: Adam with Nesterov momentum, in optax's, torch's and AlgoPerf's forms."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import unzip
from ..blocks._moments import (
    BiasCorrectionState,
    _correction,
    ema,
    init_count,
    interpolate,
    require_gradient,
)
from ..blocks._scale import scale_by_learning_rate
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
from ..core._dtypes import as_hyperparameter, compute_dtype, per_dtype, real_dtype
from ..core._validate import check_decay, check_non_negative
from ._adam import scale_by_adam

__all__ = [
    "DozatMomentumState",
    "algoperf_momentum",
    "dozat_momentum",
    "nadam",
    "nadamw",
    "scale_by_nadam",
]


class DozatMomentumState(NamedTuple):
    r"""The state of `dozat_momentum`: the step count (``int32``) and, per parameter, the scalar
    :math:`\prod_{i \le t} \mu_i` (torch's ``mu_product``) in the parameter's compute dtype."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    mu_product: Any


def dozat_momentum(decay: float = 0.9, momentum_decay: float = 4e-3) -> MomentTransformation:
    r"""Nesterov look-ahead with Dozat's momentum schedule (torch's ``NAdam``), after `ema`.

    .. math::
        \mu_t = \beta\,(1 - \tfrac12\, 0.96^{t\psi}), \qquad
        \bar m_t = \frac{\mu_{t+1}\, m_t}{1 - \prod_{i \le t+1} \mu_i}
        + \frac{(1 - \mu_t)\, g_t}{1 - \prod_{i \le t} \mu_i}

    where :math:`m_t` is the input (``ema(decay)``'s output, which uses the constant :math:`\beta`)
    and :math:`g_t` the gradient of this block's run in `adamx.chain`.

    Args:
      decay: :math:`\beta`, in ``[0, 1)``.
      momentum_decay: :math:`\psi >= 0` (torch's ``momentum_decay``, default ``4e-3``).

    Returns:
      A `MomentTransformation` with state `DozatMomentumState`.
    """
    check_decay(decay, "decay")
    check_non_negative(momentum_decay, "momentum_decay")
    if isinstance(momentum_decay, (int, float)):
        rate: Any = momentum_decay * math.log(0.96)
    else:
        rate = None

    def init_fn(params):
        def one(p):
            return jnp.ones((), real_dtype(compute_dtype(jnp.asarray(p).dtype)))

        return DozatMomentumState(count=zero_count(), mu_product=jax.tree.map(one, params))

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del params, extra_args
        gradient = require_gradient(gradient, updates, "dozat_momentum")
        count = safe_increment(state.count)

        def one(m, g, product):
            cdt = compute_dtype(m.dtype, g.dtype, product.dtype)
            rdt = real_dtype(cdt)
            if rate is None:
                log_rate = as_hyperparameter(momentum_decay, rdt) * jnp.log(
                    as_hyperparameter(0.96, rdt)
                )
            else:
                log_rate = as_hyperparameter(rate, rdt)
            b = as_hyperparameter(decay, rdt)
            one_ = jnp.ones((), rdt)
            half = as_hyperparameter(0.5, rdt)
            t = count.astype(rdt)
            mu = b * (one_ - half * jnp.exp(t * log_rate))
            mu_next = b * (one_ - half * jnp.exp((t + one_) * log_rate))
            new_product = product.astype(rdt) * mu
            next_product = new_product * mu_next
            out = (mu_next / (one_ - next_product)).astype(cdt) * m.astype(cdt) + (
                (one_ - mu) / (one_ - new_product)
            ).astype(cdt) * g.astype(cdt)
            return out.astype(m.dtype), new_product.astype(product.dtype)

        pairs = jax.tree.map(one, updates, gradient, state.mu_product)
        new_updates, products = unzip(updates, pairs)
        return new_updates, DozatMomentumState(count, products)

    return MomentTransformation(init_fn, update_fn)


def algoperf_momentum(decay: float = 0.9) -> MomentTransformation:
    r"""The AlgoPerf/init2winit NAdamW look-ahead, after `ema`: one correction of the whole sum.

    .. math::
        \bar m_t = \frac{\beta\, m_t + (1 - \beta)\, g_t}{1 - \beta^t}.

    Args:
      decay: :math:`\beta`, in ``[0, 1)``.

    Returns:
      A `MomentTransformation` with state `BiasCorrectionState` (the step count).
    """
    check_decay(decay, "decay")

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del params, extra_args
        gradient = require_gradient(gradient, updates, "algoperf_momentum")
        count = safe_increment(state.count)
        correction = per_dtype(lambda rdt: _correction(decay, count, rdt))
        return interpolate(updates, gradient, decay, correction), BiasCorrectionState(count)

    return MomentTransformation(init_count, update_fn)


def scale_by_nadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    momentum_decay: float | None = None,
    algoperf: bool = False,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""NAdam's direction, :math:`\bar m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`.

    ``momentum_decay=None`` (default): ``scale_by_adam(nesterov=True)`` (optax's). A float:
    ``chain(ema(b1), dozat_momentum(b1, momentum_decay), scale_by_second_moment(b2))`` (torch's).
    ``algoperf=True``: ``chain(ema(b1), algoperf_momentum(b1), scale_by_second_moment(b2))``.
    See `nadam` for the update and arguments.

    Returns:
      A `MomentTransformation`; the second element of its state tuple is `BiasCorrectionState`
      (optax's and AlgoPerf's forms) or `DozatMomentumState` (torch's).
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    if momentum_decay is not None and algoperf:
        raise ValueError(
            "`momentum_decay` (torch's schedule) and `algoperf=True` choose different NAdam "
            "look-aheads; pass at most one of them."
        )
    if algoperf:
        lookahead = algoperf_momentum(b1)
    elif momentum_decay is not None:
        lookahead = dozat_momentum(b1, momentum_decay)
    else:
        return scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=True, nu_dtype=nu_dtype)
    return chain(
        ema(b1, dtype=mu_dtype),
        lookahead,
        scale_by_second_moment(b2, eps=eps, eps_root=eps_root, nu_dtype=nu_dtype),
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    momentum_decay: float | None = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""NAdam: Adam with Nesterov momentum (Dozat, 2016), in optax's or torch's form.

    With ``momentum_decay=None`` (the default, optax's ``nadam``, constant momentum :math:`\beta_1`):

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        \hat v_t &= \frac{v_t}{1 - \beta_2^t}, \quad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2, \\
        \bar m_t &= \frac{\beta_1 m_t}{1 - \beta_1^{t+1}} + \frac{(1 - \beta_1)\, g_t}{1 - \beta_1^t},
        &
        \theta_t &= \theta_{t-1} - \eta_t\, \frac{\bar m_t}{\sqrt{\hat v_t + \epsilon_{root}}
        + \epsilon}.

    With ``momentum_decay=psi`` (a float; torch's ``NAdam`` uses ``4e-3``, Dozat's
    :math:`\psi = 1/250`) the look-ahead follows Dozat's schedule
    :math:`\mu_t = \beta_1 (1 - \frac12 0.96^{t\psi})` (see `dozat_momentum`):
    :math:`\bar m_t = \mu_{t+1} m_t / (1 - \prod_{i\le t+1}\mu_i) + (1-\mu_t) g_t / (1 -
    \prod_{i \le t} \mu_i)`; :math:`m_t` still uses the constant :math:`\beta_1`. The effective
    momentum starts near :math:`\beta_1/2` and approaches :math:`\beta_1` only after about :math:`10^4`
    steps, so the two forms differ markedly early on (first step with :math:`\epsilon = 0`:
    :math:`1.4737\,\eta` for optax's, :math:`1.0565\,\eta` for torch's default).
    ``momentum_decay=0`` is *not* the constant form (it gives :math:`\mu \equiv \beta_1/2`).

    Reference: ``momentum_decay=None`` matches ``optax.nadam`` (0.2.8) and
    ``torch.optim.NAdam(momentum_decay=1e9)``; ``momentum_decay=4e-3`` matches
    ``torch.optim.NAdam()`` (2.13) step for step (``tests/test_nadam.py``). torch's
    ``weight_decay`` is L2: ``adamx.chain(adamx.add_decayed_weights(wd), nadam(lr, ...))``; its
    ``decoupled_weight_decay=True`` is `nadamw`. torch's default learning rate is ``2e-3``.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1, b2, eps, eps_root, mu_dtype, nu_dtype: as in `adam`.
      momentum_decay: ``None`` for optax's constant momentum, or torch's :math:`\psi >= 0`.

    Returns:
      A `GradientTransformation`: ``chain(scale_by_nadam(...), scale_by_learning_rate(lr))``.

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop,
      https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ
    """
    return chain(
        scale_by_nadam(
            b1, b2, eps, eps_root, mu_dtype, momentum_decay=momentum_decay, nu_dtype=nu_dtype
        ),
        scale_by_learning_rate(learning_rate),
    )


def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    momentum_decay: float | None = None,
    algoperf: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""NAdamW: NAdam with decoupled weight decay. Three optimizers bear this name; pick one.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left( \frac{\bar m_t}{\sqrt{\hat v_t + \epsilon_{root}}
        + \epsilon} + \lambda\, \theta_{t-1} \right)

    * ``momentum_decay=None`` (default): optax's ``nadamw``, :math:`\bar m_t` as in `nadam`
      (constant momentum).
    * ``momentum_decay=psi``: ``torch.optim.NAdam(decoupled_weight_decay=True)``, Dozat's schedule
      (torch's default :math:`\psi` is ``4e-3``).
    * ``algoperf=True``: the MLCommons AlgoPerf baseline NAdamW (from init2winit), with a single
      correction of the look-ahead, :math:`\bar m_t = (\beta_1 m_t + (1-\beta_1) g_t)/(1-\beta_1^t)`
      (see `algoperf_momentum`); it differs from optax's in the first :math:`\sim 1/(1-\beta_1)` steps
      (first step with :math:`\epsilon = 0`: :math:`(1 + \beta_1)\,\eta` against
      :math:`1.4737\,\eta`). Equivalently ``chain(ema(b1), algoperf_momentum(b1),
      scale_by_second_moment(b2, eps=eps, eps_root=eps_root), add_decayed_weights(wd),
      scale_by_learning_rate(lr))``.

    The decay is multiplied by the full learning rate :math:`\eta_t`, as in `adamw` (all three do).
    Reference: matches ``optax.nadamw`` (0.2.8) and ``torch.optim.NAdam(decoupled_weight_decay=True,
    momentum_decay=psi)`` (2.13) step for step (``tests/test_nadam.py``). Defaults follow
    optax (``weight_decay=1e-4``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1, b2, eps, eps_root, mu_dtype, momentum_decay, nu_dtype: as in `nadam`.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      algoperf: use AlgoPerf's look-ahead (not with ``momentum_decay``).

    Returns:
      ``chain(scale_by_nadam(...), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate))``.

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop;
      Dahl et al., "Benchmarking Neural Network Training Algorithms", 2023,
      https://arxiv.org/abs/2306.07179
    """
    return chain(
        scale_by_nadam(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            momentum_decay=momentum_decay,
            algoperf=algoperf,
            nu_dtype=nu_dtype,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
