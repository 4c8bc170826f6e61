"""Adafactor, LAMB and LARS: the shared trajectory and runners.

Parity: 100 steps (``PARITY_STEPS``) in float64 on ``random_tree`` plus a stacked ``(6, 5, 4)``
leaf (six layers of 5x4 matrices), gradients drawn in advance with a 10x spike every 10 steps, a
cosine learning-rate schedule and weight decay where the algorithm has it; the measure is
``max |x - ref| / (|ref| + 1e-6)`` and must be <= 1e-10. The tests are in tests/test_adafactor.py,
test_lamb.py and test_lars.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx import adafactor, apply_updates, lamb, lars
from tests import helpers
from tests.helpers import (
    PARITY_STEPS,
    cosine,
    random_tree,
    relaxed,
    x64,
)

STEPS = PARITY_STEPS
WD = 0.1


def make_params(seed=0):
    tree = random_tree(seed, np.float64)
    tree["stack"] = np.random.default_rng(seed + 10).standard_normal((6, 5, 4))
    return tree


def spiky_gradients(params, seed=9, steps=STEPS):
    return helpers.spiky_gradients(params, seed, steps)


PARAMS = make_params()
GRADS = spiky_gradients(PARAMS)
TREEDEF = jax.tree.structure(PARAMS)
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)
run_torch = functools.partial(helpers.run_torch, params=PARAMS, grads=GRADS)


def stacked(p):
    """``batch_dims`` for the tree: the ``(6, 5, 4)`` stack has one leading layer axis."""
    return 1 if p.ndim == 3 and p.shape[0] == 6 else 0


def ours(tx, grads=GRADS, params=PARAMS):
    with x64():
        return helpers.run_jax(tx, apply_updates, jnp.float64, params, grads)


def optax_run(build, grads=GRADS, params=PARAMS):
    """``build()`` runs under x64: optax fixes dtypes such as ``accumulator_dtype=jnp.float64``
    when the transformation is built, to float32 if x64 is off then."""
    with x64(), relaxed():
        return helpers.run_jax(build(), optax.apply_updates, jnp.float64, params, grads)


def numpy_run(step, state_init, base_lr, params=PARAMS, grads=GRADS, multiplier=cosine):
    """Run ``step(t, lr_t, p, g, s) -> (p, s)`` leaf by leaf for ``t = 1..len(grads)``."""
    leaves = [np.array(x, np.float64) for x in jax.tree.leaves(params)]
    states = [state_init(p) for p in leaves]
    for t, g_tree in enumerate(grads, start=1):
        lr = base_lr * multiplier(t - 1)
        for k, g in enumerate(jax.tree.leaves(g_tree)):
            leaves[k], states[k] = step(t, lr, leaves[k], np.asarray(g, np.float64), states[k])
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


TORCH_OPTIONS = dict(
    eps_placement="clamp", eps=None, factored_dims="last", min_dim_size_to_factor=1
)


def layer_norms(x, batch):
    return np.sqrt(np.sum(np.asarray(x) ** 2, axis=tuple(range(batch, np.ndim(x)))))


ALL = [
    ("adafactor", lambda: adafactor(1e-2)),
    ("adafactor_factored", lambda: adafactor(1e-2, min_dim_size_to_factor=1, momentum=0.9)),
    ("adafactor_torch", lambda: adafactor(1e-2, weight_decay=1e-2, **TORCH_OPTIONS)),
    ("adafactor_eps0", lambda: adafactor(1e-2, eps=0.0, min_dim_size_to_factor=1)),
    ("adafactor_clamp_eps0", lambda: adafactor(1e-2, eps=0.0, eps_placement="clamp")),
    ("lamb", lambda: lamb(1e-2, weight_decay=1e-2)),
    ("lars", lambda: lars(1e-2, weight_decay=1e-4, nesterov=True)),
]


SCANNED = [a for a in ALL if "eps0" not in a[0]]


def check_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(5):
        grads = jax.tree.map(jnp.zeros_like, params)
        updates, state = update(grads, state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def check_dtypes_are_kept_in_a_scan(name, make, dtype):
    _, s = helpers.scan_keeps_dtypes(make(), dtype)
    if dtype == jnp.complex64:  # statistics of complex parameters are real
        real = {np.dtype(jnp.float32), np.dtype(jnp.int32)}
        stats = jax.tree.leaves(s[0][0]) if name.startswith("adafactor") else []
        assert {x.dtype for x in stats} <= real


def check_each_layer_moves_by_lr_times_its_norm(make, factor):
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
