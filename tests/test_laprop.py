"""LaProp against the authors' code (Z-T-WANG/LaProp-Optimizer), step for step, and its blocks.

On the trajectory of tests/parity/lion_laprop_stable_cautious.py; the official update is
transcribed below as a float64 NumPy loop from docs/optimizers/lion_laprop_stable_cautious.md
(LaProp). float64 parity must be <= 1e-10.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from adamx import (
    apply_updates,
    chain,
    decay_after_update,
    laprop,
    scale_by_laprop,
    scale_by_learning_rate,
    weighted_ema,
)
from tests.helpers import (
    cases_of,
    check_dtypes_are_kept_in_a_scan,
    check_validation,
    max_relative_difference,
    x64,
)
from tests.parity.lion_laprop_stable_cautious import ALL as SHARED_ALL
from tests.parity.lion_laprop_stable_cautious import (
    LR,
    check_zero_gradients_give_finite_params,
    cos64,
    numpy_run,
    ours,
    run_jax,
)
from tests.parity.lion_laprop_stable_cautious import SCANNED as SHARED_SCANNED

ALL = cases_of(SHARED_ALL, "laprop")
SCANNED = cases_of(SHARED_SCANNED, "laprop")


def official_laprop(wd, b1=0.9, b2=0.999, eps=1e-15):
    """Z-T-WANG/LaProp-Optimizer laprop.py, ``LaProp.step`` (amsgrad and centered off)."""

    def step(t, lr, p, g, s):
        m, v, lr1, lr2 = s
        v = v * b2 + (1 - b2) * g * g
        lr1 = lr1 * b1 + (1 - b1) * lr
        lr2 = lr2 * b2 + (1 - b2)
        bc1 = lr1 / lr if lr != 0.0 else 1.0
        step_size = 1 / bc1
        denom = np.sqrt(v / lr2) + eps
        m = m * b1 + (1 - b1) * lr * (g / denom)
        p = p - step_size * m
        if wd != 0:
            p = p - wd * p
        return p, (m, v, lr1, lr2)

    return step, lambda p: (np.zeros_like(p), np.zeros_like(p), 0.0, 0.0)


@pytest.mark.parametrize("scheduled", [True, False], ids=["cosine", "constant"])
def test_laprop_matches_the_official_code(scheduled):
    """Reference: a NumPy transcription of LaProp.step (official); tolerance 1e-10. The constant
    learning rate takes the ``ema`` + ``bias_correction`` path, the schedule `weighted_ema`."""
    wd = 1e-2
    if scheduled:
        mine = ours(laprop(cos64(), weight_decay=wd))
        ref = numpy_run(*official_laprop(wd))
    else:
        mine = ours(laprop(LR, weight_decay=wd))
        ref = numpy_run(*official_laprop(wd), multiplier=lambda t: 1.0)
    gap = max_relative_difference(mine, ref)
    print(f"laprop ({'cosine' if scheduled else 'constant'}) float64 vs official: {gap:.2e}")
    assert gap <= 1e-10


def test_laprop_learning_rate_weighting_matters_under_a_schedule():
    """The official lr-weighted momentum differs from the Adam convention (lr outside it)."""
    official_form = ours(laprop(cos64(), weight_decay=0.0))
    lr_outside = ours(chain(scale_by_laprop(), scale_by_learning_rate(cos64())))
    gap = max_relative_difference(official_form, lr_outside)
    print(f"laprop lr inside vs outside the momentum: {gap:.2e}")
    assert gap > 1e-4


def test_laprop_decay_acts_after_the_step_and_ignores_the_learning_rate():
    with x64():
        opt = laprop(0.0, weight_decay=0.1)
        params = jnp.array([1.0, -2.0, 3.0])
        state = opt.init(params)
        for t in range(1, 6):
            updates, state = opt.update(jnp.array([1.0, 1.0, -1.0]), state, params)
            params = apply_updates(params, updates)
            np.testing.assert_allclose(np.asarray(params), 0.9**t * np.array([1.0, -2.0, 3.0]))
        # and with a learning rate: theta_t = (1 - wd) (theta_{t-1} + u_t)
        tx = decay_after_update(0.5)
        u, _ = tx.update(jnp.array([1.0]), tx.init(params), jnp.array([3.0]))
        assert float(u[0]) == pytest.approx((1 - 0.5) * (3.0 + 1.0) - 3.0)


def test_weighted_ema_with_a_constant_weight_is_ema_with_bias_correction():
    from adamx import bias_correction, ema

    with x64():
        a = run_jax(
            chain(weighted_ema(0.9, lambda count: 0.3), scale_by_learning_rate(LR)),
            apply_updates,
            jnp.float64,
        )
        b = run_jax(
            chain(ema(0.9), bias_correction(0.9), scale_by_learning_rate(LR)),
            apply_updates,
            jnp.float64,
        )
    assert max_relative_difference(a, b) <= 1e-13


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


@pytest.mark.parametrize(
    "build",
    [
        lambda: laprop(1e-2, b2=1.5),
        lambda: laprop(1e-2, eps=-1.0),
        lambda: weighted_ema(0.9, -1.0),
        lambda: decay_after_update(-0.1),
    ],
)
def test_validation(build):
    check_validation(build)
