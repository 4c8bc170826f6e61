"""Layer-wise trust ratios: the `scale_by_trust_ratio` block, LAMB and LARS."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..blocks._collectives import AxisName, pmax, psum
from ..blocks._moments import trace
from ..blocks._scale import scale_by_learning_rate
from ..blocks._second_moment import _abs_squared, _sqrt
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import EmptyState, GradientTransformation, ScalarOrSchedule
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ..core._layers import BatchDims, batch_count, check_batch_dims, layer_axes
from ..core._structural import structural
from ..core._trees import check_not_flat, map_like, resolve
from ..core._validate import check_decay, check_non_negative
from ._adam import scale_by_adam

__all__ = ["lamb", "lars", "scale_by_trust_ratio"]


def _layer_norm(x: jax.Array, batch: int, axis_name: AxisName = None) -> jax.Array:
    """The Euclidean norm of each layer of ``x`` (real, broadcastable against ``x``).

    Taken as ``m * ||x / m||`` with ``m`` the largest magnitude, so a finite layer has a finite
    norm even where its squares overflow (a 1e38 float32 gradient); an infinite element gives inf.
    With ``axis_name`` (inside ``shard_map``) ``x`` is a shard of a layer split over that mesh axis
    along a non-batch axis: the maximum and the sum are taken across the shards.
    """
    axes = layer_axes(x, batch)
    largest = pmax(jnp.max(jnp.abs(x), axis=axes, keepdims=True, initial=0), axis_name)
    finite = jnp.isfinite(largest) & (largest > 0)
    safe = jnp.where(finite, largest, 1)
    squares = jnp.sum(_abs_squared(x / safe.astype(x.dtype)), axis=axes, keepdims=True)
    scaled = _sqrt(psum(squares, axis_name))
    return jnp.where(finite, largest * scaled, largest)


def scale_by_trust_ratio(
    min_norm: float = 0.0,
    trust_coefficient: float = 1.0,
    eps: float = 0.0,
    *,
    mask: Any = None,
    batch_dims: BatchDims | None = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    r"""Scale each leaf's update by its trust ratio :math:`\kappa \lVert\theta\rVert / \lVert u\rVert`.

    .. math::
        u \leftarrow u \cdot \kappa\, \frac{\max(\lVert\theta_{t-1}\rVert, n_{\min})}
        {\max(\lVert u\rVert, n_{\min}) + \epsilon},

    with the norms taken over each leaf (each layer of a stacked leaf with ``batch_dims``), and the
    ratio set to 1 where either norm is 0 (a zero parameter or a zero update is left as it is).
    Same numbers as ``optax.scale_by_trust_ratio`` (0.2.8), plus ``mask`` (optax wraps the block in
    ``masked``) and ``batch_dims``.

    Args:
      min_norm: :math:`n_{\min} \ge 0`, the floor of both norms.
      trust_coefficient: :math:`\kappa \ge 0` (LARS's :math:`\eta`, ``1e-3`` there; 1 in LAMB).
      eps: :math:`\epsilon \ge 0`, added to the update's norm.
      mask: which leaves get a trust ratio: a pytree of booleans like the params, or a function of
        the params returning one; ``None`` (the default) is every leaf. Typically biases and norm
        scales are left out.
      batch_dims: the number of leading stacked-layer axes (an int, or a function of the leaf):
        one ratio per layer of a ``nn.scan`` stack.
      axis_name: inside ``jax.shard_map``, the mesh axis every leaf (and its parameter) is split
        over, along an axis that is not a batch axis: the norms are summed across the shards
        (``jax.lax.psum``), so the ratio is the whole layer's. ``None`` (default) under ``jit``,
        where XLA already reduces sharded leaves across devices.

    Returns:
      A `GradientTransformation` with state `EmptyState`.
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    check_non_negative(min_norm, "min_norm")
    check_non_negative(trust_coefficient, "trust_coefficient")
    check_non_negative(eps, "eps")
    check_batch_dims(batch_dims)

    def init_fn(params):
        check_not_flat(
            params,
            "scale_by_trust_ratio",
            "its trust ratio (LAMB, LARS) is one number per parameter",
        )
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "`scale_by_trust_ratio` needs the parameters: call "
                "`update(grads, state, params)` with the current params."
            )
        chosen = resolve(mask, params)

        def one(u, p):
            cdt = compute_dtype(u.dtype, p.dtype)
            rdt = real_dtype(cdt)
            x = u.astype(cdt)
            batch = batch_count(batch_dims, x)
            floor = as_hyperparameter(min_norm, rdt)
            param_norm = _layer_norm(p.astype(cdt), batch, axis_name).astype(rdt)
            param_norm = jnp.maximum(param_norm, floor)
            update_norm = jnp.maximum(_layer_norm(x, batch, axis_name).astype(rdt), floor)
            ratio = (
                as_hyperparameter(trust_coefficient, rdt)
                * param_norm
                / jnp.where(update_norm == 0, 1, update_norm + as_hyperparameter(eps, rdt))
            )
            ratio = jnp.where((param_norm == 0) | (update_norm == 0), 1, ratio)
            return (x * ratio.astype(cdt)).astype(u.dtype)

        if chosen is None:
            return map_like(one, updates, params, "params"), state
        return jax.tree.map(lambda u, p, m: one(u, p) if m else u, updates, params, chosen), state

    return GradientTransformation(init_fn, update_fn)


