"""Gradient preprocessing: clipping, adaptive clipping, annealed noise and centralisation.

Each of these is an ordinary transformation: placed first in `adamx.chain`, its output is the
gradient that the moment blocks after it see (docs/design.md, section 2). Names, signatures and
numbers follow optax's transforms of the same names; the differences are noted where they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..blocks._collectives import AxisName, pmax, psum
from ..core._base import (
    EmptyState,
    GradientTransformation,
    safe_increment,
    zero_count,
)
from ..core._dtypes import as_hyperparameter, compute_dtype, real_dtype
from ..core._layers import BatchDims, batch_count, path_name
from ..core._probe import record
from ..core._structural import structural
from ..core._trees import check_not_flat
from ..core._validate import check_non_negative

__all__ = [
    "AddNoiseState",
    "adaptive_grad_clip",
    "add_noise",
    "centralize",
    "clip",
    "clip_by_block_norm",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "global_norm",
    "unitwise_norm",
]


def _empty_init(params: Any) -> EmptyState:
    del params
    return EmptyState()


def _refusing_flat(who: str, why: str) -> Any:
    """An ``init`` like `_empty_init` that refuses `FlatParams` (``who`` works per parameter)."""

    def init_fn(params: Any) -> EmptyState:
        check_not_flat(params, who, why)
        return EmptyState()

    return init_fn


def _clipped(before: Any, after: Any) -> Any:
    """``after``, recorded for `adamx.monitor` as a clip of ``before`` (its clip fraction)."""
    record("clip", before=before, after=after)
    return after


def _leafwise(
    one: Callable[[jax.Array], jax.Array], init: Any = _empty_init, *, clips: bool = True
) -> GradientTransformation:
    """A transformation without state: ``one`` on every leaf of the updates (a clip, recorded
    for `adamx.monitor`, unless ``clips`` is false)."""

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        result = jax.tree.map(one, updates)
        return (_clipped(updates, result) if clips else result), state

    return GradientTransformation(init, update_fn)


def _abs_sq(x: jax.Array) -> jax.Array:
    """``|x|^2`` elementwise, real (for complex ``x``, ``re^2 + im^2``)."""
    if jnp.iscomplexobj(x):
        return jnp.square(x.real) + jnp.square(x.imag)
    return jnp.square(x)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(x)`` for ``x >= 0`` whose derivative at 0 is 0, not ``inf * 0 = NaN``."""
    positive = x > 0
    return jnp.where(
        positive, jnp.sqrt(jnp.where(positive, x, jnp.ones_like(x))), jnp.zeros_like(x)
    )


def _shrink(threshold: jax.Array, norm: jax.Array) -> jax.Array:
    """``min(1, threshold / norm)`` without ever dividing by zero (also safe to differentiate).

    Where ``norm <= threshold`` the factor is exactly 1, so a zero gradient stays zero even for a
    zero threshold, where ``threshold / norm`` would be 0/0.
    """
    trigger = norm > threshold
    safe_norm = jnp.where(trigger, norm, jnp.ones_like(norm))
    return jnp.where(trigger, threshold / safe_norm, jnp.ones_like(norm))


def clip(max_delta: jax.typing.ArrayLike) -> GradientTransformation:
    r"""Clip every update element to :math:`[-\delta, \delta]` (optax's ``clip``); no state.

    Args:
      max_delta: :math:`\delta \ge 0`, the largest absolute value of an element.

    Returns:
      A transformation with state `EmptyState`.
    """
    check_non_negative(max_delta, "max_delta")

    def one(u):
        if jnp.iscomplexobj(u):
            raise TypeError(
                f"`clip` expected real updates, got {u.dtype}: complex numbers have no order. "
                "Use `clip_by_block_rms` or `clip_by_global_norm`, which bound magnitudes."
            )
        cdt = compute_dtype(u.dtype)
        delta = as_hyperparameter(max_delta, cdt)
        return jnp.clip(u.astype(cdt), -delta, delta).astype(u.dtype)

    return _leafwise(one)


