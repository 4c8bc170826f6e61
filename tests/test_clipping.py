"""Gradient preprocessing: each transform against a NumPy float64 closed form and against optax.

optax differences measured with float32 inputs (jax 0.10.2, optax 0.2.8, CPU): `clip`,
`adaptive_grad_clip`, `add_noise` (same key) and `centralize` are bit-identical;
`clip_by_global_norm` and `clip_by_block_rms` differ by at most 1 ulp (max relative difference
< 2e-7: optax divides then multiplies, adamx multiplies by one factor).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import (
    AddNoiseState,
    adaptive_grad_clip,
    add_noise,
    centralize,
    clip,
    clip_by_block_rms,
    clip_by_global_norm,
    global_norm,
)
from tests.helpers import max_relative_difference, random_tree, relaxed

PARAMS = jax.tree.map(jnp.asarray, random_tree(0))
GRADS = jax.tree.map(lambda x: 3 * jnp.asarray(x), random_tree(1))


def f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def apply(tx, grads, params=PARAMS, steps=1, *, jit=True):
    """``steps`` updates of ``tx`` (jitted: many small eager ops are slower than one compile)."""
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for _ in range(steps):
        out, state = update(grads, state, params)
    return out


def apply_optax(tx, grads, params=PARAMS, steps=1):
    with relaxed():
        return apply(tx, grads, params, steps)


def assert_close(ours, expected, rtol, atol=0.0):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=rtol, atol=atol)


# ---- closed forms (NumPy float64) ---------------------------------------------------------------


def np_global_norm(tree):
    return np.sqrt(sum(np.sum(np.abs(x) ** 2) for x in jax.tree.leaves(tree)))


def np_unit_norm(x):
    x = np.abs(x) ** 2
    if np.squeeze(x).ndim <= 1:
        total = np.sum(x, keepdims=True)
    elif x.ndim in (2, 3):
        total = np.sum(x, axis=0, keepdims=True)
    else:
        total = np.sum(x, axis=(0, 1, 2), keepdims=True)
    return np.broadcast_to(np.sqrt(total), x.shape)


def np_agc(g, p, clipping, eps=1e-3):
    g_norm, limit = np_unit_norm(g), clipping * np.maximum(np_unit_norm(p), eps)
    return np.where(g_norm < limit, g, g * limit / np.maximum(g_norm, 1e-6))


def test_clip_by_value():
    expected = jax.tree.map(lambda g: np.clip(g, -0.5, 0.5), f64(GRADS))
    assert_close(apply(clip(0.5), GRADS), expected, rtol=0)
    assert (
        max_relative_difference(apply(clip(0.5), GRADS), apply_optax(optax.clip(0.5), GRADS)) == 0
    )


@pytest.mark.parametrize("max_norm", [1.0, 1e3])
def test_clip_by_global_norm(max_norm):
    g = f64(GRADS)
    norm = np_global_norm(g)
    expected = jax.tree.map(lambda x: x * min(1.0, max_norm / norm), g)
    ours = apply(clip_by_global_norm(max_norm), GRADS)
    assert_close(ours, expected, rtol=1e-6)
    np.testing.assert_allclose(float(global_norm(GRADS)), norm, rtol=1e-6)
    theirs = apply_optax(optax.clip_by_global_norm(max_norm), GRADS)
    assert max_relative_difference(ours, theirs) < 2e-7


@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_global_norm_of_a_zero_tree_is_zero_not_nan(max_norm):
    zeros = jax.tree.map(jnp.zeros_like, GRADS)
    tx = clip_by_global_norm(max_norm)
    for out in (apply(tx, zeros), jax.jit(tx.update)(zeros, tx.init(PARAMS))[0]):
        for leaf in jax.tree.leaves(out):
            np.testing.assert_array_equal(np.asarray(leaf), 0.0)
    # No NaN in the derivative through the clip either (meta-gradients).
    grad = jax.grad(lambda z: jnp.sum(tx.update({"z": z}, tx.init(None))[0]["z"]))(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_global_norm_runs_in_float32_and_is_complex_aware():
    # In float16, 300^2 overflows to inf; the norm is computed in float32.
    tree = {"h": jnp.array([300.0, 400.0], jnp.float16), "c": jnp.array([3 + 4j], jnp.complex64)}
    np.testing.assert_allclose(float(global_norm(tree)), np.sqrt(300**2 + 400**2 + 25), rtol=1e-6)
    out = apply(clip_by_global_norm(1.0), tree, params=tree)
    assert out["h"].dtype == jnp.float16 and out["c"].dtype == jnp.complex64
    norm = np.sqrt(250025.0)
    np.testing.assert_allclose(
        np.asarray(out["h"], np.float64), [300 / norm, 400 / norm], rtol=1e-3
    )
    np.testing.assert_allclose(np.asarray(out["c"]), [(3 + 4j) / norm], rtol=1e-6)


def test_global_norm_of_a_bfloat16_tree_keeps_dtype_and_matches_float64():
    tree = jax.tree.map(lambda x: x.astype(jnp.bfloat16), GRADS)
    out = apply(clip_by_global_norm(1.0), tree, params=tree)
    g = f64(tree)
    expected = jax.tree.map(lambda x: x / np_global_norm(g), g)
    for a in jax.tree.leaves(out):
        assert a.dtype == jnp.bfloat16
    assert_close(out, expected, rtol=8e-3)  # one bfloat16 rounding of the result


def test_clip_by_block_rms():
    g = f64(GRADS)
    expected = jax.tree.map(
        lambda x: x / max(1.0, np.sqrt(np.mean(np.abs(x) ** 2)) / 0.7),
        g,
    )
    ours = apply(clip_by_block_rms(0.7), GRADS)
    assert_close(ours, expected, rtol=1e-6)
    theirs = apply_optax(optax.clip_by_block_rms(0.7), GRADS)
    assert max_relative_difference(ours, theirs) < 2e-7
    zeros = jax.tree.map(jnp.zeros_like, GRADS)
    for leaf in jax.tree.leaves(apply(clip_by_block_rms(0.0), zeros)):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_adaptive_grad_clip():
    params = {**PARAMS, "bias": jnp.zeros(5)}  # a zero-initialised leaf: eps keeps it moving
    grads = {**GRADS, "bias": jnp.ones(5)}
    expected = jax.tree.map(lambda g, p: np_agc(g, p, 0.1), f64(grads), f64(params))
    ours = apply(adaptive_grad_clip(0.1), grads, params)
    assert_close(ours, expected, rtol=1e-6)
    assert float(jnp.max(jnp.abs(ours["bias"]))) > 0
    theirs = apply_optax(optax.adaptive_grad_clip(0.1), grads, params)
    assert max_relative_difference(ours, theirs) == 0
    with pytest.raises(ValueError, match="needs the parameters"):
        adaptive_grad_clip(0.1).update(grads, adamx.EmptyState())


def test_adaptive_grad_clip_refuses_high_rank_without_axis():
    x = jnp.ones((1, 2, 1, 2, 1, 2))
    with pytest.raises(ValueError, match="pass `axis=`"):
        apply(adaptive_grad_clip(0.1), x, x)
    out = apply(adaptive_grad_clip(0.1, axis=(0, 1)), x, x)
    assert out.shape == x.shape


def test_add_noise_equals_optax_and_has_the_annealed_variance():
    zeros = {"a": jnp.zeros((100, 100)), "b": jnp.zeros(5)}
    ours_tx = add_noise(0.5, 0.55, key=7)
    with relaxed():
        theirs_tx = optax.add_noise(0.5, 0.55, key=7)
        theirs_state = theirs_tx.init(zeros)
    ours_state = ours_tx.init(zeros)
    ours_update, theirs_update = jax.jit(ours_tx.update), jax.jit(theirs_tx.update)
    for t in (1, 2, 3):
        ours, ours_state = ours_update(zeros, ours_state)
        with relaxed():
            theirs, theirs_state = theirs_update(zeros, theirs_state)
        assert max_relative_difference(ours, theirs) == 0
        # Closed form: the sample standard deviation is sqrt(eta / t^gamma) (10,000 samples; the
        # standard error of the estimate is 0.7%, the tolerance 3%).
        np.testing.assert_allclose(np.std(np.asarray(ours["a"])), np.sqrt(0.5 / t**0.55), rtol=0.03)
    assert isinstance(ours_state, AddNoiseState) and int(ours_state.count) == 3
    # A key from jax.random.key gives the same noise as its integer seed.
    same = add_noise(0.5, 0.55, jax.random.key(7))
    assert max_relative_difference(apply(same, zeros, zeros), apply(ours_tx, zeros, zeros)) == 0


def test_add_noise_needs_one_key():
    with pytest.raises(TypeError, match="exactly one source of randomness"):
        add_noise(0.1, 0.55)
    with pytest.raises(TypeError, match="integer seed or a key"):
        add_noise(0.1, 0.55, key="seven")
    assert int(add_noise(0.1, 0.55, seed=3).init(None).count) == 0


def test_centralize():
    def np_centralize(x, keep=0):
        if x.ndim <= 1:
            return x
        axes = tuple(a for a in range(x.ndim) if a != keep % x.ndim)
        return x - x.mean(axis=axes, keepdims=True)

    g = f64(GRADS)
    ours = apply(centralize(), GRADS)
    # A difference of float32 numbers of size ~3: absolute error ~1e-6 where the result is small.
    assert_close(ours, jax.tree.map(np_centralize, g), rtol=1e-5, atol=2e-6)
    assert max_relative_difference(ours, apply_optax(optax.centralize(), GRADS)) == 0
    last = apply(centralize(keep_axis=-1), GRADS)
    assert_close(last, jax.tree.map(lambda x: np_centralize(x, -1), g), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(last["dense"]["w"]).mean(axis=0), 0, atol=1e-6)


TRANSFORMS = {
    "clip": lambda: clip(0.5),
    "clip_by_global_norm": lambda: clip_by_global_norm(1.0),
    "clip_by_block_rms": lambda: clip_by_block_rms(0.7),
    "adaptive_grad_clip": lambda: adaptive_grad_clip(0.1),
    "add_noise": lambda: add_noise(0.1, 0.55, key=0),
    "centralize": lambda: centralize(),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_jit_extra_arguments_and_dtypes(name):
    tx = TRANSFORMS[name]()
    eager = apply(tx, GRADS, steps=2, jit=False)
    state = tx.init(PARAMS)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, value=1.0, gradient=g))
    for _ in range(2):
        jitted, state = update(GRADS, state, PARAMS)
    assert max_relative_difference(jitted, eager) < 1e-6
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), GRADS)
    for leaf in jax.tree.leaves(apply(tx, low)):
        assert leaf.dtype == jnp.bfloat16


def test_clip_before_the_moment_blocks_equals_clip_before_adam():
    """The moment blocks after a clip see the clipped gradient (docs/design.md, section 2)."""
    blocks = adamx.chain(
        clip_by_global_norm(1.0),
        adamx.ema(0.9),
        adamx.bias_correction(0.9),
        adamx.scale_by_second_moment(0.999),
    )
    whole = adamx.chain(clip_by_global_norm(1.0), adamx.scale_by_adam())
    assert max_relative_difference(apply(blocks, GRADS, steps=3), apply(whole, GRADS, steps=3)) == 0


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: clip(-1.0), "max_delta"),
        (lambda: clip_by_global_norm(-1.0), "max_norm"),
        (lambda: clip_by_block_rms(float("nan")), "threshold"),
        (lambda: adaptive_grad_clip(-0.1), "clipping"),
        (lambda: add_noise(-1.0, 0.55, 0), "eta"),
        (lambda: centralize(keep_axis=1.5), "keep_axis"),
    ],
)
def test_bad_hyperparameters_are_refused(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_clip_refuses_complex_updates_with_a_sentence():
    with pytest.raises(TypeError, match="clip_by_block_rms"):
        apply(clip(1.0), jnp.ones(2, jnp.complex64))
