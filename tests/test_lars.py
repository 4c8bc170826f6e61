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

from adamx import lars
from tests.helpers import cases_of, check_validation, jax_cosine, max_relative_difference
from tests.parity.adafactor_lamb_lars import ALL as SHARED_ALL
from tests.parity.adafactor_lamb_lars import SCANNED as SHARED_SCANNED
from tests.parity.adafactor_lamb_lars import (
    WD,
    check_dtypes_are_kept_in_a_scan,
    check_each_layer_moves_by_lr_times_its_norm,
    check_zero_gradients_give_finite_params,
    optax_run,
    ours,
    stacked,
)

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
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


@pytest.mark.parametrize(
    "make, factor",
    [
        (lambda lr: lars(lr, weight_decay=WD, momentum=0.0, batch_dims=stacked), 1e-3),
    ],
    ids=["lars"],
)
def test_each_layer_moves_by_lr_times_its_norm(make, factor):
    check_each_layer_moves_by_lr_times_its_norm(make, factor)


@pytest.mark.parametrize(
    "build",
    [
        lambda: lars(1e-2, momentum=1.0),
        lambda: lars(1e-2, trust_coefficient=-1.0),
    ],
)
def test_validation(build):
    check_validation(build)
