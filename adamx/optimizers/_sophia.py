"""Sophia (SophiaG): momentum divided by a clipped diagonal Hessian estimate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._moments import EmaState, _resolve_storage, bias_correction, ema
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import _real_like
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import GradientTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ..core._structural import either
from ..core._trees import map_like
from ..core._validate import check_decay, check_non_negative
from ..storage._storage import stored_dtypes

__all__ = [
    "ClippedHessianState",
    "hutchinson_diagonal",
    "scale_by_clipped_hessian",
    "scale_by_sophia",
    "sophia",
]

_EPS_PLACEMENTS = ("add", "max")


class ClippedHessianState(NamedTuple):
    """The state of `scale_by_clipped_hessian`: the EMA :math:`h` of the Hessian estimates."""

    hessian: EmaState


def scale_by_clipped_hessian(
    b2: float = 0.99,
    gamma: float = 0.04,
    eps: float = 1e-15,
    *,
    clip_threshold: float = 1.0,
    eps_placement: str = "add",
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""Divide the updates by :math:`\gamma h` and clip each coordinate: Sophia's preconditioner.

    .. math::
        h_t = \beta_2 h_{t-1} + (1 - \beta_2)\, \hat h_t \ \text{(only on calls given }
        \hat h_t\text{)}, \qquad
        u_t \leftarrow \operatorname{clip}\!\left(\frac{u_t}{\gamma h_t + \epsilon},
        -c, c\right)

    (``eps_placement="max"``: :math:`\max(\gamma h_t, \epsilon)` in the denominator). The estimate
    :math:`\hat h_t` arrives as ``update(..., hessian=h_hat)``, a tree like the params; calls
    without it leave :math:`h` unchanged (:math:`h_0 = 0`). Complex updates are clipped per real
    and imaginary part (the authors' ``view_as_real``); :math:`h` is real.

    Args:
      b2: :math:`\beta_2`, decay of :math:`h`, in ``[0, 1)``.
      gamma: :math:`\gamma >= 0`.
      eps: :math:`\epsilon >= 0`.
      clip_threshold: :math:`c > 0`.
      eps_placement: ``"add"`` (the authors') or ``"max"`` (optax's).
      nu_dtype: dtype of :math:`h` (default: the parameter's real dtype).

    Returns:
      A `GradientTransformation` with state `ClippedHessianState`.
    """
    check_decay(b2, "b2")
    check_non_negative(gamma, "gamma")
    check_non_negative(eps, "eps")
    check_non_negative(clip_threshold, "clip_threshold")
    if eps_placement not in _EPS_PLACEMENTS:
        raise ValueError(
            f"`eps_placement` must be 'add' (the authors' gamma*h + eps) or 'max' (optax's "
            f"max(gamma*h, eps)), got {eps_placement!r}."
        )
    average = ema(b2, dtype=nu_dtype)
    storage = _resolve_storage(None, nu_dtype, "nu_dtype")  # how h is stored: read through it

    def init_fn(params):
        return ClippedHessianState(average.init(jax.tree.map(_real_like, params)))

    def update_fn(updates, state, params=None, *, hessian=None, **extra_args):
        del params, extra_args
        h_state = state.hessian
        if hessian is not None:
            estimate = map_like(lambda _, e: jnp.real(e), updates, hessian, "hessian")
            _, h_state = average.update(estimate, h_state)

        def one(u, stored):
            cdt = compute_dtype(u.dtype, *stored_dtypes(stored))
            rdt = real_dtype(cdt)
            h = storage.read(stored, rdt)
            scaled = as_hyperparameter(gamma, rdt) * h
            floor = as_hyperparameter(eps, rdt)
            denominator = scaled + floor if eps_placement == "add" else jnp.maximum(scaled, floor)
            c = as_hyperparameter(clip_threshold, rdt)
            ratio = u.astype(cdt) / denominator.astype(cdt)
            if jnp.iscomplexobj(ratio):
                ratio = jax.lax.complex(jnp.clip(ratio.real, -c, c), jnp.clip(ratio.imag, -c, c))
            else:
                ratio = jnp.clip(ratio, -c, c)
            return ratio.astype(u.dtype)

        new_updates = map_like(one, updates, h_state.ema, "optimizer state")
        return new_updates, ClippedHessianState(h_state)

    return GradientTransformation(init_fn, update_fn)


