"""The dtype policy (docs/design.md, section 5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx


def dtypes_of(tree):
    return [leaf.dtype for leaf in jax.tree.leaves(tree)]


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_zero_gradient_in_low_precision_gives_a_zero_update_not_nan(dtype):
    """optax #1754: eps = 1e-8 underflows in float16; adamx computes in float32."""
    params = jnp.ones(4, dtype)
    opt = adamx.adam(1e-3)
    updates, state = opt.update(jnp.zeros(4, dtype), opt.init(params), params)
    assert updates.dtype == dtype
    np.testing.assert_array_equal(np.asarray(updates, np.float32), np.zeros(4))


def test_eps_zero_and_zero_gradient_is_zero_not_nan():
    opt = adamx.adam(1e-3, eps=0.0)
    updates, _ = opt.update(jnp.zeros(3), opt.init(jnp.zeros(3)))
    np.testing.assert_array_equal(np.asarray(updates), np.zeros(3))


def test_bf16_params_with_f32_grads_keep_every_state_dtype():
    """optax: mu silently becomes float32 while nu stays bfloat16, which breaks a scan carry."""
    params = {"w": jnp.ones((4, 3), jnp.bfloat16)}
    opt = adamx.adamw(1e-3)
    state = opt.init(params)
    before = dtypes_of(state)

    def body(carry, g):
        params, state = carry
        return adamx.step(opt, {"w": g}, state, params), None

    grads = jnp.ones((5, 4, 3), jnp.float32)
    (params_after, state_after), _ = jax.lax.scan(body, (params, state), grads)
    assert dtypes_of(state_after) == before
    assert params_after["w"].dtype == jnp.bfloat16


def test_mu_and_nu_dtypes():
    params = jnp.ones(3, jnp.bfloat16)
    opt = adamx.adam(1e-3, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    (ema_state, _, second), _ = opt.init(params)
    assert ema_state.ema.dtype == jnp.float32
    assert second.estimator[0].ema.dtype == jnp.float32
    default = adamx.adam(1e-3).init(params)
    assert {d for d in dtypes_of(default) if d != jnp.int32} == {jnp.dtype(jnp.bfloat16)}


def test_hyperparameters_are_not_rounded_to_bfloat16():
    """optax #1414: b2 = 0.999 rounds to 1.0 in bfloat16, so v would never be corrected."""
    params = jnp.ones(1, jnp.bfloat16)
    opt = adamx.adam(1.0, eps=0.0, nu_dtype=jnp.float32, mu_dtype=jnp.float32)
    updates, _ = opt.update(jnp.full(1, 0.5, jnp.bfloat16), opt.init(params), params)
    # First step with eps = 0 is -lr * sign(g); a bias correction of 1 - 1.0**1 = 0 would give inf.
    np.testing.assert_allclose(np.asarray(updates, np.float32), [-1.0], rtol=1e-2)


def test_complex_second_moment_is_stored_real():
    params = jnp.ones(3, jnp.complex64)
    opt = adamx.adam(1e-3)
    (ema_state, _, second), _ = opt.init(params)
    assert ema_state.ema.dtype == jnp.complex64
    assert second.estimator[0].ema.dtype == jnp.float32
    g = jnp.array([1 + 1j, 2j, -3.0], jnp.complex64)
    updates, state = opt.update(g, opt.init(params), params)
    assert updates.dtype == jnp.complex64
    # first step: g / |g| (eps aside), scaled by -lr
    np.testing.assert_allclose(
        np.asarray(updates), -1e-3 * np.asarray(g) / np.abs(np.asarray(g)), rtol=1e-5
    )


def test_float64_math_stays_float64():
    from tests.helpers import x64

    with x64():
        params = jnp.ones(2, jnp.float64)
        opt = adamx.adamw(1e-3)
        updates, state = opt.update(jnp.ones(2, jnp.float64), opt.init(params), params)
        assert updates.dtype == jnp.float64
        assert {d for d in dtypes_of(state) if d != jnp.int32} == {jnp.dtype(jnp.float64)}


def test_counts_are_int32_and_saturate():
    step = adamx.bias_correction(0.9)
    _, state = step.update(
        jnp.ones(1), adamx.BiasCorrectionState(jnp.asarray(2**31 - 1, jnp.int32))
    )
    assert state.count.dtype == jnp.int32 and int(state.count) == 2**31 - 1


def test_traced_eps_zero_and_zero_gradient_is_zero_not_nan():
    """An eps that arrives traced (jit argument, inject_hyperparams) keeps the zero guard."""

    @jax.jit
    def first_update(eps):
        opt = adamx.adam(1e-3, eps=eps)
        return opt.update(jnp.zeros(3), opt.init(jnp.zeros(3)))[0]

    np.testing.assert_array_equal(np.asarray(first_update(jnp.float32(0.0))), np.zeros(3))
