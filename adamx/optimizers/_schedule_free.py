"""Schedule-Free learning: the y/z/x sequences around a momentum-free direction, and its AdamW."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import unzip
from ..blocks._moments import _correction, _resolve_storage
from ..blocks._scale import _evaluate
from ..blocks._second_moment import scale_by_second_moment
from ..blocks._weight_decay import optional_decay
from ..core._base import GradientTransformation, ScalarOrSchedule, safe_increment, zero_count
from ..core._chain import _keyword_filter, chain, with_bounded_update
from ..core._dtypes import as_hyperparameter, compute_dtype, scalar_dtype, upcast
from ..core._structural import either
from ..core._trees import map_like
from ..core._validate import _concrete, check_decay, check_learning_rate, check_non_negative
from ..storage._storage import MomentStorage, init_buffers, stored_dtypes

__all__ = ["ScheduleFreeState", "schedule_free", "schedule_free_adamw", "schedule_free_eval_params"]

_CORRECTIONS = ("moment", "learning_rate")


class ScheduleFreeState(NamedTuple):
    """The state of `schedule_free`.

    ``count`` is the number of steps taken (``int32``); ``b1`` the interpolation :math:`\\beta_1`
    (kept so that `schedule_free_eval_params` needs only the state); ``lr_max`` the largest step
    size :math:`\\gamma` so far and ``weight_sum`` the sum of the averaging weights (real scalars);
    ``z`` the base sequence :math:`z_t`, one buffer per parameter; ``direction`` the state of the
    wrapped direction. The params the caller holds are :math:`y_t`; :math:`x_t` is recovered from
    :math:`y_t` and :math:`z_t`.
    """

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    b1: jax.Array
    lr_max: jax.Array
    weight_sum: jax.Array
    z: Any
    direction: Any


def _check_warmup(warmup_steps: Any) -> None:
    number = _concrete(warmup_steps)
    if number is None:
        return
    if not (math.isfinite(number) and number >= 0 and number == int(number)):
        raise ValueError(
            f"`warmup_steps` must be a whole number of steps >= 0, got {warmup_steps!r}; "
            "pass 0 for no warm-up."
        )


def _check_b1(b1: Any) -> None:
    check_decay(b1, "b1")
    if _concrete(b1) == 0.0:
        raise ValueError(
            "Schedule-Free needs `b1` > 0: the evaluation point x is recovered from the params y "
            "and the state's z as (y - (1 - b1) z) / b1. Typical values are 0.9 to 0.98."
        )


def _step_size(learning_rate: Any, warmup_steps: Any) -> Callable[[jax.Array, Any], jax.Array]:
    """``(count, dtype) -> gamma_t = eta(count) * min(1, (count + 1) / warmup_steps)``."""

    def gamma(count, dtype):
        if callable(learning_rate):
            lr = as_hyperparameter(_evaluate(learning_rate, count, "learning-rate"), dtype)
        else:
            lr = as_hyperparameter(learning_rate, dtype)
        if isinstance(warmup_steps, int) and warmup_steps == 0:
            return lr
        steps = as_hyperparameter(warmup_steps, dtype)
        ramp = jnp.minimum(1, (count + 1).astype(dtype) / jnp.where(steps > 0, steps, 1))
        return lr * jnp.where(steps > 0, ramp, 1)

    return gamma


def _schedule_free(
    direction: GradientTransformation,
    step_size: Callable[[jax.Array, Any], jax.Array],
    b1: Any,
    weight_lr_power: Any,
    r: Any,
    storage: MomentStorage,
    *,
    added: bool = False,
) -> GradientTransformation:
    """`schedule_free` with the step size given as ``step_size(count, dtype) -> gamma_t``.

    ``added``: ``direction`` is a whole optimizer whose updates are added to :math:`z` (optax's
    ``base_optimizer``); :math:`\\gamma` then only weighs the average, evaluated at :math:`t`.
    """
    keep = _keyword_filter(direction.update)

    def init_fn(params):
        dtype = scalar_dtype(params)
        zeros = init_buffers(storage, params)
        # A copy: a state sharing the params' buffers could not be donated with them.
        z = jax.tree.map(lambda p, s: storage.write(jnp.array(p, copy=True), s), params, zeros)
        return ScheduleFreeState(
            count=zero_count(),
            b1=as_hyperparameter(b1, dtype),
            lr_max=jnp.zeros([], dtype),
            weight_sum=jnp.zeros([], dtype),
            z=z,
            direction=direction.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "`schedule_free` needs the parameters (the sequence y): call "
                "`update(grads, state, params)` with the current params."
            )
        dtype = state.weight_sum.dtype
        count = safe_increment(state.count)  # t
        gamma = step_size(count if added else state.count, dtype)
        lr_max = jnp.maximum(state.lr_max, gamma)
        weight = lr_max ** as_hyperparameter(weight_lr_power, dtype)
        if not (isinstance(r, (int, float)) and r == 0):
            weight = count.astype(dtype) ** as_hyperparameter(r, dtype) * weight
        weight_sum = state.weight_sum + weight
        positive = weight_sum > 0
        c = jnp.where(positive, weight / jnp.where(positive, weight_sum, 1), 0)

        dtypes = jax.tree.map(lambda g: g.dtype, updates)
        updates = jax.tree.map(upcast, updates)  # bfloat16 computes in float32, as in `chain`
        u, direction_state = direction.update(updates, state.direction, params, **keep(extra_args))

        def one(u, y, stored):
            cdt = compute_dtype(u.dtype, jnp.result_type(y), *stored_dtypes(stored))
            z = storage.read(stored, cdt)
            g, y = u.astype(cdt), jnp.asarray(y).astype(cdt)
            step, ck = as_hyperparameter(gamma, cdt), as_hyperparameter(c, cdt)
            beta = as_hyperparameter(b1, cdt)
            if added:  # z_{t+1} = z_t + u_t, the base optimizer's update
                move = ck * (z - y) + (1 - beta * (1 - ck)) * g
                return move.astype(u.dtype), storage.write(z + g, stored)
            # y_{t+1} = (1 - c) y_t + c z_t + gamma (b1 (1 - c) - 1) u_t: the interpolation of
            # x_{t+1} = (1 - c) x_t + c z_{t+1} and z_{t+1} = z_t - gamma u_t, without x.
            move = ck * (z - y) + step * (beta * (1 - ck) - 1) * g
            return move.astype(u.dtype), storage.write(z - step * g, stored)

        pairs = map_like(one, u, params, "params", state.z)
        moves, z = unzip(u, pairs)
        new_state = ScheduleFreeState(
            count=count,
            b1=as_hyperparameter(b1, dtype),
            lr_max=lr_max,
            weight_sum=weight_sum,
            z=z,
            direction=direction_state,
        )
        return jax.tree.map(lambda m, dt: m.astype(dt), moves, dtypes), new_state

    # z joins the direction's low-bit moments in the bounded step's loop (else XLA computes z
    # and the updates whole after it, copying z: 4 bytes per param more on a matrix, measured).
    return with_bounded_update(GradientTransformation(init_fn, update_fn))


def schedule_free(
    *args: Any,
    direction: GradientTransformation | None = None,
    base_optimizer: GradientTransformation | None = None,
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    warmup_steps: int = 0,
    weight_lr_power: float = 2.0,
    r: float = 0.0,
    z_dtype: Any = None,
    state_dtype: Any = None,
) -> GradientTransformation:
    r"""Make a momentum-free ``direction`` Schedule-Free (Defazio et al., 2024).

    The base is named, never positional: ``direction=`` is a direction that is *subtracted*,
    scaled by :math:`\gamma_t` (adamx's form, below); ``base_optimizer=`` is a whole optimizer
    whose updates, learning rate and sign included, are *added* to :math:`z` (optax's
    ``contrib.schedule_free``: :math:`z_{t+1} = z_t + \Delta_t`, and ``learning_rate`` only
    weighs the average, evaluated at :math:`t` as optax does). The two read the same object in
    opposite directions, so a positional base (optax's call form) is refused rather than guessed.

    With :math:`u_t` the direction at :math:`y_t` (the params the caller holds):

    .. math::
        \gamma_t &= \eta_t \min(1, t / T_{warmup}), &
        z_{t+1} &= z_t - \gamma_t\, u_t, \\
        c_{t+1} &= \frac{t^r \max_{i \le t}\gamma_i^{\,p}}{\sum_{j \le t} j^r
        \max_{i \le j}\gamma_i^{\,p}}, &
        x_{t+1} &= (1 - c_{t+1})\, x_t + c_{t+1}\, z_{t+1}, \\
        y_{t+1} &= (1 - \beta_1)\, z_{t+1} + \beta_1 x_{t+1}

    with :math:`x_1 = y_1 = z_1 = \theta_0`, :math:`p` = ``weight_lr_power``. The returned update
    is :math:`y_{t+1} - y_t`. Gradients are taken at :math:`y`; **evaluate at** :math:`x`, which
    `schedule_free_eval_params` returns. The state keeps :math:`z` only (as the authors' code):
    :math:`x = (y - (1 - \beta_1) z) / \beta_1`.

    ``direction`` must keep no momentum of its own (the interpolation replaces it) and must not
    scale by the learning rate: e.g. ``chain(scale_by_second_moment(b2), add_decayed_weights(wd))``
    (`schedule_free_adamw`), or `identity` for Schedule-Free SGD. It receives the params
    :math:`y_t`, so weight decay in it is taken at :math:`y` (the authors' choice). One
    :math:`\gamma_t` serves the step of :math:`z` and the averaging weights, as in the authors'
    code; optax's ``contrib.schedule_free`` evaluates its schedule at :math:`t - 1` for the former
    and :math:`t` for the latter.

    Args:
      direction: the base direction :math:`u_t` (no learning rate, no momentum).
      base_optimizer: instead of ``direction``, a whole optimizer whose updates are added to
        :math:`z` (optax's form, e.g. ``adamx.sgd(lr)``).
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count (evaluated at
        :math:`t - 1`); constant, or with a warm-up only, is the point of the method.
      b1: :math:`\beta_1`, the interpolation, in ``(0, 1)``.
      warmup_steps: :math:`T_{warmup}`, the length of the linear warm-up (0: none).
      weight_lr_power: :math:`p`, the power of the largest step size in the averaging weights.
      r: the power of :math:`t` in the averaging weights (0: for a constant :math:`\gamma` the
        average is uniform, :math:`c_{t+1} = 1/t`).
      z_dtype: dtype of the stored :math:`z` (default: the parameter's); ``state_dtype`` is
        optax's name for it.

    Returns:
      A `GradientTransformation` with state `ScheduleFreeState`.
    """
    if args or (direction is None) == (base_optimizer is None):
        raise TypeError(
            "`schedule_free` takes its base by keyword, exactly one of `direction=` (a direction "
            "without learning rate, subtracted after scaling by the step size: adamx's form) or "
            "`base_optimizer=` (a whole optimizer whose updates are added: optax's form); got "
            f"{len(args)} positional argument(s), direction={direction!r:.40}, "
            f"base_optimizer={base_optimizer!r:.40}. Name the one you mean: the two forms move in "
            "opposite directions for the same object."
        )
    _check_wrapper(learning_rate, b1, warmup_steps, weight_lr_power, r)
    z_dtype = either("z_dtype", z_dtype, "state_dtype", state_dtype, None)
    base = direction if base_optimizer is None else base_optimizer
    assert base is not None  # exactly one is given, checked above
    return _schedule_free(
        base,
        _step_size(learning_rate, warmup_steps),
        b1,
        weight_lr_power,
        r,
        _resolve_storage(None, z_dtype, "z_dtype"),
        added=base_optimizer is not None,
    )


def _check_wrapper(learning_rate: Any, b1: Any, warmup_steps: Any, power: Any, r: Any) -> None:
    check_learning_rate(learning_rate)
    _check_b1(b1)
    _check_warmup(warmup_steps)
    check_non_negative(power, "weight_lr_power")
    check_non_negative(r, "r")


def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule | None = None,
    *,
    mask: Any = None,
    weight_lr_power: float = 2.0,
    r: float = 0.0,
    bias_correction: str = "moment",
    nu_dtype: Any = None,
    z_dtype: Any = None,
    state_dtype: Any = None,
) -> GradientTransformation:
    r"""Schedule-Free AdamW (Defazio et al., 2024): AdamW without momentum or a decay schedule.

    With ``bias_correction="moment"`` (the default; the authors' code since v1.3, and optax):

    .. math::
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, |g_t|^2, \quad g_t = \nabla f(y_t), &
        u_t &= \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda\, y_t, \\
        \gamma_t &= \eta_t \min(1, t / T_{warmup}), &
        z_{t+1} &= z_t - \gamma_t\, u_t, \\
        x_{t+1} &= (1 - c_{t+1})\, x_t + c_{t+1} z_{t+1}, &
        y_{t+1} &= (1 - \beta_1)\, z_{t+1} + \beta_1 x_{t+1},

    with :math:`c_{t+1}` the averaging weight of `schedule_free` (:math:`1/t` for a constant
    :math:`\gamma`), :math:`v_0 = 0` and :math:`x_1 = y_1 = z_1 = \theta_0`. The params returned
    are :math:`y`; evaluate (and report losses) at :math:`x =` ``schedule_free_eval_params(state,
    params)``.

    ``bias_correction="learning_rate"`` gives the published paper's Algorithm and the authors' code
    before v1.3 (``AdamWScheduleFreePaper``): :math:`u_t = g_t / (\sqrt{v_t} + \epsilon) + \lambda
    y_t` and :math:`\gamma_t = \eta_t \min(1, t/T_{warmup}) \sqrt{1 - \beta_2^t}`, so the
    correction also scales the decay and the averaging weights. It differs most in the first
    :math:`\sim 1/(1 - \beta_2)` steps.

    Reference: the default matches ``optax.contrib.schedule_free_adamw`` (0.2.8) for a constant
    learning rate, and a NumPy transcription of the authors' ``AdamWScheduleFree`` (v1.3) with
    warm-up, a schedule and weight decay; ``bias_correction="learning_rate"`` matches one of
    ``AdamWScheduleFreePaper`` (``tests/test_schedule_free.py``). With ``warmup_steps``
    optax differs: it steps :math:`z` with the warm-up at :math:`t - 1` (its first step does not
    move) and weights the average with it at :math:`t`. Defaults follow the authors' code
    (``warmup_steps=0``, ``weight_decay=0``; their ``lr=0.0025``); the direction
    ``chain(scale_by_second_moment(b2, eps=eps), add_decayed_weights(weight_decay, mask))`` is
    not a separate ``scale_by_*`` because :math:`\gamma_t` enters the averaging too.

    Args:
      learning_rate: :math:`\eta`, a number >= 0 or a schedule of the step count (no decay
        needed; ``0.0025`` in both references).
      warmup_steps: :math:`T_{warmup}`, the length of the linear warm-up (0: none).
      b1: :math:`\beta_1`, the interpolation between :math:`z` and :math:`x`, in ``(0, 1)``.
      b2: :math:`\beta_2`, decay of the second moment, in ``[0, 1)``.
      eps: :math:`\epsilon`, added to the root.
      weight_decay: :math:`\lambda >= 0` (decoupled, taken at :math:`y`), or a schedule;
        ``None`` (the default): no decay block (any value given, 0 included, keeps it).
      mask: which leaves to decay: a pytree of booleans like the params, or a function of the
        params returning one; ``None`` decays all.
      weight_lr_power: the power of the largest step size in the averaging weights (2).
      r: the power of :math:`t` in the averaging weights (0).
      bias_correction: ``"moment"`` (v1.3 and optax) or ``"learning_rate"`` (the paper, pre-v1.3).
      nu_dtype: dtype of :math:`v` (default: the parameter's real dtype).
      z_dtype: dtype of :math:`z` (default: the parameter's); ``state_dtype`` is optax's name.

    ``learning_rate`` defaults to optax's 0.0025 and ``warmup_steps`` to ``None`` (no warm-up), as
    in ``optax.contrib.schedule_free_adamw``; ``mask`` and what follows are keyword-only (optax's
    seventh positional argument is ``weight_lr_power``).

    Returns:
      ``schedule_free(direction=chain(scale_by_second_moment(b2, eps=eps),
      add_decayed_weights(weight_decay, mask)), learning_rate=learning_rate, b1=b1, ...)``; its
      state is `ScheduleFreeState`.

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> opt = adamx.schedule_free_adamw(learning_rate=0.5)
      >>> state = opt.init(params)
      >>> for _ in range(4):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = opt.update(grads, state, params)
      ...     params = adamx.apply_updates(params, updates)
      ...     x = adamx.schedule_free_eval_params(state, params)
      ...     print(f"{loss(x):.4f}")
      2.5000
      1.7754
      1.2242
      0.8180

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled",
      NeurIPS 2024, https://arxiv.org/abs/2405.15682
    """
    warmup_steps = 0 if warmup_steps is None else warmup_steps
    z_dtype = either("z_dtype", z_dtype, "state_dtype", state_dtype, None)
    _check_wrapper(learning_rate, b1, warmup_steps, weight_lr_power, r)
    check_decay(b2, "b2")
    if bias_correction not in _CORRECTIONS:
        raise ValueError(
            "`bias_correction` must be 'moment' (v / (1 - b2^t) under the root: the authors' code "
            "since v1.3, and optax) or 'learning_rate' (gamma * sqrt(1 - b2^t): the paper), got "
            f"{bias_correction!r}."
        )
    corrected = bias_correction == "moment"
    direction = chain(
        scale_by_second_moment(b2, eps=eps, bias_correction=corrected, nu_dtype=nu_dtype),
        *optional_decay(weight_decay, mask),
    )
    base = _step_size(learning_rate, warmup_steps)

    def paper_step_size(count, dtype):  # the correction of v moved into gamma_t
        return base(count, dtype) * jnp.sqrt(_correction(b2, safe_increment(count), dtype))

    step_size = base if corrected else paper_step_size
    storage = _resolve_storage(None, z_dtype, "z_dtype")
    return _schedule_free(direction, step_size, b1, weight_lr_power, r, storage)


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    r"""The evaluation point :math:`x = (y - (1 - \beta_1) z) / \beta_1` of a Schedule-Free run.

    Args:
      state: a state holding exactly one `ScheduleFreeState` (of `schedule_free` or
        `schedule_free_adamw`, alone or inside a chain or wrapper).
      params: the params :math:`y` the optimizer returned.

    Returns:
      :math:`x`, laid out and typed like ``params``. Evaluate, checkpoint for inference, and
      recompute BatchNorm statistics here; keep training from ``params`` and ``state``.
    """
    from ..toolkit._hyperparams import get_state

    found = get_state(state, ScheduleFreeState)
    if len(found) != 1:
        raise ValueError(
            f"Expected one `ScheduleFreeState` in the state, found {len(found)} at {list(found)}; "
            "pass the part of the state that holds the one you want."
        )
    (piece,) = found.values()

    def one(y, z):
        y = jnp.asarray(y)
        cdt = compute_dtype(y.dtype, z.dtype)
        b1 = piece.b1.astype(cdt)
        x = (y.astype(cdt) - (1 - b1) * z.astype(cdt)) / b1
        return x.astype(y.dtype)

    return map_like(one, params, piece.z, "optimizer state")
