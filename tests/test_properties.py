"""Property-based tests (hypothesis): every registry optimizer on random pytrees.

Trees nest dicts, lists and tuples, with empty subtrees, ``None`` leaves, scalar and zero-size leaves
of float16, bfloat16, float32, float64 and complex64. Properties: structure and dtypes preserved,
finite in gives finite out, jit equals no-jit, two runs are bitwise equal, and the step size stays
within the bound the algorithm guarantees.

Profiles: ``ci`` (the default: thorough, derandomized so CI is reproducible) and ``dev`` (quick);
choose with ``HYPOTHESIS_PROFILE=dev``. ``deadline=None``: an example's first call compiles.
"""

from __future__ import annotations

import collections
import contextlib
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import adamx
from tests.helpers import OPTIMIZERS, x64

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

EXAMPLES_RUN: collections.Counter = collections.Counter()
LEAVES_SEEN: collections.Counter = collections.Counter()  # what the structure property was fed


@pytest.fixture(scope="module", autouse=True)
def _report_examples():
    yield
    # Shown with `pytest -s` (and in the captured output of the module's last test otherwise).
    print(f"\nhypothesis examples run per property: {dict(EXAMPLES_RUN)}")
    print(f"leaves seen by test_structure_dtypes_and_finiteness_are_preserved: {dict(LEAVES_SEEN)}")


# ---- the strategy ----------------------------------------------------------------------------------

DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64")


@dataclass(frozen=True)
class Leaf:
    """A leaf to be: its dtype name and shape (an opaque pytree leaf until `build` fills it)."""

    dtype: str
    shape: tuple[int, ...]


leaves = st.one_of(
    st.none(),
    st.builds(
        Leaf,
        st.sampled_from(DTYPES),
        st.lists(st.integers(0, 3), max_size=3).map(tuple),  # () is a scalar, a 0 is zero-size
    ),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
    ),
    max_leaves=6,
    # A bare `None` as the whole tree is excluded here and tested in
    # test_bare_none_tree_with_nesterov_momentum (a known bug); `None` inside containers stays.
).filter(lambda tree: tree is not None)


def _is_leaf(x):
    return isinstance(x, Leaf)


# Not drawn here: XLA:CPU crashed (a segmentation fault inside `backend_compile`) on an eager
# example of 8-bit moments in a CI worker that had run half the suite, twice at the same example,
# while the module alone passes. Until that is understood, the quantised storages' properties are
# covered by tests/test_quantize.py and the rest of the shared matrix, not by these eager runs.
EAGER_CRASH = {"adamw_8bit", "adamw_4bit"}


def _admissible(case, spec) -> bool:
    """Whether ``case`` takes every leaf of ``spec``: an optimizer that refuses complex parameters
    (tests/test_matrix.py checks that it does, with a clear error) draws real trees only."""
    if case.name in EAGER_CRASH:
        return False
    kinds = [leaf.dtype for leaf in jax.tree.leaves(spec, is_leaf=_is_leaf) if _is_leaf(leaf)]
    return not (case.complex_excluded and "complex64" in kinds)


def _is_none(x):
    return x is None


def _np_dtype(name: str):
    return jnp.dtype(name)


def build(spec, seed: int, log10_scale: float = 0.0, zero_fraction: float = 0.2):
    """Concrete arrays for ``spec``: normal values times 10^log10_scale, some exactly zero."""
    rng = np.random.default_rng(seed)

    def one(leaf: Leaf):
        dtype = _np_dtype(leaf.dtype)
        x = rng.standard_normal(leaf.shape) * 10.0**log10_scale
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.standard_normal(leaf.shape) * 10.0**log10_scale
        x = np.where(rng.random(leaf.shape) < zero_fraction, 0, x)
        return jnp.asarray(np.asarray(x).astype(dtype))

    return jax.tree.map(one, spec, is_leaf=_is_leaf)


def precision(spec):
    """float64 leaves need jax_enable_x64, scoped to the test body (never to the strategy)."""
    has64 = any(leaf.dtype == "float64" for leaf in jax.tree.leaves(spec, is_leaf=_is_leaf))
    return x64() if has64 else contextlib.nullcontext()


optimizers = st.sampled_from(OPTIMIZERS)
seeds = st.integers(0, 2**32 - 1)
# Gradient magnitudes 1e-3 .. 1e3: inside float16's range (6e-5 .. 6.5e4) so the inputs are finite
# and not all flushed to zero, and far from float32 overflow of |g|^2.
scales = st.floats(-3.0, 3.0)

STEPS = 3


def run(tx, params, grads_seq, *, jit: bool):
    """``STEPS`` optimizer steps with the given gradients: ``(updates per step, params, state)``."""
    update = jax.jit(tx.update) if jit else tx.update
    apply = jax.jit(adamx.apply_updates) if jit else adamx.apply_updates
    state = tx.init(params)
    all_updates = []
    for grads in grads_seq:
        updates, state = update(grads, state, params)
        params = apply(params, updates)
        all_updates.append(updates)
    return all_updates, params, state


