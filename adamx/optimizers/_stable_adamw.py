"""StableAdamW: AdamW whose step is clipped per tensor by the RMS of g^2 / v (Wortsman et al.)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._moments import bias_correction, ema
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import _abs_squared, _real_like, _sqrt
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import GradientTransformation, MomentTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ..core._trees import check_not_flat
from ..core._validate import check_decay, check_non_negative

__all__ = [
    "ClippedSecondMomentState",
    "scale_by_clipped_second_moment",
    "scale_by_stable_adamw",
    "stable_adamw",
]


class ClippedSecondMomentState(NamedTuple):
    """The state of `scale_by_clipped_second_moment`: its estimator's state, ``(EmaState(nu),
    BiasCorrectionState(count))``."""

    estimator: Any


def scale_by_clipped_second_moment(
    decay: float = 0.99,
    *,
    eps: float = 1e-8,
    clip_threshold: float = 1.0,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""Adam's denominator, then a per-tensor step clipping by the RMS of :math:`g^2/\hat v`.

    .. math::
        \hat v_t = \frac{v_t}{1 - \beta_2^t}, \quad
        \mathrm{RMS}_t = \sqrt{\operatorname{mean}_{\text{tensor}}
        \frac{|g_t|^2}{\max(\hat v_t, \epsilon^2)}}, \quad
        u_t \leftarrow \frac{u_t}{\sqrt{\hat v_t} + \epsilon}
        \cdot \frac{1}{\max(1, \mathrm{RMS}_t / d)},

    with :math:`v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2` (the estimator
    ``chain(ema(decay), bias_correction(decay))`` of `scale_by_second_moment`). The RMS uses the
    *updated* :math:`\hat v_t`, so at :math:`t = 1` it is 1 and nothing is clipped. One block,
    because the clipping needs :math:`\hat v_t`, which `scale_by_second_moment` keeps inside.

    Args:
      decay: :math:`\beta_2`, in ``[0, 1)``.
      eps: :math:`\epsilon >= 0`, added to the root and, squared, the floor of :math:`\hat v`.
      clip_threshold: :math:`d > 0`.
      nu_dtype: dtype of the stored :math:`v` (default: the parameter's real dtype).

    Returns:
      A `MomentTransformation` with state `ClippedSecondMomentState`.
    """
    check_decay(decay, "decay")
    check_non_negative(eps, "eps")
    check_non_negative(clip_threshold, "clip_threshold")
    if isinstance(clip_threshold, (int, float)) and clip_threshold == 0:
        raise ValueError(
            "`clip_threshold` must be > 0, got 0; StableAdamW uses 1.0 (a larger value clips less)."
        )
    estimator = chain(ema(decay, dtype=nu_dtype), bias_correction(decay))

    def init_fn(params):
        check_not_flat(
            params,
            "scale_by_clipped_second_moment",
            "StableAdamW clips each parameter's step by its RMS",
        )
        return ClippedSecondMomentState(estimator.init(jax.tree.map(_real_like, params)))

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del extra_args
        gradient = updates if gradient is None else gradient
        squares = jax.tree.map(_abs_squared, gradient)
        v_hat, estimator_state = estimator.update(squares, state.estimator, params)

        def one(u, g, v):
            cdt = compute_dtype(u.dtype, v.dtype)
            rdt = real_dtype(cdt)
            v, magnitude = v.astype(rdt), jnp.abs(g.astype(compute_dtype(g.dtype))).astype(rdt)
            e = as_hyperparameter(eps, rdt)
            floor = jnp.maximum(v, e * e)
            positive = floor > 0  # eps = 0 and a zero history: that term is 0, not NaN
            # (|g| / sqrt(v))^2, not g^2 / v: a |g| whose square overflows (v = inf) gives 0, not
            # inf / inf = NaN, and the step is then 0 as in Adam.
            ratio = jnp.where(positive, magnitude / _sqrt(jnp.where(positive, floor, 1)), 0) ** 2
            rms = jnp.sqrt(jnp.mean(ratio)) if ratio.size else jnp.zeros((), rdt)
            shrink = jnp.maximum(jnp.ones((), rdt), rms / as_hyperparameter(clip_threshold, rdt))
            denominator = _sqrt(v) + e
            nonzero = denominator != 0
            x = u.astype(cdt) / jnp.where(nonzero, denominator, 1).astype(cdt)
            x = jnp.where(nonzero, x, 0) / shrink.astype(cdt)
            return x.astype(u.dtype)

        return jax.tree.map(one, updates, gradient, v_hat), ClippedSecondMomentState(
            estimator_state
        )

    return MomentTransformation(init_fn, update_fn)


