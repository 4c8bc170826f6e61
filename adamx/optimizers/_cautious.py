r"""Cautious optimizers: drop the coordinates of a step that disagree in sign with the gradient.

Design. Caution is a property of the *direction*, and weight decay must never be masked (the
authors' C-AdamW and C-Lion apply the decay to every coordinate). So the wrapper, `cautious`, wraps
a transformation and masks *its* output only; what comes after it in the chain is untouched:

* ``cautious(scale_by_X(...))`` wraps a bare direction (its output points along the gradient), and
  a cautious optimizer is the usual chain around it,
  ``chain(cautious(scale_by_X(...)), add_decayed_weights(wd, mask), scale_by_learning_rate(lr))``.
  `cautious_adamw` and `cautious_lion` are built so, and so is any adamx optimizer: every one is a
  ``scale_by_*`` direction followed by its decay and learning-rate blocks.
* ``cautious(optimizer, descent=True)`` wraps a whole optimizer (adamx's or optax's) whose output
  points *against* the gradient (its learning-rate scaling flipped the sign). To guarantee that no
  decay is masked, the wrapped optimizer is updated *without* the parameters: an optimizer with
  decoupled weight decay (or anything else that reads the parameters) then fails with a sentence
  that says to use the chain above instead, rather than silently masking its decay.

The gradient the mask compares with is the input of the wrapper (after any clipping before it in
the chain). For complex parameters the sign test is :math:`\operatorname{Re}(u\,\bar g) > 0`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._moments import bias_correction, ema
from ..blocks._rectification import root_bias_correction
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import scale_by_second_moment
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import (
    GradientTransformation,
    ScalarOrSchedule,
)
from ..core._chain import _keyword_filter, chain
from ..core._docs import descent_example
from ..core._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ..core._trees import check_not_flat, map_like
from ..core._validate import check_decay
from ._adam import scale_by_adam
from ._lion import scale_by_lion

__all__ = ["CautiousState", "cautious", "cautious_adamw", "cautious_lion"]

_RESCALES = ("mean", "sum_plus_one", "none")
_MIN_FRACTION = 1e-3  # the official clamp of mean(phi)


class CautiousState(NamedTuple):
    """The state of `cautious`: the wrapped transformation's state."""

    inner: Any


def _caution(u: jax.Array, g: jax.Array, rescale: str, descent: bool) -> jax.Array:
    """``u * phi * s(phi)`` for one tensor, ``phi = 1[u g > 0]`` (``< 0`` when ``descent``)."""
    if u.size == 0:
        return u
    cdt = compute_dtype(u.dtype, g.dtype)
    rdt = real_dtype(cdt)
    x, y = u.astype(cdt), g.astype(cdt)
    agreement = (x * jnp.conj(y)).real if jnp.iscomplexobj(x) else x * y
    phi = ((agreement < 0) if descent else (agreement > 0)).astype(rdt)
    if rescale == "mean":
        phi = phi / jnp.maximum(jnp.mean(phi), as_hyperparameter(_MIN_FRACTION, rdt))
    elif rescale == "sum_plus_one":
        phi = phi * (as_hyperparameter(phi.size, rdt) / (jnp.sum(phi) + jnp.ones((), rdt)))
    return (x * phi.astype(cdt)).astype(u.dtype)


