"""Non-finite and extreme gradients, for every optimizer of the registry.

A NaN or Inf stays in its own leaf (every operation is per coordinate); `apply_if_finite` skips such
a step bit-identically and counts it; gradients at the float32 and bfloat16 extremes give finite
updates. Where float32 cannot represent the math (``|g|^2`` beyond ~3.4e38) the behaviour is pinned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from tests.helpers import OPTIMIZER_IDS, OPTIMIZERS, random_tree

PARAMS = jax.tree.map(jnp.asarray, random_tree(0))
POISONED = "['conv']"  # the leaf that receives the non-finite gradient
# Optimizers whose documented rule keeps a parameter finite under an Inf gradient.
FINITE_UNDER_INF = {
    # n_t = clip(g / max(sqrt(v), eps), (t-1)^(1/4)): an Inf gradient is a step of the clip value,
    # and v = Inf afterwards zeroes that coordinate's n (the official code does the same).
    "adopt",
    # the step is m / max(gamma h, eps) clipped to [-1, 1]: an Inf gradient is a step of +-lr,
    # and m = Inf afterwards keeps that coordinate at the clip (the authors' code does the same).
    "sophia",
}
# Optimizers with one statistic over the whole tree: a non-finite leaf reaches every leaf through
# it, by the algorithm's definition (wrap them in `apply_if_finite`).
CROSS_LEAF = {
    "prodigy": "d_t estimates one distance from sums over every leaf",
}


def gradients(seed: int):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), PARAMS)


def run(tx, grads_seq):
    params, state = PARAMS, tx.init(PARAMS)
    for grads in grads_seq:
        params, state = adamx.step(tx, grads, state, params)
    return params, state


def by_path(tree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_a_non_finite_leaf_never_touches_the_other_leaves(case, bad):
    """With NaN (or Inf) in one leaf at step 2, every other leaf's moments and parameters equal,
    bit for bit, those of the run whose leaf was finite; the poisoned leaf itself goes non-finite
    (the documented behaviour without `apply_if_finite`)."""
    tx = case.make(case.learning_rate)
    clean = [gradients(seed) for seed in range(3)]
    poisoned = list(clean)
    poisoned[1] = {**clean[1], "conv": clean[1]["conv"].at[0, 0, 0, 0].set(bad)}
    params_ref, state_ref = run(tx, clean)
    params, state = run(tx, poisoned)
    if bad == np.inf and case.name in FINITE_UNDER_INF:
        assert np.all(np.isfinite(params["conv"]))
        poisoned_state = [x for path, x in by_path(state).items() if POISONED in path]
        assert any(not np.all(np.isfinite(x)) for x in poisoned_state)  # v took the Inf
    else:
        assert not np.all(np.isfinite(params["conv"]))
    if case.name in CROSS_LEAF:
        assert not np.isfinite(float(state.d)), CROSS_LEAF[case.name]
        return
    others, reference = by_path((params, state)), by_path((params_ref, state_ref))
    for path, leaf in others.items():
        if POISONED not in path:
            np.testing.assert_array_equal(leaf, reference[path], err_msg=path)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_apply_if_finite_skips_and_counts_the_step_with_state_untouched(case):
    tx = adamx.apply_if_finite(case.make(case.learning_rate), max_consecutive_errors=3)
    step = jax.jit(lambda g, s, p: adamx.step(tx, g, s, p))
    params, state = step(gradients(0), tx.init(PARAMS), PARAMS)
    bad = {**gradients(1), "scale": jnp.asarray(np.nan, jnp.float32)}
    new_params, new_state = step(bad, state, params)
    assert int(new_state.total_notfinite) == 1 and int(new_state.notfinite_count) == 1
    for a, b in zip(
        jax.tree.leaves((new_params, new_state.inner_state)),
        jax.tree.leaves((params, state.inner_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, after = step(gradients(2), new_state, new_params)
    assert int(after.total_notfinite) == 1 and int(after.notfinite_count) == 0


# Gradient magnitudes at the edges of each format: the largest finite value that is a round
# number, the smallest normal, a subnormal, the smallest subnormal (1e-45 rounds to 1.4e-45).
EXTREMES = {
    "float32": (1e38, float(jnp.finfo(jnp.float32).tiny), 1e-40, 1e-45),
    "bfloat16": (1e38, float(jnp.finfo(jnp.bfloat16).tiny), 1e-40, 9.2e-41),
}


@pytest.mark.parametrize("dtype", list(EXTREMES))
@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_extreme_gradients_give_finite_updates(case, dtype):
    params = {"p": jnp.zeros(len(EXTREMES[dtype]) * 2, dtype)}
    values = np.array([s * x for x in EXTREMES[dtype] for s in (1, -1)], np.float32)
    grads = {"p": jnp.asarray(values).astype(dtype)}
    assert np.all(np.asarray(grads["p"], np.float32) != 0)  # each magnitude is representable
    tx = case.make(case.learning_rate)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        assert updates["p"].dtype == jnp.dtype(dtype)
        assert np.all(np.isfinite(np.asarray(updates["p"], np.float32))), case.name
        params = adamx.apply_updates(params, updates)
    assert np.all(np.isfinite(np.asarray(params["p"], np.float32)))


def test_past_the_float32_range_of_g_squared_the_update_is_zero_not_nan():
    """The pinned limitation (`adam`'s docstring): |g| = 1e38 overflows |g|^2 to Inf in float32,
    so v = Inf and the coordinate's update is 0 (torch and optax alike); AdaMax, which never
    squares, takes its sign-like step; the neighbouring coordinate is unaffected."""
    grads = jnp.array([1e38, 1.0], jnp.float32)
    params = jnp.zeros(2, jnp.float32)
    for tx in (adamx.adam(0.1), adamx.rmsprop(0.1, centered=True), adamx.adagrad(0.1)):
        updates, state = tx.update(grads, tx.init(params), params)
        assert float(updates[0]) == 0.0 and float(updates[1]) < 0
    updates, _ = adamx.adam(0.1).update(grads, adamx.adam(0.1).init(params), params)
    np.testing.assert_allclose(np.asarray(updates[1]), -0.1, rtol=1e-5)
    updates, _ = adamx.adamax(0.1).update(grads, adamx.adamax(0.1).init(params), params)
    np.testing.assert_allclose(np.asarray(updates), [-0.1, -0.1], rtol=1e-5)