def scale_by_sophia(
    b1: float = 0.965,
    b2: float = 0.99,
    gamma: float = 0.04,
    eps: float = 1e-15,
    *,
    clip_threshold: float = 1.0,
    eps_placement: str = "add",
    debias: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""Sophia's direction: ``chain(ema(b1), [bias_correction(b1)], scale_by_clipped_hessian(...))``.

    See `sophia` for the update and arguments. Pass the Hessian estimate as
    ``update(grads, state, params, hessian=h_hat)`` on the calls that compute one.

    Returns:
      A `GradientTransformation`; its state is ``(EmaState(m), [BiasCorrectionState(count)],
      ClippedHessianState(EmaState(h)))``.
    """
    check_decay(b1, "b1")
    preconditioner = scale_by_clipped_hessian(
        b2, gamma, eps, clip_threshold=clip_threshold, eps_placement=eps_placement,
        nu_dtype=nu_dtype,
    )  # fmt: skip
    if debias:
        return chain(ema(b1, dtype=mu_dtype), bias_correction(b1), preconditioner)
    return chain(ema(b1, dtype=mu_dtype), preconditioner)


def sophia(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.965,
    b2: float = 0.99,
    *,
    gamma: float = 0.04,
    eps: float = 1e-15,
    weight_decay: ScalarOrSchedule = 0.1,
    mask: Any = None,
    weight_decay_mask: Any = None,
    clip_threshold: float = 1.0,
    eps_placement: str = "add",
    debias: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> GradientTransformation:
    r"""Sophia (Liu et al., 2023): momentum over a clipped diagonal Hessian, as the authors' SophiaG.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad
        h_t = \beta_2 h_{t-1} + (1 - \beta_2)\, \hat h_t \ \text{on calls given } \hat h_t
        \text{, else } h_{t-1}, \\
        \theta_t &= \theta_{t-1} - \eta_t \left(\operatorname{clip}\!\left(
        \frac{m_t}{\gamma h_t + \epsilon}, -c, c\right) + \lambda\, \theta_{t-1}\right),

    with :math:`m_0 = h_0 = 0` (until the first estimate every step is
    :math:`-\eta\operatorname{sign}(m)`). :math:`\hat h_t` is passed as
    ``opt.update(grads, state, params, hessian=h_hat)`` on the steps that compute it (every
    :math:`k = 10` steps in the authors' ``train_sophiag.py``); the EMA of :math:`h` moves only
    then, and the same call already uses it. For Sophia-G (Gauss-Newton-Bartlett) pass
    :math:`\hat h = \hat g \odot \hat g` with :math:`\hat g` the gradient of the mean loss on
    labels *sampled* from the model, and :math:`\gamma = \rho B` (the authors' ``rho * bs``, bs the
    tokens per step), or :math:`\hat h = B\,\hat g \odot \hat g` and :math:`\gamma = \rho`, the
    paper's form; for Sophia-H pass a Hutchinson estimate (`hutchinson_diagonal`).

    The estimate travels as an extra keyword argument: call the optimizer directly or through
    `adamx.chain`, which passes keyword arguments to every member that accepts them. A foreign
    chain may drop it silently: ``optax.chain`` (0.2.8) passes ``**extra_args`` only to members
    that are instances of ``optax.GradientTransformationExtraArgs``, and wraps every other member,
    adamx's included, with ``optax.with_extra_args_support``, which discards them (:math:`h` would
    stay 0). Inside an optax chain use ``optax.GradientTransformationExtraArgs(opt.init,
    opt.update)`` for the whole ``opt = sophia(...)``.

    Differences: the authors' SophiaG does not bias-correct :math:`m`, adds :math:`\epsilon =
    10^{-15}` to :math:`\gamma h` and clips at 1; ``optax.contrib.sophia`` (Sophia-H with
    Rademacher probes computed inside ``update``) bias-corrects :math:`m` (``debias=True``), uses
    :math:`\max(\gamma h, \epsilon)` with :math:`\epsilon = 10^{-8}` (``eps_placement="max"``),
    and updates :math:`h` *after* using it, on counts :math:`0, k, 2k, \ldots`: the same
    trajectory as adamx given optax's estimate one call later.

    Reference: with the defaults, matches a NumPy transcription of the authors' ``SophiaG``
    (``Liuhong99/Sophia`` ``sophia.py`` at a7e1572, ``step`` then ``update_hessian`` as in
    ``train_sophiag.py``) to 1e-10 in float64; with ``debias=True, eps=1e-8,
    eps_placement="max"`` it matches ``optax.contrib.sophia`` (0.2.8) given the same estimates
    (``tests/test_sophia.py``). Defaults are the authors' (``weight_decay=0.1``; optax
    uses ``1e-4``; ``gamma=0.04`` is their ``rho``, for estimates already multiplied by B).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1: :math:`\beta_1`, decay of :math:`m`, in ``[0, 1)``.
      b2: :math:`\beta_2`, decay of :math:`h`, in ``[0, 1)``.
      gamma: :math:`\gamma >= 0`, the scale of :math:`h`.
      eps: :math:`\epsilon >= 0`.
      weight_decay: :math:`\lambda >= 0` (or a schedule), decoupled, scaled by :math:`\eta_t`.
      mask: which leaves to decay (a tree of booleans or a function of the params); ``None``: all.
        ``weight_decay_mask`` is optax's name for it. Arguments after ``b2`` are keyword-only
        (optax's fourth positional argument is ``eps``, adamx's was ``gamma``).
      clip_threshold: :math:`c`, the bound of each coordinate of the direction.
      eps_placement: ``"add"`` (:math:`\gamma h + \epsilon`, the authors') or ``"max"``
        (:math:`\max(\gamma h, \epsilon)`, optax's).
      debias: divide :math:`m_t` by :math:`1 - \beta_1^t` (optax's; the authors' code does not).
      mu_dtype: dtype of :math:`m` (default: the parameter's).
      nu_dtype: dtype of :math:`h` (default: the parameter's real dtype).

    Returns:
      ``chain(scale_by_sophia(...), add_decayed_weights(weight_decay, mask),
      scale_by_learning_rate(learning_rate))``.

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> opt = adamx.sophia(learning_rate=0.1, gamma=1.0, weight_decay=0.0)
      >>> state = opt.init(params)
      >>> for t in range(3):
      ...     grads = jax.grad(loss)(params)
      ...     h_hat = {"w": jnp.full(2, 2.0)} if t % 2 == 0 else None  # the exact diagonal
      ...     updates, state = opt.update(grads, state, params, hessian=h_hat)
      ...     params = adamx.apply_updates(params, updates)
      ...     print(f"{loss(params):.4f}")
      4.4200
      3.8800
      3.3800

    References:
      Liu, Li, Hall, Liang & Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
      Language Model Pre-training", ICLR 2024, https://arxiv.org/abs/2305.14342
    """
    mask = either("mask", mask, "weight_decay_mask", weight_decay_mask, None)
    return chain(
        scale_by_sophia(
            b1, b2, gamma, eps, clip_threshold=clip_threshold, eps_placement=eps_placement,
            debias=debias, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip


def hutchinson_diagonal(loss_fn: Callable[[Any], jax.Array], params: Any, key: jax.Array) -> Any:
    r"""Hutchinson's estimate of the Hessian diagonal, :math:`u \odot (\nabla^2 L\, u)`.

    One Rademacher probe :math:`u` (optax's choice; the paper draws :math:`u \sim N(0, I)`) and one
    Hessian-vector product (forward-over-reverse). Unbiased; it may be negative, which
    ``sophia(eps_placement="max")`` floors.

    Args:
      loss_fn: the scalar loss as a function of the params.
      params: where to estimate.
      key: a ``jax.random`` key.

    Returns:
      A tree like ``params``: the estimate, to pass as ``sophia``'s ``hessian=``.
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    probes = jax.tree.unflatten(
        treedef,
        [
            jax.random.rademacher(k, jnp.shape(x), jnp.float32).astype(jnp.result_type(x))
            for k, x in zip(keys, leaves, strict=True)
        ],
    )
    _, hvp = jax.jvp(jax.grad(loss_fn), (params,), (probes,))
    return jax.tree.map(lambda u, hu: u * hu, probes, hvp)
