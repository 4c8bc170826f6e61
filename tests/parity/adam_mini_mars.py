"""Adam-mini and MARS: the shared schedule, gradients, trees and builders.

50 float64 steps (issue 11) with a cosine learning-rate schedule and weight decay; the measure
is ``max |x - ref| / (|ref| + 1e-6)`` and must be <= 1e-10. The tests are in
tests/test_adam_mini.py and tests/test_mars.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adamx import adam_mini, apply_updates, mars
from tests import helpers
from tests.helpers import jax_cosine

STEPS = 50
LR = 1e-2
WD = 0.1
TOL = 1e-10


def cosine(t: int) -> float:
    """The schedule multiplier at the 0-based step ``t`` (what adamx's schedule sees)."""
    return helpers.cosine(t, STEPS)


def schedule(base: float):
    return jax_cosine(base, jnp.float64, STEPS)


def run_jax(tx, params, grads):
    return helpers.run_jax(tx, apply_updates, jnp.float64, params, grads)


def gradients(tree, seed: int, scales=(1.0,)):
    """N(0, 1) gradients like ``tree``, step ``i`` multiplied by ``scales[i % len(scales)]``."""
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda x, s=scale: s * rng.standard_normal(np.shape(x)), tree)
        for scale in (scales[i % len(scales)] for i in range(STEPS))
    ]


DIM, N_HEADS, N_KV_HEADS = 8, 2, 1
HEAD_DIM = DIM // N_HEADS


def transformer_tree(seed: int = 0, dtype=np.float64) -> dict:
    """A small transformer-like tree in flax's layout (Dense kernels are ``(in, out)``)."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return {
        "embed": {"embedding": normal(11, DIM)},
        "attn": {
            "q_proj": {"kernel": normal(DIM, DIM), "bias": normal(DIM)},
            "k_proj": {"kernel": normal(DIM, N_KV_HEADS * HEAD_DIM)},
            "v_proj": {"kernel": normal(DIM, N_KV_HEADS * HEAD_DIM)},
            "o_proj": {"kernel": normal(DIM, DIM)},
        },
        "layers": {"mlp": {"kernel": normal(3, DIM, 16)}},  # nn.scan: 3 stacked layers
        "final_norm": {"scale": normal(DIM)},
        "lm_head": {"kernel": normal(DIM, 11)},
        "other": {"w": normal(5, 3)},
    }


def stacked(leaf):
    return 1 if np.ndim(leaf) == 3 else 0


def beta_update(v, x, b):
    return v * b + x * (1 - b)


MARS_LR, MARS_LR_1D, MARS_WD_1D = 3e-3, 2e-3, 0.05


BUILDERS = {
    "adam_mini": lambda: adam_mini(
        1e-2, weight_decay=0.1, n_heads=N_HEADS, n_kv_heads=1, batch_dims=stacked
    ),
    "mars": lambda: mars(1e-2, weight_decay=0.1),
    "mars_1d": lambda: mars(1e-2, weight_decay=0.1, optimize_1d=True, batch_dims=stacked),
}


def check_zero_gradients_give_finite_params(name):
    params = jax.tree.map(lambda x: jnp.zeros(np.shape(x), jnp.float32), transformer_tree(0))
    tx = BUILDERS[name]()
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(5):
        updates, state = step(jax.tree.map(jnp.zeros_like, params), state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def check_dtypes_are_kept(name, dtype):
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), transformer_tree(0, np.float32))
    tx = BUILDERS[name]()
    state = tx.init(params)
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * jnp.asarray(0.5, dtype), params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    new_params = apply_updates(params, updates)
    assert jax.tree.map(lambda x: x.dtype, new_params) == jax.tree.map(lambda x: x.dtype, params)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new_params))
