"""Adam and AdamW as chains of the core blocks."""

from __future__ import annotations

from typing import Any

from ..blocks._moments import bias_correction, ema
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import scale_by_second_moment
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import GradientTransformation, MomentTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._validate import check_decay

__all__ = ["adam", "adamw", "scale_by_adam"]


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""Adam's direction, :math:`\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`.

    The chain ``ema(b1)``, ``bias_correction(b1)``, ``scale_by_second_moment(b2)``; same signature
    and numbers as ``optax.scale_by_adam``. See `adam` for the update and arguments.

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(mu), BiasCorrectionState(count),
      SecondMomentState((EmaState(nu), BiasCorrectionState(count))))``.
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    return chain(
        ema(b1, dtype=mu_dtype),
        bias_correction(b1, nesterov=nesterov),
        scale_by_second_moment(b2, eps=eps, eps_root=eps_root, nu_dtype=nu_dtype),
    )


@descent_example("adam(learning_rate=0.1)", "4.4200 3.8813 3.3843")
def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""The Adam optimizer (Kingma & Ba, 2014), as torch.optim and optax define it.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2, \\
        \hat m_t &= m_t / (1 - \beta_1^t), &
        \hat v_t &= v_t / (1 - \beta_2^t), \\
        \theta_t &= \theta_{t-1} - \eta_t\, \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}}
        + \epsilon}

    with :math:`m_0 = v_0 = 0`, :math:`t = 1, 2, \ldots`, and :math:`\eta_t` the learning rate (a
    schedule is evaluated at :math:`t - 1`). This is Algorithm 1 of the paper, :math:`\epsilon`
    outside the root and added *after* both corrections; TF1/Keras use the paper's "efficient" form
    with :math:`\epsilon` before the correction of :math:`v`, which is a different algorithm.
    ``nesterov=True`` gives optax's NAdam (Dozat 2016 with constant momentum): :math:`\hat m_t` is
    replaced by :math:`\beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`.

    Non-finite gradients: every operation is per coordinate, so a NaN or Inf in one leaf never
    reaches the moments or updates of the others. In its own coordinates it propagates: :math:`m`,
    :math:`v`, the update and the parameter become NaN (or Inf) and stay so. Wrap the optimizer in
    `apply_if_finite` to skip such steps. A finite :math:`|g|` above :math:`\sim 1.8 \cdot 10^{19}`
    overflows :math:`|g|^2` in float32 (and bfloat16): :math:`v` becomes Inf and that coordinate's
    update is 0 from then on, not NaN (torch and optax do the same); clip the gradient (`clip`)
    where such values can occur.

    Non-finite gradients with 8- or 4-bit moments (`low_bit_moments`, `blockwise_8bit`,
    `blockwise_4bit`, `rank1_4bit`): a NaN does not stay in its coordinate. It makes its block's
    scale NaN (with `rank1_4bit`, its row's and its column's), and a NaN scale reads back as NaN
    for every element it scales, so the NaN stays visible in the state, never silently dropped
    (bitsandbytes' block absmax does the same). After its step only its own parameter is NaN; from
    the next step on, every parameter of its block (of its row and column, and a step later of its
    whole layer, with `rank1_4bit`). The fused 8-bit kernel and the jnp path give the same NaNs
    and the same bits elsewhere. An Inf keeps its own coordinate, as in float32: it is stored
    exactly under an infinite scale, and the other elements of its block (block-wise codes) read
    0, not NaN.

    Reference: matches ``optax.adam`` (0.2.8) and ``torch.optim.Adam`` (2.13) step for step
    (``tests/test_adam.py``). torch's ``Adam(weight_decay=wd)`` is L2 regularisation:
    ``adamx.chain(adamx.add_decayed_weights(wd), adamx.adam(lr))``.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the first moment, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the second moment, in ``[0, 1)``.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\epsilon_{root}`, added inside the root.
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nesterov: use Nesterov momentum (optax's NAdam).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype). optax has no such option.

    Returns:
      A `GradientTransformation`: ``chain(scale_by_adam(...), scale_by_learning_rate(lr))``.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
      https://arxiv.org/abs/1412.6980
    """
    return _adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, nu_dtype)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as torch and optax.

    .. math::
        \theta_t = \theta_{t-1} - \eta_t \left( \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}}
        + \epsilon} + \lambda\, \theta_{t-1} \right)

    with :math:`\hat m_t, \hat v_t` as in `adam`. The decay is multiplied by the full learning rate
    :math:`\eta_t` (torch's ``param.mul_(1 - lr * wd)``, optax's ``adamw``). The paper scales the
    decay by the schedule multiplier only: its :math:`\lambda` equals this one times the base
    learning rate.

    Reference: matches ``optax.adamw`` (0.2.8) and ``torch.optim.AdamW`` (2.13) step for step.
    Defaults follow optax (``weight_decay=1e-4``; torch's default is ``1e-2``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1, b2, eps, eps_root, mu_dtype, nesterov, nu_dtype: as in `adam`.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.

    Returns:
      ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate))``.

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> opt = adamx.adamw(learning_rate=0.1, weight_decay=0.01)
      >>> state = opt.init(params)
      >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      >>> updates, state = opt.update(grads, state, params)
      >>> print(adamx.apply_updates(params, updates)["w"])
      [ 0.899 -1.898]

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
      https://arxiv.org/abs/1711.05101
    """
    decay = (weight_decay, mask)
    return _adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, nu_dtype, decay)


def _adam(
    learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, nu_dtype, decay=None
) -> GradientTransformation:
    """`adam`, or with ``decay = (weight_decay, mask)`` `adamw`."""
    weight_decay, mask = (None, None) if decay is None else decay
    decoupled = () if decay is None else (add_decayed_weights(*decay),)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype),
        *decoupled,
        scale_by_learning_rate(learning_rate),
    )
