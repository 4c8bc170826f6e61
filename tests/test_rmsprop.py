"""RMSprop against torch.optim 2.13 and optax 0.2.8, step for step.

On the trajectory of tests/parity/sgd_rmsprop_adagrad_adadelta.py; the documented
differences and first steps are in docs/optimizers/rmsprop_adagrad_adadelta.md (RMSprop).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import adamx
from adamx import rmsprop, scale_by_rms, scale_by_stddev
from tests.helpers import cases_of, max_relative_difference, x64
from tests.parity.sgd_rmsprop_adagrad_adadelta import CASES as SHARED_CASES
from tests.parity.sgd_rmsprop_adagrad_adadelta import (
    LR,
    check_concrete_hyperparameters_are_validated,
    check_float32_against_optax,
    check_float64_parity_with_torch_and_optax,
    float64_trajectory,
    run_jax,
    run_torch,
)
from tests.parity.sgd_rmsprop_adagrad_adadelta import WITH_OPTAX as SHARED_WITH_OPTAX

CASES = cases_of(SHARED_CASES, "rmsprop")
WITH_OPTAX = cases_of(SHARED_WITH_OPTAX, "rmsprop")

IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name, lr, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity_with_torch_and_optax(name, lr, make_adamx, make_optax, make_torch):
    check_float64_parity_with_torch_and_optax(name, lr, make_adamx, make_optax, make_torch)


@pytest.mark.parametrize(
    "name, lr, make_adamx, make_optax, make_torch", WITH_OPTAX, ids=[c[0] for c in WITH_OPTAX]
)
def test_float32_against_optax(name, lr, make_adamx, make_optax, make_torch):
    check_float32_against_optax(name, lr, make_adamx, make_optax, make_torch)


def test_rmsprop_eps_placement_is_what_separates_optax_from_torch():
    torch_ref = run_torch(lambda ps, lr: torch.optim.RMSprop(ps, lr=lr, eps=1e-3), LR)
    inside = float64_trajectory(lambda lr: rmsprop(lr, decay=0.99, eps=1e-3), LR)
    outside = float64_trajectory(
        lambda lr: rmsprop(lr, decay=0.99, eps=1e-3, eps_in_sqrt=False), LR
    )
    assert max_relative_difference(inside, torch_ref) > 1e-8
    assert max_relative_difference(outside, torch_ref) <= 1e-10


def test_rmsprop_optax_defaults_are_not_torch_defaults():
    torch_ref = run_torch(lambda ps, lr: torch.optim.RMSprop(ps, lr=lr), LR)
    assert max_relative_difference(float64_trajectory(rmsprop, LR), torch_ref) > 1e-8


def test_rmsprop_momentum_learning_rate_placement_matters_with_a_schedule():
    torch_ref = run_torch(lambda ps, lr: torch.optim.RMSprop(ps, lr=lr, momentum=0.9), LR)
    optax_form = float64_trajectory(
        lambda lr: rmsprop(lr, 0.99, eps_in_sqrt=False, momentum=0.9), LR
    )
    torch_form = float64_trajectory(
        lambda lr: rmsprop(
            lr, 0.99, eps_in_sqrt=False, momentum=0.9, learning_rate_in_momentum=False
        ),
        LR,
    )
    assert max_relative_difference(optax_form, torch_ref) > 1e-8
    assert max_relative_difference(torch_form, torch_ref) <= 1e-10
    with x64():  # with a constant learning rate the two forms coincide.
        a = run_jax(rmsprop(LR, momentum=0.9), adamx.apply_updates, jnp.float64)
        b = run_jax(
            rmsprop(LR, momentum=0.9, learning_rate_in_momentum=False),
            adamx.apply_updates,
            jnp.float64,
        )
    assert max_relative_difference(a, b) <= 1e-10


def test_rmsprop_first_torch_step_is_ten_lr_sign():
    """alpha = 0.99, eps 0 outside: d_1 = g / sqrt(0.01 g^2) = 10 sign(g)
    (docs/optimizers/rmsprop_adagrad_adadelta.md, RMSprop)."""
    with x64():
        g = jnp.array([3.0, -0.5, 1e-3])
        tx = rmsprop(0.1, decay=0.99, eps=0.0, eps_in_sqrt=False)
        u, _ = tx.update(g, tx.init(g))
        np.testing.assert_allclose(np.asarray(u), -1.0 * np.sign(np.asarray(g)), rtol=1e-14)


def test_zero_gradient_with_zero_accumulator_gives_zero_not_nan():
    for tx in [rmsprop(0.1, eps=0.0), rmsprop(0.1, eps=0.0, centered=True)]:
        g = jnp.zeros(3)
        u, _ = tx.update(g, tx.init(g))
        np.testing.assert_array_equal(np.asarray(u), 0.0)


def test_centered_constant_gradient_stays_finite():
    """v - gbar^2 is 0 in exact arithmetic for a constant gradient; rounding may make it negative
    (optax and torch then give NaN with eps outside); adamx clamps it at 0."""
    tx = scale_by_stddev(0.9, eps=1e-8, eps_in_sqrt=False)
    g = jnp.array([0.1, 0.3, 1e-3, 7.0], jnp.float32)
    state = tx.init(g)
    for _ in range(50):
        u, state = tx.update(g, state)
        assert np.all(np.isfinite(np.asarray(u)))


def test_state_layout_and_initial_values():
    p = {"w": jnp.ones(3, jnp.float32), "z": jnp.ones(2, jnp.complex64)}
    (nu,) = scale_by_rms(initial_scale=1.0).init(p).estimator
    np.testing.assert_array_equal(np.asarray(nu.ema["w"]), 1.0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: rmsprop(0.1, decay=1.0), "decay"),
        (lambda: rmsprop(0.1, eps=-1.0), "eps"),
        (lambda: rmsprop(0.1, nesterov=True), "needs momentum"),
        (lambda: rmsprop(0.1, initial_scale=-1.0), "initial_scale"),
    ],
)
def test_concrete_hyperparameters_are_validated(build, message):
    check_concrete_hyperparameters_are_validated(build, message)


def test_bfloat16_updates_come_back_in_bfloat16():
    p = {"w": jnp.ones(3, jnp.bfloat16)}
    tx = rmsprop(0.1, centered=True, momentum=0.9)
    state = tx.init(p)
    u, new_state = tx.update(p, state, p)
    assert u["w"].dtype == jnp.bfloat16
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert a.dtype == b.dtype