def global_norm(tree: Any, *, axis_name: AxisName = None) -> jax.Array:
    r"""The Euclidean norm :math:`\sqrt{\sum_i |x_i|^2}` over every element of every leaf.

    Computed in at least float32 (bfloat16 and float16 leaves are widened first, float64 leaves
    make it float64) and real for complex leaves, without overflow for finite elements (squares
    that overflow are recomputed scaled by the largest magnitude). A tree without leaves has
    norm 0.

    Under ``jax.jit`` with sharded leaves the norm is already global (XLA sums across devices).
    Inside ``jax.shard_map`` each leaf is a shard: pass ``axis_name``, the mesh axis (or axes)
    over which every leaf is split, and the partial sums are added with ``jax.lax.psum``, so each
    device gets the norm of the whole tree (docs/sharding.md).

    Args:
      tree: a pytree of arrays.
      axis_name: inside ``shard_map``, the mesh axis every leaf is split over; ``None`` outside.
    """
    leaves = jax.tree.leaves(tree)
    dtype = real_dtype(compute_dtype(*(leaf.dtype for leaf in leaves)))
    wide = [leaf.astype(compute_dtype(leaf.dtype, dtype)) for leaf in leaves]

    def sum_of_squares(scale: jax.Array) -> jax.Array:
        total = jnp.zeros((), dtype)
        for leaf in wide:
            total = total + jnp.sum(_abs_sq(leaf / scale.astype(leaf.dtype)))
        return total

    total = psum(sum_of_squares(jnp.ones((), dtype)), axis_name)

    def rescaled() -> jax.Array:
        # The squares overflowed (a finite norm above ~1.8e19 in float32): divide by the largest
        # magnitude first. Only this branch pays the extra pass; an Inf element gives NaN here,
        # which a later `apply_if_finite` catches rather than a silent all-zero update.
        scale = jnp.zeros((), dtype)
        for leaf in wide:
            scale = jnp.maximum(scale, jnp.max(jnp.abs(leaf), initial=0).astype(dtype))
        scale = pmax(scale, axis_name)
        return scale * _safe_sqrt(psum(sum_of_squares(scale), axis_name))

    return jax.lax.cond(jnp.isinf(total), rescaled, lambda: _safe_sqrt(total))


def clip_by_global_norm(
    max_norm: jax.typing.ArrayLike, *, axis_name: AxisName = None
) -> GradientTransformation:
    r"""Rescale the updates so their global norm is at most ``max_norm`` (Pascanu et al., 2013).

    .. math::
        u \leftarrow u \cdot \min\!\left(1, \frac{c}{\lVert u \rVert_2}\right),
        \qquad \lVert u \rVert_2 = \sqrt{\textstyle\sum_{\text{leaves}} \sum |u|^2}.

    The norm is taken over all leaves together, in at least float32 and complex-aware (see
    `global_norm`). Unlike ``optax.clip_by_global_norm``, a zero gradient stays exactly zero for
    every ``max_norm`` (optax gives 0/0 = NaN for ``max_norm = 0``), and a norm equal to
    ``max_norm`` is left untouched rather than multiplied by ``c / c``.

    Args:
      max_norm: :math:`c \ge 0`, the largest global norm of the returned updates.
      axis_name: inside ``jax.shard_map``, the mesh axis every update leaf is split over, so the
        norm is the whole tree's (see `global_norm`); ``None`` (default) under ``jit`` or on one
        device.

    Returns:
      A transformation with state `EmptyState`.

    References:
      Pascanu, Mikolov and Bengio, `On the difficulty of training recurrent neural networks
      <https://arxiv.org/abs/1211.5063>`_, ICML 2013.
    """
    check_non_negative(max_norm, "max_norm")

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        norm = global_norm(updates, axis_name=axis_name)
        factor = _shrink(as_hyperparameter(max_norm, norm.dtype), norm)

        def one(u):
            cdt = compute_dtype(u.dtype, norm.dtype)
            return (u.astype(cdt) * factor.astype(cdt)).astype(u.dtype)

        return _clipped(updates, jax.tree.map(one, updates)), state

    return GradientTransformation(_empty_init, update_fn)


