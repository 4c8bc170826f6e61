"""Adan against the authors' code (sail-sg/Adan, NumPy transcription) and optax 0.2.8.

torch.optim has no Adan, so the official update (``adan.py::_single_tensor_adan``) is
transcribed below as a float64 NumPy loop from docs/optimizers/adan_adopt_ademamix.md (Adan),
on the trajectory of tests/parity/adan_adopt_ademamix.py; float64 parity must be <= 1e-10.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import adan, apply_updates, proximal_step, scale_by_adan
from tests.helpers import (
    cases_of,
    check_dtypes_are_kept_in_a_scan,
    check_validation,
    max_relative_difference,
    x64,
)
from tests.parity.adan_adopt_ademamix import ALL as SHARED_ALL
from tests.parity.adan_adopt_ademamix import (
    WD,
    check_zero_gradients_give_finite_params,
    numpy_run,
    optax_run,
    ours,
)

ALL = cases_of(SHARED_ALL, "adan")


def official_adan(b1=0.98, b2=0.92, b3=0.99, eps=1e-8, weight_decay=0.0, no_prox=False):
    def state(p):
        return {"m": np.zeros_like(p), "v": np.zeros_like(p), "n": np.zeros_like(p), "g": None}

    def step(t, lr, p, g, s):
        if s["g"] is None:  # pre_grad starts at the first gradient: d_1 = 0
            s["g"] = g.copy()
        diff = g - s["g"]
        s["m"] = s["m"] * b1 + (1 - b1) * g
        s["v"] = s["v"] * b2 + (1 - b2) * diff
        look = g + b2 * diff
        s["n"] = s["n"] * b3 + (1 - b3) * look * look
        denom = np.sqrt(s["n"]) / math.sqrt(1 - b3**t) + eps
        update = (s["m"] / (1 - b1**t) + b2 * s["v"] / (1 - b2**t)) / denom
        if no_prox:
            p = p * (1 - lr * weight_decay)
            p = p - lr * update
        else:
            p = p - lr * update
            p = p / (1 + lr * weight_decay)
        s["g"] = g.copy()
        return p

    return numpy_run(step, state)


@pytest.mark.parametrize("proximal", [True, False], ids=["proximal", "additive"])
def test_adan_matches_official(proximal):
    """adamx.adan vs the official update (NumPy, float64), cosine lr, decay 0.1: <= 1e-10."""
    mine = ours(lambda lr: adan(lr, weight_decay=WD, proximal=proximal))
    ref = official_adan(weight_decay=WD, no_prox=not proximal)
    print(f"adan {proximal=} vs official: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


def test_adan_decay_forms_differ():
    prox = official_adan(weight_decay=WD)
    additive = official_adan(weight_decay=WD, no_prox=True)
    gap = max_relative_difference(prox, additive)
    print(f"adan proximal vs additive decay (official): {gap:.2e}")
    assert gap > 1e-6


def test_adan_differs_from_optax_only_by_the_b2_coefficient():
    """optax 0.2.8 weights d_t by 1 - b2 where the official code uses b2 (optax PR #1715)."""
    mine = ours(lambda lr: adan(lr))
    theirs = optax_run(lambda lr: optax.adan(lr, eps_root=0.0))
    gap = max_relative_difference(mine, theirs)
    print(f"adan (b2=0.92) vs optax.adan: {gap:.2e}")
    assert gap > 0.1  # measured 1.2 (largest absolute difference 8.9e-2)
    # At b2 = 0.5, 1 - b2 = b2: with optax's eps_root and additive decay they coincide.
    mine = ours(lambda lr: adan(lr, b2=0.5, eps_root=1e-8, weight_decay=WD, proximal=False))
    theirs = optax_run(lambda lr: optax.adan(lr, b2=0.5, weight_decay=WD))
    print(f"adan (b2=0.5) vs optax.adan: {max_relative_difference(mine, theirs):.2e}")
    assert max_relative_difference(mine, theirs) <= 1e-10


def test_adan_constant_gradient_steps_by_lr():
    """d_1 = 0 (g_0 := g_1): on a constant gradient v stays 0 and every step is -lr sign(g)."""
    with x64():
        opt = adan(0.1, eps=0.0)
        g = jnp.array([3.0, -0.5, 1e-3])
        state = opt.init(g)
        for _ in range(5):
            updates, state = opt.update(g, state, g)
            np.testing.assert_allclose(np.asarray(updates), -0.1 * np.sign(g), rtol=1e-14)


def test_adan_proximal_decay_is_a_contraction():
    """With zero gradients the proximal step is theta / (1 + lr wd) exactly, every step."""
    with x64():
        opt = adan(0.5, weight_decay=0.2)
        p = jnp.array([1.0, -2.0, 3.0])
        state = opt.init(p)
        for _ in range(4):
            u, state = opt.update(jnp.zeros(3), state, p)
            new = apply_updates(p, u)
            np.testing.assert_allclose(np.asarray(new), np.asarray(p) / 1.1, rtol=1e-15)
            p = new


def test_proximal_step_without_decay_is_the_learning_rate():
    with x64():
        u = jnp.array([1.0, -2.0])
        step = proximal_step(0.3)
        out, _ = step.update(u, step.init(u), u)
        assert np.all(np.asarray(out) == -0.3 * np.asarray(u))


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


def test_float32_moments_stay_float32_under_x64():
    with x64():
        for opt in (adan(1e-2),):
            params = {"w": jnp.ones(3, jnp.float32)}
            state = opt.init(params)
            updates, state = opt.update(params, state, params)
            assert updates["w"].dtype == jnp.float32
            floats = [x.dtype for x in jax.tree.leaves(state) if x.dtype != jnp.int32]
            assert set(floats) == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(
    "build",
    [
        lambda: adan(1e-2, b3=1.0),
        lambda: adan(1e-2, weight_decay=-1.0),
        lambda: adan(-1.0),
        lambda: scale_by_adan(b2=-0.1),
    ],
)
def test_validation(build):
    check_validation(build)