def _example(spec, seed, scale):
    params = build(spec, seed, 0.0, zero_fraction=0.1)
    grads_seq = [build(spec, seed + 1 + i, scale) for i in range(STEPS)]
    return params, grads_seq


def _dtypes(tree):
    return jax.tree.map(lambda x: jnp.asarray(x).dtype, tree)


def _shapes(tree):
    return jax.tree.map(lambda x: jnp.shape(x), tree)


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


# ---- properties ----------------------------------------------------------------------------------


@given(case=optimizers, spec=trees, seed=seeds, scale=scales)
def test_structure_dtypes_and_finiteness_are_preserved(case, spec, seed, scale):
    assume(_admissible(case, spec))
    EXAMPLES_RUN["structure_dtypes_finite"] += 1
    for leaf in jax.tree.leaves(spec, is_leaf=_is_leaf):
        LEAVES_SEEN[leaf.dtype] += 1
        LEAVES_SEEN["scalar"] += leaf.shape == ()
        LEAVES_SEEN["zero-size"] += 0 in leaf.shape
    LEAVES_SEEN["trees without leaves"] += not jax.tree.leaves(spec, is_leaf=_is_leaf)
    LEAVES_SEEN["None leaves"] += sum(x is None for x in jax.tree.leaves(spec, is_leaf=_is_none))
    with precision(spec):
        params, grads_seq = _example(spec, seed, scale)
        tx = case.make(case.learning_rate)
        init_state = tx.init(params)
        all_updates, new_params, state = run(tx, params, grads_seq, jit=True)
        for updates, grads in zip(all_updates, grads_seq, strict=True):
            assert jax.tree.structure(updates) == jax.tree.structure(grads)
            assert _dtypes(updates) == _dtypes(grads)
            assert _shapes(updates) == _shapes(grads)
            assert _all_finite(updates), case.name
        assert jax.tree.structure(new_params) == jax.tree.structure(params)
        assert _dtypes(new_params) == _dtypes(params)
        assert _all_finite(new_params)
        assert jax.tree.structure(state) == jax.tree.structure(init_state)
        assert _dtypes(state) == _dtypes(init_state)
        assert _shapes(state) == _shapes(init_state)
        assert _all_finite(state)


def _tolerance(dtype) -> float:
    """jit vs eager, relative to the leaf's largest update. Both compute in float32 (float64 for
    float64 leaves), and XLA fuses and may contract to FMA under jit: a few ulps of the compute
    dtype, over three steps with cancellation in the moments, 1e-5 (float32) and 1e-12 (float64).
    float16/bfloat16 updates are rounded once at the end, so those few float32 ulps can flip the
    final rounding: one ulp of the storage dtype (2^-10, 2^-7), taken twice for safety."""
    dtype = jnp.dtype(dtype)
    if dtype in (jnp.dtype(jnp.float64), jnp.dtype(jnp.complex128)):
        return 1e-12
    if jnp.finfo(dtype).bits < 32:
        return 2 * float(jnp.finfo(dtype).eps)
    return 1e-5


def _assert_close(a_tree, b_tree):
    for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree), strict=True):
        tol = _tolerance(b.dtype)
        a64, b64 = np.asarray(a).astype(np.complex128), np.asarray(b).astype(np.complex128)
        scale = float(np.max(np.abs(b64), initial=0.0))
        np.testing.assert_allclose(a64, b64, rtol=tol, atol=tol * scale)


@given(case=optimizers, spec=trees, seed=seeds, scale=scales)
def test_jit_equals_no_jit(case, spec, seed, scale):
    assume(_admissible(case, spec))
    EXAMPLES_RUN["jit_equals_no_jit"] += 1
    with precision(spec):
        params, grads_seq = _example(spec, seed, scale)
        tx = case.make(case.learning_rate)
        jitted = run(tx, params, grads_seq, jit=True)
        eager = run(tx, params, grads_seq, jit=False)
        _assert_close(jitted[0], eager[0])  # updates of every step
        _assert_close(jitted[1], eager[1])  # parameters after


@given(case=optimizers, spec=trees, seed=seeds, scale=scales)
def test_two_runs_are_bitwise_equal(case, spec, seed, scale):
    """Two optimizers built independently, each jitted afresh, on the same inputs."""
    assume(_admissible(case, spec))
    EXAMPLES_RUN["deterministic"] += 1
    with precision(spec):
        params, grads_seq = _example(spec, seed, scale)
        first = run(case.make(case.learning_rate), params, grads_seq, jit=True)
        second = run(case.make(case.learning_rate), params, grads_seq, jit=True)
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("make", [lambda: adamx.adam(0.1, nesterov=True), lambda: adamx.nadam(0.1)])
def test_bare_none_tree_with_nesterov_momentum(make):
    """Found by hypothesis: a pytree without leaves (`None`) needs no gradient tap."""
    tx = make()
    updates, _ = tx.update(None, tx.init(None), None)
    assert updates is None


