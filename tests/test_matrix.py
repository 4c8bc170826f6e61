"""The shared matrix: every optimizer of the registry (tests/helpers.py) against every property.

Add an optimizer to ``OPTIMIZERS`` and it is tested here with no other code; test_interop.py crosses
the same registry with optax.chain, MultiSteps, nnx.Optimizer, linen, optimistix and equinox.

The tests that step run on both paths of `adamx.step`, named in their ids: ``jnp`` (``fused=False``:
``update`` then ``apply_updates``, every case) and ``kernel`` (``fused=True``: the compiled fused
kernel, adamx/kernels/_native, for the cases the kernel takes; `adamx.step` raises rather
than fall back, and where this machine has no kernel the test fails saying why). So every machine
tests both, whether or not it has a C++ compiler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.kernels import _derived, _native
from tests.helpers import (
    ELEMENTWISE,
    OPTIMIZER_IDS,
    OPTIMIZERS,
    REDUCING,
    minimise,
    parabola,
    random_tree,
    reachable_arrays,
    rosenbrock,
)

matrix = pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)


def is_fused(case) -> bool:
    """The kernel takes this optimizer on the matrix's tree: its step lowers to programs
    (adamx/kernels/_derived.py)."""
    tx = case.make(case.learning_rate)
    params = jax.tree.map(jnp.asarray, random_tree(0))
    try:
        state = tx.init(params)
    except (TypeError, ValueError):
        return False
    return _derived.unsupported(tx, adamx.apply_updates, params, state, params) is None


KERNEL_CASES = [case for case in OPTIMIZERS if is_fused(case)]


def with_paths(cases):
    """``(case, path)`` pairs: every case on the jnp path, the kernel's cases on the kernel too."""
    return [pytest.param(case, "jnp", id=f"{case.name}-jnp") for case in cases] + [
        pytest.param(case, "kernel", id=f"{case.name}-kernel")
        for case in cases
        if case in KERNEL_CASES
    ]


both_paths = pytest.mark.parametrize("case, path", with_paths(OPTIMIZERS))


def fused(path: str) -> bool:
    """`adamx.step`'s ``fused`` for ``path``: ``False`` forces the jnp path; ``True`` runs the kernel
    or raises (it never falls back), after checking here that this machine has the kernel."""
    if path == "jnp":
        return False
    available, why = _native.status()
    if not available:
        pytest.fail(
            f"the kernel path needs adamx's native kernel, unavailable here: {why}. Install a C++ "
            "compiler (CI has one); this test does not fall back to the jnp path."
        )
    return True


def test_the_kernel_cases_are_the_fused_optimizers():
    """The kernel path covers every elementwise optimizer (adamx/kernels/_derived.py's docstring)
    and those with a per-tensor scalar reduction, with stochastic-bfloat16 and 8-bit moments, and
    a chain a user assembles; not those that reduce a leaf to an array (a matrix product, a row
    mean)."""
    names = {case.name for case in KERNEL_CASES}
    assert set(ELEMENTWISE) | set(REDUCING) <= names
    assert {"adamw_bf16_sr", "adamw_8bit", "adam_blocks"} <= names
    assert not {"adafactor", "muon", "soap", "adam_mini", "adamw_4bit"} & names


@pytest.mark.parametrize("case", KERNEL_CASES, ids=[case.name for case in KERNEL_CASES])
@pytest.mark.parametrize("path", ["kernel", "jnp"])
def test_each_path_compiles_to_its_own_code(case, path):
    """The compiled step calls the kernel (a custom call) on the kernel path and never on the jnp
    path: the two parametrizations of this file test different code."""
    opt = case.make(case.learning_rate)
    params = jax.tree.map(jnp.asarray, random_tree(0))
    step = jax.jit(lambda p, s, g: adamx.step(opt, g, s, p, fused=fused(path)))
    text = step.lower(params, opt.init(params), params).compile().as_text()
    targets = (_native.DERIVED_TARGET, _native.REDUCE_TARGET)
    called = [t for t in targets if f'"{t}"' in text]
    assert called if path == "kernel" else not called, called