def clip_by_block_rms(threshold: jax.typing.ArrayLike) -> GradientTransformation:
    r"""Rescale each leaf so its root-mean-square is at most ``threshold`` (optax's).

    .. math::
        u \leftarrow u \cdot \min\!\left(1, \frac{\tau}{\sqrt{\operatorname{mean}|u|^2}}\right),
        \text{ for each leaf separately.}

    Args:
      threshold: :math:`\tau \ge 0`, the largest RMS of each leaf.

    Returns:
      A transformation with state `EmptyState`.
    """
    check_non_negative(threshold, "threshold")

    def one(u):
        cdt = compute_dtype(u.dtype)
        x = u.astype(cdt)
        rms = _safe_sqrt(jnp.mean(_abs_sq(x)))
        factor = _shrink(as_hyperparameter(threshold, rms.dtype), rms)
        return (x * factor.astype(cdt)).astype(u.dtype)

    return _leafwise(
        one, _refusing_flat("clip_by_block_rms", "its RMS is one number per parameter")
    )


def unitwise_norm(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """The L2 norm of each unit of ``x``, broadcast to ``x``'s shape (optax's ``unitwise_norm``).

    Without ``axis``, the units follow the layer conventions of optax (flax layouts): a scalar or a
    vector (also one with unit dimensions) is one unit; rank 2 and 3 (dense ``IO``, multi-head)
    reduce over axis 0; rank 4 (``HWIO`` convolutions) over ``(0, 1, 2)``; rank 5 over
    ``(0, 1, 2, 3)``. The result is real and in the dtype of ``x`` (or its real counterpart).
    """
    sq = _abs_sq(x)
    if axis is not None:
        total = jnp.sum(sq, axis=axis, keepdims=True)
    elif jnp.squeeze(x).ndim <= 1:
        total = jnp.sum(sq, keepdims=True)
    elif x.ndim in (2, 3):
        total = jnp.sum(sq, axis=0, keepdims=True)
    elif x.ndim == 4:
        total = jnp.sum(sq, axis=(0, 1, 2), keepdims=True)
    elif x.ndim == 5:
        total = jnp.sum(sq, axis=(0, 1, 2, 3), keepdims=True)
    else:
        raise ValueError(
            f"`adaptive_grad_clip` has no default units for a parameter of shape {x.shape} "
            "(rank 0 to 5 only); pass `axis=` with the axes to take each unit's norm over."
        )
    return jnp.broadcast_to(jnp.sqrt(total), x.shape)


def adaptive_grad_clip(
    clipping: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike = 1e-3,
    axis: int | tuple[int, ...] | None = None,
) -> GradientTransformation:
    r"""Adaptive gradient clipping (AGC): bound each unit's gradient norm by its weight norm.

    For each unit :math:`i` (an output neuron; see `unitwise_norm`),

    .. math::
        G_i \leftarrow \begin{cases}
          \lambda \dfrac{\max(\lVert W_i\rVert, \epsilon)}{\lVert G_i\rVert} G_i
            & \text{if } \lVert G_i\rVert \ge \lambda \max(\lVert W_i\rVert, \epsilon), \\
          G_i & \text{otherwise,}
        \end{cases}

    as in ``optax.adaptive_grad_clip`` (whose guard ``max(||G_i||, 1e-6)`` in the denominator is
    kept). Needs the parameters: call ``update(grads, state, params)``.

    Args:
      clipping: :math:`\lambda \ge 0`, the largest ratio of gradient norm to weight norm.
      eps: :math:`\epsilon \ge 0`, the smallest weight norm used, so that zero-initialised weights
        (biases) can still move.
      axis: the axes of each unit's norm; ``None`` uses `unitwise_norm`'s layer conventions.

    Returns:
      A transformation with state `EmptyState`.

    References:
      Brock, De, Smith and Simonyan, `High-Performance Large-Scale Image Recognition Without
      Normalization <https://arxiv.org/abs/2102.06171>`_, ICML 2021.
    """
    check_non_negative(clipping, "clipping")
    check_non_negative(eps, "eps")

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "`adaptive_grad_clip` needs the parameters: call "
                "`update(grads, state, params)` with the current params."
            )

        def one(u, p):
            cdt = compute_dtype(u.dtype, p.dtype)
            rdt = real_dtype(cdt)
            g = u.astype(cdt)
            g_norm = unitwise_norm(g, axis)
            p_norm = unitwise_norm(p.astype(cdt), axis)
            limit = as_hyperparameter(clipping, rdt) * jnp.maximum(
                p_norm, as_hyperparameter(eps, rdt)
            )
            guard = jnp.maximum(g_norm, as_hyperparameter(1e-6, rdt))
            factor = jnp.where(g_norm < limit, jnp.ones_like(g_norm), limit / guard)
            return (g * factor.astype(cdt)).astype(u.dtype)

        return _clipped(updates, jax.tree.map(one, updates, params)), state

    return GradientTransformation(
        _refusing_flat("adaptive_grad_clip", "its units are rows of each parameter"), update_fn
    )


