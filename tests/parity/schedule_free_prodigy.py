"""Schedule-Free AdamW and Prodigy: the shared problem and its trajectory.

100 float64 steps on a multi-leaf pytree (matrix, vector, scalar, a 4-d leaf and a stacked
(layers, rows, cols) leaf). The gradients depend on the params, ``g = a * (theta - target) + noise``
with a fixed per-coordinate curvature ``a`` and fixed noise, so that Prodigy's distance estimate
grows and Schedule-Free's y, z and x separate. The measure is ``max |x - ref| / (|ref| + 1e-6)``;
parity must be <= 1e-10. The tests are in tests/test_schedule_free.py and tests/test_prodigy.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adamx import apply_updates, prodigy, schedule_free_adamw
from tests import helpers
from tests.helpers import PARITY_STEPS, random_tree

STEPS = PARITY_STEPS
WD = 0.1


def _problem(seed=5):
    rng = np.random.default_rng(seed)
    params = {**random_tree(0, np.float64), "stacked": rng.standard_normal((4, 6, 3))}
    curvature = jax.tree.map(lambda x: rng.uniform(0.5, 2.0, np.shape(x)), params)
    target = jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), params)
    noise = [
        jax.tree.map(lambda x: 0.1 * rng.standard_normal(np.shape(x)), params) for _ in range(STEPS)
    ]
    return params, curvature, target, noise


PARAMS, CURVATURE, TARGET, NOISE = _problem()
TREEDEF = jax.tree.structure(PARAMS)
LEAVES = [np.asarray(x, np.float64) for x in jax.tree.leaves(PARAMS)]
A = [np.asarray(x) for x in jax.tree.leaves(CURVATURE)]
B = [np.asarray(x) for x in jax.tree.leaves(TARGET)]
N = [[np.asarray(x) for x in jax.tree.leaves(n)] for n in NOISE]


def trajectory(tx, apply=apply_updates):
    """``tx`` for ``STEPS`` jitted float64 steps on the problem; returns ``(params, state)``."""
    p = jax.tree.map(jnp.asarray, PARAMS)
    state = tx.init(p)

    @jax.jit
    def one(p, state, noise):
        g = jax.tree.map(lambda x, a, b, n: a * (x - b) + n, p, CURVATURE, TARGET, noise)
        updates, state = tx.update(g, state, p)
        return apply(p, updates), state

    for noise in NOISE:
        p, state = one(p, state, jax.tree.map(jnp.asarray, noise))
    return p, state


def gradient(i, k, p):
    return A[i] * (p - B[i]) + N[k][i]


def tree(leaves):
    return jax.tree.unflatten(TREEDEF, leaves)


ALL = [
    ("schedule_free_adamw", lambda: schedule_free_adamw(1e-2, weight_decay=1e-4)),
    ("schedule_free_paper", lambda: schedule_free_adamw(1e-2, bias_correction="learning_rate")),
    ("prodigy", lambda: prodigy(weight_decay=1e-4)),
    ("prodigy_optax", lambda: prodigy(bias_correction=True)),
]


def check_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    for _ in range(5):
        updates, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


def check_dtypes_are_kept_in_a_scan(name, make, dtype):
    _, s = helpers.scan_keeps_dtypes(make(), dtype)
    real = jnp.float32
    scalars = [x for x in jax.tree.leaves(s) if x.ndim == 0 and x.dtype != jnp.int32]
    assert all(x.dtype == real for x in scalars)  # float32 bookkeeping, never float64


def check_params_are_required(name, make):
    opt = make()
    g = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.update(g, opt.init(g))