def cautious(
    transform: GradientTransformation, *, rescale: str = "mean", descent: bool = False
) -> GradientTransformation:
    r"""Make a direction cautious: zero the coordinates whose sign disagrees with the gradient.

    .. math::
        \phi_t = \mathbb{1}[u_t \odot g_t > 0], \qquad
        u_t \leftarrow u_t \odot \phi_t \cdot s(\phi_t),

    per tensor, with :math:`u_t` the wrapped transform's output and :math:`g_t` the wrapper's input.
    The rescaling :math:`s` (``rescale``) keeps the step's size when coordinates are dropped:

    * ``"mean"`` (default; the authors' current code, from timm's ``caution``):
      :math:`s = 1/\max(\operatorname{mean}\phi_t, 10^{-3})`, exactly 1 when all signs agree;
    * ``"sum_plus_one"`` (the original code, still ``c_lion.py``'s, and pytorch-optimizer's):
      :math:`s = n/(\sum \phi_t + 1)` for a tensor of :math:`n` elements, :math:`n/(n+1)` when all
      agree;
    * ``"none"``: :math:`s = 1`.

    ``descent=True`` wraps a whole optimizer whose output points downhill (the sign flipped by its
    learning rate): then :math:`\phi_t = \mathbb{1}[u_t \odot g_t < 0]`, and the optimizer is
    updated without the parameters, so one with decoupled weight decay is refused rather than having
    its decay masked (see the module's design note). For decay, wrap the direction instead:
    ``chain(cautious(scale_by_X()), add_decayed_weights(wd), scale_by_learning_rate(lr))``.

    Args:
      transform: a direction (``scale_by_adam()``, ``scale_by_lion()``, any ``scale_by_*``), or with
        ``descent=True`` a full optimizer without weight decay (``adamx.adam(lr)``, an optax one).
      rescale: ``"mean"``, ``"sum_plus_one"`` or ``"none"``.
      descent: the wrapped transform's output points against the gradient.

    Returns:
      A `GradientTransformation` with state `CautiousState`.
    """
    if rescale not in _RESCALES:
        raise ValueError(
            f"`rescale` must be 'mean' (the authors' current code), 'sum_plus_one' (their original "
            f"code) or 'none', got {rescale!r}."
        )
    if not (
        callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))
    ):
        raise TypeError(
            f"`cautious` wraps a transformation with `init` and `update`, got {transform!r}; pass a "
            "direction such as `adamx.scale_by_adam()`."
        )
    keep = _keyword_filter(transform.update)

    def init_fn(params):
        if rescale != "none":
            check_not_flat(
                params,
                "cautious",
                f"its rescale={rescale!r} uses each parameter's share of agreeing signs",
            )
        return CautiousState(inner=transform.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        extra_args.pop("gradient", None)  # the mask compares with this wrapper's own input
        inner_params = None if descent else params
        try:
            directions, inner = transform.update(
                updates, state.inner, inner_params, **keep(extra_args)
            )
        except ValueError as error:
            if not descent or params is None:
                raise
            # Not for want of the parameters if it fails with them too: that error is the one.
            transform.update(updates, state.inner, params, **keep(extra_args))
            raise ValueError(
                "`cautious(optimizer, descent=True)` updates the optimizer without the parameters, "
                "so that no weight decay is masked, but this optimizer needs them (decoupled "
                "weight decay?). Wrap its direction instead: `chain(cautious(scale_by_X(...)), "
                "add_decayed_weights(wd), scale_by_learning_rate(lr))`, or use `cautious_adamw` "
                "/ `cautious_lion`."
            ) from error
        masked = map_like(
            lambda u, g: _caution(u, g, rescale, descent), directions, updates, "gradients"
        )
        return masked, CautiousState(inner=inner)

    return GradientTransformation(init_fn, update_fn)


def _adam_direction(b1, b2, eps, eps_root, mu_dtype, nu_dtype, eps_before_correction):
    if not eps_before_correction:
        return scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype)
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    # (lr sqrt(1 - b2^t) / (1 - b1^t)) m_t / (sqrt(v_t) + eps): eps joins the uncorrected v.
    return chain(
        ema(b1, dtype=mu_dtype),
        bias_correction(b1),
        scale_by_second_moment(
            eps=eps, eps_root=eps_root, estimator=chain(ema(b2, dtype=nu_dtype))
        ),
        root_bias_correction(b2),
    )


