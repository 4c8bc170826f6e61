"""Lion against optax 0.2.8 and the authors' code (google/automl ``lion_pytorch.py``), step for step.

On the trajectory of tests/parity/lion_laprop_stable_cautious.py; the official update is
transcribed below as a float64 NumPy loop from docs/optimizers/lion_laprop_stable_cautious.md
(Lion). float64 parity must be <= 1e-10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import apply_updates, lion, scale_by_lion
from tests.helpers import (
    cases_of,
    check_dtypes_are_kept_in_a_scan,
    check_validation,
    max_relative_difference,
    relaxed,
    x64,
)
from tests.parity.lion_laprop_stable_cautious import ALL as SHARED_ALL
from tests.parity.lion_laprop_stable_cautious import (
    GRADS,
    PARAMS,
    WD,
    check_zero_gradients_give_finite_params,
    cos64,
    numpy_run,
    ours,
    run_jax,
)
from tests.parity.lion_laprop_stable_cautious import SCANNED as SHARED_SCANNED

ALL = cases_of(SHARED_ALL, "lion")
SCANNED = cases_of(SHARED_SCANNED, "lion")


def official_lion(wd, b1=0.9, b2=0.99):
    """google/automl lion/lion_pytorch.py, ``Lion.step`` for one tensor."""

    def step(t, lr, p, g, m):
        p = p * (1 - lr * wd)
        c = m * b1 + g * (1 - b1)
        p = p - lr * np.sign(c)
        m = m * b2 + g * (1 - b2)
        return p, m

    return step, np.zeros_like


def test_lion_matches_optax_and_the_official_code():
    """Reference: optax.lion (0.2.8) and google/automl lion_pytorch.py; tolerance 1e-10."""
    mine = ours(lion(cos64(), weight_decay=WD))
    with x64(), relaxed():
        ref_optax = run_jax(optax.lion(cos64(), weight_decay=WD), optax.apply_updates, jnp.float64)
    ref_official = numpy_run(*official_lion(WD))
    print(
        f"lion float64: vs optax {max_relative_difference(mine, ref_optax):.2e}, "
        f"vs official {max_relative_difference(mine, ref_official):.2e}"
    )
    assert max_relative_difference(mine, ref_optax) <= 1e-10
    assert max_relative_difference(mine, ref_official) <= 1e-10


def test_lion_moves_every_coordinate_by_exactly_the_learning_rate():
    rng = np.random.default_rng(7)
    lr = 3e-3
    with x64():
        opt = lion(lr, weight_decay=0.0)
        params = jnp.asarray(rng.standard_normal(64))
        state = opt.init(params)
        for _ in range(30):
            g = jnp.asarray(rng.standard_normal(64) * rng.lognormal(0, 2))
            updates, state = opt.update(g, state, params)
            np.testing.assert_array_equal(np.abs(np.asarray(updates)), lr)
            params = apply_updates(params, updates)


def test_lion_sign_of_zero_is_zero():
    opt = lion(0.1, weight_decay=0.0)
    g = jnp.array([0.0, 2.0, -3.0])
    updates, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_array_equal(np.asarray(updates), np.float32([0.0, -0.1, 0.1]))


def test_lion_state_layout_matches_optax():
    with x64():
        params = jax.tree.map(jnp.asarray, PARAMS)
        with relaxed():
            ref = optax.scale_by_lion()
            s_ref = ref.init(params)
            for g in GRADS[:5]:
                _, s_ref = ref.update(g, s_ref)
        mine = scale_by_lion()
        s = mine.init(params)
        for g in GRADS[:5]:
            _, s = mine.update(g, s)
    assert max_relative_difference(s.mu, s_ref.mu) <= 1e-14
    assert int(s.count) == int(s_ref.count) == 5


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


def test_mu_dtype_is_used():
    params = {"w": jnp.ones((3, 2))}
    for opt in (lion(1e-2, mu_dtype=jnp.bfloat16),):
        state = opt.init(params)
        assert np.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(state)}
        updates, state = opt.update(params, state, params)
        assert np.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(state)}


@pytest.mark.parametrize(
    "build",
    [
        lambda: lion(-1.0),
        lambda: lion(1e-2, b1=1.0),
        lambda: lion(1e-2, weight_decay=-1.0),
    ],
)
def test_validation(build):
    check_validation(build)
