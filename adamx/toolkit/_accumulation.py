"""Wrappers around an optimizer: gradient accumulation, skipping non-finite steps, Lookahead, and an
exponential moving average of the parameters (Polyak averaging) for evaluation.

Each follows the optax function of the same name (0.2.8): same state field names, same numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ..blocks._map import unzip
from ..blocks._moments import _correction
from ..blocks._scale import _evaluate
from ..core._base import GradientTransformation, safe_increment, zero_count
from ..core._dtypes import as_hyperparameter, compute_dtype
from ..core._trees import is_explicit
from ..core._validate import _concrete, check_decay

__all__ = [
    "ApplyIfFiniteState",
    "EmaParamsState",
    "LookaheadParams",
    "LookaheadState",
    "MultiSteps",
    "MultiStepsState",
    "apply_if_finite",
    "averaged_params",
    "ema_params",
    "lookahead",
    "multi_steps",
]

# ---- shared helpers -------------------------------------------------------------------------------


def _cast_like(tree: Any, like: Any) -> Any:
    """``tree`` with each leaf cast to the dtype of the matching leaf of ``like``, and on an
    ``Explicit`` mesh placed as it is (a quantised moment written back from a value split
    otherwise, under ZeRO-1, comes out laid out for that value)."""

    def cast(x: Any, ref: Any) -> Any:
        x = jnp.asarray(x).astype(jnp.result_type(ref))
        want = getattr(jax.typeof(ref), "sharding", None) if hasattr(jax, "typeof") else None
        if is_explicit(want) and getattr(jax.typeof(x), "sharding", None) != want:
            x = jax.sharding.reshard(x, want)
        return x

    return jax.tree.map(cast, tree, like)


def _zeros_of(shapes: Any) -> Any:
    """Zeros of each ``jax.ShapeDtypeStruct`` of ``shapes``, with its sharding where that is part of
    its type (`is_explicit`: zeros without it are replicated, and the cond was refused)."""

    def zeros(s: Any) -> Any:
        sharding = getattr(s, "sharding", None)
        if is_explicit(sharding):
            return jnp.zeros(s.shape, s.dtype, out_sharding=sharding)
        return jnp.zeros(s.shape, s.dtype)

    return jax.tree.map(zeros, shapes)


def _skippable(inner: GradientTransformation, updates, inner_state, params, extra_args):
    """``(run, skip)``: two branches for ``lax.cond`` with identical output types.

    ``run`` applies ``inner`` (its new state cast to the old state's dtypes, for a foreign inner
    transformation that changes them); ``skip`` returns zero updates shaped like ``run``'s and the
    inner state untouched (bit-identical).
    """

    def run():
        new_updates, new_state = inner.update(updates, inner_state, params, **extra_args)
        return new_updates, _cast_like(new_state, inner_state)

    out_shapes, _ = jax.eval_shape(run)

    def skip():
        return _zeros_of(out_shapes), inner_state

    return run, skip


# ---- gradient accumulation ------------------------------------------------------------------------


class MultiStepsState(NamedTuple):
    """The state of `MultiSteps` (optax's field names, without ``skip_state``).

    Attributes:
      mini_step: micro-batches accumulated since the last real step (``int32``, reset to 0 on it).
      gradient_step: real steps taken (``int32``).
      inner_opt_state: the state of the wrapped optimizer.
      acc_grads: the running mean (or sum) of the micro-batch gradients.
    """

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: Any
    acc_grads: Any


class MultiSteps:
    """Gradient accumulation: one step of ``opt`` every ``k`` micro-batches, on their mean gradient.

    Semantics of ``optax.MultiSteps``: on each of the first ``k - 1`` calls the gradient is folded
    into a running mean ``a <- a + (g - a) / (n + 1)`` (one buffer per parameter, no list of
    gradients) and the updates returned are zeros; on the ``k``-th call ``opt`` is applied to the
    mean, its updates are returned and the buffer is reset. So ``k`` micro-batches of equal size
    give the step of the big batch. The inner optimizer runs only on the ``k``-th call (``lax.cond``;
    optax computes and discards it on every call). ``has_updated`` tells which calls stepped.

    Args:
      opt: the optimizer to wrap.
      every_k_schedule: ``k >= 1``, or a function of the gradient step returning ``k`` (to grow
        the batch during training).
      use_grad_mean: average the micro-batch gradients (default) or sum them.
      accumulator_dtype: dtype of the buffer; ``None`` (default) uses the widest of float32 and
        the parameter's dtype (optax's default is float32 for every parameter).

    The wrapper is itself a transformation (``init``, ``update``); `multi_steps` returns a plain
    `GradientTransformation`.
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[jax.Array], Any],
        use_grad_mean: bool = True,
        accumulator_dtype: Any = None,
    ):
        if not callable(every_k_schedule):
            k = _concrete(every_k_schedule)
            if k is None or k != int(k) or k < 1:
                raise ValueError(
                    f"`every_k_schedule` must be an integer >= 1 or a schedule, got "
                    f"{every_k_schedule!r}: the number of micro-batches per optimizer step."
                )
            steps = int(k)
            every_k_schedule = lambda gradient_step: steps  # noqa: E731
        self._opt = opt
        self._every_k = every_k_schedule
        self._use_grad_mean = use_grad_mean
        self._accumulator_dtype = accumulator_dtype

    @property
    def inner_opt(self) -> GradientTransformation:
        return self._opt

    def _buffer_dtype(self, param: Any) -> Any:
        if self._accumulator_dtype is not None:
            return self._accumulator_dtype
        return compute_dtype(jnp.result_type(param))

    def init(self, params: Any) -> MultiStepsState:
        return MultiStepsState(
            mini_step=zero_count(),
            gradient_step=zero_count(),
            inner_opt_state=self._opt.init(params),
            acc_grads=jax.tree.map(lambda p: jnp.zeros_like(p, self._buffer_dtype(p)), params),
        )

    def update(
        self, updates: Any, state: MultiStepsState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, MultiStepsState]:
        k = jnp.asarray(_evaluate(self._every_k, state.gradient_step, "every-k"), jnp.int32)
        n = state.mini_step

        def fold(g, acc):
            cdt = compute_dtype(g.dtype, acc.dtype)
            g, a = g.astype(cdt), acc.astype(cdt)
            a = a + (g - a) / (n + 1).astype(cdt) if self._use_grad_mean else a + g
            return a.astype(acc.dtype)

        acc = jax.tree.map(fold, updates, state.acc_grads)
        emit = n == k - 1
        run, skip = _skippable(
            self._opt, _cast_like(acc, updates), state.inner_opt_state, params, extra_args
        )
        new_updates, inner_state = lax.cond(emit, run, skip)
        return new_updates, MultiStepsState(
            mini_step=jnp.where(emit, 0, safe_increment(n)).astype(jnp.int32),
            gradient_step=jnp.where(emit, safe_increment(state.gradient_step), state.gradient_step),
            inner_opt_state=inner_state,
            acc_grads=jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc),
        )

    def has_updated(self, state: MultiStepsState) -> jax.Array:
        """Whether the last `update` took a real step (optax's definition)."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        return GradientTransformation(self.init, self.update)


def multi_steps(
    opt: GradientTransformation,
    every_k_schedule: int | Callable[[jax.Array], Any],
    use_grad_mean: bool = True,
    accumulator_dtype: Any = None,
) -> GradientTransformation:
    """`MultiSteps` as a plain `GradientTransformation` (see it for the semantics)."""
    return MultiSteps(
        opt, every_k_schedule, use_grad_mean, accumulator_dtype
    ).gradient_transformation()


# ---- skipping non-finite steps --------------------------------------------------------------------


class ApplyIfFiniteState(NamedTuple):
    """The state of `apply_if_finite` (optax's fields).

    Attributes:
      notfinite_count: consecutive non-finite updates so far (reset by a finite one).
      last_finite: whether the last updates were finite.
      total_notfinite: non-finite updates since init (never reset).
      inner_state: the wrapped transformation's state.
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skip a step whose incoming updates hold a NaN or an Inf (optax's ``apply_if_finite``).

    On such a step the updates returned are zeros and ``inner``'s state is returned untouched
    (bit-identical); the skip is counted. After more than ``max_consecutive_errors`` consecutive
    skips the step is applied anyway (``inner`` then sees the non-finite values), as in optax.
    Without this wrapper a non-finite value enters the moments and parameters of its own leaf
    only (see `adam`).

    Args:
      inner: the transformation to protect (typically a whole optimizer).
      max_consecutive_errors: how many consecutive non-finite steps to skip, ``>= 0``.

    Returns:
      A `GradientTransformation` with state `ApplyIfFiniteState`.
    """
    limit = _concrete(max_consecutive_errors)
    if limit is not None and (limit != int(limit) or limit < 0):
        raise ValueError(
            f"`max_consecutive_errors` must be an integer >= 0, got {max_consecutive_errors!r}."
        )

    def init_fn(params):
        return ApplyIfFiniteState(
            notfinite_count=zero_count(),
            last_finite=jnp.array(True),
            total_notfinite=zero_count(),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(updates)]
        finite = functools.reduce(jnp.logical_and, checks, jnp.array(True))
        notfinite_count = jnp.where(finite, 0, safe_increment(state.notfinite_count))
        notfinite_count = notfinite_count.astype(jnp.int32)
        run, skip = _skippable(inner, updates, state.inner_state, params, extra_args)
        apply = jnp.logical_or(finite, notfinite_count > max_consecutive_errors)
        new_updates, inner_state = lax.cond(apply, run, skip)
        return new_updates, ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=finite,
            total_notfinite=jnp.where(
                finite, state.total_notfinite, safe_increment(state.total_notfinite)
            ),
            inner_state=inner_state,
        )

    return GradientTransformation(init_fn, update_fn)


# ---- Lookahead ------------------------------------------------------------------------------------


class LookaheadState(NamedTuple):
    """The state of `lookahead`: the fast optimizer's state and the steps since the last sync."""

    fast_state: Any
    steps_since_sync: jax.Array


class LookaheadParams(NamedTuple):
    """The fast and slow parameters of `lookahead` (optax's ``LookaheadParams``).

    Compute gradients at ``fast``; evaluate and infer with ``slow``.
    """

    fast: Any
    slow: Any

    @classmethod
    def init_synced(cls, params: Any) -> LookaheadParams:
        """Fast and slow parameters both equal to ``params``."""
        return cls(fast=params, slow=params)


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> GradientTransformation:
    r"""Lookahead (Zhang et al. 2019): ``k`` fast steps forward, one step back.

    The parameters are a `LookaheadParams` pair: ``params = LookaheadParams.init_synced(p)``. The
    fast optimizer steps ``fast``; every ``sync_period``-th step the slow weights move towards the
    fast ones and the fast ones are reset onto them:

    .. math::
        \phi \leftarrow \phi + \alpha (\theta - \phi), \qquad \theta \leftarrow \phi.

    As in optax, both moves are returned as *updates* (a `LookaheadParams` of updates) for
    ``apply_updates(params, updates)``; do not modify them before applying. ``update`` takes the
    gradient at ``params.fast`` and needs ``params``; ``init`` accepts the pair or plain params.

    Args:
      fast_optimizer: the inner optimizer.
      sync_period: :math:`k \ge 1`, fast steps between synchronisations.
      slow_step_size: :math:`\alpha`, in ``[0, 1]`` (the paper uses 0.5).
      reset_state: re-initialise the fast optimizer's state at every synchronisation.

    Returns:
      A `GradientTransformation` with state `LookaheadState`.

    References:
      Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS
      2019, https://arxiv.org/abs/1907.08610
    """
    period = _concrete(sync_period)
    if period is None or period != int(period) or period < 1:
        raise ValueError(
            f"`sync_period` must be an integer >= 1, got {sync_period!r}: the number of fast "
            "steps between synchronisations."
        )
    period = int(period)
    check_decay(slow_step_size, "slow_step_size", upper_inclusive=True)

    def init_fn(params):
        fast = params.fast if isinstance(params, LookaheadParams) else params
        return LookaheadState(fast_optimizer.init(fast), zero_count())

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(params, LookaheadParams):
            raise ValueError(
                "`lookahead` needs the parameters as a `LookaheadParams(fast, slow)` pair: start "
                "from `LookaheadParams.init_synced(params)` and pass the pair to `update`."
            )
        updates, fast_state = fast_optimizer.update(
            updates, state.fast_state, params.fast, **extra_args
        )
        sync = state.steps_since_sync == period - 1

        def moves(u, fast, slow):
            cdt = compute_dtype(u.dtype, jnp.result_type(fast), jnp.result_type(slow))
            diff = fast.astype(cdt) + u.astype(cdt) - slow.astype(cdt)
            alpha = jnp.where(sync, as_hyperparameter(slow_step_size, cdt), 0)
            keep = jnp.where(sync, as_hyperparameter(1 - slow_step_size, cdt), 0)
            return (u.astype(cdt) - keep * diff).astype(u.dtype), (alpha * diff).astype(u.dtype)

        pairs = jax.tree.map(moves, updates, params.fast, params.slow)
        fast_updates, slow_updates = unzip(updates, pairs)
        if reset_state:
            fresh = fast_optimizer.init(params.fast)
            fast_state = jax.tree.map(
                lambda now, new: jnp.where(sync, new, now).astype(jnp.result_type(now)),
                fast_state,
                fresh,
            )
        steps = jnp.where(sync, 0, state.steps_since_sync + 1).astype(jnp.int32)
        return LookaheadParams(fast=fast_updates, slow=slow_updates), LookaheadState(
            fast_state, steps
        )

    return GradientTransformation(init_fn, update_fn)


# ---- Polyak averaging of the parameters ------------------------------------------------------------


class EmaParamsState(NamedTuple):
    """The state of `ema_params`: the step count and the averaged parameters, ready to use."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    ema: Any


def ema_params(decay: float, *, debias: bool = True, dtype: Any = None) -> GradientTransformation:
    r"""Keep an exponential moving average of the parameters, for evaluation (Polyak averaging).

    Put it *last* in a chain (after the learning rate): it returns the updates unchanged and, from
    ``params`` and the final updates, averages the new parameters :math:`\theta_t = \theta_{t-1}
    + u_t`. With ``debias=True`` (default) the average is ``optax.ema``'s debiased EMA of
    :math:`\theta_1 \ldots \theta_t`,

    .. math::
        a_t = \beta a_{t-1} + (1 - \beta)\,\theta_t,\ a_0 = 0, \qquad
        \bar\theta_t = \frac{a_t}{1 - \beta^t}
        = \bar\theta_{t-1} + \frac{1 - \beta}{1 - \beta^t}(\theta_t - \bar\theta_{t-1}),

    stored directly as :math:`\bar\theta_t` (the right-hand recursion, one buffer, no division by
    a small number): ``state.ema`` *is* the averaged parameters. Before the first step it holds the
    initial parameters (the recursion's first weight is 1, so they do not enter the average).
    ``debias=False`` gives the plain EMA started at the initial parameters,
    :math:`\bar\theta_t = \beta\bar\theta_{t-1} + (1-\beta)\theta_t`, :math:`\bar\theta_0 =
    \theta_0` (the usual "EMA of weights"; optax's ``ema(debias=False)`` would start at zero).

    Args:
      decay: :math:`\beta`, in ``[0, 1)``; e.g. 0.999.
      debias: use the debiased average (above) rather than the plain EMA from the initial params.
      dtype: dtype of the stored average; ``None`` uses the widest of float32 and the parameter's
        dtype (a bfloat16 average would lose small steps).

    Returns:
      A `GradientTransformation` with state `EmaParamsState`; read the average with
      `averaged_params` (or ``state[i].ema``).
    """
    check_decay(decay, "decay")

    def stored_dtype(p):
        return dtype if dtype is not None else compute_dtype(jnp.result_type(p))

    def init_fn(params):
        return EmaParamsState(
            count=zero_count(),
            ema=jax.tree.map(lambda p: jnp.asarray(p).astype(stored_dtype(p)), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "`ema_params` averages the parameters, so it needs them: call "
                "`update(grads, state, params)`."
            )
        count = safe_increment(state.count)

        def one(average, p, u):
            cdt = compute_dtype(average.dtype, jnp.result_type(p), u.dtype)
            new_param = jnp.asarray(p).astype(cdt) + u.astype(cdt)
            weight = as_hyperparameter(1 - decay, cdt)
            if debias:
                weight = weight / _correction(decay, count, cdt)
            mean = average.astype(cdt)
            return (mean + weight * (new_param - mean)).astype(average.dtype)

        ema = jax.tree.map(one, state.ema, params, updates)
        return updates, EmaParamsState(count=count, ema=ema)

    return GradientTransformation(init_fn, update_fn)


def averaged_params(state: Any, like: Any = None) -> Any:
    """The averaged parameters kept by `ema_params`, found anywhere in an optimizer's ``state``.

    Args:
      state: a state containing exactly one `EmaParamsState`.
      like: optional parameters whose dtypes the result takes (default: the stored dtype).
    """
    from ._hyperparams import get_state

    found = get_state(state, EmaParamsState)
    if len(found) != 1:
        raise ValueError(
            f"Expected one `EmaParamsState` in the state, found {len(found)} at {list(found)}; "
            "pass the part of the state that holds the one you want."
        )
    (average,) = (piece.ema for piece in found.values())
    return average if like is None else _cast_like(average, like)
