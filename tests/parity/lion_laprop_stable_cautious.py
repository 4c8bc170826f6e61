"""Lion, LaProp, StableAdamW and the cautious wrapper: the shared trajectory and runners.

Parity: 100 steps (``PARITY_STEPS``) on the multi-leaf pytree of ``random_tree``, with a cosine
learning-rate schedule and weight decay, gradients drawn in advance (N(0, 1), 10x on every 10th
step, so StableAdamW's clipping triggers). ``numpy_run`` runs the NumPy transcriptions of the
authors' updates in the family test files (tests/test_lion.py, test_laprop.py,
test_stable_adamw.py, test_cautious.py); the measure is ``max |x - ref| / (|ref| + 1e-6)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from adamx import (
    adam,
    apply_updates,
    cautious,
    cautious_adamw,
    cautious_lion,
    laprop,
    lion,
    stable_adamw,
)
from tests import helpers
from tests.helpers import (
    PARITY_STEPS,
    cosine,
    jax_cosine,
    random_tree,
    x64,
)

STEPS = PARITY_STEPS
LR = 1e-2
WD = 0.1


def spiky_gradients(seed=5):
    return helpers.spiky_gradients(random_tree(0, np.float64), seed)


GRADS = spiky_gradients()
PARAMS = random_tree(0, np.float64)
TREEDEF = jax.tree.structure(PARAMS)
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)


def ours(tx):
    """``tx`` (built with a float64 schedule) over ``GRADS`` in float64, jitted."""
    with x64():
        return run_jax(tx, apply_updates, jnp.float64)


def numpy_run(step, state_init, multiplier=cosine):
    """Run ``step(t, lr_t, p, g, s) -> (p, s)`` leaf by leaf for ``t = 1..STEPS`` from ``PARAMS``,
    ``lr_t = LR * multiplier(t - 1)``; returns the final params in ``PARAMS``' structure."""
    leaves = [np.array(x, np.float64) for x in jax.tree.leaves(PARAMS)]
    states = [state_init(p) for p in leaves]
    for t, grads in enumerate(GRADS, start=1):
        lr = LR * multiplier(t - 1)
        for k, g in enumerate(jax.tree.leaves(grads)):
            leaves[k], states[k] = step(t, lr, leaves[k], np.asarray(g, np.float64), states[k])
    return jax.tree.unflatten(TREEDEF, leaves)


def cos64(base=LR):
    return jax_cosine(base, jnp.float64)


ALL = [
    ("lion", lambda: lion(1e-2)),
    ("laprop", lambda: laprop(1e-2, weight_decay=1e-3)),
    ("laprop_schedule", lambda: laprop(lambda c: 1e-2 * 0.99 ** c.astype(jnp.float32))),
    ("laprop_eps0", lambda: laprop(1e-2, eps=0.0)),
    ("stable_adamw", lambda: stable_adamw(1e-2)),
    ("stable_adamw_eps0", lambda: stable_adamw(1e-2, eps=0.0)),
    ("cautious_adamw", lambda: cautious_adamw(1e-2)),
    ("cautious_adamw_1c", lambda: cautious_adamw(1e-2, eps_before_correction=True)),
    ("cautious_lion", lambda: cautious_lion(1e-2, rescale="sum_plus_one")),
    ("cautious_adam_whole", lambda: cautious(adam(1e-2), descent=True)),
]


SCANNED = [a for a in ALL if not a[0].endswith(("_eps0", "_1c"))]


def check_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    for _ in range(5):
        grads = jax.tree.map(jnp.zeros_like, params)
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