# ---- step-size bounds ------------------------------------------------------------------------------


def adam_bound(t, b1, b2):
    """|step| / lr of Adam with eps = 0, any gradient sequence (Cauchy-Schwarz; docs/optimizers/
    adam.md, section Step sizes):
    (1-b1)/(1-b1^t) sqrt((1-b2^t)/(1-b2)) sqrt((1-g^t)/(1-g)), g = b1^2/b2 (< 1 required)."""
    g = b1**2 / b2
    return (1 - b1) / (1 - b1**t) * np.sqrt((1 - b2**t) / (1 - b2)) * np.sqrt((1 - g**t) / (1 - g))


def adamax_bound(t, b1, b2):
    """AdaMax, eps = 0 (docs/optimizers/amsgrad_adamax.md, the step-size bound):
    (1-b1)(1-(b1/b2)^t) / ((1-b1^t)(1-b1/b2))."""
    r = b1 / b2
    geometric = t if r == 1 else (1 - r**t) / (1 - r)  # sum of r^k, k < t; t when b1 == b2
    return (1 - b1) * geometric / (1 - b1**t)


# name -> (make(lr, b1, b2), bound(t, b1, b2) / lr). AMSGrad divides by a running max that is at least
# Adam's v-hat, so Adam's bound holds for it. RMSprop (no momentum, no centering): v_t >= (1-d) g_t^2,
# so |g_t| / sqrt(v_t + eps) <= 1/sqrt(1-d). AdaGrad: |g_t| / sqrt(sum g^2 + init + eps) <= 1.
BOUNDED = {
    "adam": (lambda lr, b1, b2: adamx.adam(lr, b1, b2, eps=0.0), adam_bound),
    "amsgrad": (lambda lr, b1, b2: adamx.amsgrad(lr, b1, b2, eps=0.0), adam_bound),
    "amsgrad_raw": (
        lambda lr, b1, b2: adamx.amsgrad(lr, b1, b2, eps=0.0, max_of="raw"),
        adam_bound,
    ),
    "adamax": (lambda lr, b1, b2: adamx.adamax(lr, b1, b2, eps=0.0), adamax_bound),
    "rmsprop": (
        lambda lr, b1, b2: adamx.rmsprop(lr, decay=b2),
        lambda t, b1, b2: 1 / np.sqrt(1 - b2),
    ),
    "adagrad": (lambda lr, b1, b2: adamx.adagrad(lr), lambda t, b1, b2: 1.0),
}

REAL_DTYPES = ("float16", "bfloat16", "float32", "float64")
real_leaves = st.builds(
    Leaf, st.sampled_from(REAL_DTYPES), st.lists(st.integers(0, 3), max_size=3).map(tuple)
)
real_trees = st.recursive(
    st.one_of(st.none(), real_leaves),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from("abc"), children, max_size=3),
    ),
    max_leaves=4,
)
BOUND_STEPS = 8


@st.composite
def betas(draw):
    """b1 in [0, 0.99), b2 in (b1^2, 0.9999]: Adam's bound needs g = b1^2 / b2 < 1."""
    b1 = draw(st.floats(0.0, 0.95))
    b2 = draw(st.floats(max(0.5, b1**2 + 0.01), 0.9999))
    return b1, b2


@given(
    name=st.sampled_from(sorted(BOUNDED)),
    spec=real_trees,
    seed=seeds,
    hyper=betas(),
    lr=st.sampled_from([1e-3, 1e-2, 0.1, 1.0]),
)
def test_update_size_is_within_the_algorithm_bound(name, spec, seed, hyper, lr):
    """Every update element, every step: |u_t| <= lr * bound(t). Gradients vary in scale by up to
    10^6 between steps (the adversarial direction for these bounds is a scale change). The
    comparison allows the rounding of the update to its dtype (one ulp) and of the float32 math
    (1e-5 relative)."""
    EXAMPLES_RUN["update_bound"] += 1
    make, bound = BOUNDED[name]
    b1, b2 = hyper
    rng = np.random.default_rng(seed)
    with precision(spec):
        params = build(spec, seed, 0.0)
        tx = make(lr, b1, b2)
        update = jax.jit(tx.update)
        state = tx.init(params)
        for t in range(1, BOUND_STEPS + 1):
            grads = build(spec, seed + t, float(rng.uniform(-3, 3)))
            updates, state = update(grads, state, params)
            limit = lr * float(bound(t, b1, b2))
            for u in jax.tree.leaves(updates):
                slack = 1 + 1e-5 + float(jnp.finfo(u.dtype).eps)
                size = float(np.max(np.abs(np.asarray(u, np.float64)), initial=0.0))
                assert size <= limit * slack, (name, t, size, limit)
