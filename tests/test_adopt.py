"""ADOPT against the authors' code (iShohei220/adopt, NumPy transcription) and optax 0.2.8.

The official update (``adopt.py::_single_tensor_adopt``) is transcribed below as a float64
NumPy loop from docs/optimizers/adan_adopt_ademamix.md (ADOPT), on the trajectory of
tests/parity/adan_adopt_ademamix.py; float64 parity must be <= 1e-10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import add_decayed_weights, adopt, chain, scale_by_adopt
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

ALL = cases_of(SHARED_ALL, "adopt")


def official_adopt(b1=0.9, b2=0.9999, eps=1e-6, weight_decay=0.0, decouple=False, clip=True):
    def state(p):
        return {"step": 0, "m": np.zeros_like(p), "v": np.zeros_like(p)}

    def step(t, lr, p, g, s):
        if weight_decay != 0 and not decouple:
            g = g + weight_decay * p
        if s["step"] == 0:
            s["v"] = s["v"] + g * g
            s["step"] += 1
            return p
        if weight_decay != 0 and decouple:
            p = p - lr * weight_decay * p
        normed = g / np.maximum(np.sqrt(s["v"]), eps)
        if clip:
            c = s["step"] ** 0.25
            normed = np.clip(normed, -c, c)
        s["m"] = s["m"] + (1 - b1) * (normed - s["m"])  # lerp_
        p = p - lr * s["m"]
        s["v"] = s["v"] * b2 + (1 - b2) * g * g
        s["step"] += 1
        return p

    return numpy_run(step, state)


ADOPT_CASES = [
    ("clip", lambda lr: adopt(lr), lambda: official_adopt()),
    ("no_clip", lambda lr: adopt(lr, use_clipping=False), lambda: official_adopt(clip=False)),
    (
        "decoupled",
        lambda lr: adopt(lr, weight_decay=WD),
        lambda: official_adopt(weight_decay=WD, decouple=True),
    ),
    (
        "l2",
        lambda lr: chain(add_decayed_weights(WD), adopt(lr)),
        lambda: official_adopt(weight_decay=WD),
    ),
]


@pytest.mark.parametrize(
    "make, reference", [c[1:] for c in ADOPT_CASES], ids=[c[0] for c in ADOPT_CASES]
)
def test_adopt_matches_official(make, reference):
    """adamx.adopt vs the official update (NumPy, float64), cosine lr: <= 1e-10."""
    mine, ref = ours(make), reference()
    print(f"adopt vs official: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


@pytest.mark.parametrize("clipping", [True, False], ids=["clip", "no_clip"])
def test_adopt_matches_optax(clipping):
    """adamx.adopt vs optax.contrib.adopt (float64, cosine lr): <= 1e-10."""
    mine = ours(lambda lr: adopt(lr, use_clipping=clipping))
    theirs = optax_run(lambda lr: optax.contrib.adopt(lr, use_clipping=clipping))
    print(f"adopt {clipping=} vs optax: {max_relative_difference(mine, theirs):.2e}")
    assert max_relative_difference(mine, theirs) <= 1e-10


def test_adopt_clipping_matters_here():
    gap = max_relative_difference(official_adopt(), official_adopt(clip=False))
    print(f"adopt official with vs without clipping: {gap:.2e}")
    assert gap > 1e-6


def test_adopt_first_call_makes_no_step_even_with_decay():
    opt = adopt(0.1, weight_decay=0.5)
    p = jnp.array([1.0, -2.0])
    u, state = opt.update(jnp.array([4.0, 0.1]), opt.init(p), p)
    assert np.all(np.asarray(u) == 0)
    np.testing.assert_allclose(np.asarray(state[0][0].nu), [16.0, 0.01], rtol=1e-6)


def test_adopt_clip_binds_on_the_first_step():
    """The first real step normalises by sqrt(v_1) = |g_1| and clips to (2 - 1)^(1/4) = 1."""
    with x64():
        opt = scale_by_adopt(b1=0.9)
        g1, g2 = jnp.array([1e-3, -1e-3, 2.0]), jnp.array([5.0, 5.0, 1.0])
        state = opt.init(g1)
        _, state = opt.update(g1, state)
        u, _ = opt.update(g2, state)
        np.testing.assert_allclose(np.asarray(u), 0.1 * np.array([1.0, 1.0, 0.5]), rtol=1e-14)


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


def test_float32_moments_stay_float32_under_x64():
    with x64():
        opt = adopt(1e-2)
        params = {"w": jnp.ones(3, jnp.float32)}
        state = opt.init(params)
        updates, state = opt.update(params, state, params)
        assert updates["w"].dtype == jnp.float32
        floats = [x.dtype for x in jax.tree.leaves(state) if x.dtype != jnp.int32]
        assert set(floats) == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(
    "build",
    [
        lambda: adopt(1e-2, eps=-1.0),
        lambda: adopt(1e-2, b2=1.5),
        lambda: adopt(1e-2, weight_decay=-0.1),
    ],
)
def test_validation(build):
    check_validation(build)
