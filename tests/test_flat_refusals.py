"""Transformations that work on each parameter as a whole refuse `FlatParams` (`check_not_flat`).

A flat buffer concatenates many parameters, so a trust ratio, a factored or blockwise statistic, an
orthogonalisation or a per-leaf RMS, norm or mean computed on it would silently be the buffer's,
not each parameter's. Each such block raises a `TypeError` naming itself at ``init``; the same
optimizer still works on the tree, and elementwise optimizers (with global clipping) run flat.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx

# A matrix and a vector; MATRICES for the blocks that accept matrix leaves only (Muon's).
PARAMS = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
MATRICES = {"w": jnp.ones((3, 4)), "v": jnp.full((2, 3), 0.5)}

# (name, factory, who: the block named in the error, params, flatten's `group`): `group` splits
# the buffers along the optimizer's own labels where it partitions the params (`mars`, `muon`),
# so that the labels resolve and the per-parameter block is reached.
CASES = [
    ("lamb", lambda: adamx.lamb(1e-3), "scale_by_trust_ratio", PARAMS, None),
    ("lars", lambda: adamx.lars(1e-3), "scale_by_trust_ratio", PARAMS, None),
    ("scale_by_trust_ratio", adamx.scale_by_trust_ratio, "scale_by_trust_ratio", PARAMS, None),
    ("adafactor", lambda: adamx.adafactor(1e-3), "scale_by_factored_rms", PARAMS, None),
    (
        "adafactor_unfactored",
        lambda: adamx.adafactor(1e-3, factored=False),
        "adafactor",
        PARAMS,
        None,
    ),
    (
        "adafactor_parameter_scale",
        lambda: adamx.adafactor(1e-3, factored=False, clipping_threshold=None),
        "adafactor",
        PARAMS,
        None,
    ),
    ("scale_by_adafactor", adamx.scale_by_adafactor, "scale_by_factored_rms", PARAMS, None),
    ("scale_by_factored_rms", adamx.scale_by_factored_rms, "scale_by_factored_rms", PARAMS, None),
    ("adam_mini", lambda: adamx.adam_mini(1e-3), "block_mean", PARAMS, None),
    ("scale_by_adam_mini", adamx.scale_by_adam_mini, "block_mean", PARAMS, None),
    ("cautious_adamw", lambda: adamx.cautious_adamw(1e-3), "cautious", PARAMS, None),
    (
        "cautious_lion",
        lambda: adamx.cautious_lion(1e-3, rescale="sum_plus_one"),
        "cautious",
        PARAMS,
        None,
    ),
    ("cautious", lambda: adamx.cautious(adamx.scale_by_adam()), "cautious", PARAMS, None),
    ("clip_by_block_rms", lambda: adamx.clip_by_block_rms(1.0), "clip_by_block_rms", PARAMS, None),
    (
        "adaptive_grad_clip",
        lambda: adamx.adaptive_grad_clip(0.1),
        "adaptive_grad_clip",
        PARAMS,
        None,
    ),
    ("centralize", adamx.centralize, "centralize", PARAMS, None),
    ("mars", lambda: adamx.mars(1e-3), "clip_by_block_norm", PARAMS, adamx.mars_labels),
    (
        "mars_optimize_1d",
        lambda: adamx.mars(1e-3, optimize_1d=True),
        "clip_by_block_norm",
        PARAMS,
        None,
    ),
    ("scale_by_mars", adamx.scale_by_mars, "clip_by_block_norm", PARAMS, None),
    ("clip_by_block_norm", adamx.clip_by_block_norm, "clip_by_block_norm", PARAMS, None),
    ("muon", lambda: adamx.muon(1e-3), "orthogonalize", PARAMS, adamx.muon_labels),
    ("scale_by_muon", adamx.scale_by_muon, "orthogonalize", MATRICES, None),
    ("orthogonalize", adamx.orthogonalize, "orthogonalize", MATRICES, None),
    ("scale_by_shape", adamx.scale_by_shape, "scale_by_shape", MATRICES, None),
    ("soap", lambda: adamx.soap(1e-3), "scale_by_soap", PARAMS, None),
    ("scale_by_soap", adamx.scale_by_soap, "scale_by_soap", PARAMS, None),
    (
        "stable_adamw",
        lambda: adamx.stable_adamw(1e-3),
        "scale_by_clipped_second_moment",
        PARAMS,
        None,
    ),
    (
        "scale_by_stable_adamw",
        adamx.scale_by_stable_adamw,
        "scale_by_clipped_second_moment",
        PARAMS,
        None,
    ),
    (
        "scale_by_clipped_second_moment",
        adamx.scale_by_clipped_second_moment,
        "scale_by_clipped_second_moment",
        PARAMS,
        None,
    ),
]
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("name", "factory", "who", "params", "group"), CASES, ids=IDS)
def test_refuses_flat_params(name, factory, who, params, group):
    flat = adamx.flatten(params, group=group)
    with pytest.raises(TypeError, match=re.escape(f"`{who}` works on each parameter as a whole")):
        factory().init(flat)


@pytest.mark.parametrize(("name", "factory", "who", "params", "group"), CASES, ids=IDS)
def test_still_runs_on_the_tree(name, factory, who, params, group):
    tx = factory()
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    updates, _ = tx.update(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_error_names_the_reason_and_the_way_out():
    with pytest.raises(TypeError, match="trust ratio") as info:
        adamx.lamb(1e-3).init(adamx.flatten(PARAMS))
    assert "flat.unflatten()" in str(info.value)


# The variants of the refusing blocks that are elementwise after all: they accept `FlatParams`.
ELEMENTWISE = [
    ("cautious_rescale_none", lambda: adamx.cautious_adamw(1e-3, rescale="none")),
    ("scale_by_factored_rms_unfactored", lambda: adamx.scale_by_factored_rms(factored=False)),
    (
        "adafactor_elementwise",
        lambda: adamx.adafactor(
            1e-3, factored=False, clipping_threshold=None, multiply_by_parameter_scale=False
        ),
    ),
    ("scale_by_shape_none", lambda: adamx.scale_by_shape(None)),
]


@pytest.mark.parametrize(("name", "factory"), ELEMENTWISE, ids=[n for n, _ in ELEMENTWISE])
def test_elementwise_variants_accept_flat_params(name, factory):
    flat = adamx.flatten(PARAMS)
    tx = factory()
    state = tx.init(flat)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), flat)
    updates, _ = tx.update(grads, state, flat)
    assert isinstance(updates, adamx.FlatParams)


def test_global_clipping_and_adamw_run_flat():
    """clip_by_global_norm + adamw steps on FlatParams exactly as on the tree."""
    params = {"w": jnp.arange(12.0).reshape(3, 4) / 10, "b": jnp.linspace(-1.0, 1.0, 4)}

    def loss(p):
        return jnp.sum(p["w"] ** 2) + jnp.sum(jnp.sin(p["b"]))

    def decay(p):
        return jax.tree.map(lambda x: x.ndim > 1, p)

    tx = adamx.chain(adamx.clip_by_global_norm(0.5), adamx.adamw(1e-2, mask=decay))

    flat = adamx.flatten(params, group=decay)
    flat_state = tx.init(flat)
    tree, tree_state = params, tx.init(params)
    for _ in range(3):
        grads = jax.grad(lambda f: loss(f.unflatten()))(flat)
        assert isinstance(grads, adamx.FlatParams)
        updates, flat_state = tx.update(grads, flat_state, flat)
        flat = adamx.apply_updates(flat, updates)
        updates, tree_state = tx.update(jax.grad(loss)(tree), tree_state, tree)
        tree = adamx.apply_updates(tree, updates)
    assert isinstance(flat, adamx.FlatParams)
    for name in params:
        np.testing.assert_allclose(flat.unflatten()[name], tree[name], rtol=1e-6, atol=1e-7)
