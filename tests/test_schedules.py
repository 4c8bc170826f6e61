"""Schedules against their closed forms (float64), against optax 0.2.8, and driving AdamW.

* Closed forms: every schedule, at every count in ``COUNTS`` (0, each phase boundary and its
  neighbours, far past the end, the saturated int32 count), equals its float64 closed form to
  ``CLOSED_FORM_ULPS`` float32 ulps of the schedule's scale (its largest value): float32 rounding of
  the count's fraction, ``cos`` and ``pow``.
* optax: where optax has the schedule, ``adamx.X(**kw)`` equals ``optax.X(**kw)`` bitwise when both
  are evaluated eagerly (measured: 0 ulps for every case, one-cycle included), and to 2 ulps of the
  scale when both are jitted (measured: 1.25 for one-cycle, 0.62 for warmup_constant, 0 otherwise),
  except where optax's jitted polynomial with a fractional power is NaN (adamx's is not).
* jit against eager: 2 ulps of the scale (XLA's FMA contraction; measured 1.9), as for optax's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from tests.helpers import max_relative_difference, random_tree, relaxed, x64

EPS32 = float(np.finfo(np.float32).eps)
CLOSED_FORM_ULPS = 6  # measured maximum 3.4 (`polynomial_root`, power 0.5 near its end)
INT32_MAX = 2**31 - 1

# Counts: every step of the first 320 (all phases below end by 300), a few far ones, the saturated
# int32 count that adamx's counters stop at.
COUNTS = np.concatenate([np.arange(320), [499, 500, 501, 10**4, 10**6, INT32_MAX]]).astype(np.int32)


# ---- closed forms, in Python float64 ------------------------------------------------------------


def polynomial(init, end, power, steps, begin=0):
    def f(t):
        if steps == 0:
            return init
        s = min(max(t - begin, 0), steps)
        return (init - end) * (1 - s / steps) ** power + end

    return f


def exponential(init, steps, rate, begin=0, staircase=False, end=None):
    def f(t):
        p = max(t - begin, 0) / steps
        p = math.floor(p) if staircase else p
        value = init * math.exp(min(p * math.log(rate), 700.0))  # rate**p, overflow-free
        if end is not None:
            value = max(value, end) if rate < 1 else min(value, end)
        return value

    return f


def cosine(init, steps, alpha=0.0, exponent=1.0):
    def f(t):
        c = 0.5 * (1 + math.cos(math.pi * min(max(t, 0), steps) / steps))
        return init * ((1 - alpha) * c**exponent + alpha)

    return f


def joined(parts, boundaries):
    def f(t):
        starts = [0, *boundaries]
        i = max(k for k, b in enumerate(starts) if t >= b)
        return parts[i](t - starts[i])

    return f


def warmup_cosine(init, peak, warmup, steps, end=0.0, exponent=1.0):
    alpha = 0.0 if peak == 0 else end / peak
    return joined(
        [polynomial(init, peak, 1, warmup), cosine(peak, steps - warmup, alpha, exponent)],
        [warmup],
    )


def piecewise(init, boundaries_and_scales):
    def f(t):
        return init * math.prod(s for b, s in boundaries_and_scales.items() if t >= b)

    return f


def onecycle(steps, peak, pct_start=0.3, div=25.0, final_div=1e4):
    rise = int(pct_start * steps)
    low, final = peak / div, peak / div / final_div

    def interp(a, b, p):
        return b + (a - b) * (1 + math.cos(math.pi * p)) / 2

    def f(t):
        if t < rise:
            return interp(low, peak, t / rise)
        if t < steps:
            return interp(peak, final, (t - rise) / (steps - rise))
        return final

    return f


def wsd(peak, warmup, stable, decay, init=0.0, end=0.0, shape="linear"):
    g = {
        "linear": lambda p: p,
        "cosine": lambda p: (1 - math.cos(math.pi * p)) / 2,
        "sqrt": math.sqrt,
    }[shape]

    def f(t):
        if t < warmup:
            return init + (peak - init) * t / warmup
        if t < warmup + stable:
            return peak
        if t < warmup + stable + decay:
            return peak - (peak - end) * g((t - warmup - stable) / decay)
        return end

    return f


SGDR_CYCLES = [
    dict(init_value=0.0, peak_value=0.1, warmup_steps=10, decay_steps=100, end_value=1e-3),
    dict(init_value=1e-3, peak_value=0.05, warmup_steps=0, decay_steps=60),
    dict(init_value=0.0, peak_value=0.02, warmup_steps=5, decay_steps=40, exponent=2.0),
]


def sgdr(cycles):
    starts = np.cumsum([0] + [c["decay_steps"] for c in cycles])[:-1].tolist()
    parts = [
        warmup_cosine(
            c["init_value"],
            c["peak_value"],
            c["warmup_steps"],
            c["decay_steps"],
            c.get("end_value", 0.0),
            c.get("exponent", 1.0),
        )
        for c in cycles
    ]
    return joined(parts, starts[1:])


# (id, build(lib) with lib either adamx's module or optax, closed form, optax has it)
CASES = [
    ("constant", lambda lib: lib.constant_schedule(0.3), lambda t: 0.3, True),
    (
        "linear",
        lambda lib: lib.linear_schedule(0.1, 1e-3, transition_steps=100, transition_begin=20),
        polynomial(0.1, 1e-3, 1, 100, 20),
        True,
    ),
    (
        "linear_zero_steps",  # optax's rule: a zero-step transition holds init_value
        lambda lib: lib.linear_schedule(0.1, 1e-3, transition_steps=0),
        polynomial(0.1, 1e-3, 1, 0),
        True,
    ),
    (
        "polynomial_square",
        lambda lib: lib.polynomial_schedule(1.0, 0.01, 2, transition_steps=100, transition_begin=5),
        polynomial(1.0, 0.01, 2, 100, 5),
        True,
    ),
    (
        "polynomial_root",
        lambda lib: lib.polynomial_schedule(0.5, 0.0, 0.5, transition_steps=250),
        polynomial(0.5, 0.0, 0.5, 250),
        True,
    ),
    (
        "exponential",
        lambda lib: lib.exponential_decay(0.1, 10, 0.5, transition_begin=5),
        exponential(0.1, 10, 0.5, 5),
        True,
    ),
    (
        "exponential_staircase_floor",
        lambda lib: lib.exponential_decay(0.1, 7, 0.8, staircase=True, end_value=1e-3),
        exponential(0.1, 7, 0.8, staircase=True, end=1e-3),
        True,
    ),
    (
        "exponential_growth_ceiling",
        lambda lib: lib.exponential_decay(1e-3, 20, 1.5, transition_begin=3, end_value=0.5),
        exponential(1e-3, 20, 1.5, 3, end=0.5),
        True,
    ),
    (
        "cosine",
        lambda lib: lib.cosine_decay_schedule(0.1, 200, alpha=0.05),
        cosine(0.1, 200, 0.05),
        True,
    ),
    (
        "cosine_exponent",
        lambda lib: lib.cosine_decay_schedule(0.1, 150, exponent=2.0),
        cosine(0.1, 150, 0.0, 2.0),
        True,
    ),
    (
        "warmup_cosine",
        lambda lib: lib.warmup_cosine_decay_schedule(0.0, 0.1, 10, 210, end_value=1e-4),
        warmup_cosine(0.0, 0.1, 10, 210, 1e-4),
        True,
    ),
    (
        "warmup_cosine_no_warmup",
        lambda lib: lib.warmup_cosine_decay_schedule(0.0, 0.1, 0, 100, exponent=1.5),
        warmup_cosine(0.0, 0.1, 0, 100, 0.0, 1.5),
        True,
    ),
    (
        "warmup_constant",
        lambda lib: lib.warmup_constant_schedule(1e-4, 0.1, 30),
        polynomial(1e-4, 0.1, 1, 30),
        True,
    ),
    (
        "piecewise_constant",
        lambda lib: lib.piecewise_constant_schedule(0.1, {60: 0.5, 30: 0.1, 90: 0.0}),
        piecewise(0.1, {60: 0.5, 30: 0.1, 90: 0.0}),
        True,
    ),
    (
        "cosine_onecycle",
        lambda lib: lib.cosine_onecycle_schedule(200, 0.1),
        onecycle(200, 0.1),
        True,
    ),
    (
        "cosine_onecycle_custom",
        lambda lib: lib.cosine_onecycle_schedule(
            150, 1.0, pct_start=0.25, div_factor=10.0, final_div_factor=100.0
        ),
        onecycle(150, 1.0, 0.25, 10.0, 100.0),
        True,
    ),
    ("sgdr", lambda lib: lib.sgdr_schedule(SGDR_CYCLES), sgdr(SGDR_CYCLES), True),
    (
        "join",
        lambda lib: lib.join_schedules(
            [
                lib.linear_schedule(0.0, 0.1, 20),
                lib.constant_schedule(0.1),
                lib.exponential_decay(0.1, 25, 0.3),
            ],
            [20, 120],
        ),
        joined([polynomial(0.0, 0.1, 1, 20), lambda t: 0.1, exponential(0.1, 25, 0.3)], [20, 120]),
        True,
    ),
    *[
        (
            f"wsd_{shape}",
            lambda lib, shape=shape: lib.warmup_stable_decay_schedule(
                0.1, 25, 100, 150, init_value=1e-3, end_value=1e-5, decay_shape=shape
            ),
            wsd(0.1, 25, 100, 150, 1e-3, 1e-5, shape),
            False,
        )
        for shape in ("linear", "cosine", "sqrt")
    ],
]
IDS = [case[0] for case in CASES]
OPTAX_CASES = [case for case in CASES if case[3]]


def evaluate(schedule, counts=COUNTS) -> np.ndarray:
    return np.asarray(schedule(jnp.asarray(counts, jnp.int32)))


def scale_of(reference: np.ndarray) -> float:
    return float(np.max(np.abs(reference)))


# ---- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, build, closed_form, _", CASES, ids=IDS)
def test_closed_form(name, build, closed_form, _):
    values = evaluate(build(adamx))
    assert values.dtype == np.float32 and values.shape == COUNTS.shape
    reference = np.array([closed_form(int(t)) for t in COUNTS], np.float64)
    ulps = np.abs(values - reference) / (EPS32 * scale_of(reference))
    assert np.max(ulps) <= CLOSED_FORM_ULPS, (
        f"{name}: {np.max(ulps):.1f} ulps of the scale at count {COUNTS[np.argmax(ulps)]}"
    )


def evaluate_jitted(schedule, counts=COUNTS) -> np.ndarray:
    """One count at a time inside jit, as an optimizer's jitted step calls a schedule."""
    return np.asarray(
        jax.jit(lambda c: jax.lax.map(lambda x: jnp.asarray(schedule(x), jnp.float32), c))(
            jnp.asarray(counts, jnp.int32)
        )
    )


