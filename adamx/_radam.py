"""RAdam: Adam whose adaptive step is rectified by the variance of its learning rate."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._base import (
    GradientTransformation,
    MomentTransformation,
    ScalarOrSchedule,
    safe_increment,
    zero_count,
)
from ._chain import chain
from ._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ._moments import BiasCorrectionState, _correction, bias_correction, ema
from ._scale import scale_by_learning_rate
from ._second_moment import scale_by_second_moment
from ._validate import _concrete, check_decay
from ._weight_decay import optional_decay

_FALLBACKS = ("sgd", "none")

# (k, B_2k): Bernoulli numbers for the series of rho_t near t = 0 (see `_sma_length`).
_BERNOULLI = (
    (1, 1 / 6),
    (2, -1 / 30),
    (3, 1 / 42),
    (4, -1 / 30),
    (5, 5 / 66),
    (6, -691 / 2730),
    (7, 7 / 6),
    (8, -3617 / 510),
)


def _sma_length(decay: Any, count: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    r"""``(rho_t, rho_inf)`` in ``dtype``: the length of the approximated simple moving average.

    :math:`\rho_\infty = 2/(1-\beta) - 1` and :math:`\rho_t = \rho_\infty - 2t\beta^t/(1-\beta^t)`.
    While :math:`\rho_t \ll \rho_\infty` (the steps where the threshold is decided) the textbook
    difference cancels: in float32 it loses ~1e-4 of :math:`\rho_6` for :math:`\beta = 0.999`.
    With :math:`c = -\log\beta` and :math:`x = tc`, :math:`\rho_t = \coth(c/2) - 2t/\mathrm{expm1}(x)`,
    whose Bernoulli series :math:`\rho_t = t + 2\sum_k B_{2k} c^{2k-1}(1 - t^{2k})/(2k)!` has no
    cancellation; it is used for :math:`x < 1` (eight terms: truncation ~1e-14 relative), the
    direct form above.
    """
    t = count.astype(dtype)
    if isinstance(decay, jax.core.Tracer) or jnp.ndim(decay) != 0:
        b = as_hyperparameter(decay, dtype)
        c = -jnp.log(b)
        rho_inf = (1 + b) / (1 - b)
    elif float(decay) == 0.0:  # no memory: rho_t = rho_inf = 1 for every t
        one = jnp.ones((), dtype)
        return one, one
    else:
        c = as_hyperparameter(-math.log(float(decay)), dtype)
        rho_inf = as_hyperparameter((1 + float(decay)) / (1 - float(decay)), dtype)
    x = t * c
    small = x < 1
    ts = jnp.where(small, t, 0)
    xs = ts * c  # <= 1: the powers below cannot overflow
    series = ts
    for k, b2k in _BERNOULLI:  # c^(2k-1) (1 - t^2k) = c^(2k-1) - x^2k / c
        weight = as_hyperparameter(2 * b2k / math.factorial(2 * k), dtype)
        series = series + weight * (c ** (2 * k - 1) - xs ** (2 * k) / c)
    direct = rho_inf - 2 * t / jnp.expm1(x)
    return jnp.where(small, series, direct), rho_inf


def _check_threshold(threshold: Any) -> None:
    number = _concrete(threshold)
    if number is not None and not (math.isfinite(number) and number >= 4):
        raise ValueError(
            f"`threshold` must be a finite number >= 4 (the rectifier needs rho_t >= 4), got "
            f"{number!r}; use 5.0 (torch, optax, the authors' code) or 4.0 (the paper)."
        )


def _check_fallback(fallback: Any) -> None:
    if fallback not in _FALLBACKS:
        raise ValueError(
            f"`fallback` must be 'sgd' (step along the corrected momentum, torch and optax) or "
            f"'none' (no step, the authors' code), got {fallback!r}."
        )


class RectificationState(NamedTuple):
    """The state of `rectification`: the step count (``int32``) and the adaptive block's state."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    adaptive: Any


