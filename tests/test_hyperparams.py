"""`inject_hyperparams` and the state helpers (`get_state`, `map_state`, `get/set_hyperparam`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import (
    InjectHyperparamsState,
    get_hyperparam,
    get_state,
    inject_hyperparams,
    map_state,
    set_hyperparam,
)
from tests.helpers import max_relative_difference, random_tree, relaxed, x64

STEPS = 20


def _grads(dtype=np.float32, steps=STEPS):
    rng = np.random.default_rng(3)
    tree = random_tree(0, dtype)
    return [
        jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(np.shape(x)), dtype), tree)
        for _ in range(steps)
    ]


def _run(tx, params, grads):
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p))
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def _warmup(count):
    return 1e-2 * jnp.minimum(1.0, (count.astype(jnp.float32) + 1) / 5)


def test_equals_adamw_step_for_step_in_float64():
    with x64():
        params = jax.tree.map(jnp.asarray, random_tree(0, np.float64))
        grads = _grads(np.float64)
        ref, _ = _run(adamx.adamw(1e-2, b2=0.99, weight_decay=0.1), params, grads)
        injected = inject_hyperparams(adamx.adamw, hyperparam_dtype=jnp.float64)
        ours, state = _run(injected(1e-2, b2=0.99, weight_decay=0.1), params, grads)
    assert max_relative_difference(ours, ref) <= 1e-12
    assert int(state.count) == STEPS


def test_equals_adamw_with_a_schedule_in_float32():
    """Float32 hyperparameters differ from Python floats by one rounding: agree to ~1e-5."""
    params = jax.tree.map(jnp.asarray, random_tree(0))
    grads = _grads()
    ref, _ = _run(adamx.adamw(_warmup, weight_decay=0.1), params, grads)
    ours, state = _run(inject_hyperparams(adamx.adamw)(_warmup, weight_decay=0.1), params, grads)
    error = max_relative_difference(ours, ref)
    print(f"inject_hyperparams(adamw) vs adamw, float32, {STEPS} steps: {error:.1e}")
    assert error <= 1e-5
    # The schedule's value for the last update (count STEPS - 1) is what the state shows.
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(1e-2)
    assert state.hyperparams["learning_rate"].dtype == jnp.float32


def test_bfloat16_params_keep_b2_exactly_in_float32():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    state = inject_hyperparams(adamx.adamw)(learning_rate=1e-3, b2=0.999).init(params)
    b2 = state.hyperparams["b2"]
    assert b2.dtype == jnp.float32 and float(b2) == float(np.float32(0.999))
    with relaxed():
        theirs = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, b2=0.999).init(params)
    # optax 0.2.8 takes the bfloat16 of the params: b2 rounds to 1.0 (optax #1414).
    assert theirs.hyperparams["b2"].dtype == jnp.bfloat16
    assert float(theirs.hyperparams["b2"]) == 1.0
    # And the bfloat16 step still moves: v is a true EMA (b2 < 1), the update is finite.
    tx = inject_hyperparams(adamx.adamw)(learning_rate=1e-3, b2=0.999)
    updates, _ = jax.jit(tx.update)({"w": jnp.full(4, 0.5, jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(updates["w"], np.float32)))


def test_changing_the_learning_rate_does_not_recompile():
    tx = inject_hyperparams(adamx.adam)(learning_rate=1e-2)
    params = jnp.array([1.0, -2.0, 3.0])
    traces = []

    @jax.jit
    def step(grads, state):
        traces.append(1)
        return tx.update(grads, state, params)

    grads = jnp.array([0.5, 0.25, -1.0])
    state = tx.init(params)
    before = state
    u1, _ = step(grads, state)
    state = set_hyperparam(before, "learning_rate", 3e-2)
    u2, _ = step(grads, state)
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(u2), 3 * np.asarray(u1), rtol=1e-6)
    assert float(get_hyperparam(state, "learning_rate")) == pytest.approx(3e-2)
    assert get_hyperparam(state, "learning_rate").dtype == jnp.float32


def test_get_and_set_find_hyperparameters_in_nested_states():
    inner = inject_hyperparams(adamx.adam)(learning_rate=0.1)
    tx = adamx.chain(adamx.identity(), inner)
    state = {"opt": tx.init(jnp.zeros(2))}
    assert float(get_hyperparam(state, "b1")) == pytest.approx(0.9)
    state = set_hyperparam(state, "b1", 0.5)
    assert float(state["opt"][1].hyperparams["b1"]) == 0.5
    with pytest.raises(KeyError, match=r"'b1', 'b2', 'eps', 'eps_root', 'learning_rate'"):
        get_hyperparam(state, "lr")
    with pytest.raises(KeyError, match="inject_hyperparams"):
        get_hyperparam(adamx.adam(0.1).init(jnp.zeros(2)), "learning_rate")
    with pytest.raises(ValueError, match="shape"):
        set_hyperparam(state, "b1", jnp.ones(2))


def test_ambiguous_names_need_where():
    group = inject_hyperparams(adamx.adam)(learning_rate=0.1)
    state = (group.init(jnp.zeros(2)), group.init(jnp.zeros(3)))
    with pytest.raises(ValueError, match=r"2 places.*\[0\]\.hyperparams.*\[1\]\.hyperparams"):
        get_hyperparam(state, "learning_rate")
    with pytest.raises(ValueError, match="where"):
        set_hyperparam(state, "learning_rate", 0.2)
    state = set_hyperparam(state, "learning_rate", 0.2, where=lambda p: p.startswith("[1]"))
    assert float(get_hyperparam(state, "learning_rate", where=lambda p: p.startswith("[0]"))) == (
        pytest.approx(0.1)
    )
    assert float(state[1].hyperparams["learning_rate"]) == pytest.approx(0.2)
    state = set_hyperparam(state, "learning_rate", 0.3, where=lambda p: True)
    assert [float(s.hyperparams["learning_rate"]) for s in state] == [pytest.approx(0.3)] * 2


def test_optax_inject_state_is_readable():
    with relaxed():
        state = optax.inject_hyperparams(optax.adam)(learning_rate=0.25).init(jnp.zeros(2))
    assert float(get_hyperparam(state, "learning_rate")) == 0.25


def test_get_state_and_map_state_reset_one_group():
    tx = adamx.adam(0.1)
    params = jnp.array([1.0, 2.0])
    state = (tx.init(params), tx.init(params))
    grads = jnp.array([0.3, -0.7])
    state = tuple(tx.update(grads, s, params)[1] for s in state)
    found = get_state(state, adamx.EmaState)
    assert list(found) == [
        "[0][0][0]",
        "[0][0][2].estimator[0]",
        "[1][0][0]",
        "[1][0][2].estimator[0]",
    ]
    counts = get_state(state, "count")
    assert len(counts) == 4 and all(int(c) == 1 for c in counts.values())

    reset = map_state(
        lambda s: jax.tree.map(jnp.zeros_like, s),
        state,
        adamx.EmaState,
        where=lambda path: path.startswith("[1]"),
    )
    reset = map_state(
        jnp.zeros_like, reset, "count", where=lambda path: path.startswith("[1]")
    )  # field mode
    assert jax.tree.structure(reset) == jax.tree.structure(state)
    np.testing.assert_array_equal(reset[0][0][0].ema, state[0][0][0].ema)
    assert not np.any(np.asarray(reset[1][0][0].ema))
    assert int(reset[1][0][1].count) == 0 and int(reset[0][0][1].count) == 1
    # A reset group continues exactly like a fresh optimizer.
    fresh, _ = tx.update(grads, tx.init(params), params)
    again, _ = tx.update(grads, reset[1], params)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(fresh))


def test_missing_pieces_list_what_exists():
    state = adamx.adam(0.1).init(jnp.zeros(2))
    with pytest.raises(KeyError, match="EmaState.*BiasCorrectionState"):
        get_state(state, adamx.TraceState)
    with pytest.raises(KeyError, match="'ema', 'count', 'estimator'"):
        get_state(state, "nu")
    with pytest.raises(KeyError, match="where"):
        map_state(lambda s: s, state, adamx.EmaState, where=lambda path: False)


def test_schedules_and_validation():
    with pytest.raises(ValueError, match="learning_rate"):
        inject_hyperparams(adamx.adam)(learning_rate=-1.0)
    with pytest.raises(ValueError, match="static_args"):
        inject_hyperparams(adamx.adam, static_args=("nope",))
    # A callable mask is not a schedule: listed in static_args it is passed through.
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    tx = inject_hyperparams(adamx.adamw, static_args="mask")(0.1, weight_decay=0.5, mask=mask)
    ref = adamx.adamw(0.1, weight_decay=0.5, mask=mask)
    grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    ours, _ = tx.update(grads, tx.init(params), params)
    theirs, _ = ref.update(grads, ref.init(params), params)
    assert max_relative_difference(ours, theirs) <= 1e-6
    assert set(tx.init(params).hyperparams) == {
        "learning_rate",
        "b1",
        "b2",
        "eps",
        "eps_root",
        "weight_decay",
    }
    # Without static_args the mask is taken for a schedule and fails with a hint at trace time.
    bad = inject_hyperparams(adamx.adamw)(0.1, mask=mask)
    with pytest.raises(ValueError, match=r"static_args=\('mask',\)"):
        bad.init(params)


def test_state_is_an_inject_state_and_works_under_eval_shape():
    tx = inject_hyperparams(adamx.adam)(learning_rate=0.1)
    shapes = jax.eval_shape(tx.init, jnp.zeros(3, jnp.bfloat16))
    assert isinstance(shapes, InjectHyperparamsState)
    assert shapes.hyperparams["learning_rate"].dtype == jnp.float32
    assert shapes.inner_state[0][0].ema.dtype == jnp.bfloat16