@pytest.mark.parametrize("name, build, _, __", OPTAX_CASES, ids=[c[0] for c in OPTAX_CASES])
def test_same_numbers_as_optax(name, build, _, __):
    ours, ours_jit = evaluate(build(adamx)), evaluate_jitted(build(adamx))
    with relaxed():
        theirs = np.asarray(jax.vmap(build(optax))(jnp.asarray(COUNTS)), np.float32)
        theirs_jit = evaluate_jitted(build(optax))
    ulp = EPS32 * scale_of(theirs)
    # Eagerly: bitwise. optax's one-cycle peak is (peak / div_factor) * div_factor in float32, which
    # may be one ulp off the peak (measured: 0 ulps on these cases).
    if name.startswith("cosine_onecycle"):
        assert np.max(np.abs(ours - theirs)) <= ulp
    else:
        np.testing.assert_array_equal(ours, theirs)
    # Under jit XLA fuses differently around adamx's and optax's expressions; measured maximum
    # 1.25 ulps (one-cycle), 0.62 (warmup_constant), 0 for all others. Where optax's jitted value
    # is NaN (`polynomial_root` from the end of its transition on), see the test below.
    assert np.all(np.isfinite(ours_jit))
    finite = np.isfinite(theirs_jit)
    assert np.max(np.abs(ours_jit - theirs_jit)[finite]) <= 2 * ulp