def rectification(
    adaptive: GradientTransformation,
    decay: float = 0.999,
    *,
    threshold: float = 5.0,
    inclusive: bool = False,
    fallback: str = "sgd",
) -> MomentTransformation:
    r"""RAdam's rectifier around an adaptive block: :math:`r_t\, A(u_t)`, or a fallback early on.

    .. math::
        \rho_\infty = \frac{2}{1 - \beta} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta^t}{1 - \beta^t}, \qquad
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\, \rho_\infty}
        {(\rho_\infty - 4)(\rho_\infty - 2)\, \rho_t}}, \\
        u_t \leftarrow r_t\, A(u_t) \text{ if } \rho_t > \tau \text{ (or } \ge \tau
        \text{ when inclusive), else } u_t \text{ (``"sgd"``) or } 0 \text{ (``"none"``)}.

    :math:`A` is ``adaptive`` (for RAdam, `scale_by_second_moment`), which runs on every step so
    its moments keep up; inside `adamx.chain` it gets the gradient of this block's run. The
    fallback is linear in :math:`u_t`, so the block commutes with `bias_correction`.

    Args:
      adaptive: the transformation :math:`A`, usually a `MomentTransformation`.
      decay: :math:`\beta`, the decay of the second moment, in ``[0, 1)``.
      threshold: :math:`\tau >= 4`.
      inclusive: rectify when :math:`\rho_t \ge \tau` instead of :math:`\rho_t > \tau`.
      fallback: ``"sgd"`` (pass :math:`u_t` through) or ``"none"`` (output 0).

    Returns:
      A `MomentTransformation` with state `RectificationState`.
    """
    check_decay(decay, "decay")
    _check_threshold(threshold)
    _check_fallback(fallback)
    passes_gradient = isinstance(adaptive, MomentTransformation)

    def init_fn(params):
        return RectificationState(count=zero_count(), adaptive=adaptive.init(params))

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del extra_args
        count = safe_increment(state.count)
        if passes_gradient:
            gradient = updates if gradient is None else gradient
            adapted, adaptive_state = adaptive.update(
                updates, state.adaptive, params, gradient=gradient
            )
        else:
            adapted, adaptive_state = adaptive.update(updates, state.adaptive, params)

        def one(u, a):
            cdt = compute_dtype(u.dtype, a.dtype)
            rdt = real_dtype(cdt)
            rho, rho_inf = _sma_length(decay, count, rdt)
            tau = as_hyperparameter(threshold, rdt)
            on = rho >= tau if inclusive else rho > tau
            ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
            r = jnp.sqrt(jnp.where(on, ratio, 1))  # off the rectified branch the ratio may be < 0
            off = u.astype(cdt) if fallback == "sgd" else jnp.zeros_like(u, cdt)
            return jnp.where(on, r.astype(cdt) * a.astype(cdt), off).astype(u.dtype)

        return jax.tree.map(one, updates, adapted), RectificationState(count, adaptive_state)

    return MomentTransformation(init_fn, update_fn)


def root_bias_correction(decay: float = 0.999) -> MomentTransformation:
    r"""Multiply by :math:`\sqrt{1 - \beta^t}`: a second moment's correction applied after its root.

    .. math::
        u_t \leftarrow \sqrt{1 - \beta^t}\; u_t.

    After an uncorrected ``scale_by_second_moment(bias_correction=False)`` it gives the
    ":math:`\hat\epsilon`" form :math:`\sqrt{1-\beta^t}\, u / (\sqrt{v_t} + \epsilon)` of Kingma &
    Ba's section 2, which torch's RAdam and the RAdam and AdaBelief authors' code use:
    :math:`\epsilon` enters before the correction of :math:`v`, i.e. as
    :math:`\epsilon / \sqrt{1 - \beta^t}` next to :math:`\sqrt{\hat v_t}`.

    Args:
      decay: :math:`\beta`, in ``[0, 1)``.

    Returns:
      A `MomentTransformation` with state `BiasCorrectionState` (the step count).
    """
    check_decay(decay, "decay")

    def init_fn(params):
        del params
        return BiasCorrectionState(count=zero_count())

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = safe_increment(state.count)

        def one(u):
            cdt = compute_dtype(u.dtype)
            root = jnp.sqrt(_correction(decay, count, real_dtype(cdt)))
            return (u.astype(cdt) * root.astype(cdt)).astype(u.dtype)

        return jax.tree.map(one, updates), BiasCorrectionState(count)

    return MomentTransformation(init_fn, update_fn)


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    threshold: float = 5.0,
    inclusive: bool = False,
    fallback: str = "sgd",
    eps_before_correction: bool = True,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> MomentTransformation:
    r"""RAdam's direction: the rectified Adam step, or the corrected momentum in early steps.

    The chain ``ema(b1)``, ``bias_correction(b1)``, ``rectification(A, b2)`` where the adaptive
    block :math:`A` is ``chain(scale_by_second_moment(b2, bias_correction=False),
    root_bias_correction(b2))`` (``eps_before_correction=True``, torch's) or
    ``scale_by_second_moment(b2)`` (``False``, optax's). See `radam` for the update and arguments.

    Returns:
      A `MomentTransformation`; its state is ``(EmaState(mu), BiasCorrectionState(count),
      RectificationState(count, adaptive))``, ``adaptive`` holding :math:`v` in an `EmaState`.
    """
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    if eps_before_correction:
        adaptive = chain(
            scale_by_second_moment(
                b2, eps=eps, eps_root=eps_root, bias_correction=False, nu_dtype=nu_dtype
            ),
            root_bias_correction(b2),
        )
    else:
        adaptive = scale_by_second_moment(b2, eps=eps, eps_root=eps_root, nu_dtype=nu_dtype)
    return chain(
        ema(b1, dtype=mu_dtype),
        bias_correction(b1),
        rectification(adaptive, b2, threshold=threshold, inclusive=inclusive, fallback=fallback),
    )


