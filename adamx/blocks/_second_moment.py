"""The second-moment block: divide by the root of an estimate of E[|g|^2]."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..core._base import GradientTransformation, MomentTransformation
from ..core._chain import chain
from ..core._dtypes import Hyperparameters, as_hyperparameter, cast, compute_dtype
from ..core._probe import record
from ..core._validate import check_decay, check_non_negative
from ..storage._storage import MomentStorage
from ._moments import bias_correction as _bias_correction
from ._moments import ema

__all__ = ["SecondMomentState", "scale_by_second_moment"]


class SecondMomentState(NamedTuple):
    """The state of `scale_by_second_moment`: its estimator's state (for Adam, ``(EmaState(nu),
    BiasCorrectionState(count))``)."""

    estimator: Any


def _abs_squared(g: jax.Array) -> jax.Array:
    """``|g|^2`` in at least float32, real-valued for complex ``g`` (optax's convention)."""
    g = cast(g, compute_dtype(g.dtype))
    if jnp.iscomplexobj(g):
        return (g.conj() * g).real
    return g**2


@jax.custom_jvp
def _sqrt(v: Any) -> Any:
    """``sqrt`` of every leaf of ``v`` (an array or a tree of arrays), whose derivative at ``v = 0``
    is 0 rather than inf, so differentiating through a step with a coordinate whose gradients were
    all zero gives 0, not ``0 * inf = NaN``.

    The forward pass is a plain ``sqrt``: the guard lives in the derivative (a ``custom_jvp``), so a
    step pays no compare or select for it. One call over the whole tree is one ``custom_jvp`` in
    the jaxpr, not one per leaf.
    """
    return jax.tree.map(jnp.sqrt, v)


@_sqrt.defjvp
def _sqrt_jvp(primals: tuple[Any], tangents: tuple[Any]) -> tuple[Any, Any]:
    # JAX's rule for sqrt, t * (0.5 / sqrt(v)), with 0 where v = 0 (and NaN kept where v is NaN).
    (v,), (t,) = primals, tangents
    root = _sqrt(v)

    def one(v, r, t):
        zero = v == 0
        return jnp.where(zero, 0, t * (0.5 / jnp.where(zero, 1, r))).astype(t.dtype)

    return root, jax.tree.map(one, v, root, t)


def _real_like(param: jax.Array) -> jax.Array:
    """A stand-in for ``param`` with its real dtype, so the estimator's state is real-valued."""
    return jnp.real(param) if jnp.iscomplexobj(param) else param


def divide_by_root(u: jax.Array, v: jax.Array, eps: Any, eps_root: Any, guard_zero: bool):
    """``u / (sqrt(v + eps_root) + eps)`` in the compute dtype, returned in ``u``'s dtype; with
    ``guard_zero``, a zero denominator gives 0 instead of NaN (a NaN denominator propagates)."""
    cdt = compute_dtype(u.dtype, v.dtype)
    root = _sqrt(_radicand(v, cdt, eps_root))
    return _divide(u, root, as_hyperparameter(eps, cdt), guard_zero)


def _adds(value: Any) -> bool:
    """Whether adding ``value`` can change a number: not for a Python 0 (the radicand is a sum of
    squares, never -0.0, and ``v + 0.0`` is ``v`` for every other ``v``, NaN included)."""
    return not (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0)


def _radicand(v: jax.Array, cdt: Any, eps_root: Any) -> jax.Array:
    """``v + eps_root`` in ``cdt``: what the root is taken of."""
    v = cast(v, cdt)
    return v + as_hyperparameter(eps_root, cdt) if _adds(eps_root) else v


def _divide(u: jax.Array, root: jax.Array, eps: jax.Array, guard_zero: bool) -> jax.Array:
    """``u / (root + eps)`` in ``root``'s dtype, returned in ``u``'s (see `divide_by_root`);
    ``eps`` already an array of that dtype."""
    return cast(safe_divide(cast(u, root.dtype), root + eps, guard_zero), u.dtype)


def guards_zero(eps: Any) -> bool:
    """Whether a denominator ``... + eps`` can be 0, so `safe_divide` needs its guard: unless
    ``eps`` is a concrete positive number (the guard costs a select)."""
    return not (isinstance(eps, (int, float)) and eps > 0)


def safe_divide(x: jax.Array, denominator: jax.Array, guard_zero: bool) -> jax.Array:
    """``x / denominator``; with ``guard_zero``, 0 where the denominator is 0 instead of NaN (a NaN
    denominator propagates)."""
    if not guard_zero:
        return x / denominator
    positive = denominator != 0
    return jnp.where(positive, x / jnp.where(positive, denominator, 1), 0)


def scale_by_second_moment(
    decay: float = 0.999,
    *,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    bias_correction: bool = True,
    nu_dtype: Any = None,
    storage: MomentStorage | None = None,
    estimator: GradientTransformation | None = None,
) -> MomentTransformation:
    r"""Divide the updates by the root of the second moment of the gradient (Adam's denominator).

    .. math::
        v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2, \qquad
        \hat v_t = \frac{v_t}{1 - \beta_2^t}, \qquad
        u_t \leftarrow \frac{u_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}.

    :math:`g_t` is the gradient of this block's run in `adamx.chain` (see `MomentTransformation`),
    :math:`u_t` the updates flowing in (Adam's :math:`\hat m_t`). :math:`\hat v_t` comes from an
    *estimator*, a transformation applied to :math:`|g_t|^2`: by default
    ``chain(ema(decay), bias_correction(decay))``, so :math:`v` is corrected before the root, as
    Adam's Algorithm 1 requires. For complex gradients :math:`|g|^2` is real and so is the stored
    :math:`v` (half of optax's memory). With ``eps = 0`` and a coordinate whose estimate is 0, the
    update is 0 rather than NaN.

    Args:
      decay: :math:`\beta_2` of the default estimator, in ``[0, 1)``.
      eps: :math:`\epsilon`, added outside the root (Adam's).
      eps_root: :math:`\epsilon_{root}`, added inside the root (needed to differentiate through the
        update, or for RMSprop's form).
      bias_correction: correct :math:`v_t` (default estimator only).
      nu_dtype: dtype of the stored :math:`v`; ``None`` keeps the parameter's real dtype.
      storage: a `MomentStorage` for :math:`v` (instead of ``nu_dtype``).
      estimator: replaces the default estimator (then ``decay``, ``bias_correction``, ``nu_dtype``
        and ``storage`` are unused); e.g. AMSGrad's running maximum.

    Returns:
      A `MomentTransformation` with state `SecondMomentState`.
    """
    check_non_negative(eps, "eps")
    check_non_negative(eps_root, "eps_root")
    if estimator is None:
        check_decay(decay, "decay")
        moment = ema(decay, dtype=nu_dtype, storage=storage)
        estimator = chain(moment, _bias_correction(decay)) if bias_correction else chain(moment)
    # A zero denominator (eps = 0 and an all-zero gradient history) gives 0, not NaN.
    guard_zero = guards_zero(eps)

    def init_fn(params):
        return SecondMomentState(estimator=estimator.init(jax.tree.map(_real_like, params)))

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        del extra_args
        gradient = updates if gradient is None else gradient
        v_hat, estimator_state = estimator.update(
            jax.tree.map(_abs_squared, gradient), state.estimator, params
        )

        # The roots of every leaf in one `_sqrt` call; the hyperparameters converted once.
        root_hp, eps_hp = Hyperparameters(eps_root), Hyperparameters(eps)
        add_root = _adds(eps_root)

        def radicand(u, v):
            cdt = compute_dtype(u.dtype, v.dtype)
            v = cast(v, cdt)
            return v + root_hp(cdt)[0] if add_root else v

        def divide(u, root):
            return _divide(u, root, eps_hp(root.dtype)[0], guard_zero)

        roots = _sqrt(jax.tree.map(radicand, updates, v_hat))
        scaled = jax.tree.map(divide, updates, roots)
        # For `adamx.monitor` (nothing unless a monitor is open): the estimate, the denominators'
        # roots, eps and the direction, the step's own values.
        record("second_moment", v_hat=v_hat, roots=roots, eps=eps, direction=scaled)
        return scaled, SecondMomentState(estimator=estimator_state)

    return MomentTransformation(init_fn, update_fn)
