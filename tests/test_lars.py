"""LARS against optax 0.2.8, step for step, and its per-layer step size.

On the trajectory of tests/parity/adafactor_lamb_lars.py; the update is in
docs/optimizers/adafactor_lamb_lars.md (LARS).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import apply_updates, lars
from tests import helpers
from tests.helpers import cases_of, jax_cosine, max_relative_difference, x64
from tests.parity.adafactor_lamb_lars import ALL as SHARED_ALL
from tests.parity.adafactor_lamb_lars import (
    GRADS,
    PARAMS,
    WD,
    layer_norms,
    optax_run,
    ours,
    stacked,
)
from tests.parity.adafactor_lamb_lars import SCANNED as SHARED_SCANNED

ALL = cases_of(SHARED_ALL, "lars")
SCANNED = cases_of(SHARED_SCANNED, "lars")

LARS_LR = 1.0


def not_vectors(params):
    return jax.tree.map(lambda p: np.ndim(p) > 1, params)


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy_ball", "nesterov"])
def test_lars_matches_optax(nesterov):
    """optax.lars(cosine lr, wd 0.1, trust coefficient 0.02, masks leaving vectors out); <= 1e-10."""
    kw = dict(
        weight_decay=WD,
        weight_decay_mask=not_vectors,
        trust_coefficient=0.02,
        trust_ratio_mask=not_vectors,
        nesterov=nesterov,
    )
    mine = ours(lars(jax_cosine(LARS_LR, jnp.float64), **kw))
    ref = optax_run(lambda: optax.lars(jax_cosine(LARS_LR, jnp.float64), **kw))
    print(f"lars nesterov={nesterov} vs optax: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(5):
        grads = jax.tree.map(jnp.zeros_like, params)
        updates, state = update(grads, state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    _, s = helpers.scan_keeps_dtypes(make(), dtype)
    if dtype == jnp.complex64:  # statistics of complex parameters are real
        real = {np.dtype(jnp.float32), np.dtype(jnp.int32)}
        stats = jax.tree.leaves(s[0][0]) if name.startswith("adafactor") else []
        assert {x.dtype for x in stats} <= real


@pytest.mark.parametrize(
    "make, factor",
    [
        (lambda lr: lars(lr, weight_decay=WD, momentum=0.0, batch_dims=stacked), 1e-3),
    ],
    ids=["lars"],
)
def test_each_layer_moves_by_lr_times_its_norm(make, factor):
    """||Delta_t|| = lr * kappa * ||theta_{t-1}|| per layer (no zero norms; LARS without momentum)."""
    with x64():
        lr = 0.05
        opt = make(lr)
        params = jax.tree.map(jnp.asarray, PARAMS)
        state = opt.init(params)
        update = jax.jit(opt.update)
        for grads in GRADS[:10]:
            updates, state = update(grads, state, params)
            for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
                batch = stacked(p)
                np.testing.assert_allclose(
                    layer_norms(u, batch), lr * factor * layer_norms(p, batch), rtol=1e-12
                )
            params = apply_updates(params, updates)


@pytest.mark.parametrize(
    "build",
    [
        lambda: lars(1e-2, momentum=1.0),
        lambda: lars(1e-2, trust_coefficient=-1.0),
    ],
)
def test_validation(build):
    with pytest.raises(ValueError):
        build()
