"""AdaGrad against torch.optim 2.13 and optax 0.2.8, step for step.

On the trajectory of tests/parity/sgd_rmsprop_adagrad_adadelta.py; the documented
differences and first steps are in docs/optimizers/rmsprop_adagrad_adadelta.md (AdaGrad).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from adamx import AccumulateState, accumulate, adagrad, scale_by_rss
from tests.helpers import cases_of, max_relative_difference, relaxed, x64
from tests.parity.sgd_rmsprop_adagrad_adadelta import CASES as SHARED_CASES
from tests.parity.sgd_rmsprop_adagrad_adadelta import WITH_OPTAX as SHARED_WITH_OPTAX
from tests.parity.sgd_rmsprop_adagrad_adadelta import (
    check_concrete_hyperparameters_are_validated,
    check_float32_against_optax,
    check_float64_parity_with_torch_and_optax,
    float64_trajectory,
    run_jax,
    run_torch,
)

CASES = cases_of(SHARED_CASES, "adagrad")
WITH_OPTAX = cases_of(SHARED_WITH_OPTAX, "adagrad")

IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name, lr, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity_with_torch_and_optax(name, lr, make_adamx, make_optax, make_torch):
    check_float64_parity_with_torch_and_optax(name, lr, make_adamx, make_optax, make_torch)


@pytest.mark.parametrize(
    "name, lr, make_adamx, make_optax, make_torch", WITH_OPTAX, ids=[c[0] for c in WITH_OPTAX]
)
def test_float32_against_optax(name, lr, make_adamx, make_optax, make_torch):
    check_float32_against_optax(name, lr, make_adamx, make_optax, make_torch)


def test_adagrad_optax_defaults_are_not_torch_defaults():
    torch_ref = run_torch(lambda ps, lr: torch.optim.Adagrad(ps, lr=lr), 0.1)
    assert max_relative_difference(float64_trajectory(adagrad, 0.1), torch_ref) > 1e-8
    with x64(), relaxed():
        optax_torch_args = run_jax(
            optax.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-10),
            optax.apply_updates,
            jnp.float64,
        )
    # optax cannot put eps outside; adamx's torch form is torch's, not optax's with torch's numbers.
    torch_form = float64_trajectory(lambda lr: adagrad(lr, 0.0, 1e-10, eps_in_sqrt=False), 0.1)
    assert max_relative_difference(torch_form, torch_ref) <= 1e-10
    del optax_torch_args


def test_adagrad_torch_first_step_is_lr_sign():
    """torch's form (zero start, eps outside) steps eta * sign(g_1) when eps = 0
    (docs/optimizers/rmsprop_adagrad_adadelta.md, AdaGrad)."""
    with x64():
        g = jnp.array([3.0, -0.5])
        tx = adagrad(0.1, 0.0, 0.0, eps_in_sqrt=False)
        u, _ = tx.update(g, tx.init(g))
        np.testing.assert_allclose(np.asarray(u), -0.1 * np.sign(np.asarray(g)), rtol=1e-15)


def test_bfloat16_updates_come_back_in_bfloat16():
    p = {"w": jnp.ones(3, jnp.bfloat16)}
    tx = adagrad(0.1)
    state = tx.init(p)
    u, new_state = tx.update(p, state, p)
    assert u["w"].dtype == jnp.bfloat16
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert a.dtype == b.dtype


def test_zero_gradient_with_zero_accumulator_gives_zero_not_nan():
    tx = adagrad(0.1, 0.0, 0.0)
    g = jnp.zeros(3)
    u, _ = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(np.asarray(u), 0.0)


def test_state_layout_and_initial_values():
    p = {"w": jnp.ones(3, jnp.float32), "z": jnp.ones(2, jnp.complex64)}
    (second,) = scale_by_rss(0.1).init(p)
    (acc,) = second
    assert isinstance(acc, AccumulateState)
    np.testing.assert_array_equal(np.asarray(acc.sum["w"]), np.float32(0.1))
    assert acc.sum["z"].dtype == jnp.float32  # the sum of |g|^2 of a complex leaf is real.
    s = accumulate(2.0)
    out, state = s.update(jnp.ones(2), s.init(jnp.ones(2)))
    np.testing.assert_array_equal(np.asarray(out), 3.0)
    np.testing.assert_array_equal(np.asarray(state.sum), 3.0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: adagrad(0.1, initial_accumulator_value=-1.0), "initial_accumulator_value"),
    ],
)
def test_concrete_hyperparameters_are_validated(build, message):
    check_concrete_hyperparameters_are_validated(build, message)
