r"""Schedules: hyperparameters as pure functions of the step count.

A schedule maps the step count :math:`t = 0, 1, 2, \ldots` (a Python int or an ``int32`` array, as
`scale_by_schedule` passes it) to a ``float32`` value. Each is jit-able, keeps no state and closes
over Python numbers only. Where optax has a schedule of the same name, the signature and the numbers
are optax's (``tests/test_schedules.py`` measures the difference); `warmup_stable_decay_schedule` is
adamx's own. Every schedule also accepts an array of counts and evaluates it element by element.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..core._validate import _concrete

Schedule = Callable[[jax.Array], jax.Array]  # count -> value; accepts a Python int too

# ---- argument checks (docs/design.md, section 6) ------------------------------------------------


def _check_value(value: Any, name: str) -> None:
    """A value of the schedule: a finite real scalar (a traced array is the caller's to check)."""
    if callable(value):
        raise TypeError(
            f"`{name}` must be a number, got the callable {value!r}; to chain schedules use "
            "`join_schedules`."
        )
    number = _concrete(value)
    if number is not None and not math.isfinite(number):
        raise ValueError(f"`{name}` must be a finite number, got {number!r}.")


def _check_positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """A factor such as ``div_factor`` or ``decay_rate``: a finite number > 0 (or >= 0)."""
    number = _concrete(value)
    if number is None:
        raise TypeError(f"`{name}` must be a concrete number, got the traced value {value!r}.")
    bound = ">= 0" if allow_zero else "> 0"
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"`{name}` must be a finite number {bound}, got {number!r}.")
    return number


