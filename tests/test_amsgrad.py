"""AMSGrad against torch.optim 2.13 (``Adam(amsgrad=True)``) and optax 0.2.8, step for step.

On the trajectory of tests/parity/amsgrad_adamax_nadam.py; which maximum each library
keeps is in docs/optimizers/amsgrad_adamax.md (AMSGrad).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from adamx import amsgrad, apply_updates
from tests.helpers import (
    cases_of,
    check_dtypes_are_kept_in_a_scan,
    jax_cosine,
    max_relative_difference,
    relaxed,
    x64,
)
from tests.parity.amsgrad_adamax_nadam import ALL as SHARED_ALL
from tests.parity.amsgrad_adamax_nadam import CASES as SHARED_CASES
from tests.parity.amsgrad_adamax_nadam import (
    LR,
    T,
    check_float32_against_optax,
    check_float64_parity,
    check_validation,
    run_jax,
    run_torch,
)

CASES = cases_of(SHARED_CASES, "amsgrad")
ALL = cases_of(SHARED_ALL, "amsgrad")

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


def test_optax_and_torch_amsgrad_differ_and_each_option_matches_its_reference():
    with x64():
        corrected = run_jax(amsgrad(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
        raw = run_jax(
            amsgrad(jax_cosine(LR, jnp.float64), max_of="raw"), apply_updates, jnp.float64
        )
        with relaxed():
            ref_optax = run_jax(
                optax.amsgrad(jax_cosine(LR, jnp.float64)), optax.apply_updates, jnp.float64
            )
    ref_torch = run_torch(lambda ps: T.Adam(ps, lr=LR, amsgrad=True, foreach=False), torch.float64)
    gap = max_relative_difference(ref_optax, ref_torch)
    print(f"optax vs torch AMSGrad on the spiky sequence: {gap:.2e}")
    assert gap > 1e-6
    assert max_relative_difference(corrected, ref_optax) <= 1e-10
    assert max_relative_difference(raw, ref_torch) <= 1e-10
    assert max_relative_difference(corrected, raw) > 1e-6


@pytest.mark.parametrize(
    "make",
    [
        lambda: amsgrad(1e-2, eps=0.0),
        lambda: amsgrad(1e-2, eps=0.0, max_of="raw"),
    ],
    ids=["amsgrad", "amsgrad_raw"],
)
def test_updates_are_invariant_to_diagonal_rescaling(make):
    rng = np.random.default_rng(4)
    with x64():
        scales = jnp.asarray(10.0 ** rng.uniform(-3, 3, 20))
        opt = make()
        state, state_scaled = opt.init(jnp.zeros(20)), opt.init(jnp.zeros(20))
        for i in range(50):
            g = jnp.asarray(rng.standard_normal(20) * (10.0 if i % 10 == 0 else 1.0))
            u, state = opt.update(g, state)
            u_scaled, state_scaled = opt.update(scales * g, state_scaled)
            np.testing.assert_allclose(np.asarray(u_scaled), np.asarray(u), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


def test_zero_gradient_with_eps_zero_gives_zero_not_nan():
    for opt in (amsgrad(0.1, eps=0.0), amsgrad(0.1, eps=0.0, max_of="raw")):
        g = jnp.zeros(3)
        updates, _ = opt.update(g, opt.init(g))
        assert np.all(np.asarray(updates) == 0)


@pytest.mark.parametrize(
    "build, error",
    [
        (lambda: amsgrad(1e-2, max_of="max"), ValueError),
        (lambda: amsgrad(1e-2, b2=1.0), ValueError),
    ],
)
def test_validation(build, error):
    check_validation(build, error)
