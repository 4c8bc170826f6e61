"""Adafactor: a factored second moment, relative step sizes and update clipping."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._collectives import AxisName, axis_size, psum
from ..blocks._map import unzip
from ..blocks._moments import _resolve_storage, ema
from ..blocks._scale import _evaluate, scale, scale_by_learning_rate
from ..blocks._second_moment import _abs_squared, _real_like, _sqrt
from ..blocks._weight_decay import add_decayed_weights
from ..core._base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    safe_increment,
    zero_count,
)
from ..core._chain import chain
from ..core._docs import descent_example
from ..core._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ..core._layers import BatchDims, batch_count, check_batch_dims, layer_axes
from ..core._structural import either, structural
from ..core._trees import check_not_flat, map_like, non_float_parameter
from ..core._validate import _concrete, check_learning_rate, check_non_negative
from ..storage._storage import MomentStorage, stored_dtypes

__all__ = ["FactoredRmsState", "adafactor", "scale_by_adafactor", "scale_by_factored_rms"]

_EPS_PLACEMENTS = ("add", "clamp")
_FACTORED_DIMS = ("largest", "last")


class FactoredRmsState(NamedTuple):
    """The state of `scale_by_factored_rms`, laid out as optax's ``FactoredState``.

    ``count`` is the step count (``int32``). Per parameter, a factored leaf keeps ``v_row``, one
    statistic per row (its shape without the column axis: ``(L, R)`` for a ``(L, R, C)`` stack),
    ``v_col``, one per column (``(L, C)``), and a 1-element placeholder in ``v``; any other leaf
    keeps the full ``v`` and placeholders in ``v_row`` and ``v_col`` (optax's layout). optax names
    the statistic over its largest axis ``v_row`` whichever axis that is, so the two may be swapped
    against optax's state.
    """

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    v_row: Any
    v_col: Any
    v: Any


def _shards(axis_name: AxisName) -> int:
    """How many shards of a leaf there are: the size of ``axis_name`` (1 without one)."""
    return axis_size(axis_name)


def _global_shape(x: Any, batch: int, axis_name: AxisName) -> tuple[int, ...]:
    """The shape of the whole leaf whose shard ``x`` is: split along its first non-batch axis."""
    shape = list(jnp.shape(x))
    if axis_name is not None:
        if len(shape) <= batch:
            raise ValueError(
                f"With `axis_name` every leaf is split over it along its first non-batch axis, "
                f"but a leaf of shape {tuple(shape)} with {batch} batch axes has no such axis; "
                "keep scalars (and stacks of scalars) out of the sharded tree, or drop `axis_name`."
            )
        shape[batch] *= _shards(axis_name)
    return tuple(shape)


def _mean(
    x: jax.Array, axis: Any, split: int | None, axis_name: AxisName, keepdims: bool = False
) -> jax.Array:
    """``jnp.mean(x, axis)`` of the whole leaf when ``x`` is split along ``split`` over ``axis_name``.

    Axes other than ``split`` are whole on every device; over ``split`` the partial sums are added
    across the shards (``jax.lax.psum``) and divided by the whole length.
    """
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if axis_name is None or split not in axes:
        return jnp.mean(x, axis=axes, keepdims=keepdims)
    count = math.prod(x.shape[a] for a in axes) * _shards(axis_name)
    total = psum(jnp.sum(x, axis=axes, keepdims=keepdims), axis_name)
    return total / jnp.asarray(count, total.dtype)


def _layer_rms(x: jax.Array, batch: int, axis_name: AxisName = None) -> jax.Array:
    """The root-mean-square of each layer of ``x`` (real, broadcastable against ``x``).

    With ``axis_name`` (inside ``shard_map``) ``x`` is split along its first non-batch axis.
    """
    axes = layer_axes(x, batch)
    return _sqrt(_mean(_abs_squared(x), axes, batch, axis_name, keepdims=True))


def _factored_axes(
    shape: tuple[int, ...], batch: int, factored: bool, min_size: int, rule: str
) -> tuple[int, int] | None:
    """The axis averaged away in ``v_row`` and the one averaged away in ``v_col``, or ``None``.

    The two factored axes are, for ``"largest"`` (optax), the largest and second-largest axes of a
    layer (ties: the later axis counts as larger, as NumPy's ``argsort``) and, for ``"last"``
    (torch, Tensor2Tensor), the last two. Of the pair, the earlier axis holds the rows: ``v_row``
    averages over the later one (one statistic per row), ``v_col`` over the earlier one. ``None``
    where a layer has fewer than two axes or one of the pair is shorter than ``min_size``.
    """
    axes = list(range(batch, len(shape)))
    if not factored or len(axes) < 2:
        return None
    if rule == "last":
        pair = axes[-2:]
    else:
        pair = sorted(axes, key=lambda axis: shape[axis])[-2:]  # stable, as NumPy's small argsort
    rows, cols = sorted(pair)
    if min(shape[rows], shape[cols]) < min_size:
        return None
    return cols, rows


def scale_by_factored_rms(
    *,
    decay_rate: float = 0.8,
    eps: float | None = 1e-30,
    eps_placement: str = "add",
    factored: bool = True,
    min_dim_size_to_factor: int | None = None,
    factored_dims: str = "largest",
    batch_dims: BatchDims | None = None,
    decay_offset: int = 0,
    nu_dtype: Any = None,
    storage: MomentStorage | None = None,
    axis_name: AxisName = None,
    step_offset: int | None = None,
    epsilon: float | None = None,
) -> GradientTransformation:
    r"""Divide the gradient by the root of Adafactor's factored estimate of :math:`E[|g|^2]`.

    For a factored layer (a matrix :math:`n \times m`, means over its columns and rows):

    .. math::
        \hat\beta_{2,t} &= 1 - (t - t_0)^{-c}, \qquad
        R_t = \hat\beta_{2,t} R_{t-1} + (1 - \hat\beta_{2,t})\,
        \operatorname{mean}_{\text{cols}}(|g_t|^2 + \epsilon_1), \\
        C_t &= \hat\beta_{2,t} C_{t-1} + (1 - \hat\beta_{2,t})\,
        \operatorname{mean}_{\text{rows}}(|g_t|^2 + \epsilon_1), \qquad
        \hat V_t = \frac{R_t C_t^\top}{\operatorname{mean}(R_t)}, \qquad
        u_t = \frac{g_t}{\sqrt{\hat V_t}},

    and for any other leaf :math:`\hat V_t = \hat\beta_{2,t} \hat V_{t-1} + (1 -
    \hat\beta_{2,t})(|g_t|^2 + \epsilon_1)`. That is ``eps_placement="add"`` (the paper, optax).
    ``"clamp"`` is torch's: :math:`\epsilon_1` is not added; instead :math:`\operatorname{mean}(R_t)`
    is floored at :math:`\epsilon_1` and :math:`\hat V_t` at :math:`\epsilon_1^2`.

    Which leaves are factored, and over which two axes, is set by ``factored``,
    ``min_dim_size_to_factor``, ``factored_dims`` and ``batch_dims``: the ``batch_dims`` leading
    axes of a leaf index stacked layers (``nn.scan``, ``vmap``-ed layers), whose statistics are
    kept apart, so a ``(L, R, C)`` leaf with ``batch_dims=1`` has ``v_row`` of shape ``(L, R)``
    and ``v_col`` of shape ``(L, C)``, exactly as ``L`` separate ``(R, C)`` matrices.

    Args:
      decay_rate: :math:`c \ge 0`, the exponent of :math:`\hat\beta_{2,t}` (torch's
        ``beta2_decay`` is :math:`-c`).
      eps: :math:`\epsilon_1 \ge 0`; ``None`` (with ``"clamp"`` only) is the machine epsilon of the
        compute dtype, torch's default.
      eps_placement: ``"add"`` (paper, optax) or ``"clamp"`` (torch).
      factored: factor the leaves that qualify; ``False`` keeps a full second moment everywhere.
      min_dim_size_to_factor: factor only where both chosen axes have at least this size (optax
        128; torch factors every matrix: 1).
      factored_dims: ``"largest"`` (optax: the two largest axes of a layer) or ``"last"`` (torch
        and the authors' Tensor2Tensor code: the last two).
      batch_dims: the number of leading stacked-layer axes, an int or a function of the leaf
        (the parameter in ``init``, the gradient in ``update``) returning one.
      decay_offset: :math:`t_0`, optax's ``decay_offset`` (for fine-tuning from step :math:`t_0`).
      nu_dtype: dtype of the statistics (default: the parameter's real dtype).
      storage: a `MomentStorage` for the statistics (instead of ``nu_dtype``).
      axis_name: inside ``jax.shard_map``, the mesh axis every gradient leaf is split over,
        along its first non-batch axis. Which axes are factored is then decided on the whole
        leaf's shape, and the row and column means over the split axis are summed across the
        shards (``jax.lax.psum``). Build the state outside ``shard_map`` (``init`` on the whole
        params) and pass it in with the specs of `state_shardings`: a statistic keeps the split
        where it keeps that axis and is whole where it averaged it away. ``None`` (default)
        under ``jit``, where XLA reduces sharded leaves itself.
      step_offset, epsilon: optax's names for ``decay_offset`` and ``eps``. Every argument is
        keyword-only: optax's positional order (``factored, decay_rate, ...``) differs.

    Returns:
      A `GradientTransformation` with state `FactoredRmsState`.
    """
    decay_offset = decay_offset if step_offset is None else step_offset  # optax's name
    eps = eps if epsilon is None else epsilon  # optax's name
    min_dim_size_to_factor = structural(min_dim_size_to_factor, "min_dim_size_to_factor", 128)
    batch_dims = structural(batch_dims, "batch_dims", 0)
    check_non_negative(decay_rate, "decay_rate")
    if eps_placement not in _EPS_PLACEMENTS:
        raise ValueError(
            f"`eps_placement` must be 'add' (the paper's and optax's eps1 added to g^2) or "
            f"'clamp' (torch's floor), got {eps_placement!r}."
        )
    if factored_dims not in _FACTORED_DIMS:
        raise ValueError(
            f"`factored_dims` must be 'largest' (optax: the two largest axes) or 'last' (torch: "
            f"the last two axes), got {factored_dims!r}."
        )
    if eps is None and eps_placement == "add":
        raise ValueError(
            "`eps=None` (the machine epsilon, torch's default) goes with `eps_placement='clamp'`; "
            "with 'add' pass a number such as 1e-30."
        )
    if eps is not None:
        check_non_negative(eps, "eps")
    check_batch_dims(batch_dims)
    if isinstance(min_dim_size_to_factor, bool) or not isinstance(min_dim_size_to_factor, int):
        raise TypeError(
            f"`min_dim_size_to_factor` must be an int, got {min_dim_size_to_factor!r}; "
            "e.g. 128 (optax) or 1 (factor every matrix, as torch)."
        )
    storage = _resolve_storage(storage, nu_dtype, "nu_dtype")
    clamp = eps_placement == "clamp"

    def axes_of(x: Any, axis_name: AxisName = None) -> tuple[int, int] | None:
        batch = batch_count(batch_dims, x)
        shape = _global_shape(x, batch, axis_name)
        return _factored_axes(shape, batch, factored, min_dim_size_to_factor, factored_dims)

    def init_fn(params):
        if factored:
            check_not_flat(
                params,
                "scale_by_factored_rms",
                "it factors each matrix's second moment into row and column means",
            )

        def one(path, param):
            dtype = jnp.result_type(param)
            if not jnp.issubdtype(dtype, jnp.inexact):
                raise non_float_parameter(path, dtype)
            real = _real_like(param)
            axes = axes_of(param)

            # The unused buffers are 1-element placeholders, as in optax: each of v_row, v_col and
            # v is then a tree laid out like the params (None where they have None).
            # Each placeholder is its own buffer: a state holding one buffer twice cannot be donated.
            def placeholder():
                return storage.init(jax.ShapeDtypeStruct((1,), real.dtype))

            if axes is None:
                return placeholder(), placeholder(), storage.init(real)
            over_cols, over_rows = axes
            v_row = jax.eval_shape(lambda x: jnp.mean(x, axis=over_cols), real)
            v_col = jax.eval_shape(lambda x: jnp.mean(x, axis=over_rows), real)
            return storage.init(v_row), storage.init(v_col), placeholder()

        triples = jax.tree_util.tree_map_with_path(one, params)
        v_row, v_col, v = unzip(params, triples, 3)
        return FactoredRmsState(count=zero_count(), v_row=v_row, v_col=v_col, v=v)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = safe_increment(state.count)

        def one(g, v_row, v_col, v):
            cdt = compute_dtype(g.dtype, *stored_dtypes((v_row, v_col, v)))
            rdt = real_dtype(cdt)
            offset = jnp.asarray(decay_offset).astype(count.dtype)  # an injected int64 too
            steps = jnp.maximum(count - offset, 1).astype(rdt)
            weight = steps ** as_hyperparameter(-decay_rate, rdt)  # 1 - beta2_t = t^-c
            beta = jnp.ones((), rdt) - weight
            e = jnp.asarray(jnp.finfo(rdt).eps if eps is None else eps, rdt)
            squares = _abs_squared(g).astype(rdt)
            if not clamp:
                squares = squares + e
            axes = axes_of(g, axis_name)
            split = batch_count(batch_dims, g)  # the split axis, with `axis_name`
            if axes is None:
                estimate = beta * storage.read(v, rdt) + weight * squares
                new = (v_row, v_col, storage.write(estimate, v))
            else:
                # over_rows < over_cols, and split <= over_rows: r keeps the split axis, c keeps
                # it unless it averaged it away.
                over_cols, over_rows = axes
                row_mean = _mean(squares, over_cols, split, axis_name)
                col_mean = _mean(squares, over_rows, split, axis_name)
                r = beta * storage.read(v_row, rdt) + weight * row_mean
                c = beta * storage.read(v_col, rdt) + weight * col_mean
                r_mean = _mean(r, over_rows, split, axis_name, keepdims=True)
                if clamp:
                    r_mean = jnp.maximum(r_mean, e)
                r_mean = jnp.expand_dims(r_mean, over_cols)
                nonzero = r_mean != 0  # eps = 0 and a zero history: 0, not 0/0
                product = jnp.expand_dims(r, over_cols) * jnp.expand_dims(c, over_rows)
                estimate = jnp.where(nonzero, product / jnp.where(nonzero, r_mean, 1), 0)
                new = (storage.write(r, v_row), storage.write(c, v_col), v)
            if clamp:
                estimate = jnp.maximum(estimate, e * e)
            nonzero = estimate != 0  # a NaN estimate propagates
            x = g.astype(cdt)
            root = _sqrt(jnp.where(nonzero, estimate, 1)).astype(cdt)
            u = jnp.where(nonzero, x / root, 0)
            return u.astype(g.dtype), new

        pairs = map_like(one, updates, state.v_row, "optimizer state", state.v_col, state.v)
        new_updates, stats = unzip(updates, pairs)
        v_row, v_col, v = unzip(updates, stats, 3)
        return new_updates, FactoredRmsState(count=count, v_row=v_row, v_col=v_col, v=v)

    return GradientTransformation(init_fn, update_fn)


def _per_parameter(why: str) -> Any:
    """An ``init`` without state that refuses `FlatParams`: the block works per parameter (``why``)."""

    def init_fn(params):
        check_not_flat(params, "adafactor", why)
        return EmptyState()

    return init_fn


def _clip_by_layer_rms(
    threshold: float, batch_dims: BatchDims, axis_name: AxisName = None
) -> GradientTransformation:
    r""":math:`u \leftarrow u / \max(1, \mathrm{RMS}(u)/d)`, per layer (Adafactor's update clipping)."""

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def one(u):
            cdt = compute_dtype(u.dtype)
            x = u.astype(cdt)
            rms = _layer_rms(x, batch_count(batch_dims, x), axis_name)
            denominator = jnp.maximum(1, rms / as_hyperparameter(threshold, rms.dtype))
            return (x / denominator.astype(cdt)).astype(u.dtype)

        return jax.tree.map(one, updates), state

    return GradientTransformation(
        _per_parameter("its update clipping uses each parameter's RMS"), update_fn
    )


def _scale_by_parameter_rms(
    min_scale: float, batch_dims: BatchDims, axis_name: AxisName = None
) -> GradientTransformation:
    r""":math:`u \leftarrow u \cdot \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))`, per layer."""

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "Adafactor's parameter scale needs the parameters: call "
                "`update(grads, state, params)` with the current params (or pass "
                "`multiply_by_parameter_scale=False`)."
            )

        def one(u, p):
            cdt = compute_dtype(u.dtype, p.dtype)
            theta = p.astype(compute_dtype(p.dtype))
            rms = _layer_rms(theta, batch_count(batch_dims, theta), axis_name)
            factor = jnp.maximum(as_hyperparameter(min_scale, rms.dtype), rms)
            return (u.astype(cdt) * factor.astype(cdt)).astype(u.dtype)

        return map_like(one, updates, params, "params"), state

    return GradientTransformation(
        _per_parameter("its step is scaled by each parameter's RMS"), update_fn
    )


def scale_by_adafactor(
    decay_rate: float = 0.8,
    *,
    eps: float | None = 1e-30,
    eps_placement: str = "add",
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    min_scale: float = 1e-3,
    factored: bool = True,
    min_dim_size_to_factor: int | None = None,
    factored_dims: str = "largest",
    batch_dims: BatchDims | None = None,
    decay_offset: int = 0,
    nu_dtype: Any = None,
    axis_name: AxisName = None,
) -> GradientTransformation:
    r"""Adafactor's direction, :math:`\max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\hat u_t`.

    The chain `scale_by_factored_rms`, then per layer the update clipping
    :math:`\hat u_t = u_t / \max(1, \mathrm{RMS}(u_t)/d)` and the parameter scale (each dropped by
    ``clipping_threshold=None`` and ``multiply_by_parameter_scale=False``). With ``batch_dims``
    both RMS are taken per stacked layer, so a stack behaves as separate layers. See `adafactor`;
    ``axis_name`` (inside ``jax.shard_map``) is described in `scale_by_factored_rms`, and also
    makes both RMS the whole layer's.

    Returns:
      A `GradientTransformation`; its state is ``(FactoredRmsState, EmptyState(), EmptyState())`` (fewer empty entries
      when a step is dropped).
    """
    min_dim_size_to_factor = structural(min_dim_size_to_factor, "min_dim_size_to_factor", 128)
    batch_dims = structural(batch_dims, "batch_dims", 0)
    if clipping_threshold is not None:
        check_non_negative(clipping_threshold, "clipping_threshold")
        if _concrete(clipping_threshold) == 0:
            raise ValueError(
                "`clipping_threshold` must be > 0 or None (no clipping), got 0; the paper uses 1.0."
            )
    check_non_negative(min_scale, "min_scale")
    members = [
        scale_by_factored_rms(
            decay_rate=decay_rate,
            eps=eps,
            eps_placement=eps_placement,
            factored=factored,
            min_dim_size_to_factor=min_dim_size_to_factor,
            factored_dims=factored_dims,
            batch_dims=batch_dims,
            decay_offset=decay_offset,
            nu_dtype=nu_dtype,
            axis_name=axis_name,
        )
    ]
    if clipping_threshold is not None:
        members.append(_clip_by_layer_rms(clipping_threshold, batch_dims, axis_name))
    if multiply_by_parameter_scale:
        members.append(_scale_by_parameter_rms(min_scale, batch_dims, axis_name))
    return chain(*members)


def _relative_step(learning_rate: ScalarOrSchedule) -> Callable[[jax.Array], jax.Array]:
    r"""The schedule :math:`\rho_t = \min(\eta_t, 1/\sqrt t)` of a step count ``t - 1``."""

    def schedule(count):
        if callable(learning_rate):
            eta = jnp.asarray(_evaluate(learning_rate, count, "learning-rate"))
        else:
            eta = jnp.asarray(learning_rate)
        dtype = eta.dtype if jnp.issubdtype(eta.dtype, jnp.floating) else jnp.result_type(float)
        cap = 1 / jnp.sqrt(count.astype(dtype) + 1)  # not count + 1 in int32: it overflows
        return jnp.minimum(eta.astype(dtype), cap)

    return schedule


def _times(first: ScalarOrSchedule, second: ScalarOrSchedule) -> ScalarOrSchedule:
    """``first * second`` for numbers or schedules (a schedule where either is one)."""
    if not callable(first) and not callable(second):
        return first * second  # type: ignore[operator]

    def value(schedule: ScalarOrSchedule, count: jax.Array) -> jax.Array:
        return jnp.asarray(schedule(count) if callable(schedule) else schedule)

    def product(count):
        a, b = value(first, count), value(second, count)
        dtype = compute_dtype(a.dtype, b.dtype)
        return a.astype(dtype) * b.astype(dtype)

    return product


@descent_example(
    "adafactor(learning_rate=0.1, min_dim_size_to_factor=1)",
    "11.9955 10.1549 8.7294",
    params='{"w": jnp.array([[1.0, -2.0], [0.5, 3.0]])}',
)
def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    *,
    decay_rate: float = 0.8,
    relative_step: bool = True,
    eps: float | None = 1e-30,
    eps_placement: str = "add",
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    min_scale: float = 1e-3,
    momentum: float | None = None,
    mu_dtype: Any = None,
    weight_decay: ScalarOrSchedule | None = None,
    mask: Any = None,
    decay_by_learning_rate: bool = True,
    factored: bool = True,
    min_dim_size_to_factor: int | None = None,
    factored_dims: str = "largest",
    batch_dims: BatchDims | None = None,
    decay_offset: int = 0,
    nu_dtype: Any = None,
    axis_name: AxisName = None,
    dtype_momentum: Any = None,
    weight_decay_rate: ScalarOrSchedule | None = None,
    weight_decay_mask: Any = None,
) -> GradientTransformation:
    r"""Adafactor (Shazeer & Stern, 2018): a factored second moment with relative step sizes.

    .. math::
        u_t &= g_t / \sqrt{\hat V_t} \quad \text{(scale\_by\_factored\_rms)}, \qquad
        \hat u_t = \frac{u_t}{\max(1, \mathrm{RMS}(u_t)/d)}, \\
        \rho_t &= \min\!\left(\eta_t, \tfrac{1}{\sqrt t}\right), \qquad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\, \rho_t, \qquad
        \theta_t = \theta_{t-1} - \alpha_t \hat u_t - \eta_t \lambda\, \theta_{t-1},

    with :math:`\hat V_t` the factored estimate of :math:`E[|g|^2]` (rows and columns of each
    factored layer, a full one for the others) under the increasing decay
    :math:`\hat\beta_{2,t} = 1 - t^{-c}`. With ``momentum=b1`` the step
    :math:`\alpha_t \hat u_t` is replaced by its EMA :math:`m_t = \beta_1 m_{t-1} + (1 - \beta_1)
    \alpha_t \hat u_t` (not bias-corrected; the authors' and optax's placement).

    Where torch and optax differ, the defaults follow the paper, and each option gives the other:

    * relative step: ``relative_step=True`` (paper, torch): :math:`\eta` caps
      :math:`\rho_t`; ``False`` (optax): :math:`\rho_t = \eta_t`, the schedule is yours.
    * :math:`\epsilon_1`: ``eps_placement="add"`` with ``eps=1e-30`` (paper, optax) adds it to
      :math:`|g|^2`; ``"clamp"`` with ``eps=None`` is torch's floor (see `scale_by_factored_rms`).
    * factoring: ``factored_dims="largest"``, ``min_dim_size_to_factor=128`` (optax: the two largest
      axes of leaves whose second-largest axis has 128 or more); torch factors every leaf of rank
      >= 2 over its last two axes: ``factored_dims="last", min_dim_size_to_factor=1``.
    * weight decay: ``decay_by_learning_rate=True`` (torch, and adamx's `adamw`) subtracts
      :math:`\eta_t \lambda \theta_{t-1}`; ``False`` (optax's ``weight_decay_rate``) subtracts
      :math:`\lambda\theta_{t-1}`. The paper has none.
    * :math:`\hat\beta_{2,t}` is computed in the compute dtype (optax's in float32, which costs
      ~1e-8 relative in float64); clipping is the same in both.

    Stacked layers: ``batch_dims`` (an int, or a function of the leaf) names the leading axes that
    index layers; statistics, clipping and parameter scale are then per layer, so a
    ``(L, R, C)`` stack with ``batch_dims=1`` is updated exactly as ``L`` separate matrices.

    Reference: ``eps_placement="clamp", eps=None, factored_dims="last",
    min_dim_size_to_factor=1`` matches ``torch.optim.Adafactor`` (2.13) step for step;
    ``relative_step=False, decay_by_learning_rate=False`` matches optax's ``adafactor`` chain
    (0.2.8, with its :math:`\hat\beta_{2,t}` in float64), with and without momentum and decay;
    the defaults match a NumPy transcription of the paper's algorithm, stacked leaves layer by
    layer (``tests/test_adafactor.py``).

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule (the paper and torch use
        ``1e-2``). ``None`` (the default, as optax): with ``relative_step``, the paper's
        :math:`\rho_t = \min(10^{-2}, 1/\sqrt t)`; without it, no learning-rate scaling at all
        (optax's ``learning_rate=None``). Every argument after it is keyword-only (optax's
        positional order differs).
      decay_rate: :math:`c`, the exponent of :math:`\hat\beta_{2,t} = 1 - t^{-c}`.
      relative_step: cap :math:`\rho_t` by :math:`1/\sqrt t` (paper, torch).
      eps: :math:`\epsilon_1` (``None``: machine epsilon, with ``"clamp"``).
      eps_placement: ``"add"`` (paper, optax) or ``"clamp"`` (torch).
      clipping_threshold: :math:`d > 0`, or ``None`` for no clipping.
      multiply_by_parameter_scale: multiply by :math:`\max(\epsilon_2, \mathrm{RMS}(\theta))`.
      min_scale: :math:`\epsilon_2 \ge 0`.
      momentum: :math:`\beta_1` in ``[0, 1)``, or ``None`` for none (the default).
      mu_dtype: dtype of the momentum (default: the parameter's).
      weight_decay: :math:`\lambda >= 0`, or a schedule; ``None`` (the default): no decay block
        (any value given, 0 included, keeps it: the layout follows the arguments given).
      mask: which leaves to decay (as in `adamw`).
      decay_by_learning_rate: multiply the decay by :math:`\eta_t` (torch) or not (optax).
      factored, min_dim_size_to_factor, factored_dims, batch_dims, decay_offset, nu_dtype: as in
        `scale_by_factored_rms`.
      dtype_momentum, weight_decay_mask: optax's names for ``mu_dtype`` and ``mask``.
      weight_decay_rate: optax's decay, which is never multiplied by the learning rate: the same
        as ``weight_decay`` with ``decay_by_learning_rate=False``.
      axis_name: inside ``jax.shard_map``, the mesh axis every leaf is split over along its first
        non-batch axis (see `scale_by_factored_rms`); ``None`` (default) under ``jit``.

    Returns:
      A `GradientTransformation`: ``chain(scale_by_adafactor(...), scale_by_learning_rate(rho,
      flip_sign=False), [ema(momentum)], [add_decayed_weights(...)], scale(-1))``.

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018,
      https://arxiv.org/abs/1804.04235
    """
    min_dim_size_to_factor = structural(min_dim_size_to_factor, "min_dim_size_to_factor", 128)
    batch_dims = structural(batch_dims, "batch_dims", 0)
    mu_dtype = either("mu_dtype", mu_dtype, "dtype_momentum", dtype_momentum, None)
    mask = either("mask", mask, "weight_decay_mask", weight_decay_mask, None)
    if weight_decay_rate is not None:  # optax's decay: never multiplied by the learning rate
        weight_decay = either(
            "weight_decay", weight_decay, "weight_decay_rate", weight_decay_rate, None
        )
        decay_by_learning_rate = False
    if learning_rate is None and relative_step:
        learning_rate = 1e-2  # the paper's rho_t = min(1e-2, 1 / sqrt(t))
    if learning_rate is not None:
        check_learning_rate(learning_rate)
    if weight_decay is not None:
        check_non_negative(weight_decay, "weight_decay")
    members = [
        scale_by_adafactor(
            decay_rate,
            eps=eps,
            eps_placement=eps_placement,
            clipping_threshold=clipping_threshold,
            multiply_by_parameter_scale=multiply_by_parameter_scale,
            min_scale=min_scale,
            factored=factored,
            min_dim_size_to_factor=min_dim_size_to_factor,
            factored_dims=factored_dims,
            batch_dims=batch_dims,
            decay_offset=decay_offset,
            nu_dtype=nu_dtype,
            axis_name=axis_name,
        ),
    ]
    if learning_rate is not None:
        step = _relative_step(learning_rate) if relative_step else learning_rate
        members.append(scale_by_learning_rate(step, flip_sign=False))
    if momentum is not None:
        members.append(ema(momentum, dtype=mu_dtype))
    if weight_decay is not None:
        if decay_by_learning_rate and learning_rate is not None:
            decay = _times(weight_decay, learning_rate)
        else:
            decay = weight_decay
        members.append(add_decayed_weights(decay, mask))
    members.append(scale(-1))
    return chain(*members)