@both_paths
def test_converges_on_a_parabola(case, path):
    params = jax.tree.map(jnp.asarray, random_tree(0))
    start = float(parabola(params))
    opt = case.make(case.learning_rate)
    params, _ = minimise(opt, parabola, params, steps=300, fused=fused(path))
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
            minimise(opt, parabola, params, steps=1, fused=False)
        return
    # The jnp path: the kernel takes float32 and bfloat16 leaves only.
    params, state = minimise(opt, parabola, params, steps=300, fused=False)
    assert float(parabola(params)) < 1e-3 * start
    assert params["z"].dtype == jnp.complex64
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype in (jnp.complex64, jnp.float32, jnp.int32), leaf.dtype


ROSENBROCK = [case for case in OPTIMIZERS if case.rosenbrock is not None]


@pytest.mark.parametrize("case, path", with_paths(ROSENBROCK))
def test_converges_on_rosenbrock(case, path):
    learning_rate, steps = case.rosenbrock
    params = {"xy": jnp.array([-1.2, 1.0], jnp.float32)}
    opt = case.make(learning_rate)
    params, _ = minimise(opt, rosenbrock, params, steps=steps, fused=fused(path))
    np.testing.assert_allclose(np.asarray(params["xy"]), [1.0, 1.0], atol=2e-2)


def test_every_rosenbrock_exclusion_says_why():
    for case in OPTIMIZERS:
        assert (case.rosenbrock is None) == bool(case.rosenbrock_excluded), case.name


@both_paths
def test_jit_and_no_jit_agree(case, path):
    """Equal up to rounding: XLA fuses (and may contract to FMA) under jit. After 10 steps on O(1)
    parameters that is a few float32 ulps of 1 (atol 1e-6 = 8 ulps); a tracing bug is far larger."""
    params = jax.tree.map(jnp.asarray, random_tree(1))
    opt, how = case.make(case.learning_rate), fused(path)
    jitted, _ = minimise(opt, parabola, params, steps=10, jit=True, fused=how)
    eager, _ = minimise(opt, parabola, params, steps=10, jit=False, fused=how)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@both_paths
def test_no_recompilation_on_the_second_step(case, path):
    opt, how = case.make(case.learning_rate), fused(path)
    traces = []

    @jax.jit
    def train_step(params, state):
        traces.append(None)
        grads = jax.grad(parabola)(params)
        return adamx.step(opt, grads, state, params, fused=how)

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


@both_paths
def test_state_structure_and_dtypes_are_stable(case, path):
    """Every state leaf keeps its structure, shape and dtype, so the state is a lax.scan carry."""
    opt, how = case.make(case.learning_rate), fused(path)
    params = jax.tree.map(jnp.asarray, random_tree(4))
    state = opt.init(params)

    def body(carry, _):
        params, state = carry
        return adamx.step(opt, jax.grad(parabola)(params), state, params, fused=how), None

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
    """Built from Python numbers, an optimizer keeps no `jax.Array` in anything its functions reach
    (closures, partials; `reachable_arrays` in tests/helpers.py): an array made at
    construction would be committed to a device and baked into every trace as a constant."""
    opt = case.make(case.learning_rate)
    assert reachable_arrays(opt) == []


def test_the_walk_finds_an_array_the_user_passed():
    """`jax.tree.leaves(tx)` sees only ``init`` and ``update``; the walk sees what they close over.
    An array the user passes stays as given (as optax allows): the walk finds that very object,
    or the step's ``-lr`` made from it."""
    lr, wd = jnp.asarray(0.1), jnp.asarray(1e-4)
    tx = adamx.adam(lr)
    assert not any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(tx))
    found = reachable_arrays(tx)
    assert found, found
    np.testing.assert_allclose([abs(float(x)) for x in found], 0.1)  # lr, or -lr for the step
    found = reachable_arrays(adamx.adamw(0.1, weight_decay=wd))
    assert len(found) == 1 and found[0] is wd, found


@both_paths
def test_params_and_state_can_be_donated_together(case, path):
    """A jitted training step donates params and state (`make_train_step`): the state must share
    no buffer with the params nor hold one buffer twice, or XLA refuses to donate it."""
    params = jax.tree.map(jnp.asarray, random_tree(0))
    opt = case.make(case.learning_rate)
    state = opt.init(params)
    step = adamx.make_train_step(parabola, opt, fused=fused(path))
    start = float(parabola(params))
    new_params, new_state, loss = step(params, state)  # the params `init` saw, as users write it
    assert float(loss) == start
    new_params, _, _ = step(new_params, new_state)  # the returned ones donate too
    assert float(parabola(new_params)) < float(loss)
