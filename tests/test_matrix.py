"""The shared matrix: every optimizer of the registry (tests/helpers.py) against every property.

Add an optimizer to ``OPTIMIZERS`` and it is tested here with no other code; test_interop.py crosses
the same registry with optax.chain, MultiSteps, nnx.Optimizer, linen, optimistix and equinox.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from tests.helpers import (
    OPTIMIZER_IDS,
    OPTIMIZERS,
    minimise,
    parabola,
    random_tree,
    rosenbrock,
)

matrix = pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)


@matrix
def test_converges_on_a_parabola(case):
    params = jax.tree.map(jnp.asarray, random_tree(0))
    start = float(parabola(params))
    params, _ = minimise(case.make(case.learning_rate), parabola, params, steps=300)
    assert float(parabola(params)) < 1e-3 * start


@matrix
def test_converges_on_a_complex_parabola(case):
    """complex64 as optax tests it: gradients are conj(df/dz). State is complex64 where it follows
    the gradient and float32 where it holds magnitudes (second moments), never wider."""
    rng = np.random.default_rng(0)
    params = {"z": jnp.asarray(rng.standard_normal(4) + 1j * rng.standard_normal(4), jnp.complex64)}
    start = float(parabola(params))
    opt = case.make(case.learning_rate)
    if case.complex_excluded:  # refused up front, with a sentence that says so
        with pytest.raises(TypeError, match="complex"):
            minimise(opt, parabola, params, steps=1)
        return
    params, state = minimise(opt, parabola, params, steps=300)
    assert float(parabola(params)) < 1e-3 * start
    assert params["z"].dtype == jnp.complex64
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype in (jnp.complex64, jnp.float32, jnp.int32), leaf.dtype


ROSENBROCK = [case for case in OPTIMIZERS if case.rosenbrock is not None]


@pytest.mark.parametrize("case", ROSENBROCK, ids=[case.name for case in ROSENBROCK])
def test_converges_on_rosenbrock(case):
    learning_rate, steps = case.rosenbrock
    params = {"xy": jnp.array([-1.2, 1.0], jnp.float32)}
    params, _ = minimise(case.make(learning_rate), rosenbrock, params, steps=steps)
    np.testing.assert_allclose(np.asarray(params["xy"]), [1.0, 1.0], atol=2e-2)


def test_every_rosenbrock_exclusion_says_why():
    for case in OPTIMIZERS:
        assert (case.rosenbrock is None) == bool(case.rosenbrock_excluded), case.name


@matrix
def test_jit_and_no_jit_agree(case):
    """Equal up to rounding: XLA fuses (and may contract to FMA) under jit. After 10 steps on O(1)
    parameters that is a few float32 ulps of 1 (atol 1e-6 = 8 ulps); a tracing bug is far larger."""
    params = jax.tree.map(jnp.asarray, random_tree(1))
    jitted, _ = minimise(case.make(case.learning_rate), parabola, params, steps=10, jit=True)
    eager, _ = minimise(case.make(case.learning_rate), parabola, params, steps=10, jit=False)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@matrix
def test_no_recompilation_on_the_second_step(case):
    opt = case.make(case.learning_rate)
    traces = []

    @jax.jit
    def train_step(params, state):
        traces.append(None)
        grads = jax.grad(parabola)(params)
        return adamx.step(opt, grads, state, params)

    params = jax.tree.map(jnp.asarray, random_tree(2))
    state = opt.init(params)
    for _ in range(3):
        params, state = train_step(params, state)
    assert len(traces) == 1


@matrix
def test_extra_keyword_arguments_are_accepted_and_ignored(case):
    opt = case.make(case.learning_rate)
    params = jax.tree.map(jnp.asarray, random_tree(3))
    grads = jax.grad(parabola)(params)
    state = opt.init(params)
    plain, _ = opt.update(grads, state, params)
    extra, _ = opt.update(
        grads, state, params, value=jnp.float32(1.0), grad=grads, value_fn=parabola, anything=None
    )
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(extra), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@matrix
def test_state_structure_and_dtypes_are_stable(case):
    """Every state leaf keeps its structure, shape and dtype, so the state is a lax.scan carry."""
    opt = case.make(case.learning_rate)
    params = jax.tree.map(jnp.asarray, random_tree(4))
    state = opt.init(params)

    def body(carry, _):
        params, state = carry
        return adamx.step(opt, jax.grad(parabola)(params), state, params), None

    (params_after, state_after), _ = jax.lax.scan(body, (params, state), None, length=5)
    assert jax.tree.structure(state_after) == jax.tree.structure(state)
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(state_after), strict=True):
        assert (before.shape, before.dtype) == (after.shape, after.dtype)
    for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(params_after), strict=True):
        assert (before.shape, before.dtype) == (after.shape, after.dtype)


@matrix
def test_updates_come_back_in_the_gradient_dtype(case):
    opt = case.make(case.learning_rate)
    params = {"w": jnp.ones((3,), jnp.bfloat16), "b": jnp.ones((2,), jnp.float32)}
    grads = {"w": jnp.full((3,), 0.5, jnp.bfloat16), "b": jnp.full((2,), 0.5, jnp.float32)}
    updates, _ = opt.update(grads, opt.init(params), params)
    assert updates["w"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32


@matrix
def test_transformation_holds_no_arrays(case):
    opt = case.make(case.learning_rate)
    assert not any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(opt))


@matrix
def test_params_and_state_can_be_donated_together(case):
    """A jitted training step donates params and state (`make_train_step`): the state must share
    no buffer with the params nor hold one buffer twice, or XLA refuses to donate it."""
    params = jax.tree.map(jnp.asarray, random_tree(0))
    opt = case.make(case.learning_rate)
    state = opt.init(params)
    step = adamx.make_train_step(parabola, opt)
    start = float(parabola(params))
    new_params, new_state, loss = step(params, state)  # the params `init` saw, as users write it
    assert float(loss) == start
    new_params, _, _ = step(new_params, new_state)  # the returned ones donate too
    assert float(parabola(new_params)) < float(loss)