def radam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    threshold: float = 5.0,
    inclusive: bool = False,
    fallback: str = "sgd",
    eps_before_correction: bool = True,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""RAdam (Liu et al., 2019): Adam with its adaptive step rectified, as ``torch.optim.RAdam``.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, &
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2, \\
        \hat m_t &= \frac{m_t}{1 - \beta_1^t}, &
        \rho_t &= \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}, \quad
        \rho_\infty = \frac{2}{1 - \beta_2} - 1, \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\, \rho_\infty}
        {(\rho_\infty - 4)(\rho_\infty - 2)\, \rho_t}}, &
        u_t &= \begin{cases} r_t\, \dfrac{\sqrt{1 - \beta_2^t}\, \hat m_t}
        {\sqrt{v_t + \epsilon_{root}} + \epsilon} & \rho_t > \tau \\
        \hat m_t & \text{otherwise,} \end{cases} \\
        \theta_t &= \theta_{t-1} - \eta_t\, (u_t + \lambda\, \theta_{t-1})

    with :math:`m_0 = v_0 = 0`, :math:`\tau` = ``threshold``. For :math:`\beta_2 = 0.999`,
    :math:`\rho_1, \ldots, \rho_6 = 1, 1.9995, 2.9987, 3.9975, 4.996, 5.994`: steps 1 to 5 are SGD with
    corrected momentum (the first is :math:`-\eta g_1`) and :math:`r_t \to 1` as :math:`t \to
    \infty`.

    The references disagree in three places; the defaults are torch's, each has an option:

    * the test: torch :math:`\rho_t > 5`; optax and the authors' code :math:`\rho_t \ge 5`
      (``inclusive=True``); the paper's Algorithm 2 :math:`\rho_t > 4` (``threshold=4.0``). For
      :math:`\beta_2 = 0.999` only the paper's differs (at :math:`t = 5`).
    * below the threshold: torch, optax and the paper step along :math:`\hat m_t`; the authors'
      code (``degenerated_to_sgd=False``, its default since 2021) makes no step at all
      (``fallback="none"``), and decays no weights either: give the decay as a schedule that is 0
      for those steps to match it.
    * :math:`\epsilon`: torch and the authors' code add it before the correction of :math:`v`, as
      above (``eps_before_correction=True``); optax adds it after, :math:`r_t \hat m_t /
      (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)` (``False``). The two agree for ``eps=0``.

    ``weight_decay`` is decoupled, :math:`\lambda` times the full learning rate (torch's
    ``decoupled_weight_decay=True``, the authors' code); torch's default ``weight_decay`` is L2:
    ``adamx.chain(adamx.add_decayed_weights(wd), radam(lr))``.

    Reference: matches ``torch.optim.RAdam`` (2.13, with either decay) with the defaults,
    ``optax.radam`` (0.2.8) with ``inclusive=True, eps_before_correction=False``, and NumPy
    transcriptions of the authors' code (``inclusive=True, fallback="none"``) and of the paper
    (``threshold=4.0``, ``eps=0``) step for step (``tests/test_variants_radam_adabelief_yogi.py``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of the first moment, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of the second moment, in ``[0, 1)``.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\epsilon_{root}`, added inside the root.
      threshold: :math:`\tau >= 4`; rectify when :math:`\rho_t > \tau`.
      inclusive: rectify when :math:`\rho_t \ge \tau` (optax, the authors' code).
      fallback: ``"sgd"`` (step along :math:`\hat m_t`) or ``"none"`` (no step) below the
        threshold.
      eps_before_correction: :math:`\epsilon` before (torch) or after (optax) the correction of
        :math:`v`.
      weight_decay: :math:`\lambda >= 0` (decoupled), or a schedule; ``None`` (the default):
        no decay block in the chain (any value given, 0 included, keeps the block).
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation`: ``chain(scale_by_radam(...), [add_decayed_weights(weight_decay,
      mask)], scale_by_learning_rate(lr))``, the decay only when ``weight_decay`` is given.

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> opt = adamx.radam(learning_rate=0.1)
      >>> state = opt.init(params)
      >>> for _ in range(7):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = opt.update(grads, state, params)
      ...     params = adamx.apply_updates(params, updates)
      ...     print(f"{loss(params):.4f}")
      3.2000
      1.9285
      1.0686
      0.5211
      0.2033
      0.2007
      0.1977

    References:
      Liu, Jiang, He, Chen, Liu, Gao & Han, "On the Variance of the Adaptive Learning Rate and
      Beyond", ICLR 2020, https://arxiv.org/abs/1908.03265
    """
    return chain(
        scale_by_radam(
            b1,
            b2,
            eps,
            eps_root,
            threshold=threshold,
            inclusive=inclusive,
            fallback=fallback,
            eps_before_correction=eps_before_correction,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        *optional_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