def test_fractional_power_ends_at_end_value_under_jit():
    """At t = T XLA's FMA makes ``1 - t/T`` about -6e-8; ``(-6e-8)**0.5`` must not be NaN.

    optax 0.2.8's jitted ``polynomial_schedule(0.5, 0.0, 0.5, 250)`` returns NaN from step 250 on.
    """
    schedule = adamx.polynomial_schedule(0.5, 1e-3, 0.5, transition_steps=250)
    values = evaluate_jitted(schedule, np.arange(245, 400))
    assert np.all(np.isfinite(values)) and np.all(values[5:] == np.float32(1e-3))


@pytest.mark.parametrize("name, build, _, __", CASES, ids=IDS)
def test_jit_equals_eager_and_counts_of_any_form(name, build, _, __):
    """jit and eager agree to 2 ulps of the scale (measured maximum: 1.9, `cosine`).

    Not bitwise, for optax's schedules either: XLA (CPU) contracts ``a * b + c`` into an FMA under
    jit, and divides by a constant through its reciprocal in some shapes and not in others, so
    one count evaluated alone and the same count in an array may differ in the last bit.
    """
    schedule = build(adamx)
    eager = evaluate(schedule)
    tolerance = 2 * EPS32 * scale_of(eager)
    assert np.max(np.abs(evaluate(jax.jit(schedule)) - eager)) <= tolerance
    assert np.max(np.abs(evaluate_jitted(schedule) - eager)) <= tolerance
    for i in (0, 25, 150, len(COUNTS) - 1):
        python_int = schedule(int(COUNTS[i]))
        int32 = schedule(jnp.asarray(COUNTS[i], jnp.int32))
        for value in (python_int, int32):
            assert value.dtype == jnp.float32 and value.shape == ()
        assert float(python_int) == float(int32)
        assert abs(float(int32) - eager[i]) <= tolerance


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
@pytest.mark.parametrize("warmup, stable", [(25, 100), (0, 100), (25, 0)])
def test_wsd_phases(shape, warmup, stable, jit):
    peak, init, end, decay = 0.1, 1e-3, 1e-5, 40
    schedule = adamx.warmup_stable_decay_schedule(
        peak, warmup, stable, decay, init_value=init, end_value=end, decay_shape=shape
    )
    values = evaluate(
        jax.jit(schedule) if jit else schedule, np.arange(warmup + stable + decay + 50)
    )
    rising, plateau = values[: warmup + 1], values[warmup : warmup + stable + 1]
    falling, after = values[warmup + stable : warmup + stable + decay + 1], values[-50:]
    if warmup:
        assert rising[0] == np.float32(init)
        assert np.all(np.diff(rising) > 0)
    assert values[warmup] == np.float32(peak)  # the peak exactly at warmup_steps
    assert np.all(plateau == np.float32(peak))  # constant through the plateau
    assert np.all(np.diff(falling) < 0)  # strictly decreasing through the decay
    assert falling[-1] == np.float32(end) and np.all(after == np.float32(end))  # ends at end_value
    half = {"linear": 0.5, "cosine": 0.5, "sqrt": math.sqrt(0.5)}[shape]
    midpoint = values[warmup + stable + decay // 2]
    assert abs(midpoint - (peak - (peak - end) * half)) <= 2 * EPS32 * peak


def test_traced_values_work_under_jit():
    """Values (not step counts) may be traced, as ``inject_hyperparams`` passes them."""

    def at_50(peak, end):
        return (
            adamx.warmup_cosine_decay_schedule(0.0, peak, 10, 100, end)(50),
            adamx.warmup_stable_decay_schedule(peak, 10, 20, 40, end_value=end)(50),
            adamx.cosine_onecycle_schedule(100, peak)(50),
        )

    traced = jax.jit(at_50)(jnp.float32(0.1), jnp.float32(1e-3))
    for a, b in zip(traced, at_50(0.1, 1e-3), strict=True):
        assert abs(float(a) - float(b)) <= 2 * EPS32 * 0.1


def test_float32_under_x64():
    with x64():
        for _, build, _, _ in CASES:
            assert build(adamx)(jnp.asarray(7, jnp.int32)).dtype == jnp.float32


BAD_ARGUMENTS = [
    (lambda: adamx.constant_schedule(math.nan), ValueError, "`value` must be a finite number"),
    (lambda: adamx.constant_schedule(True), TypeError, "got the bool True"),
    (lambda: adamx.linear_schedule(1.0, 0.0, -1), ValueError, "`transition_steps` must be a n"),
    (lambda: adamx.linear_schedule(1.0, 0.0, 10, -5), ValueError, "`transition_begin` must"),
    (lambda: adamx.linear_schedule(1.0, 0.0, 10.5), ValueError, "whole number of steps"),
    (lambda: adamx.polynomial_schedule(1.0, 0.0, 0, 10), ValueError, "`power` must be a fin"),
    (lambda: adamx.exponential_decay(1.0, 0, 0.5), ValueError, "`transition_steps` must.*> 0"),
    (lambda: adamx.exponential_decay(1.0, 10, 0.0), ValueError, "`decay_rate` must.*> 0"),
    (lambda: adamx.cosine_decay_schedule(1.0, 0), ValueError, "`decay_steps` must.*> 0"),
    (
        lambda: adamx.warmup_cosine_decay_schedule(0.0, 1.0, 100, 100),
        ValueError,
        "`decay_steps` must exceed `warmup_steps`.*warm-up included",
    ),
    (
        lambda: adamx.warmup_constant_schedule(0.0, 1.0, 0),
        ValueError,
        "for no warm-up use `constant_schedule",
    ),
    (
        lambda: adamx.piecewise_constant_schedule(1.0, {10: -0.1}),
        ValueError,
        "`scale` must be a finite number >= 0",
    ),
    (
        lambda: adamx.piecewise_constant_schedule(1.0, {-10: 0.1}),
        ValueError,
        "`boundary` must be a number of steps >= 0",
    ),
    (lambda: adamx.cosine_onecycle_schedule(0, 1.0), ValueError, "`transition_steps` must"),
    (lambda: adamx.cosine_onecycle_schedule(10, 1.0, 1.5), ValueError, "`pct_start`.*0, 1"),
    (
        lambda: adamx.cosine_onecycle_schedule(10, 1.0, div_factor=0.0),
        ValueError,
        "`div_factor` must be a finite number > 0",
    ),
    (lambda: adamx.sgdr_schedule([]), ValueError, "at least one cycle"),
    (
        lambda: adamx.sgdr_schedule([SGDR_CYCLES[0], dict(SGDR_CYCLES[1], decay_steps=0)]),
        ValueError,
        "Cycle 1 of `sgdr_schedule`: `decay_steps` must exceed",
    ),
    (
        lambda: adamx.join_schedules([adamx.constant_schedule(1.0)], [10]),
        ValueError,
        "one boundary fewer than schedules",
    ),
    (
        lambda: adamx.join_schedules([adamx.constant_schedule(1.0)] * 3, [20, 10]),
        ValueError,
        "`boundaries` must be non-decreasing",
    ),
    (lambda: adamx.join_schedules([1.0], []), TypeError, "non-empty sequence of schedules"),
    (
        lambda: adamx.warmup_stable_decay_schedule(1.0, 10, 10, 0),
        ValueError,
        "`decay_steps` must be > 0.*use `warmup_constant_schedule`",
    ),
    (
        lambda: adamx.warmup_stable_decay_schedule(1.0, 10, -1, 10),
        ValueError,
        "`stable_steps` must be a number of steps >= 0, got -1",
    ),
    (
        lambda: adamx.warmup_stable_decay_schedule(1.0, 10, 10, 10, decay_shape="exp"),
        ValueError,
        r"`decay_shape` must be one of \['cosine', 'linear', 'sqrt'\], got 'exp'",
    ),
    (
        lambda: jax.jit(lambda n: adamx.linear_schedule(0.0, 1.0, n)(0))(5),
        TypeError,
        "`transition_steps` must be a concrete whole number",
    ),
]


@pytest.mark.parametrize("make, error, message", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_with_a_fix(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_schedules_drive_adamw_like_optax():
    """lr and weight decay both scheduled: adamx.adamw follows optax.adamw's trajectory.

    Run in float64, where the two Adams agree to 3e-15 given the same schedules, so what is left is
    the schedules' rounding: adamx's return float32, optax's float64 under x64 (about one float32
    ulp of the learning rate apart). Measured: 1.7e-7 (`max_relative_difference`).
    """

    def make(lib, adamw):
        lr = lib.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 60, end_value=1e-4)
        wd = lib.exponential_decay(0.1, 20, 0.5, transition_begin=10)
        return adamw(learning_rate=lr, weight_decay=wd)

    grads = [random_tree(seed, np.float64) for seed in range(1, 61)]

    def run(tx, apply):
        params = jax.tree.map(jnp.asarray, random_tree(0, np.float64))
        state = tx.init(params)
        step = jax.jit(lambda p, s, g: (lambda u, s: (apply(p, u), s))(*tx.update(g, s, p)))
        for g in grads:
            params, state = step(params, state, jax.tree.map(jnp.asarray, g))
        return params, state

    with x64():
        ours, state = run(make(adamx, adamx.adamw), adamx.apply_updates)
        with relaxed():
            theirs, _ = run(make(optax, optax.adamw), optax.apply_updates)
    assert int(state[-1].count) == 60 and int(state[-2].count) == 60  # both schedules stepped
    difference = max_relative_difference(ours, theirs)
    assert difference <= 1e-6, difference