class AddNoiseState(NamedTuple):
    """The state of `add_noise`: the step count (``int32``) and the PRNG key (optax's layout)."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    rng_key: jax.Array


def _key_maker(key: Any) -> Any:
    """A function building the PRNG key, holding NumPy data only (no `jax.Array` in the closure)."""
    if isinstance(key, jax.core.Tracer):
        return lambda: key
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data, impl = np.asarray(jax.random.key_data(key)), jax.random.key_impl(key)
        if data.ndim != 1:
            raise ValueError(f"`add_noise` expected one PRNG key, got keys of shape {key.shape}.")
        return lambda: jax.random.wrap_key_data(jnp.asarray(data), impl=impl)
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        seed = int(key)
        return lambda: jax.random.key(seed)
    raise TypeError(
        f"`add_noise` expected an integer seed or a key from `jax.random.key`, got {key!r}; "
        "write e.g. `add_noise(0.01, 0.55, key=0)`."
    )


def add_noise(
    eta: jax.typing.ArrayLike,
    gamma: jax.typing.ArrayLike,
    key: Any = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""Add annealed Gaussian noise to the updates (Neelakantan et al., 2015; optax's ``add_noise``).

    .. math::
        u_t \leftarrow u_t + \sigma_t\, \xi_t, \qquad \sigma_t^2 = \frac{\eta}{t^{\gamma}},
        \qquad \xi_t \sim \mathcal N(0, I),

    with :math:`t = 1, 2, \ldots` the step. The noise is drawn in the compute dtype (float32 for
    bfloat16 updates; complex normal for complex updates). For float32 updates and the same key the
    noise is optax's.

    Args:
      eta: :math:`\eta \ge 0`, the initial variance.
      gamma: :math:`\gamma \ge 0`, the decay exponent of the variance (the paper uses 0.55).
      key: an integer seed or a key from ``jax.random.key`` (optax's argument).
      seed: the same as an integer ``key`` (the older optax spelling); give one of the two.

    Returns:
      A transformation with state `AddNoiseState`.

    References:
      Neelakantan et al., `Adding Gradient Noise Improves Learning for Very Deep Networks
      <https://arxiv.org/abs/1511.06807>`_, 2015.
    """
    check_non_negative(eta, "eta")
    check_non_negative(gamma, "gamma")
    if (key is None) == (seed is None):
        raise TypeError(
            "`add_noise` needs exactly one source of randomness, got "
            f"key={key!r} and seed={seed!r}; write e.g. `add_noise(0.01, 0.55, key=0)`."
        )
    make_key = _key_maker(key if key is not None else seed)

    def init_fn(params):
        del params
        return AddNoiseState(count=zero_count(), rng_key=make_key())

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = safe_increment(state.count)
        variance = as_hyperparameter(eta, jnp.float32) / jnp.power(
            count.astype(jnp.float32), as_hyperparameter(gamma, jnp.float32)
        )
        std = jnp.sqrt(variance)
        rng_key, sample_key = jax.random.split(state.rng_key)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(sample_key, len(leaves))

        def one(u, k):
            cdt = compute_dtype(u.dtype)
            noise = jax.random.normal(k, u.shape, cdt)
            return (u.astype(cdt) + std.astype(cdt) * noise).astype(u.dtype)

        noisy = [one(u, keys[i]) for i, u in enumerate(leaves)]
        return jax.tree.unflatten(treedef, noisy), AddNoiseState(count=count, rng_key=rng_key)

    return GradientTransformation(init_fn, update_fn)


