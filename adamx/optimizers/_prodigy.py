"""Prodigy: Adam whose step size is a running estimate d of the distance to the solution."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._moments import _correction, ema, trace
from ..blocks._scale import _evaluate
from ..blocks._second_moment import (
    SecondMomentState,
    _abs_squared,
    divide_by_root,
    scale_by_second_moment,
)
from ..blocks._weight_decay import optional_decay
from ..core._base import (
    GradientTransformation,
    ScalarOrSchedule,
    identity,
    safe_increment,
    zero_count,
)
from ..core._chain import chain
from ..core._dtypes import as_hyperparameter, compute_dtype, scalar_dtype, upcast
from ..core._structural import either
from ..core._trees import map_like
from ..core._validate import _concrete, check_decay, check_learning_rate, check_non_negative
from ..storage._storage import init_buffers, storage_for, stored_dtypes

__all__ = ["ProdigyState", "prodigy"]


class ProdigyState(NamedTuple):
    """The state of `prodigy`.

    ``count`` is the number of steps taken (``int32``; skipped steps do not count); ``d`` the
    distance estimate :math:`d_t` and ``numerator`` :math:`r_t` (real scalars); ``mu`` the
    `EmaState` of :math:`d\\,g` (:math:`m`); ``nu`` the `SecondMomentState` of :math:`|d\\,g|^2`
    (:math:`v`); ``s`` the `TraceState` of the weighted gradients (:math:`s`); ``x0`` the initial
    params; ``decay`` the state of the weight-decay block.
    """

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    d: jax.Array
    numerator: jax.Array
    mu: Any
    nu: Any
    s: Any
    x0: Any
    decay: Any


def _real_dot(a: jax.Array, b: jax.Array, dtype: Any) -> jax.Array:
    """``Re <a, b> = sum(Re(conj(a) b))`` in ``dtype``: the inner product of C^n as R^2n."""
    cdt = compute_dtype(a.dtype, b.dtype, dtype)
    product = jnp.conj(a.astype(cdt)) * b.astype(cdt)
    return jnp.sum(jnp.real(product)).astype(dtype)


def _total(tree: Any, dtype: Any) -> jax.Array:
    """The sum of the scalar leaves of ``tree``, in ``dtype``."""
    return sum((x.astype(dtype) for x in jax.tree.leaves(tree)), jnp.zeros([], dtype))


def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float | None = None,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any = None,
    d0: float = 1e-6,
    d_coef: float = 1.0,
    betas: tuple[float, float] | None = None,
    beta3: float | None = None,
    estim_lr0: float | None = None,
    estim_lr_coef: float | None = None,
    bias_correction: bool = False,
    safeguard_warmup: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""Prodigy (Mishchenko & Defazio, 2023): Adam with a learned step size :math:`d_t`.

    .. math::
        \rho_t &= \sqrt{1 - \beta_2^t} / (1 - \beta_1^t) \text{ (or 1)}, &
        \delta_t &= d_{t-1}\, \eta_t\, \rho_t, \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, d_{t-1} g_t, &
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, d_{t-1}^2 |g_t|^2, \\
        r_t &= \beta_3 r_{t-1} + \tfrac{d_{t-1}}{d_0} \delta_t
        \langle g_t, \theta_0 - \theta_{t-1} \rangle, &
        s_t &= \beta_3 s_{t-1} + \tfrac{d_{t-1}}{d_0} \delta_t\, g_t, \\
        d_t &= \max\!\left(d_{t-1}, \kappa\, \frac{r_t}{\lVert s_t \rVert_1}\right), &
        \theta_t &= \theta_{t-1} - \delta_t \left( \frac{m_t}{\sqrt{v_t} + d_t\, \epsilon}
        + \lambda\, \theta_{t-1} \right)

    with :math:`m_0 = v_0 = s_0 = 0`, :math:`r_0 = 0`, :math:`d_0` = ``d0``, :math:`\kappa` =
    ``d_coef``, :math:`\beta_3 = \sqrt{\beta_2}` by default. :math:`d` and :math:`r` are single
    numbers shared by every leaf (the norms and the inner product run over the whole tree), so
    Prodigy is one transformation, not a chain; :math:`\eta_t` multiplies the estimate and should
    stay near 1 (a schedule relative to 1, e.g. a cosine decay from 1). ``safeguard_warmup=True``
    weights :math:`s_t` by :math:`d_{t-1}^2/d_0` instead (without :math:`\eta_t \rho_t`), against
    an estimate inflated by a warm-up. As in the authors' code, a step whose learning rate is 0,
    or at which every gradient so far was 0 (:math:`\lVert s_t \rVert_1 = 0`), changes nothing.

    The defaults follow the authors' code (konstmish/prodigy): ``bias_correction=False``,
    :math:`\rho_t = 1`. ``bias_correction=True`` gives optax's ``contrib.prodigy``, which always
    applies :math:`\rho_t` (the authors' ``use_bias_correction=True``). The authors'
    ``growth_rate`` (default :math:`\infty`, used here) and ``slice_p`` are not offered.

    Reference: the default matches a NumPy transcription of the authors' ``Prodigy.step`` and
    ``bias_correction=True`` matches ``optax.contrib.prodigy`` (0.2.8), both with a schedule and
    weight decay (``tests/test_prodigy.py``). The decay is decoupled and multiplied
    by :math:`\delta_t` (the authors' ``decouple=True``); their coupled form is
    ``chain(add_decayed_weights(wd), prodigy(lr))``. optax's update is NaN when the first
    gradient is all zero (:math:`0/0`); adamx skips the step.

    Args:
      learning_rate: :math:`\eta`, a multiplier of :math:`d` (1 in both references), or a schedule.
      b1: :math:`\beta_1`, decay of :math:`m`, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of :math:`v`, in ``[0, 1)``.
      b3: :math:`\beta_3`, decay of :math:`r` and :math:`s`, in ``[0, 1)``; ``None``:
        :math:`\sqrt{\beta_2}`.
      eps: :math:`\epsilon`, added to the root after multiplication by :math:`d_t`.
      weight_decay: :math:`\lambda >= 0`, or a schedule; ``None`` (the default): no decay.
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      d0: the initial estimate :math:`d_0 > 0` (optax's ``estim_lr0``).
      d_coef: :math:`\kappa`, multiplies each estimate (optax's ``estim_lr_coef``).
      bias_correction: use :math:`\rho_t` (optax) instead of 1 (the authors' default).
      safeguard_warmup: weight :math:`s` by :math:`d_{t-1}^2/d_0` (see above).
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation` with state `ProdigyState`; ``state.d`` is the current estimate.

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> opt = adamx.prodigy(d0=1e-2)
      >>> state = opt.init(params)
      >>> for _ in range(4):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = opt.update(grads, state, params)
      ...     params = adamx.apply_updates(params, updates)
      ...     print(f"loss {loss(params):.4f}, d {state.d:.4f}")
      loss 4.8123, d 0.0100
      loss 4.5664, d 0.0156
      loss 4.1389, d 0.0472
      loss 3.0252, d 0.1328

    References:
      Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
      ICML 2024, https://arxiv.org/abs/2306.06101
    """
    if betas is not None:
        b1, b2 = betas
    b3 = either("b3", b3, "beta3", beta3, None)
    d0 = d0 if estim_lr0 is None else estim_lr0
    d_coef = d_coef if estim_lr_coef is None else estim_lr_coef
    check_learning_rate(learning_rate)
    check_decay(b1, "b1")
    check_decay(b2, "b2")
    decay3: Any = b3
    if decay3 is None:
        concrete_b2 = _concrete(b2)
        decay3 = math.sqrt(concrete_b2) if concrete_b2 is not None else jnp.sqrt(b2)
    check_decay(decay3, "b3")
    check_non_negative(eps, "eps")
    check_non_negative(d_coef, "d_coef")
    initial = _concrete(d0)
    if initial is not None and not (math.isfinite(initial) and initial > 0):
        raise ValueError(
            f"`d0` is the initial distance estimate and must be a finite number > 0, got {d0!r}; "
            "the default 1e-6 is a safe under-estimate."
        )
    first = ema(b1, dtype=mu_dtype)
    second = scale_by_second_moment(b2, eps=eps, bias_correction=False, nu_dtype=nu_dtype)
    v_average = chain(ema(b2, dtype=nu_dtype))  # second's estimator: its state, updated here
    weighted_sum = trace(decay3)
    (decay,) = optional_decay(weight_decay, mask) or (identity(),)
    origin = storage_for(None)  # x0 in the parameter's dtype, as the authors keep it

    def init_fn(params):
        dtype = scalar_dtype(params)
        zeros = init_buffers(origin, params)
        return ProdigyState(
            count=zero_count(),
            d=as_hyperparameter(d0, dtype),
            numerator=jnp.zeros([], dtype),
            mu=first.init(params),
            nu=second.init(params),
            s=weighted_sum.init(params),
            # a copy: a state sharing the params' buffers could not be donated with them
            x0=jax.tree.map(lambda p, s: origin.write(jnp.array(p, copy=True), s), params, zeros),
            decay=decay.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "`prodigy` needs the parameters (for the distance from the initial ones): call "
                "`update(grads, state, params)` with the current params."
            )
        dtype = state.d.dtype
        dtypes = jax.tree.map(lambda g: g.dtype, updates)
        updates = jax.tree.map(upcast, updates)  # bfloat16 computes in float32, as in `chain`
        count = safe_increment(state.count)  # t
        if callable(learning_rate):
            lr = as_hyperparameter(_evaluate(learning_rate, state.count, "learning-rate"), dtype)
        else:
            lr = as_hyperparameter(learning_rate, dtype)
        d = state.d
        dlr = d * lr  # delta_t
        if bias_correction:
            dlr = dlr * jnp.sqrt(_correction(b2, count, dtype)) / _correction(b1, count, dtype)
        ratio = d / as_hyperparameter(d0, dtype)

        def scaled(factor, tree):  # factor * x, leaf by leaf, in each leaf's dtype
            def one(x):
                cdt = compute_dtype(x.dtype, dtype)
                return (as_hyperparameter(factor, cdt) * x.astype(cdt)).astype(x.dtype)

            return jax.tree.map(one, tree)

        def distance(g, p, p0):  # <g_t, theta_0 - theta_{t-1}> of one leaf
            start = origin.read(p0, compute_dtype(*stored_dtypes(p0)))
            return _real_dot(g, start - jnp.asarray(p).astype(start.dtype), dtype)

        inner = _total(map_like(distance, updates, params, "params", state.x0), dtype)
        numerator = as_hyperparameter(decay3, dtype) * state.numerator + ratio * dlr * inner

        dg = scaled(d, updates)  # d_{t-1} g_t, what m and v average
        m, mu_state = first.update(dg, state.mu)
        weight = ratio * (d if safeguard_warmup else dlr)
        s, s_state = weighted_sum.update(scaled(weight, updates), state.s)
        norm = _total(jax.tree.map(lambda x: jnp.sum(jnp.abs(x)), s), dtype)
        skip = (norm == 0) | (lr == 0)
        estimate = as_hyperparameter(d_coef, dtype) * numerator / jnp.where(skip, 1, norm)
        new_d = jnp.where(skip, d, jnp.maximum(d, estimate))

        # m_t / (sqrt(v_t) + d_t eps), v_t the uncorrected EMA of |d_{t-1} g_t|^2.
        # (d_t eps is data, not a hyperparameter to validate: a NaN d must propagate, not raise.)
        v, estimator_state = v_average.update(
            jax.tree.map(_abs_squared, dg), state.nu.estimator, params
        )
        d_eps = new_d * as_hyperparameter(eps, dtype)
        direction = jax.tree.map(lambda u, vv: divide_by_root(u, vv, d_eps, 0.0, True), m, v)
        nu_state = SecondMomentState(estimator=estimator_state)
        direction, decay_state = decay.update(direction, state.decay, params)
        new_updates = scaled(jnp.where(skip, 0, -dlr), direction)
        new_state = ProdigyState(
            count=count,
            d=new_d,
            numerator=numerator,
            mu=mu_state,
            nu=nu_state,
            s=s_state,
            x0=state.x0,
            decay=decay_state,
        )
        # A skipped step leaves the whole state as it was (the authors' code returns early).
        new_state = jax.tree.map(lambda new, old: jnp.where(skip, old, new), new_state, state)
        return jax.tree.map(lambda u, dt: u.astype(dt), new_updates, dtypes), new_state

    return GradientTransformation(init_fn, update_fn)
