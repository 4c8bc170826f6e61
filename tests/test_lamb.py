"""LAMB and its trust-ratio block against optax 0.2.8 and the paper, step for step.

On the trajectory of tests/parity/adafactor_lamb_lars.py; the paper's update (You et al., 2020,
Algorithm 2 with phi = identity) is transcribed here as a NumPy loop from
docs/optimizers/adafactor_lamb_lars.md (LAMB).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import adamw, lamb, scale_by_trust_ratio
from tests.helpers import cases_of, check_validation, jax_cosine, max_relative_difference, x64
from tests.parity.adafactor_lamb_lars import ALL as SHARED_ALL
from tests.parity.adafactor_lamb_lars import SCANNED as SHARED_SCANNED
from tests.parity.adafactor_lamb_lars import (
    WD,
    check_dtypes_are_kept_in_a_scan,
    check_each_layer_moves_by_lr_times_its_norm,
    check_zero_gradients_give_finite_params,
    numpy_run,
    optax_run,
    ours,
    stacked,
)

ALL = cases_of(SHARED_ALL, "lamb")
SCANNED = cases_of(SHARED_SCANNED, "lamb")

LAMB_LR = 1e-2


def test_lamb_matches_optax():
    """optax.lamb(cosine lr, weight_decay=0.1); <= 1e-10."""
    mine = ours(lamb(jax_cosine(LAMB_LR, jnp.float64), weight_decay=WD))
    ref = optax_run(lambda: optax.lamb(jax_cosine(LAMB_LR, jnp.float64), weight_decay=WD))
    print(f"lamb vs optax: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


def paper_lamb(wd, b1=0.9, b2=0.999, eps=1e-6):
    """You et al. (2020), Algorithm 2 with phi = identity (docs/optimizers/adafactor_lamb_lars.md,
    LAMB); a rank-3 leaf
    is a stack of layers, each with its own trust ratio."""

    def step(t, lr, x, g, state):
        m, v = state
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * x

        def layer(xi, ri):
            xn, rn = np.linalg.norm(xi), np.linalg.norm(ri)
            ratio = xn / rn if xn > 0 and rn > 0 else 1.0
            return xi - lr * ratio * ri

        if x.ndim == 3:
            return np.stack([layer(xi, ri) for xi, ri in zip(x, r, strict=True)]), (m, v)
        return layer(x, r), (m, v)

    return step, lambda x: (np.zeros_like(x), np.zeros_like(x))


def test_lamb_matches_the_paper_with_a_ratio_per_layer():
    """A NumPy transcription of LAMB, one trust ratio per layer of the stack; <= 1e-10."""
    mine = ours(lamb(jax_cosine(LAMB_LR, jnp.float64), weight_decay=WD, batch_dims=stacked))
    ref = numpy_run(*paper_lamb(WD), LAMB_LR)
    print(f"lamb (per layer) vs paper (NumPy): {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10
    whole = ours(lamb(jax_cosine(LAMB_LR, jnp.float64), weight_decay=WD))
    assert max_relative_difference(whole["stack"], ref["stack"]) > 1e-6


@pytest.mark.parametrize(
    "make, factor",
    [
        (lambda lr: lamb(lr, weight_decay=WD, batch_dims=stacked), 1.0),
    ],
    ids=["lamb"],
)
def test_each_layer_moves_by_lr_times_its_norm(make, factor):
    check_each_layer_moves_by_lr_times_its_norm(make, factor)


def test_trust_ratio_is_one_for_zero_norms_and_masked_leaves():
    with x64():
        params = {"zero": jnp.zeros(3), "w": jnp.array([1.0, 2.0]), "b": jnp.array([3.0, -1.0])}
        grads = {"zero": jnp.array([1.0, -1.0, 2.0]), "w": jnp.zeros(2), "b": jnp.array([0.5, 1.0])}
        block = scale_by_trust_ratio(mask={"zero": True, "w": True, "b": False})
        out, _ = block.update(grads, block.init(params), params)
        for key in params:  # zero param norm, zero update norm, masked out: all untouched
            np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(grads[key]))
        masked_fn = lamb(
            0.1, weight_decay=WD, trust_ratio_mask=lambda p: {"zero": True, "w": True, "b": False}
        )
        reference = adamw(0.1, eps=1e-6, weight_decay=WD)
        u, _ = masked_fn.update(grads, masked_fn.init(params), params)
        u_ref, _ = reference.update(grads, reference.init(params), params)
        np.testing.assert_allclose(np.asarray(u["b"]), np.asarray(u_ref["b"]), rtol=1e-15)


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
        lambda: lamb(1e-2, b1=1.0),
        lambda: lamb(-1e-2),
        lambda: scale_by_trust_ratio(min_norm=-1.0),
    ],
)
def test_validation(build):
    check_validation(build)
