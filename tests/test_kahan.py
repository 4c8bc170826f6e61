"""`kahan_summation`: bfloat16 parameters that keep moving under small updates.

Reference: the same optimizer on float32 parameters (adamx's own AdamW), and the exact sum of a
constant update sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx

RNG = np.random.default_rng(0)
TARGET = jnp.asarray(RNG.standard_normal(4096) * 4 + 10, jnp.float32)


def _loss(p):
    return jnp.mean((p["w"].astype(jnp.float32) - TARGET) ** 2)


def _trajectory(opt, dtype, steps=300):
    params = {"w": jnp.full(4096, 10.0, dtype)}
    state = opt.init(params)

    @jax.jit
    def one(p, s):
        return adamx.step(opt, jax.grad(_loss)(p), s, p)

    for _ in range(steps):
        params, state = one(params, state)
    return np.asarray(params["w"], np.float64)


def test_bfloat16_adamw_with_kahan_follows_the_float32_trajectory_and_plain_bfloat16_stalls():
    reference = _trajectory(adamx.adamw(1e-3), jnp.float32)
    plain = _trajectory(adamx.adamw(1e-3), jnp.bfloat16)
    kahan = _trajectory(adamx.chain(adamx.adamw(1e-3), adamx.kahan_summation()), jnp.bfloat16)
    ulp = 2.0**-4  # bfloat16's spacing on [8, 16)
    # Each step moves a weight by about 1e-3, under half the spacing: plain bfloat16 never moves.
    np.testing.assert_array_equal(plain, 10.0)
    assert np.mean(np.abs(reference - 10.0)) > 0.25
    # With the rounding error carried over, the weights stay within one spacing of float32's.
    assert np.max(np.abs(kahan - reference)) <= ulp


def test_a_constant_update_sums_exactly_up_to_the_last_rounding():
    params = {"w": jnp.full(3, 10.0, jnp.bfloat16), "b": jnp.zeros(2, jnp.bfloat16)}
    kahan = adamx.kahan_summation()
    state = kahan.init(params)
    update = {"w": jnp.full(3, 1e-3, jnp.bfloat16), "b": jnp.full(2, -1e-3, jnp.bfloat16)}
    for _ in range(200):
        step, state = kahan.update(update, state, params)
        assert step["w"].dtype == jnp.bfloat16
        params = adamx.apply_updates(params, step)
    exact = 200 * float(update["w"][0])  # bf16(1e-3) added 200 times
    owed = np.asarray(state.compensation["w"], np.float64)
    # The params minus what is still owed are the exact sum, up to the compensation's own
    # rounding (bfloat16, |c| <= 2**-5 here: at most 2**-14 per step).
    bound = 200 * 2.0**-14
    np.testing.assert_allclose(np.asarray(params["w"], np.float64) - owed, 10.0 + exact, atol=bound)
    assert np.all(np.asarray(params["w"]) > 10.1)  # without compensation they would stay at 10


def test_kahan_needs_params():
    kahan = adamx.kahan_summation()
    params = {"w": jnp.ones(2, jnp.bfloat16)}
    with pytest.raises(ValueError, match="needs the params"):
        kahan.update(params, kahan.init(params))
