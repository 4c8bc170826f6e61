"""Adan, ADOPT and AdEMAMix: the shared trajectory and runners.

As in ``tests/parity/amsgrad_adamax_nadam.py``: 100 steps on a multi-leaf pytree with a cosine
learning-rate schedule and weight decay where the algorithm has it, gradients drawn in advance
with a 10x spike every 10 steps (so ADOPT's clip binds). The measure is
``max |x - ref| / (|ref| + 1e-6)``; float64 parity must be <= 1e-10. The tests are in
tests/test_adan.py, test_adopt.py and test_ademamix.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adamx import adan, ademamix, adopt, apply_updates
from tests import helpers
from tests.helpers import (
    PARITY_STEPS,
    cosine,
    jax_cosine,
    random_tree,
    relaxed,
    x64,
)

STEPS = PARITY_STEPS
LR = 1e-2
WD = 0.1


def spiky_gradients(seed=5):
    return helpers.spiky_gradients(random_tree(0, np.float64), seed)


GRADS = spiky_gradients()
PARAMS = random_tree(0, np.float64)
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)


def ours(make):
    """``make(lr_schedule)`` run in float64 with adamx's apply_updates."""
    with x64():
        return run_jax(make(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)


def optax_run(make):
    with x64(), relaxed():
        return run_jax(make(jax_cosine(LR, jnp.float64)), optax.apply_updates, jnp.float64)


def numpy_run(step_fn, state_fn):
    """Apply ``step_fn(t, lr, p, g, state) -> p`` leaf by leaf over the gradients, in float64."""
    leaves, treedef = jax.tree.flatten(PARAMS)
    params = [np.array(x, np.float64) for x in leaves]
    states = [state_fn(x) for x in params]
    for t, grads in enumerate(GRADS, start=1):
        lr = LR * cosine(t - 1)  # torch's LambdaLR: the multiplier of the 0-based step
        for k, g in enumerate(jax.tree.leaves(grads)):
            params[k] = step_fn(t, lr, params[k], np.asarray(g, np.float64), states[k])
    return jax.tree.unflatten(treedef, params)


ALL = [
    ("adan", lambda: adan(1e-2, weight_decay=1e-2)),
    ("adan_additive", lambda: adan(1e-2, weight_decay=1e-2, proximal=False)),
    ("adopt", lambda: adopt(1e-2, weight_decay=1e-2)),
    ("adopt_eps0", lambda: adopt(1e-2, eps=0.0)),
    ("ademamix", lambda: ademamix(1e-2, weight_decay=1e-2, alpha_warmup=10, b3_warmup=10)),
]


def check_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    for _ in range(5):
        grads = jax.tree.map(jnp.zeros_like, params)
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
