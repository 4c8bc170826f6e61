"""Yogi against optax 0.2.8, step for step, and its additive second moment.

On the trajectory of tests/parity/radam_adabelief_yogi.py; the update is in
docs/optimizers/radam_adabelief_yogi.md (Yogi). torch has no Yogi.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from adamx import scale_by_yogi, yogi, yogi_moment
from tests.helpers import cases_of, check_validation, x64
from tests.parity.radam_adabelief_yogi import CASES as SHARED_CASES
from tests.parity.radam_adabelief_yogi import F32_CASES as SHARED_F32_CASES
from tests.parity.radam_adabelief_yogi import SCANNED as SHARED_SCANNED
from tests.parity.radam_adabelief_yogi import ZERO_SAFE as SHARED_ZERO_SAFE
from tests.parity.radam_adabelief_yogi import (
    check_dtypes_are_kept_in_a_scan,
    check_float32_against_optax,
    check_float64_parity,
    check_zero_gradients_give_finite_params,
)

CASES = cases_of(SHARED_CASES, "yogi")
F32_CASES = cases_of(SHARED_F32_CASES, "yogi")
SCANNED = cases_of(SHARED_SCANNED, "yogi")
ZERO_SAFE = cases_of(SHARED_ZERO_SAFE, "yogi")

IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity(name, make_adamx, make_optax, make_torch):
    check_float64_parity(name, make_adamx, make_optax, make_torch)


@pytest.mark.parametrize(
    "name, make_adamx, make_optax, make_torch", F32_CASES, ids=[c[0] for c in F32_CASES]
)
def test_float32_against_optax(name, make_adamx, make_optax, make_torch):
    check_float32_against_optax(name, make_adamx, make_optax, make_torch)


def test_yogi_second_moment_moves_additively_by_sign():
    """|v_t - v_{t-1}| = (1 - b2) g_t^2 exactly, in the direction of g_t^2 - v_{t-1} (Adam's EMA
    moves by (1 - b2) |g_t^2 - v_{t-1}| instead)."""
    b2 = 0.99
    rng = np.random.default_rng(6)
    with x64():
        opt = scale_by_yogi(b2=b2)
        state = opt.init(jnp.zeros(8))
        v_prev = np.full(8, 1e-6)
        for i in range(40):
            g = rng.standard_normal(8) * (10.0 if i % 10 == 0 else 1.0)
            _, state = opt.update(jnp.asarray(g), state)
            v = np.asarray(state[2].estimator[0].nu)
            # exact up to the rounding of v (|v| < 2, so atol 1e-14 is a few ulps)
            np.testing.assert_allclose(np.abs(v - v_prev), (1 - b2) * g * g, rtol=1e-12, atol=1e-14)
            assert np.all(np.sign(v - v_prev) == np.sign(g * g - v_prev))
            v_prev = v
    # the estimator alone, from its documented start
    block = yogi_moment(0.9, initial_value=4.0)
    x = jnp.array([1.0, 4.0, 9.0])
    out, _ = block.update(x, block.init(x))
    np.testing.assert_allclose(np.asarray(out), [4.0 - 0.1, 4.0, 4.0 + 0.9], rtol=1e-6)


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


@pytest.mark.parametrize("name, make", ZERO_SAFE, ids=[a[0] for a in ZERO_SAFE])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize(
    "build",
    [
        lambda: yogi(1e-2, initial_accumulator_value=-1.0),
        lambda: yogi(1e-2, b1=1.5),
    ],
)
def test_validation(build):
    check_validation(build)


def test_update_without_params_needs_no_decay_block():
    g = jnp.ones(3)
    opt = yogi(1e-2)
    updates, _ = opt.update(g, opt.init(g))
    assert bool(jnp.all(jnp.isfinite(updates)))
