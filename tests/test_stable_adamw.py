"""StableAdamW against the authors' gist, step for step, and its update clipping.

On the trajectory of tests/parity/lion_laprop_stable_cautious.py; the official update is
transcribed below as a float64 NumPy loop from docs/optimizers/lion_laprop_stable_cautious.md
(StableAdamW). float64 parity must be <= 1e-10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adamx import adamw, apply_updates, scale_by_adam, scale_by_stable_adamw, stable_adamw
from tests import helpers
from tests.helpers import (
    cases_of,
    check_dtypes_are_kept_in_a_scan,
    check_validation,
    max_relative_difference,
    random_tree,
    x64,
)
from tests.parity.lion_laprop_stable_cautious import ALL as SHARED_ALL
from tests.parity.lion_laprop_stable_cautious import (
    PARAMS,
    STEPS,
    WD,
    check_zero_gradients_give_finite_params,
    cos64,
    numpy_run,
    ours,
)
from tests.parity.lion_laprop_stable_cautious import SCANNED as SHARED_SCANNED

ALL = cases_of(SHARED_ALL, "stable_adamw")
SCANNED = cases_of(SHARED_SCANNED, "stable_adamw")


def official_stable_adamw(wd, b1=0.9, b2=0.99, eps=1e-8, d=1.0, clipped=None):
    """Wortsman's gist, ``StableAdamWUnfused.step`` for one tensor (debiased betas, step from 1);
    appends each step's RMS to ``clipped`` when given."""

    def step(t, lr, p, g, s):
        m, u = s
        b1hat = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
        b2hat = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
        m = m * b1hat + g * (1 - b1hat)
        u = u * b2hat + g * g * (1 - b2hat)
        denominator = np.sqrt(u) + eps
        rms = float(np.sqrt(np.mean(g**2 / np.maximum(u, eps**2 * np.ones_like(u)))))
        if clipped is not None:
            clipped.append(rms)
        p = p * (1 - lr * wd) - lr * (1 / max(1.0, rms / d)) * m / denominator
        return p, (m, u)

    return step, lambda p: (np.zeros_like(p), np.zeros_like(p))


def test_stable_adamw_matches_the_gist_and_clips():
    """Reference: a NumPy transcription of Wortsman's StableAdamWUnfused gist; tolerance 1e-10.
    The spikes make it clip (RMS > 1), so this is not AdamW."""
    rms = []
    mine = ours(stable_adamw(cos64(), weight_decay=WD))
    ref = numpy_run(*official_stable_adamw(WD, clipped=rms))
    gap = max_relative_difference(mine, ref)
    plain = ours(adamw(cos64(), b2=0.99, weight_decay=WD))
    print(
        f"stable_adamw float64 vs gist: {gap:.2e}; clipped {sum(r > 1 for r in rms)} of "
        f"{len(rms)} tensor-steps (max RMS {max(rms):.2f}); vs adamw "
        f"{max_relative_difference(mine, plain):.2e}"
    )
    assert gap <= 1e-10
    assert sum(r > 1 for r in rms) > 10
    assert max_relative_difference(mine, plain) > 1e-3


def test_stable_adamw_clips_a_spike_by_its_rms():
    """After 20 steps of the same gradient a 30x spike gives RMS = 30 sqrt(1/(b2 + (1 - b2) 900))
    on every coordinate: the step is AdamW's divided by that RMS."""
    b2 = 0.99
    with x64():
        g = jnp.array([1.0, -2.0, 0.5, 4.0])
        stable = scale_by_stable_adamw(b2=b2, eps=0.0)
        plain = scale_by_adam(b2=b2, eps=0.0)
        s, p = stable.init(g), plain.init(g)
        for _ in range(20):
            u, s = stable.update(g, s)
            u_plain, p = plain.update(g, p)
            np.testing.assert_allclose(np.asarray(u), np.asarray(u_plain), rtol=1e-13)
        u, s = stable.update(30 * g, s)
        u_plain, p = plain.update(30 * g, p)
    # v_hat after the spike, per coordinate: g^2 (b2 (1 - b2^20) + (1 - b2) 900) / (1 - b2^21)
    v_over_g2 = (b2 * (1 - b2**20) + (1 - b2) * 900) / (1 - b2**21)
    expected_rms = np.sqrt(900 / v_over_g2)
    assert expected_rms > 1
    np.testing.assert_allclose(np.asarray(u), np.asarray(u_plain) / expected_rms, rtol=1e-12)


def test_stable_adamw_without_a_trigger_is_adamw():
    """|g_t| non-increasing per coordinate keeps g_t^2 <= v_hat_t, so RMS <= 1: AdamW (form 1A)."""
    rng = np.random.default_rng(11)
    tree = random_tree(0, np.float64)
    size = jax.tree.map(lambda x: rng.uniform(0.5, 2.0, np.shape(x)), tree)
    grads = [
        jax.tree.map(lambda a, t=t: rng.choice([-1.0, 1.0], np.shape(a)) * a * 0.97**t, size)
        for t in range(STEPS)
    ]
    with x64():
        a = helpers.run_jax(
            stable_adamw(cos64(), weight_decay=WD), apply_updates, jnp.float64, PARAMS, grads
        )
        b = helpers.run_jax(
            adamw(cos64(), b2=0.99, weight_decay=WD), apply_updates, jnp.float64, PARAMS, grads
        )
    print(f"stable_adamw vs adamw without clipping: {max_relative_difference(a, b):.2e}")
    assert max_relative_difference(a, b) <= 1e-12


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
        lambda: stable_adamw(1e-2, clip_threshold=0.0),
        lambda: stable_adamw(1e-2, clip_threshold=-1.0),
        lambda: stable_adamw(1e-2, b2=-0.1),
    ],
)
def test_validation(build):
    check_validation(build)