@descent_example("cautious_adamw(learning_rate=0.1, weight_decay=0.0)", "4.4200 3.8813 3.3843")
def cautious_adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    rescale: str = "mean",
    eps_before_correction: bool = False,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""C-AdamW (Liang et al., 2024): AdamW that steps only where the momentum agrees with the gradient.

    .. math::
        u_t &= \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}, \qquad
        \phi_t = \mathbb{1}[u_t \odot g_t > 0], \\
        \theta_t &= \theta_{t-1} - \eta_t \left( u_t \odot \phi_t\, s(\phi_t)
        + \lambda\, \theta_{t-1} \right),

    with :math:`\hat m_t, \hat v_t` as in `adamw` and :math:`s` the per-tensor rescaling of
    `cautious` (``rescale``). The decay is never masked. :math:`u_t` has the sign of :math:`m_t`,
    the official code's mask ``exp_avg * grad > 0``.

    The authors' code (kyleliang919/C-Optim ``c_adamw.py``) is HF-transformers' AdamW: :math:`\epsilon`
    is added *before* the bias correction of :math:`v` (the paper's "efficient" form,
    :math:`\eta_t \sqrt{1-\beta_2^t}/(1-\beta_1^t) \cdot m_t/(\sqrt{v_t} + \epsilon)`), with
    :math:`\epsilon = 10^{-6}` and no decay by default. ``eps_before_correction=True`` gives that form;
    the official optimizer is ``cautious_adamw(lr, eps=1e-6, weight_decay=0.0,
    eps_before_correction=True)``. Defaults otherwise follow `adamw` (optax's), so that with all
    signs agreeing and ``rescale="mean"`` this is exactly `adamw`.

    Reference: with ``eps_before_correction=True, eps=1e-6`` it matches a NumPy transcription of
    ``c_adamw.py``'s single-tensor path in float64, for both rescalings
    (``tests/test_cautious.py``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1, b2, eps, eps_root, mu_dtype, nu_dtype: as in `adamw`.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      rescale: ``"mean"`` (default), ``"sum_plus_one"`` or ``"none"``; see `cautious`.
      eps_before_correction: add :math:`\epsilon` to :math:`\sqrt{v_t}` before the correction
        (the official code's form) instead of to :math:`\sqrt{\hat v_t}`.

    Returns:
      ``chain(cautious(direction, rescale=rescale), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate))``, the direction being ``scale_by_adam(...)``.

    References:
      Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code",
      2024, https://arxiv.org/abs/2411.16085
    """
    direction = _adam_direction(b1, b2, eps, eps_root, mu_dtype, nu_dtype, eps_before_correction)
    return chain(
        cautious(direction, rescale=rescale),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@descent_example("cautious_lion(learning_rate=0.1, weight_decay=0.0)", "4.4200 3.8800 3.3800")
def cautious_lion(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Any = None,
    *,
    rescale: str = "mean",
) -> GradientTransformation:
    r"""C-Lion (Liang et al., 2024): Lion that steps only where its sign agrees with the gradient.

    .. math::
        u_t = \operatorname{sign}(\beta_1 m_{t-1} + (1 - \beta_1) g_t), \quad
        \theta_t = \theta_{t-1} - \eta_t \left( u_t \odot \phi_t\, s(\phi_t)
        + \lambda\, \theta_{t-1} \right),

    with :math:`m_t` as in `lion`, :math:`\phi_t = \mathbb{1}[u_t \odot g_t > 0]` and :math:`s` the
    rescaling of `cautious`. The decay is never masked. The authors' ``c_lion.py`` rescales by
    :math:`n/(\sum\phi_t + 1)` (``rescale="sum_plus_one"``) and defaults to
    :math:`\beta = (0.95, 0.98)` and no decay; adamx's defaults follow `lion` (optax's) and the
    authors' current rescaling (``"mean"``).

    Reference: with ``rescale="sum_plus_one"`` it matches a NumPy transcription of ``c_lion.py`` in
    float64 (``tests/test_cautious.py``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1, b2, mu_dtype: as in `lion`.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      rescale: ``"mean"`` (default), ``"sum_plus_one"`` or ``"none"``; see `cautious`.

    Returns:
      ``chain(cautious(scale_by_lion(b1, b2, mu_dtype), rescale=rescale),
      add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``.

    References:
      Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code",
      2024, https://arxiv.org/abs/2411.16085
    """
    return chain(
        cautious(scale_by_lion(b1, b2, mu_dtype), rescale=rescale),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
