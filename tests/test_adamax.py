"""AdaMax and AdaMaxW against torch.optim 2.13 and optax 0.2.8, and the paper's facts.

On the trajectory of tests/parity/amsgrad_adamax_nadam.py; the step-size bound is the one
in docs/optimizers/amsgrad_adamax.md (AdaMax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import adamax, scale_by_adamax
from tests.helpers import (
    cases_of,
    check_dtypes_are_kept_in_a_scan,
    max_relative_difference,
    relaxed,
    x64,
)
from tests.parity.amsgrad_adamax_nadam import ALL as SHARED_ALL
from tests.parity.amsgrad_adamax_nadam import CASES as SHARED_CASES
from tests.parity.amsgrad_adamax_nadam import (
    GRADS,
    PARAMS,
    check_float32_against_optax,
    check_float64_parity,
    check_validation,
)

CASES = cases_of(SHARED_CASES, "adamax", "adamaxw")
ALL = cases_of(SHARED_ALL, "adamax", "adamaxw")

IDS = [case[0] for case in CASES]


F32_CASES = [case for case in CASES if case[2] is not None and "l2" not in case[0]]


@pytest.mark.parametrize("name, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity(name, make_adamx, make_optax, make_torch):
    check_float64_parity(name, make_adamx, make_optax, make_torch)


@pytest.mark.parametrize(
    "name, make_adamx, make_optax, make_torch", F32_CASES, ids=[c[0] for c in F32_CASES]
)
def test_float32_against_optax(name, make_adamx, make_optax, make_torch):
    check_float32_against_optax(name, make_adamx, make_optax, make_torch)


def adamax_bound(t, b1, b2):
    r = b1 / b2
    return (1 - b1) * (1 - r**t) / ((1 - b1**t) * (1 - r))


@pytest.mark.parametrize("b2", [0.99, 0.999])
def test_adamax_exact_bound_is_attained_by_decaying_gradients(b2):
    b1, steps = 0.9, 300
    with x64():
        opt = adamax(1.0, b1=b1, b2=b2, eps=0.0)
        g = jnp.array([2.0, -0.3])
        state = opt.init(g)
        for t in range(1, steps + 1):
            updates, state = opt.update(g * b2**t, state)
            bound = adamax_bound(t, b1, b2)
            np.testing.assert_allclose(np.abs(np.asarray(updates)), bound, rtol=1e-12)
    limit = (1 - b1) / (1 - b1 / b2)
    assert bound == pytest.approx(limit, rel=1e-6)
    assert limit > 1.009  # the paper's |step| <= lr does not hold for b2 < 1


def test_adamax_bound_holds_on_random_gradients():
    b1, b2 = 0.9, 0.99
    rng = np.random.default_rng(3)
    with x64():
        opt = adamax(1.0, b1=b1, b2=b2, eps=0.0)
        state = opt.init(jnp.zeros(50))
        for t in range(1, 201):
            g = jnp.asarray(rng.standard_normal(50) * rng.lognormal(0, 2))
            updates, state = opt.update(g, state)
            assert float(jnp.max(jnp.abs(updates))) <= adamax_bound(t, b1, b2) * (1 + 1e-12)


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


def test_state_layout_matches_optax_adamax():
    """optax's ScaleByAdamState(count, mu, nu) for adamax maps onto (Ema, BiasCorrection, InfNorm)."""
    with x64():
        params = jax.tree.map(jnp.asarray, PARAMS)
        with relaxed():
            ref = optax.scale_by_adamax()
            s_ref = ref.init(params)
            for g in GRADS[:5]:
                _, s_ref = ref.update(g, s_ref)
        ours = scale_by_adamax()
        s = ours.init(params)
        for g in GRADS[:5]:
            _, s = ours.update(g, s)
        assert max_relative_difference(s[0].ema, s_ref.mu) <= 1e-14
        assert max_relative_difference(s[2].norm, s_ref.nu) <= 1e-14
        assert int(s[1].count) == int(s_ref.count)


def test_updates_are_invariant_to_diagonal_rescaling():
    rng = np.random.default_rng(4)
    with x64():
        scales = jnp.asarray(10.0 ** rng.uniform(-3, 3, 20))
        opt = adamax(1e-2, eps=0.0)
        state, state_scaled = opt.init(jnp.zeros(20)), opt.init(jnp.zeros(20))
        for i in range(50):
            g = jnp.asarray(rng.standard_normal(20) * (10.0 if i % 10 == 0 else 1.0))
            u, state = opt.update(g, state)
            u_scaled, state_scaled = opt.update(scales * g, state_scaled)
            np.testing.assert_allclose(np.asarray(u_scaled), np.asarray(u), rtol=1e-12, atol=0)


def test_zero_gradient_with_eps_zero_gives_zero_not_nan():
    opt = adamax(0.1, eps=0.0)
    g = jnp.zeros(3)
    updates, _ = opt.update(g, opt.init(g))
    assert np.all(np.asarray(updates) == 0)


@pytest.mark.parametrize(
    "build, error",
    [
        (lambda: adamax(1e-2, eps=-1.0), ValueError),
        (lambda: adamax(-1.0), ValueError),
    ],
)
def test_validation(build, error):
    check_validation(build, error)
