"""AdaBelief: Adam whose second moment is the variance of the gradient around its prediction."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from ..blocks._map import update_moment
from ..blocks._moments import _complement, _correction, _resolve_storage, bias_correction, ema
from ..blocks._rectification import check_fallback, rectification, root_bias_correction
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import _abs_squared, _real_like, _sqrt, guards_zero, safe_divide
from ..blocks._weight_decay import optional_decay
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

__all__ = ["BeliefMomentState", "adabelief", "scale_by_belief", "scale_by_belief_moment"]


class BeliefMomentState(NamedTuple):
    """The state of `scale_by_belief_moment`: the step count (``int32``) and :math:`s`, one
    buffer per parameter (optax's ``ScaleByBeliefState.count`` and ``.nu``)."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    nu: Any


def scale_by_belief_moment(
    decay: float = 0.999,
    *,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    bias_correction: bool = True,
    nu_dtype: Any = None,
    storage: MomentStorage | None = None,
) -> MomentTransformation:
    r"""Divide the updates by the root of AdaBelief's second moment, the "belief" :math:`s_t`.

    .. math::
        s_t = \beta_2 s_{t-1} + (1 - \beta_2)\, |g_t - u_t|^2 + \epsilon_{root}, \qquad
        \hat s_t = \frac{s_t}{1 - \beta_2^t}, \qquad
        u_t \leftarrow \frac{u_t}{\sqrt{\hat s_t} + \epsilon},

    with :math:`s_0 = 0`, :math:`u_t` the updates flowing in (AdaBelief's uncorrected
    :math:`m_t`: place the block right after `ema`) and :math:`g_t` the gradient of this block's
    run in `adamx.chain`. :math:`\epsilon_{root}` is added into the *stored* :math:`s_t` on
    every step, as the authors' code and optax do, so it accumulates (to
    :math:`\epsilon_{root}/(1 - \beta_2)` when the gradient is constant). :math:`s` is real for
    complex gradients. With ``eps = eps_root = 0`` a coordinate whose :math:`s` is 0 gets a
    zero update, not NaN.

    Args:
      decay: :math:`\beta_2`, in ``[0, 1)``.
      eps: :math:`\epsilon >= 0`, added to the root.
      eps_root: :math:`\epsilon_{root} >= 0`, added into :math:`s_t`.
      bias_correction: divide :math:`s_t` by :math:`1 - \beta_2^t` (``False`` for the
        :math:`\hat\epsilon` form, with `root_bias_correction` after it).
      nu_dtype: dtype of the stored :math:`s` (default: the parameter's real dtype).
      storage: a `MomentStorage` for :math:`s` (instead of ``nu_dtype``).

    Returns:
      A `MomentTransformation` with state `BeliefMomentState`.
    """
    check_decay(decay, "decay")
    check_non_negative(eps, "eps")
    check_non_negative(eps_root, "eps_root")
    storage = _resolve_storage(storage, nu_dtype, "nu_dtype")
    guard_zero = guards_zero(eps)

    def init_fn(params):
        nu = init_buffers(storage, jax.tree.map(_real_like, params))
        return BeliefMomentState(count=zero_count(), nu=nu)

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del params, extra_args
        gradient = updates if gradient is None else gradient
        count = safe_increment(state.count)

        def step(m, s, g, b, c, eps_root, eps):  # s is real; c = 1 - b
            s = b * s + c * _abs_squared(g.astype(m.dtype) - m).astype(s.dtype) + eps_root
            s_hat = s / _correction(decay, count, s.dtype) if bias_correction else s
            return safe_divide(m, (_sqrt(s_hat) + eps).astype(m.dtype), guard_zero), s

        hp = (decay, _complement(decay), eps_root, eps)
        new_updates, nu = update_moment(
            step, updates, state.nu, storage, gradient, hyperparameters=hp, real=True
        )
        return new_updates, BeliefMomentState(count, nu)

    return MomentTransformation(init_fn, update_fn)


def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    rectify: bool = True,
    fallback: str = "sgd",
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""AdaBelief's direction, rectified as in the authors' code unless ``rectify=False``.

    ``rectify=False`` (optax's ``scale_by_belief``): the chain ``ema(b1)``,
    ``scale_by_belief_moment(b2)``, ``bias_correction(b1)``. ``rectify=True``: ``ema(b1)``,
    ``rectification(A, b2, inclusive=True)``, ``bias_correction(b1)`` with
    :math:`A` = ``chain(scale_by_belief_moment(b2, bias_correction=False),
    root_bias_correction(b2))``. The belief moment needs the uncorrected :math:`m_t`, so the
    correction of :math:`m` comes last (both branches are linear in :math:`m_t`). See
    `adabelief` for the update and arguments.

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(mu), BeliefMomentState(count, nu),
      BiasCorrectionState(count))``, or with ``rectify`` ``(EmaState(mu),
      RectificationState(count, (BeliefMomentState(count, nu), BiasCorrectionState(count))),
      BiasCorrectionState(count))``.
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    check_fallback(fallback)
    if rectify:
        adaptive = chain(
            scale_by_belief_moment(
                b2, eps=eps, eps_root=eps_root, bias_correction=False, nu_dtype=nu_dtype
            ),
            root_bias_correction(b2),
        )
        belief = rectification(adaptive, b2, threshold=5.0, inclusive=True, fallback=fallback)
    else:
        belief = scale_by_belief_moment(b2, eps=eps, eps_root=eps_root, nu_dtype=nu_dtype)
    return chain(ema(b1, dtype=mu_dtype), belief, bias_correction(b1))


@descent_example("adabelief(learning_rate=0.1)", "3.2000 1.9285 1.0686 0.5211 0.2033 0.2000 0.1960")
def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    rectify: bool = True,
    fallback: str = "sgd",
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""AdaBelief (Zhuang et al., 2020), as the authors' ``adabelief_pytorch`` (0.2) defines it.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        s_t &= \beta_2 s_{t-1} + (1 - \beta_2)\, |g_t - m_t|^2 + \epsilon_{root}, \\
        \hat m_t &= \frac{m_t}{1 - \beta_1^t}, &
        \theta_t &= \theta_{t-1} - \eta_t \left( r_t\, \frac{\sqrt{1 - \beta_2^t}\, \hat m_t}
        {\sqrt{s_t} + \epsilon} + \lambda\, \theta_{t-1} \right) \text{ if } \rho_t \ge 5,

    and :math:`\theta_t = \theta_{t-1} - \eta_t (\hat m_t + \lambda \theta_{t-1})` while
    :math:`\rho_t < 5` (steps 1 to 5 for :math:`\beta_2 = 0.999`), with :math:`\rho_t, r_t` as in
    `radam` and :math:`m_0 = s_0 = 0`. :math:`s_t` measures how far the gradient is from its
    prediction :math:`m_t`: a gradient that follows its trend gets a large step.
    :math:`\epsilon_{root}` is added into the stored :math:`s_t` every step (the authors' code
    adds :math:`\epsilon` there, so its :math:`\epsilon_{root}` equals :math:`\epsilon`).

    ``rectify=False`` drops the rectification, :math:`\theta_t = \theta_{t-1} - \eta_t (\hat m_t /
    (\sqrt{s_t / (1 - \beta_2^t)} + \epsilon) + \lambda \theta_{t-1})` from the first step
    (:math:`\epsilon` after the correction): the authors' ``rectify=False`` and ``optax.adabelief``,
    which has no weight decay. The defaults (``rectify=True``, ``eps = eps_root = 1e-16``,
    decoupled decay) are the authors'; their README recommends ``eps=1e-8`` (and so
    ``eps_root=1e-8``) where SGD beats Adam (CNNs), 1e-16 for transformers and GANs.
    ``fallback="none"`` makes no step below the threshold (their ``degenerated_to_sgd=False``).

    Reference: matches NumPy transcriptions of the authors' ``AdaBelief.step`` (``rectify`` on
    and off, decoupled decay) and, with ``rectify=False``, ``optax.adabelief`` (0.2.8) step for
    step (``tests/test_adabelief.py``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the first moment, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the belief :math:`s`, in ``[0, 1)``.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\epsilon_{root}`, added into :math:`s_t` on every step.
      rectify: use RAdam's rectification (the authors' default) or not (optax).
      fallback: below the threshold, ``"sgd"`` (step along :math:`\hat m_t`) or ``"none"``.
      weight_decay: :math:`\lambda >= 0` (decoupled, times the learning rate), or a schedule;
        ``None`` (the default): no decay block (any value given, 0 included, keeps it).
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nu_dtype: dtype of :math:`s` (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation`: ``chain(scale_by_belief(...), [add_decayed_weights(weight_decay,
      mask)], scale_by_learning_rate(lr))``, the decay only when ``weight_decay`` is given.

    References:
      Zhuang, Tang, Ding, Tatikonda, Dvornek, Papademetris & Duncan, "AdaBelief Optimizer:
      Adapting Stepsizes by the Belief in Observed Gradients", NeurIPS 2020,
      https://arxiv.org/abs/2010.07468
    """
    return chain(
        scale_by_belief(
            b1,
            b2,
            eps,
            eps_root,
            rectify=rectify,
            fallback=fallback,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        *optional_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