@descent_example("lamb(learning_rate=0.1)", "4.1013 3.3730 2.7821")
def lamb(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any = None,
    *,
    trust_ratio_mask: Any = None,
    batch_dims: BatchDims | None = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    r"""LAMB (You et al., 2020): AdamW's step rescaled per layer to :math:`\eta_t \lVert\theta\rVert`.

    .. math::
        r_t &= \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
        + \lambda\, \theta_{t-1}, \\
        \theta_t &= \theta_{t-1} - \eta_t\, \frac{\lVert\theta_{t-1}\rVert}{\lVert r_t\rVert}\, r_t

    per leaf (per layer with ``batch_dims``), with :math:`\hat m_t, \hat v_t` Adam's bias-corrected
    moments (`adam`). The ratio is 1 where :math:`\lVert\theta_{t-1}\rVert` or
    :math:`\lVert r_t\rVert` is 0, and on the leaves ``trust_ratio_mask`` leaves out (there the step
    is AdamW's). The paper's :math:`\phi` is the identity, as in optax. Without zero norms, each
    layer moves by exactly :math:`\eta_t \lVert\theta_{t-1}\rVert`.

    Reference: matches ``optax.lamb`` (0.2.8) step for step, and a NumPy transcription of the
    formula above with a per-layer ratio for a stacked leaf (``tests/test_lamb.py``).
    Defaults follow optax (``eps=1e-6``, ``weight_decay=0``; the paper's BERT runs used ``0.01``).
    Versions without bias correction (pytorch-optimizer's, after the paper's v3) are
    ``chain(ema(b1), scale_by_second_moment(b2, eps=eps, bias_correction=False),
    add_decayed_weights(wd), scale_by_trust_ratio(), scale_by_learning_rate(lr))``.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      b1, b2, eps, eps_root, mu_dtype, nu_dtype: as in `adam`.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      mask: which leaves to decay (as in `adamw`).
      trust_ratio_mask: which leaves get a trust ratio (as ``mask`` of `scale_by_trust_ratio`).
      batch_dims: leading stacked-layer axes: one ratio per layer (see `scale_by_trust_ratio`).
      axis_name: inside ``jax.shard_map``, the mesh axis the leaves are split over (see
        `scale_by_trust_ratio`); ``None`` under ``jit``.

    Returns:
      ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
      scale_by_trust_ratio(mask=trust_ratio_mask), scale_by_learning_rate(learning_rate))``.

    References:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
      ICLR 2020, https://arxiv.org/abs/1904.00962
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(mask=trust_ratio_mask, batch_dims=batch_dims, axis_name=axis_name),
        scale_by_learning_rate(learning_rate),
    )


@descent_example("lars(learning_rate=1.0, trust_coefficient=0.1)", "4.0500 2.5920 1.1810")
def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Any = None,
    momentum: float = 0.9,
    nesterov: bool = False,
    *,
    batch_dims: BatchDims | None = None,
    mu_dtype: Any = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    r"""LARS (You, Gitman & Ginsburg, 2017): SGD with momentum and a layer-wise trust ratio.

    .. math::
        r_t = g_t + \lambda\, \theta_{t-1}, \qquad
        b_t = \mu\, b_{t-1} + \eta_t\, \kappa\, \frac{\lVert\theta_{t-1}\rVert}
        {\lVert r_t\rVert + \epsilon}\, r_t, \qquad
        \theta_t = \theta_{t-1} - b_t

    per leaf (per layer with ``batch_dims``); the ratio is 1 where a norm is 0 and on the leaves
    ``trust_ratio_mask`` leaves out. The momentum is a trace of the learning-rate-scaled steps
    (optax's placement; ``nesterov=True`` steps by :math:`\eta_t \cdot(\text{ratio})\, r_t + \mu
    b_t`). With ``momentum=0`` each layer moves by exactly :math:`\eta_t \kappa
    \lVert\theta_{t-1}\rVert` (for :math:`\epsilon = 0`). The paper's Algorithm 1 divides by
    :math:`\lVert g_t\rVert + \lambda \lVert\theta_{t-1}\rVert` instead of
    :math:`\lVert g_t + \lambda\theta_{t-1}\rVert` (equal when :math:`\lambda = 0`); adamx follows
    optax.

    Reference: matches ``optax.lars`` (0.2.8) step for step, with and without Nesterov, decay and
    masks (``tests/test_lars.py``); same defaults and argument order.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count.
      weight_decay: :math:`\lambda >= 0`, or a schedule.
      weight_decay_mask: which leaves to decay (as ``mask`` in `adamw`); ``None`` decays all.
      trust_coefficient: :math:`\kappa \ge 0`.
      eps: :math:`\epsilon \ge 0`, added to the update's norm.
      trust_ratio_mask: which leaves get a trust ratio; ``None`` is all.
      momentum: :math:`\mu` in ``[0, 1)``.
      nesterov: Nesterov momentum.
      batch_dims: leading stacked-layer axes: one ratio per layer (see `scale_by_trust_ratio`).
      mu_dtype: dtype of the momentum buffer (default: the parameter's).
      axis_name: inside ``jax.shard_map``, the mesh axis the leaves are split over (see
        `scale_by_trust_ratio`); ``None`` under ``jit``.

    Returns:
      ``chain(add_decayed_weights(weight_decay, weight_decay_mask),
      scale_by_trust_ratio(trust_coefficient=..., eps=..., mask=trust_ratio_mask),
      scale_by_learning_rate(learning_rate), trace(momentum, nesterov=nesterov))``.

    References:
      You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
      https://arxiv.org/abs/1708.03888
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    check_decay(momentum, "momentum")
    return chain(
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_trust_ratio(
            trust_coefficient=trust_coefficient,
            eps=eps,
            mask=trust_ratio_mask,
            batch_dims=batch_dims,
            axis_name=axis_name,
        ),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov=nesterov, dtype=mu_dtype),
    )