def _check_steps(value: Any, name: str, *, positive: bool = False) -> int:
    """A number of steps or a boundary: a whole number >= 0 (or > 0), returned as a Python int."""
    number = _concrete(value)
    if number is None:
        raise TypeError(
            f"`{name}` must be a concrete whole number of steps, got the traced value {value!r}; "
            "pass a Python int."
        )
    if not (math.isfinite(number) and number.is_integer()):
        raise ValueError(
            f"`{name}` must be a whole number of steps, got {number!r}; round it, for example "
            f"`int({number!r})`."
        )
    steps = int(number)
    if steps < 0 or (positive and steps == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}` must be a number of steps {bound}, got {steps}.")
    return steps


# ---- helpers -------------------------------------------------------------------------------------


def _as_count(count: jax.typing.ArrayLike) -> jax.Array:
    """The step count as an array (``int32`` for a Python int)."""
    count = jnp.asarray(count)
    if not (jnp.issubdtype(count.dtype, jnp.integer) or jnp.issubdtype(count.dtype, jnp.floating)):
        raise TypeError(
            f"A schedule takes a step count, got an array of dtype {count.dtype}; pass an int32 "
            "count such as `state.count`."
        )
    return count


def _steps_into(count: jax.Array, begin: int, steps: int) -> jax.Array:
    """``clip(t - begin, 0, steps)`` in ``float32``: how far a phase of ``steps`` steps has run."""
    return jnp.clip(count - begin, 0, steps).astype(jnp.float32)


def _progress(count: jax.Array, begin: int, steps: int) -> jax.Array:
    """``clip((t - begin) / steps, 0, 1)`` in ``float32`` (0 for a phase of no steps)."""
    return _steps_into(count, begin, steps) / max(steps, 1)


def _cosine_interpolate(start: Any, end: Any, p: jax.Array) -> jax.Array:
    """From ``start`` at ``p = 0`` to ``end`` at ``p = 1`` along half a cosine (optax's form)."""
    return end + (start - end) / 2 * (jnp.cos(jnp.pi * p) + 1)


def _f32(value: Any) -> jax.Array:
    return jnp.asarray(value, dtype=jnp.float32)


# ---- schedules -----------------------------------------------------------------------------------


def constant_schedule(value: float | jax.Array) -> Schedule:
    r"""A schedule that returns ``value`` at every step.

    .. math::
        \eta_t = v

    Args:
      value: :math:`v`, a finite number.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import constant_schedule
      >>> print(constant_schedule(0.5)(1000))
      0.5
    """
    _check_value(value, "value")

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        return jnp.broadcast_to(_f32(value), jnp.shape(count))

    return schedule


def polynomial_schedule(
    init_value: float | jax.Array,
    end_value: float | jax.Array,
    power: float | jax.Array,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""From ``init_value`` to ``end_value`` along a polynomial of degree ``power`` (optax's).

    .. math::
        \eta_t = (I - E) \left(1 - \frac{\min(\max(t - B, 0), T)}{T}\right)^P + E

    so :math:`\eta_t = I` for :math:`t \le B` and :math:`\eta_t = E` for :math:`t \ge B + T`.

    Args:
      init_value: :math:`I`, the value up to step :math:`B`.
      end_value: :math:`E`, the value from step :math:`B + T` on.
      power: :math:`P > 0` (1 is linear).
      transition_steps: :math:`T \ge 0`, the length of the transition. ``0`` holds ``init_value``
        forever, as optax does.
      transition_begin: :math:`B \ge 0`, the step at which the transition starts.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import polynomial_schedule
      >>> schedule = polynomial_schedule(1.0, 0.0, power=2, transition_steps=10)
      >>> print(schedule(0), schedule(5), schedule(10), schedule(20))
      1.0 0.25 0.0 0.0
    """
    _check_value(init_value, "init_value")
    _check_value(end_value, "end_value")
    _check_positive(power, "power")
    transition_steps = _check_steps(transition_steps, "transition_steps")
    transition_begin = _check_steps(transition_begin, "transition_begin")
    if transition_steps == 0:
        return constant_schedule(init_value)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = _steps_into(_as_count(count), transition_begin, transition_steps)
        # Clamped at 0: under jit XLA fuses `1 - t / T` into an FMA that can give -6e-8 at t = T,
        # and a fractional power of it NaN (optax 0.2.8 returns NaN there).
        frac = jnp.maximum(1 - t / transition_steps, 0)
        return _f32((init_value - end_value) * frac**power + end_value)

    return schedule


def linear_schedule(
    init_value: float | jax.Array,
    end_value: float | jax.Array,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""From ``init_value`` to ``end_value`` along a straight line (optax's).

    .. math::
        \eta_t = (I - E) \left(1 - \frac{\min(\max(t - B, 0), T)}{T}\right) + E

    `polynomial_schedule` with ``power=1``; the arguments and the result are as there.

    Example:
      >>> from adamx import linear_schedule
      >>> schedule = linear_schedule(0.0, 1.0, transition_steps=4, transition_begin=2)
      >>> print([float(schedule(t)) for t in range(8)])
      [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def exponential_decay(
    init_value: float | jax.Array,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | jax.Array | None = None,
) -> Schedule:
    r"""Multiply ``init_value`` by ``decay_rate`` every ``transition_steps`` steps (optax's).

    .. math::
        \eta_t = I \, r^{\,p_t}, \qquad p_t = \frac{\max(t - B, 0)}{T}
        \quad\text{(}\lfloor p_t \rfloor\text{ with } \texttt{staircase}\text{)}

    then bounded by :math:`E`: from below if :math:`r < 1`, from above if :math:`r > 1`.

    Args:
      init_value: :math:`I`, the value up to step :math:`B`.
      transition_steps: :math:`T > 0`, the steps over which the value is multiplied by :math:`r`.
      decay_rate: :math:`r > 0`.
      transition_begin: :math:`B \ge 0`, the step at which the decay starts.
      staircase: decay in jumps, every :math:`T` steps, instead of smoothly.
      end_value: :math:`E`, a bound the value does not pass; ``None`` for none.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import exponential_decay
      >>> schedule = exponential_decay(1.0, transition_steps=10, decay_rate=0.5, staircase=True)
      >>> print(schedule(9), schedule(10), schedule(25))
      1.0 0.5 0.25
    """
    _check_value(init_value, "init_value")
    transition_steps = _check_steps(transition_steps, "transition_steps", positive=True)
    decay_rate = _check_positive(decay_rate, "decay_rate")
    transition_begin = _check_steps(transition_begin, "transition_begin")
    if end_value is not None:
        _check_value(end_value, "end_value")
    bound = jnp.maximum if decay_rate < 1 else jnp.minimum

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        elapsed = jnp.maximum(_as_count(count) - transition_begin, 0)
        if staircase:
            p = (elapsed // transition_steps).astype(jnp.float32)
        else:
            p = elapsed.astype(jnp.float32) / transition_steps
        value = init_value * jnp.power(decay_rate, p)
        if end_value is not None:
            value = bound(value, end_value)
        return _f32(value)

    return schedule


def cosine_decay_schedule(
    init_value: float | jax.Array,
    decay_steps: int,
    alpha: float | jax.Array = 0.0,
    exponent: float | jax.Array = 1.0,
) -> Schedule:
    r"""Half a cosine from ``init_value`` down to ``alpha * init_value`` (optax's).

    .. math::
        \eta_t = I \left( (1 - \alpha)\, c_t^{\,p} + \alpha \right), \qquad
        c_t = \tfrac12 \left(1 + \cos \frac{\pi \min(t, T)}{T}\right)

    Args:
      init_value: :math:`I`, the value at step 0.
      decay_steps: :math:`T > 0`; from step :math:`T` on the value is :math:`\alpha I`.
      alpha: :math:`\alpha`, the final value as a fraction of ``init_value``.
      exponent: :math:`p`, applied to the cosine factor.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import cosine_decay_schedule
      >>> schedule = cosine_decay_schedule(1.0, decay_steps=100, alpha=0.1)
      >>> print([round(float(schedule(t)), 4) for t in (0, 50, 100, 200)])
      [1.0, 0.55, 0.1, 0.1]

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017,
      https://arxiv.org/abs/1608.03983
    """
    _check_value(init_value, "init_value")
    decay_steps = _check_steps(decay_steps, "decay_steps", positive=True)
    _check_value(alpha, "alpha")
    _check_value(exponent, "exponent")

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        t = _steps_into(_as_count(count), 0, decay_steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * t / decay_steps))
        return _f32(init_value * ((1 - alpha) * cosine**exponent + alpha))

    return schedule


def join_schedules(schedules: Sequence[Callable[..., Any]], boundaries: Sequence[int]) -> Schedule:
    r"""Run ``schedules[i]`` from ``boundaries[i - 1]`` on, each counting from 0 (optax's).

    .. math::
        \eta_t = s_i(t - b_i) \quad \text{for } b_i \le t < b_{i+1},
        \qquad b_0 = 0,\ b_{k} = \infty

    Args:
      schedules: :math:`k \ge 1` schedules :math:`s_0, \ldots, s_{k-1}`.
      boundaries: the :math:`k - 1` steps :math:`b_1 \le \cdots \le b_{k-1}` at which the next
        schedule takes over.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import constant_schedule, join_schedules, linear_schedule
      >>> schedule = join_schedules(
      ...     [constant_schedule(1.0), linear_schedule(1.0, 0.0, transition_steps=4)], [2]
      ... )
      >>> print([float(schedule(t)) for t in range(7)])
      [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    schedules = list(schedules)
    if not schedules or not all(callable(s) for s in schedules):
        raise TypeError(
            f"`schedules` must be a non-empty sequence of schedules, got {schedules!r}; "
            "pass functions of the step count."
        )
    boundaries = [_check_steps(b, "boundaries[i]") for b in boundaries]
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"`join_schedules` needs one boundary fewer than schedules, got {len(schedules)} "
            f"schedules and {len(boundaries)} boundaries; boundary i is where schedule i takes over."
        )
    if boundaries != sorted(boundaries):
        raise ValueError(f"`boundaries` must be non-decreasing, got {boundaries}; sort them.")

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        count = _as_count(count)
        value = _f32(schedules[0](count))
        for boundary, later in zip(boundaries, schedules[1:], strict=True):
            value = jnp.where(count < boundary, value, _f32(later(count - boundary)))
        return value

    return schedule


def warmup_constant_schedule(
    init_value: float | jax.Array,
    peak_value: float | jax.Array,
    warmup_steps: int,
) -> Schedule:
    r"""A linear warm-up from ``init_value`` to ``peak_value``, then constant (optax's).

    .. math::
        \eta_t = I + (P - I) \frac{\min(t, W)}{W}

    Args:
      init_value: :math:`I`, the value at step 0.
      peak_value: :math:`P`, the value from step :math:`W` on.
      warmup_steps: :math:`W > 0`, the length of the warm-up.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import warmup_constant_schedule
      >>> schedule = warmup_constant_schedule(0.0, 1.0, warmup_steps=4)
      >>> print([float(schedule(t)) for t in range(6)])
      [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if _check_steps(warmup_steps, "warmup_steps") == 0:
        # optax holds `init_value` forever here (a zero-step transition is "no transition").
        raise ValueError(
            "`warmup_steps` must be > 0, got 0; for no warm-up use `constant_schedule(peak_value)`."
        )
    return linear_schedule(init_value, peak_value, warmup_steps)


def warmup_cosine_decay_schedule(
    init_value: float | jax.Array,
    peak_value: float | jax.Array,
    warmup_steps: int,
    decay_steps: int,
    end_value: float | jax.Array = 0.0,
    exponent: float | jax.Array = 1.0,
) -> Schedule:
    r"""A linear warm-up to ``peak_value``, then a cosine decay to ``end_value`` (optax's).

    .. math::
        \eta_t = \begin{cases}
            I + (P - I)\, t / W, & t < W \\
            P \left( (1 - \alpha)\, c_t^{\,p} + \alpha \right), & t \ge W
        \end{cases}
        \qquad c_t = \tfrac12 \left(1 + \cos \frac{\pi \min(t - W, D - W)}{D - W}\right),
        \quad \alpha = E / P

    Args:
      init_value: :math:`I`, the value at step 0.
      peak_value: :math:`P`, the value at step :math:`W`.
      warmup_steps: :math:`W \ge 0`, the length of the warm-up.
      decay_steps: :math:`D > W`, the length of the whole schedule, warm-up included.
      end_value: :math:`E`, the value from step :math:`D` on.
      exponent: :math:`p`, applied to the cosine factor.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import warmup_cosine_decay_schedule
      >>> schedule = warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110)
      >>> print([round(float(schedule(t)), 4) for t in (5, 10, 60, 110)])
      [0.5, 1.0, 0.5, 0.0]
    """
    _check_value(peak_value, "peak_value")
    _check_value(end_value, "end_value")
    warmup_steps = _check_steps(warmup_steps, "warmup_steps")
    decay_steps = _check_steps(decay_steps, "decay_steps")
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"`decay_steps` must exceed `warmup_steps`, got decay_steps={decay_steps} and "
            f"warmup_steps={warmup_steps}; `decay_steps` is the length of the whole schedule, "
            "warm-up included."
        )
    peak = _concrete(peak_value)
    if peak is None:  # traced: alpha is computed with the schedule
        alpha: Any = jnp.where(peak_value == 0, 0.0, end_value / peak_value)
    else:
        alpha = 0.0 if peak == 0 else end_value / peak_value
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent),
        ],
        [warmup_steps],
    )


def piecewise_constant_schedule(
    init_value: float | jax.Array,
    boundaries_and_scales: Mapping[int, float] | None = None,
) -> Schedule:
    r"""``init_value``, multiplied by ``scale`` from each ``boundary`` on (optax's).

    .. math::
        \eta_t = I \prod_{i \,:\, t \ge b_i} s_i

    Args:
      init_value: :math:`I`, the value before the first boundary.
      boundaries_and_scales: ``{b_i: s_i}``, boundaries (steps >= 0) and scales (>= 0).

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import piecewise_constant_schedule
      >>> schedule = piecewise_constant_schedule(1.0, {100: 0.5, 200: 0.5})
      >>> print(schedule(99), schedule(100), schedule(250))
      1.0 0.5 0.25
    """
    _check_value(init_value, "init_value")
    steps = sorted(
        (_check_steps(boundary, "boundary"), _check_positive(scale, "scale", allow_zero=True))
        for boundary, scale in (boundaries_and_scales or {}).items()
    )

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        count = _as_count(count)
        value = jnp.broadcast_to(_f32(init_value), count.shape)
        for boundary, scale in steps:
            value = jnp.where(count >= boundary, value * scale, value)
        return value

    return schedule


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: float | jax.Array,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    r"""The one-cycle schedule: half a cosine up to ``peak_value``, half a cosine down (optax's).

    .. math::
        \eta_t = \begin{cases}
            \operatorname{cos\_interp}(P / d,\ P,\ t / S), & t < S \\
            \operatorname{cos\_interp}(P,\ P / (d f),\ (t - S) / (T - S)), & S \le t < T \\
            P / (d f), & t \ge T
        \end{cases}

    with :math:`\operatorname{cos\_interp}(a, b, p) = b + \tfrac12 (a - b)(1 + \cos \pi p)` and
    :math:`S = \lfloor \mathrm{pct\_start} \cdot T \rfloor`.

    Args:
      transition_steps: :math:`T > 0`, the length of the cycle.
      peak_value: :math:`P`, the value at step :math:`S`.
      pct_start: the fraction of the cycle spent rising, in ``[0, 1]``.
      div_factor: :math:`d > 0`; the value at step 0 is :math:`P / d`.
      final_div_factor: :math:`f > 0`; the final value is :math:`P / (d f)`.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import cosine_onecycle_schedule
      >>> schedule = cosine_onecycle_schedule(100, peak_value=1.0, div_factor=10.0)
      >>> print(f"{schedule(0):.3f} {schedule(30):.3f} {schedule(100):.1e}")
      0.100 1.000 1.0e-05

    References:
      Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
      Learning Rates", 2017, https://arxiv.org/abs/1708.07120
    """
    transition_steps = _check_steps(transition_steps, "transition_steps", positive=True)
    _check_value(peak_value, "peak_value")
    pct = _concrete(pct_start)
    if pct is None or not 0 <= pct <= 1:
        raise ValueError(
            f"`pct_start` must be a fraction of the cycle in [0, 1], got {pct_start!r}; "
            "0.3 spends the first 30% of the steps rising."
        )
    div_factor = _check_positive(div_factor, "div_factor")
    final_div_factor = _check_positive(final_div_factor, "final_div_factor")
    rise_steps = int(pct * transition_steps)
    initial = peak_value / div_factor
    final = initial / final_div_factor

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        count = _as_count(count)
        rising = _cosine_interpolate(initial, peak_value, _progress(count, 0, rise_steps))
        falling = _cosine_interpolate(
            peak_value, final, _progress(count, rise_steps, transition_steps - rise_steps)
        )
        return jnp.where(
            count < rise_steps, rising, jnp.where(count < transition_steps, falling, _f32(final))
        ).astype(jnp.float32)

    return schedule


def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, Any]]) -> Schedule:
    r"""SGD with warm restarts: cycles of `warmup_cosine_decay_schedule`, one after another (optax's).

    .. math::
        \eta_t = s_i(t - b_i) \quad \text{for } b_i \le t < b_{i+1}, \qquad
        b_i = \sum_{j < i} D_j

    where :math:`s_i` is ``warmup_cosine_decay_schedule(**cosine_kwargs[i])`` and :math:`D_j` its
    ``decay_steps``; the last cycle holds its ``end_value`` once it is over.

    Args:
      cosine_kwargs: the keyword arguments of each cycle's `warmup_cosine_decay_schedule`.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import sgdr_schedule
      >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10)
      >>> schedule = sgdr_schedule([cycle, cycle])
      >>> print([round(float(schedule(t)), 4) for t in (0, 2, 9, 10, 12)])
      [0.0, 1.0, 0.0381, 0.0, 1.0]

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017,
      https://arxiv.org/abs/1608.03983
    """
    cycles = list(cosine_kwargs)
    if not cycles:
        raise ValueError(
            "`sgdr_schedule` needs at least one cycle, got none; pass a list of dicts."
        )
    schedules, boundaries, step = [], [], 0
    for i, kwargs in enumerate(cycles):
        try:
            schedules.append(warmup_cosine_decay_schedule(**kwargs))
        except (TypeError, ValueError) as error:
            raise type(error)(f"Cycle {i} of `sgdr_schedule`: {error}") from error
        step += int(kwargs["decay_steps"])
        boundaries.append(step)
    return join_schedules(schedules, boundaries[:-1])


_DECAY_SHAPES: dict[str, Callable[[jax.Array], jax.Array]] = {
    # g(p): how far the decay has gone, from g(0) = 0 to g(1) = 1.
    "linear": lambda p: p,
    "cosine": lambda p: (1 - jnp.cos(jnp.pi * p)) / 2,
    "sqrt": jnp.sqrt,
}


def warmup_stable_decay_schedule(
    peak_value: float | jax.Array,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    init_value: float | jax.Array = 0.0,
    end_value: float | jax.Array = 0.0,
    decay_shape: str = "linear",
) -> Schedule:
    r"""Warm-up, stable, decay (WSD): a linear warm-up, a constant plateau, then a short decay.

    .. math::
        \eta_t = \begin{cases}
            I + (P - I)\, t / W, & t < W \\
            P, & W \le t < W + S \\
            P - (P - E)\, g\!\left(\frac{t - W - S}{D}\right), & W + S \le t < W + S + D \\
            E, & t \ge W + S + D
        \end{cases}

    with the decay shape :math:`g(p) = p` (``"linear"``), :math:`\tfrac12 (1 - \cos \pi p)`
    (``"cosine"``) or :math:`\sqrt{p}` (``"sqrt"``, the "1 - sqrt" cooldown of Hägele et al.).
    The value is exactly :math:`P` from step :math:`W` until the decay starts and exactly :math:`E`
    from its end on. Unlike a cosine schedule, the plateau does not depend on the length of the
    run: a run can be extended, and decays branched off it, without starting again. optax has no
    such schedule.

    Args:
      peak_value: :math:`P`, the value of the plateau.
      warmup_steps: :math:`W \ge 0` (``0``: start at the peak).
      stable_steps: :math:`S \ge 0`, the length of the plateau.
      decay_steps: :math:`D > 0`, the length of the decay (without one, use
        `warmup_constant_schedule`).
      init_value: :math:`I`, the value at step 0.
      end_value: :math:`E`, the value from step :math:`W + S + D` on.
      decay_shape: ``"linear"``, ``"cosine"`` or ``"sqrt"``.

    Returns:
      A schedule ``count -> float32``.

    Example:
      >>> from adamx import warmup_stable_decay_schedule
      >>> schedule = warmup_stable_decay_schedule(
      ...     1.0, warmup_steps=2, stable_steps=3, decay_steps=4, decay_shape="sqrt"
      ... )
      >>> print([round(float(schedule(t)), 3) for t in range(11)])
      [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.293, 0.134, 0.0, 0.0]

    References:
      Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with Scalable Training
      Strategies", 2024, https://arxiv.org/abs/2404.06395

      Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations",
      NeurIPS 2024, https://arxiv.org/abs/2405.18392
    """
    _check_value(peak_value, "peak_value")
    _check_value(init_value, "init_value")
    _check_value(end_value, "end_value")
    warmup_steps = _check_steps(warmup_steps, "warmup_steps")
    stable_steps = _check_steps(stable_steps, "stable_steps")
    if _check_steps(decay_steps, "decay_steps") == 0:
        raise ValueError(
            "`decay_steps` must be > 0, got 0; for a schedule without a decay use "
            "`warmup_constant_schedule`."
        )
    if decay_shape not in _DECAY_SHAPES:
        raise ValueError(
            f"`decay_shape` must be one of {sorted(_DECAY_SHAPES)}, got {decay_shape!r}; "
            '"sqrt" is the 1 - sqrt cooldown of Hägele et al. (2024).'
        )
    g = _DECAY_SHAPES[decay_shape]
    decay_begin = warmup_steps + stable_steps
    decay_end = decay_begin + decay_steps

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        count = _as_count(count)
        warmup = init_value + (peak_value - init_value) * _progress(count, 0, warmup_steps)
        decay = peak_value - (peak_value - end_value) * g(
            _progress(count, decay_begin, decay_steps)
        )
        # The phases, latest first: the decay, else the plateau, else the warm-up, else the end.
        value = jnp.where(count < decay_begin, _f32(peak_value), decay)
        value = jnp.where(count < warmup_steps, warmup, value)
        return jnp.where(count < decay_end, value, _f32(end_value)).astype(jnp.float32)

    return schedule


__all__ = [
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_stable_decay_schedule",
]
