"""AdaDelta against torch.optim 2.13 and optax 0.2.8, step for step.

On the trajectory of tests/parity/sgd_rmsprop_adagrad_adadelta.py; the documented
differences and the first step are in docs/optimizers/rmsprop_adagrad_adadelta.md (AdaDelta).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import adadelta, scale_by_adadelta
from tests.helpers import cases_of, relaxed, x64
from tests.parity.sgd_rmsprop_adagrad_adadelta import CASES as SHARED_CASES
from tests.parity.sgd_rmsprop_adagrad_adadelta import WITH_OPTAX as SHARED_WITH_OPTAX
from tests.parity.sgd_rmsprop_adagrad_adadelta import (
    check_concrete_hyperparameters_are_validated,
    check_float32_against_optax,
    check_float64_parity_with_torch_and_optax,
)

CASES = cases_of(SHARED_CASES, "adadelta")
WITH_OPTAX = cases_of(SHARED_WITH_OPTAX, "adadelta")

IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name, lr, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity_with_torch_and_optax(name, lr, make_adamx, make_optax, make_torch):
    check_float64_parity_with_torch_and_optax(name, lr, make_adamx, make_optax, make_torch)


@pytest.mark.parametrize(
    "name, lr, make_adamx, make_optax, make_torch", WITH_OPTAX, ids=[c[0] for c in WITH_OPTAX]
)
def test_float32_against_optax(name, lr, make_adamx, make_optax, make_torch):
    check_float32_against_optax(name, lr, make_adamx, make_optax, make_torch)


def test_adadelta_none_learning_rate_descends_where_optax_ascends():
    params = {"x": jnp.array([3.0, -2.0])}
    loss = lambda p: jnp.sum(p["x"] ** 2)  # noqa: E731
    tx = adadelta()
    state = tx.init(params)
    for _ in range(20):
        params, state = adamx.step(tx, jax.grad(loss)(params), state, params)
    assert float(loss(params)) < 13.0
    with relaxed():
        ref = {"x": jnp.array([3.0, -2.0])}
        otx = optax.adadelta()
        ostate = otx.init(ref)
        for _ in range(20):
            u, ostate = otx.update(jax.grad(loss)(ref), ostate, ref)
            ref = optax.apply_updates(ref, u)
    assert float(loss(ref)) > 13.0  # optax 0.2.8: learning_rate=None is identity(), no sign flip.


def test_adadelta_first_step_size():
    """|Delta_1| = sqrt(eps / (1 - rho)) for |g| >> eps (docs/optimizers/rmsprop_adagrad_adadelta.md,
    AdaDelta)."""
    with x64():
        g = jnp.array([3.0, -0.5])
        tx = scale_by_adadelta(0.9, 1e-6)
        u, _ = tx.update(g, tx.init(g))
        expected = math.sqrt(1e-6) / np.sqrt(0.1 * np.asarray(g) ** 2 + 1e-6) * np.asarray(g)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-14)
        assert abs(abs(float(u[0])) - math.sqrt(1e-6 / 0.1)) < 1e-8


def test_bfloat16_updates_come_back_in_bfloat16():
    p = {"w": jnp.ones(3, jnp.bfloat16)}
    tx = adadelta(1.0)
    state = tx.init(p)
    u, new_state = tx.update(p, state, p)
    assert u["w"].dtype == jnp.bfloat16
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert a.dtype == b.dtype


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: adadelta(rho=1.5), "rho"),
        (lambda: adadelta(eps=-1e-6), "eps"),
    ],
)
def test_concrete_hyperparameters_are_validated(build, message):
    check_concrete_hyperparameters_are_validated(build, message)
