"""Wrappers: `MultiSteps`, `apply_if_finite`, `lookahead`, `ema_params`; against optax 0.2.8."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import (
    ApplyIfFiniteState,
    EmaParamsState,
    LookaheadParams,
    MultiSteps,
    apply_if_finite,
    averaged_params,
    ema_params,
    lookahead,
    multi_steps,
)
from tests.helpers import max_relative_difference, random_tree, relaxed, x64


def _grads(steps, dtype=np.float32, seed=5):
    rng = np.random.default_rng(seed)
    tree = random_tree(0, dtype)
    return [
        jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(np.shape(x)), dtype), tree)
        for _ in range(steps)
    ]


def _params(dtype=np.float32):
    return jax.tree.map(jnp.asarray, random_tree(0, dtype))


def _trajectory(tx, params, grads, apply=adamx.apply_updates):
    state = tx.init(params)
    step = jax.jit(lambda p, s, g: (lambda u, s: (apply(p, u), s, u))(*tx.update(g, s, p)))
    outs = []
    for g in grads:
        params, state, updates = step(params, state, g)
        outs.append(updates)
    return params, state, outs


# ---- MultiSteps ---------------------------------------------------------------------------------


def test_multi_steps_equals_one_step_on_the_mean_gradient():
    k, big_steps = 4, 3
    with x64():
        params = _params(np.float64)
        micro = _grads(k * big_steps, np.float64)
        means = [
            jax.tree.map(lambda *g: sum(g) / k, *micro[i * k : (i + 1) * k])
            for i in range(big_steps)
        ]
        ref, _, _ = _trajectory(adamx.adamw(0.1, weight_decay=0.1), params, means)
        opt = MultiSteps(adamx.adamw(0.1, weight_decay=0.1), k)
        ours, state, outs = _trajectory(opt, params, micro)
    assert max_relative_difference(ours, ref) <= 1e-12
    emitted = [
        i for i, u in enumerate(outs) if any(np.any(np.asarray(x)) for x in jax.tree.leaves(u))
    ]
    assert emitted == [k - 1, 2 * k - 1, 3 * k - 1]
    assert bool(opt.has_updated(state)) and int(state.gradient_step) == big_steps
    assert int(state.mini_step) == 0


def test_multi_steps_equals_optax_multi_steps():
    k = 3
    params, micro = _params(), _grads(4 * k)
    with relaxed():
        ref, ref_state, _ = _trajectory(
            optax.MultiSteps(optax.adam(1e-2), k), params, micro, optax.apply_updates
        )
        # The same inner optimizer under both wrappers: the wrappers agree to float32 rounding
        # (measured: 2 of 72 entries differ, by 1 ulp; XLA fuses the two programs differently).
        same, _, _ = _trajectory(MultiSteps(optax.adam(1e-2), k), params, micro)
    ours, state, _ = _trajectory(multi_steps(adamx.adam(1e-2), k), params, micro)
    assert max_relative_difference(same, ref) <= 1e-6
    assert max_relative_difference(ours, ref) <= 1e-5
    np.testing.assert_array_equal(
        [int(state.mini_step), int(state.gradient_step)],
        [int(ref_state.mini_step), int(ref_state.gradient_step)],
    )


def test_multi_steps_skips_the_inner_state_between_steps_and_validates_k():
    opt = MultiSteps(adamx.adam(0.1), 2)
    params = jnp.ones(3)
    state = opt.init(params)
    _, state1 = opt.update(jnp.ones(3), state, params)
    assert not bool(opt.has_updated(state1))
    for a, b in zip(
        jax.tree.leaves(state1.inner_opt_state), jax.tree.leaves(state.inner_opt_state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(state1.acc_grads), 1.0)
    with pytest.raises(ValueError, match="every_k_schedule"):
        MultiSteps(adamx.adam(0.1), 0)


def test_multi_steps_accepts_a_schedule_of_k():
    opt = MultiSteps(adamx.adam(0.1), lambda step: jnp.where(step < 1, 1, 3))
    params = jnp.ones(2)
    state = opt.init(params)
    flags = []
    for _ in range(7):
        _, state = opt.update(jnp.ones(2), state, params)
        flags.append(bool(opt.has_updated(state)))
    assert flags == [True, False, False, True, False, False, True]


# ---- apply_if_finite -----------------------------------------------------------------------------


def test_apply_if_finite_skips_a_nan_step_bit_identically():
    tx = apply_if_finite(adamx.adam(0.1), max_consecutive_errors=2)
    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    state = tx.init(params)
    good = {"a": jnp.array([0.1, -0.2]), "b": jnp.array(0.3)}
    step = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p))
    params, state = step(params, state, good)
    bad = {"a": jnp.array([jnp.nan, 1.0]), "b": jnp.array(0.3)}
    new_params, new_state = step(params, state, bad)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(
        jax.tree.leaves(new_state.inner_state), jax.tree.leaves(state.inner_state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.asarray(a).dtype == np.asarray(b).dtype
    assert isinstance(new_state, ApplyIfFiniteState)
    assert (int(new_state.notfinite_count), int(new_state.total_notfinite)) == (1, 1)
    assert not bool(new_state.last_finite)
    inf = {"a": jnp.array([1.0, 1.0]), "b": jnp.array(jnp.inf)}
    p2, s2 = step(new_params, new_state, inf)
    assert int(s2.notfinite_count) == 2
    # The third consecutive one exceeds max_consecutive_errors=2: applied anyway (optax's rule).
    p3, s3 = step(p2, s2, inf)
    assert int(s3.notfinite_count) == 3 and int(s3.total_notfinite) == 3
    assert int(s3.inner_state[0][1].count) == 2
    assert not np.isfinite(np.asarray(p3["b"]))
    # A finite step resets the consecutive count, not the total.
    _, s4 = step(params, s2, good)
    assert (int(s4.notfinite_count), int(s4.total_notfinite)) == (0, 2)


def test_apply_if_finite_equals_optax():
    grads = _grads(12)
    grads[3] = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads[3])
    grads[7] = jax.tree.map(lambda g: g * jnp.inf, grads[7])
    params = _params()
    ours, state, _ = _trajectory(apply_if_finite(adamx.adam(1e-2), 3), params, grads)
    with relaxed():
        ref, ref_state, _ = _trajectory(
            optax.apply_if_finite(optax.adam(1e-2), 3), params, grads, optax.apply_updates
        )
    assert max_relative_difference(ours, ref) <= 1e-5
    assert int(state.total_notfinite) == int(ref_state.total_notfinite) == 2
    assert int(state.inner_state[0][1].count) == int(ref_state.inner_state[0].count) == 10


# ---- lookahead -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_equals_optax(reset_state):
    grads = _grads(11)
    with x64():
        params = LookaheadParams.init_synced(_params(np.float64))
        g64 = [jax.tree.map(lambda x: x.astype(jnp.float64), g) for g in grads]
        tx = lookahead(adamx.adam(1e-2), 4, 0.5, reset_state=reset_state)
        state = tx.init(params)
        with relaxed():
            ref_tx = optax.lookahead(optax.adam(1e-2), 4, 0.5, reset_state=reset_state)
            ref_params = optax.LookaheadParams.init_synced(params.fast)
            ref_state = ref_tx.init(ref_params)
        ours = jax.jit(
            lambda p, s, g: (lambda u, s: (adamx.apply_updates(p, u), s))(*tx.update(g, s, p))
        )
        theirs = jax.jit(
            lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*ref_tx.update(g, s, p))
        )
        for g in g64:
            params, state = ours(params, state, g)
            with relaxed():
                ref_params, ref_state = theirs(ref_params, ref_state, g)
    assert max_relative_difference(params.fast, ref_params.fast) <= 1e-10
    assert max_relative_difference(params.slow, ref_params.slow) <= 1e-10
    assert int(state.steps_since_sync) == int(ref_state.steps_since_sync) == 3
    # After a sync (step 8), fast equals slow; 3 fast steps later they differ.
    assert max_relative_difference(params.fast, params.slow) > 1e-4


def test_lookahead_synchronises_as_the_paper_says():
    tx = lookahead(adamx.scale(-1.0), 2, 0.25)  # SGD with learning rate 1
    params = LookaheadParams.init_synced(jnp.array([0.0]))
    state = tx.init(params)
    for g in [1.0, 3.0]:  # theta: 0 -> -1 -> -4, then phi = 0 + 0.25 (-4 - 0) = -1, theta = phi
        updates, state = tx.update(jnp.array([g]), state, params)
        params = adamx.apply_updates(params, updates)
    assert float(params.slow[0]) == -1.0 and float(params.fast[0]) == -1.0
    with pytest.raises(ValueError, match="LookaheadParams"):
        tx.update(jnp.array([1.0]), state, jnp.array([0.0]))
    with pytest.raises(ValueError, match="sync_period"):
        lookahead(adamx.adam(0.1), 0, 0.5)


# ---- EMA of the parameters -----------------------------------------------------------------------


@pytest.mark.parametrize("debias", [True, False])
def test_ema_params_against_the_closed_form(debias):
    decay, steps = 0.9, 15
    grads = _grads(steps)
    params = _params()
    tx = adamx.chain(adamx.adam(1e-1), ema_params(decay, debias=debias))
    state = tx.init(params)
    history = [params]
    for g in grads:
        params, state = adamx.step(tx, g, state, params)
        history.append(params)
    average = averaged_params(state)
    t = np.arange(1, steps + 1)
    leaves = zip(jax.tree.leaves(average), *(jax.tree.leaves(p) for p in history), strict=True)
    for found, *path_leaves in leaves:
        thetas = np.stack([np.asarray(x, np.float64) for x in path_leaves])
        if debias:  # sum_i (1-b) b^(t-i) theta_i / (1 - b^t), i = 1..t
            w = (1 - decay) * decay ** (steps - t)
            expected = np.tensordot(w, thetas[1:], axes=1) / (1 - decay**steps)
        else:  # b^t theta_0 + sum_i (1-b) b^(t-i) theta_i
            w = (1 - decay) * decay ** (steps - t)
            expected = decay**steps * thetas[0] + np.tensordot(w, thetas[1:], axes=1)
        assert np.max(np.abs(np.asarray(found, np.float64) - expected)) <= 2e-6
    assert isinstance(state[1], EmaParamsState) and int(state[1].count) == steps


def test_ema_params_starts_at_the_params_and_needs_them():
    params = {"w": jnp.array([1.0, 2.0], jnp.bfloat16)}
    tx = ema_params(0.99)
    state = tx.init(params)
    assert state.ema["w"].dtype == jnp.float32
    np.testing.assert_array_equal(averaged_params(state, like=params)["w"], params["w"])
    assert averaged_params(state, like=params)["w"].dtype == jnp.bfloat16
    updates = {"w": jnp.array([0.5, 0.5], jnp.bfloat16)}
    out, state = tx.update(updates, state, params)
    assert out is updates
    np.testing.assert_array_equal(np.asarray(state.ema["w"]), [1.5, 2.5])  # first weight is 1
    with pytest.raises(ValueError, match="needs them"):
        tx.update(updates, state)