def centralize(*, keep_axis: int | None = None) -> GradientTransformation:
    r"""Gradient centralisation (Yong et al., 2020): subtract each unit's mean gradient.

    Like ``optax.centralize``, a leaf of rank 2 or more gets the mean over every axis but
    ``keep_axis`` subtracted (``keep_axis=0``: optax's, the output axis of torch's ``(out, in,
    ...)`` layouts); scalars and vectors (biases, norm scales) are left unchanged. For flax's
    ``(in, out)`` and ``HWIO`` kernels the paper's per-output-neuron centring is ``keep_axis=-1``.

    Args:
      keep_axis: the axis whose slices are centred separately (keyword-only; not in optax).

    Returns:
      A transformation with state `EmptyState`.

    References:
      Yong, Huang, Hua and Zhang, `Gradient Centralization: A New Optimization Technique for Deep
      Neural Networks <https://arxiv.org/abs/2004.01461>`_, ECCV 2020.
    """
    keep_axis = structural(keep_axis, "keep_axis", 0)
    if not isinstance(keep_axis, int) or isinstance(keep_axis, bool):
        raise TypeError(f"`keep_axis` must be an int such as 0 or -1, got {keep_axis!r}.")

    def one(u):
        if u.ndim <= 1:
            return u
        kept = keep_axis % u.ndim
        axes = tuple(a for a in range(u.ndim) if a != kept)
        x = u.astype(compute_dtype(u.dtype))
        return (x - jnp.mean(x, axis=axes, keepdims=True)).astype(u.dtype)

    return _leafwise(
        one,
        _refusing_flat("centralize", "it subtracts means over each parameter's axes"),
        clips=False,
    )


def clip_by_block_norm(
    max_norm: float = 1.0, *, batch_dims: BatchDims | None = None
) -> GradientTransformation:
    r"""Rescale each leaf (each matrix of a stacked leaf) to Frobenius norm at most ``max_norm``.

    .. math::
        u \leftarrow u \cdot \min\!\left(1, \frac{c}{\lVert u \rVert_F}\right)
        \text{ for each leaf, or each slice over the first } \texttt{batch\_dims} \text{ axes}.

    Args:
      max_norm: :math:`c \ge 0`.
      batch_dims: leading axes that index stacked layers (an int or a function ``leaf -> int``);
        the norm is taken over the other axes.

    Returns:
      A transformation with state `EmptyState`.
    """
    batch_dims = structural(batch_dims, "batch_dims", 0)
    check_non_negative(max_norm, "max_norm")

    def init_fn(params):
        check_not_flat(params, "clip_by_block_norm", "its norm (MARS) is one number per parameter")
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def one(path, u):
            b = batch_count(batch_dims, u, path_name(path))
            cdt = compute_dtype(u.dtype)
            x = u.astype(cdt)
            axes = tuple(range(b, u.ndim))
            norm = _safe_sqrt(jnp.sum(_abs_sq(x), axis=axes, keepdims=True))
            factor = _shrink(as_hyperparameter(max_norm, norm.dtype), norm)
            return (x * factor.astype(cdt)).astype(u.dtype)

        return _clipped(updates, jax.tree_util.tree_map_with_path(one, updates)), state

    return GradientTransformation(init_fn, update_fn)