def scale_by_stable_adamw(
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-8,
    *,
    clip_threshold: float = 1.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""StableAdamW's direction: Adam's, divided per tensor by :math:`\max(1, \mathrm{RMS}_t/d)`.

    The chain ``ema(b1)``, ``bias_correction(b1)``, ``scale_by_clipped_second_moment(b2)``. See
    `stable_adamw` for the update and arguments.

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(mu), BiasCorrectionState(count),
      ClippedSecondMomentState((EmaState(nu), BiasCorrectionState(count))))``.
    """
    check_decay(b1, "b1")
    return chain(
        ema(b1, dtype=mu_dtype),
        bias_correction(b1),
        scale_by_clipped_second_moment(
            b2, eps=eps, clip_threshold=clip_threshold, nu_dtype=nu_dtype
        ),
    )


@descent_example("stable_adamw(learning_rate=0.1, weight_decay=0.0)", "4.4200 3.8812 3.3841")
def stable_adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.2,
    mask: Any = None,
    *,
    clip_threshold: float = 1.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""StableAdamW (Wortsman et al., 2023): AdamW with Adafactor-style update clipping per tensor.

    .. math::
        \hat m_t &= \frac{m_t}{1 - \beta_1^t}, \quad
        \hat v_t = \frac{v_t}{1 - \beta_2^t}, \quad
        \mathrm{RMS}_t = \sqrt{\operatorname{mean}_{\text{tensor}}
        \frac{g_t^2}{\max(\hat v_t, \epsilon^2)}}, \\
        \theta_t &= \theta_{t-1} - \frac{\eta_t}{\max(1, \mathrm{RMS}_t / d)}\,
        \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} - \eta_t \lambda\, \theta_{t-1},

    with :math:`m_t, v_t` Adam's moving averages of :math:`g_t` and :math:`g_t^2`. The reference
    (Wortsman's ``StableAdamWUnfused`` gist) writes the averages with "debiased betas"
    :math:`\hat\beta_t = \beta (1 - \beta^{t-1})/(1 - \beta^t)`, which is algebraically
    :math:`\hat m_t, \hat v_t` above; :math:`\epsilon` is outside the root (Adam's form). The RMS is
    per tensor and uses the updated :math:`\hat v_t` (1 at :math:`t = 1`: no clipping). With
    :math:`\mathrm{RMS}_t \le d` throughout this is exactly `adamw`. The decay uses the *unclipped*
    learning rate, as the gist does; pytorch-optimizer's ``StableAdamW`` decays with the clipped
    one (and its foreach path takes the RMS with the previous :math:`v`), which adamx does not
    provide.

    Reference: matches a NumPy transcription of the gist in float64, with a cosine schedule and
    weight decay (``tests/test_stable_adamw.py``). Defaults follow the gist
    (:math:`\beta = (0.9, 0.99)`, :math:`\epsilon = 10^{-8}`, ``weight_decay=0.2``, :math:`d = 1`;
    its ``lr`` is ``2e-3``); some copies use :math:`\epsilon = 10^{-6}`.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the first moment, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the second moment, in ``[0, 1)``.
      eps: :math:`\epsilon >= 0`.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      clip_threshold: :math:`d > 0` (the gist's ``clip_thresh``).
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).

    Returns:
      ``chain(scale_by_stable_adamw(...), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate))``.

    References:
      Wortsman et al., "Stable and low-precision training for large-scale vision-language
      models", NeurIPS 2023, https://arxiv.org/abs/2304.13013
    """
    return chain(
        scale_by_stable_adamw(
            b1, b2, eps, clip_threshold=clip_threshold, mu_dtype=mu_dtype, nu_dtype=nu_dtype
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
