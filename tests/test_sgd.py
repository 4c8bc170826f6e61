"""SGD (with momentum, Nesterov, torch's dampening) against torch.optim 2.13 and optax 0.2.8.

Step for step on the trajectory of tests/parity/sgd_rmsprop_adagrad_adadelta.py; the
documented differences are in docs/optimizers/sgd.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import adamx
from adamx import sgd
from tests.helpers import cases_of, x64
from tests.parity.sgd_rmsprop_adagrad_adadelta import CASES as SHARED_CASES
from tests.parity.sgd_rmsprop_adagrad_adadelta import WITH_OPTAX as SHARED_WITH_OPTAX
from tests.parity.sgd_rmsprop_adagrad_adadelta import (
    check_concrete_hyperparameters_are_validated,
    check_float32_against_optax,
    check_float64_parity_with_torch_and_optax,
)

CASES = cases_of(SHARED_CASES, "sgd")
WITH_OPTAX = cases_of(SHARED_WITH_OPTAX, "sgd")

IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name, lr, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity_with_torch_and_optax(name, lr, make_adamx, make_optax, make_torch):
    check_float64_parity_with_torch_and_optax(name, lr, make_adamx, make_optax, make_torch)


@pytest.mark.parametrize(
    "name, lr, make_adamx, make_optax, make_torch", WITH_OPTAX, ids=[c[0] for c in WITH_OPTAX]
)
def test_float32_against_optax(name, lr, make_adamx, make_optax, make_torch):
    check_float32_against_optax(name, lr, make_adamx, make_optax, make_torch)


def test_sgd_momentum_with_dampening_zero_equals_torch_first_buffer():
    """torch starts the buffer at g_1 (no dampening on step 1); a zero-initialised trace gives
    b_1 = 0 * mu + g_1, the same, so one step of each agrees exactly."""
    g = np.array([0.5, -2.0])
    t = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([t], lr=0.1, momentum=0.9)
    t.grad = torch.tensor(g)
    opt.step()
    with x64():
        tx = sgd(0.1, momentum=0.9)
        p = jnp.ones(2)
        u, _ = tx.update(jnp.asarray(g), tx.init(p), p)
        np.testing.assert_array_equal(np.asarray(adamx.apply_updates(p, u)), t.detach().numpy())


def test_sgd_dampening_skips_the_first_step_as_torch_does():
    """torch starts the buffer at g_1 (undamped); a zero-started damped trace would give (1-tau)
    g_1. The difference is what the option exists for."""
    g = jnp.array([1.0, -2.0])
    opt = sgd(1.0, momentum=0.9, dampening=0.5)
    state = opt.init(g)
    first, state = opt.update(g, state)
    second, state = opt.update(g, state)
    np.testing.assert_allclose(np.asarray(first), -np.asarray(g))  # b_1 = g_1
    np.testing.assert_allclose(np.asarray(second), -(0.9 + 0.5) * np.asarray(g))  # 0.9 b_1 + 0.5 g


def test_sgd_dampening_is_refused_with_nesterov_or_without_momentum():
    with pytest.raises(ValueError, match="dampening=0"):
        sgd(0.1, momentum=0.9, nesterov=True, dampening=0.5)
    with pytest.raises(ValueError, match="needs momentum"):
        sgd(0.1, dampening=0.5)


def test_bfloat16_updates_come_back_in_bfloat16():
    p = {"w": jnp.ones(3, jnp.bfloat16)}
    tx = sgd(0.1, 0.9)
    state = tx.init(p)
    u, new_state = tx.update(p, state, p)
    assert u["w"].dtype == jnp.bfloat16
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert a.dtype == b.dtype


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: sgd(0.1, nesterov=True), "needs momentum"),
        (lambda: sgd(0.1, momentum=1.0), "momentum"),
        (lambda: sgd(-0.1), "learning_rate"),
    ],
)
def test_concrete_hyperparameters_are_validated(build, message):
    check_concrete_hyperparameters_are_validated(build, message)
