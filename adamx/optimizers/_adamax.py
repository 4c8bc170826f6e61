"""AdaMax and AdaMaxW: Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import update_moment
from ..blocks._moments import _resolve_storage, bias_correction, ema
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import _real_like, safe_divide
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import GradientTransformation, MomentTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._dtypes import upcast
from ..core._validate import check_decay, check_non_negative
from ..storage._storage import MomentStorage, init_buffers

__all__ = ["InfinityNormState", "adamax", "adamaxw", "scale_by_adamax", "scale_by_infinity_norm"]


class InfinityNormState(NamedTuple):
    """The state of `scale_by_infinity_norm`: the decayed maximum :math:`u`, one per parameter."""

    norm: Any


def scale_by_infinity_norm(
    decay: float = 0.999,
    *,
    eps: float = 1e-8,
    dtype: Any = None,
    storage: MomentStorage | None = None,
) -> MomentTransformation:
    r"""Divide the updates by an exponentially weighted infinity norm of the gradient (AdaMax's).

    .. math::
        u_t = \max(\beta_2\, u_{t-1}, |g_t| + \epsilon), \qquad u_0 = 0, \qquad
        x \leftarrow x / u_t.

    :math:`g_t` is the gradient of this block's run in `adamx.chain` (used on its own, its input);
    :math:`u` is not bias-corrected (the paper shows it needs none), and :math:`\epsilon` sits inside
    the maximum, as in torch and optax (the paper has none). :math:`u` is stored real for complex
    gradients. With ``eps = 0`` a coordinate whose :math:`u` is 0 gets a zero update, not NaN.

    Args:
      decay: :math:`\beta_2`, in ``[0, 1]`` (1: the running maximum of :math:`|g_t| + \epsilon`).
      eps: :math:`\epsilon >= 0`, added to :math:`|g_t|` inside the maximum.
      dtype: dtype of the stored :math:`u`; ``None`` keeps the parameter's real dtype.
      storage: a `MomentStorage` for :math:`u` (instead of ``dtype``).

    Returns:
      A `MomentTransformation` with state `InfinityNormState`.
    """
    check_decay(decay, "decay", upper_inclusive=True)  # 1: the paper's undecayed maximum
    check_non_negative(eps, "eps")
    storage = _resolve_storage(storage, dtype, "dtype")
    guard_zero = isinstance(eps, (int, float)) and eps == 0

    def init_fn(params):
        return InfinityNormState(norm=init_buffers(storage, jax.tree.map(_real_like, params)))

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del params, extra_args
        gradient = updates if gradient is None else gradient

        def step(x, u, g, b, eps):  # u is real
            u = jnp.maximum(b * u, jnp.abs(upcast(g)).astype(u.dtype) + eps)
            return safe_divide(x, u.astype(x.dtype), guard_zero), u

        new_updates, norm = update_moment(
            step, updates, state.norm, storage, gradient, hyperparameters=(decay, eps), real=True
        )
        return new_updates, InfinityNormState(norm)

    return MomentTransformation(init_fn, update_fn)


def scale_by_adamax(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""AdaMax's direction, :math:`\hat m_t / u_t`; same signature and numbers as ``optax.scale_by_adamax``.

    The chain ``ema(b1)``, ``bias_correction(b1)``, ``scale_by_infinity_norm(b2, eps=eps)``. See
    `adamax` for the update.

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(mu), BiasCorrectionState(count),
      InfinityNormState(nu))`` (optax's ``ScaleByAdamState(count, mu, nu)``).
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2", upper_inclusive=True)
    return chain(
        ema(b1, dtype=mu_dtype),
        bias_correction(b1),
        scale_by_infinity_norm(b2, eps=eps, dtype=nu_dtype),
    )


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AdaMax (Kingma & Ba, 2014, section 7.1): Adam with the :math:`L^\infty` norm.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        u_t &= \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \\
        \theta_t &= \theta_{t-1} - \eta_t\, \frac{m_t}{(1 - \beta_1^t)\, u_t}

    with :math:`m_0 = u_0 = 0`. :math:`u` is not bias-corrected, and :math:`\epsilon` is added
    *inside* the maximum (torch and optax); the paper's Algorithm 2 has no :math:`\epsilon`. The
    paper's bound :math:`|\Delta_t| \le \eta` holds only for :math:`\beta_2 = 1`; the exact bound is
    :math:`\eta (1-\beta_1)(1 - (\beta_1/\beta_2)^t) / ((1-\beta_1^t)(1 - \beta_1/\beta_2))`
    (1.009 :math:`\eta` for the defaults), attained by gradients decaying like :math:`\beta_2^t`.

    Reference: matches ``optax.adamax`` (0.2.8) and ``torch.optim.Adamax`` (2.13) step for step
    (``tests/test_adamax.py``). torch's ``weight_decay`` is L2:
    ``adamx.chain(adamx.add_decayed_weights(wd), adamax(lr))``. torch's default learning rate
    (and the paper's) is ``2e-3``.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the first moment, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the infinity norm, in ``[0, 1]`` (1: the paper's bound
        :math:`|\Delta_t| \le \eta` holds).
      eps: :math:`\epsilon`, added to :math:`|g_t|` inside the maximum.
      mu_dtype: dtype of :math:`m` (default: the parameter's). optax has no such option.
      nu_dtype: dtype of :math:`u` (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation`: ``chain(scale_by_adamax(...), scale_by_learning_rate(lr))``.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.1,
      https://arxiv.org/abs/1412.6980
    """
    return chain(
        scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )


def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AdaMax with decoupled weight decay, as ``optax.adamaxw``.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left( \frac{m_t}{(1 - \beta_1^t)\, u_t}
        + \lambda\, \theta_{t-1} \right)

    with :math:`m_t, u_t` as in `adamax`; the decay is multiplied by the full learning rate, as in
    `adamw`. Reference: matches ``optax.adamaxw`` (0.2.8) step for step; torch has no decoupled
    AdaMax. Defaults follow optax (``weight_decay=1e-4``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1, b2, eps, mu_dtype, nu_dtype: as in `adamax`.
      weight_decay, mask: as in `adamw`.

    Returns:
      ``chain(scale_by_adamax(...), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate))``.
    """
    return chain(
        scale_by_adamax(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
