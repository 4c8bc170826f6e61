"""Parameter groups: `masked`, `partition`, `freeze`, against NumPy float64 Adam and against optax.

optax differences measured with float32 inputs (jax 0.10.2, optax 0.2.8, CPU), 5 steps of Adam:
`masked` and `partition` reproduce optax's `masked` / `partition` (and `freeze` optax's
`selective_transform`) to within the difference between adamx's and optax's float32 Adam itself:
max |ours - optax| / max |optax| per leaf, measured 1.03e-5 (bound 2e-5), which is optax's early-step
rounding of ``1 - b^t`` (docs/design.md, section 3), not the grouping; passed-through leaves are
bit-identical.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import MaskedNode, MaskedState, clip, freeze, masked, partition, set_to_zero
from tests.helpers import random_tree, relaxed

PARAMS = jax.tree.map(jnp.asarray, random_tree(0))
MASK = jax.tree.map(lambda p: p.ndim > 1, PARAMS)  # matrices and kernels: dense.w, conv
LABELS = jax.tree.map(lambda p: "matrix" if p.ndim > 1 else "vector", PARAMS)


def gradient_sequence(n=5, seed=1):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda x: jnp.asarray(3 * rng.standard_normal(x.shape), jnp.float32), PARAMS)
        for _ in range(n)
    ]


GRADS = gradient_sequence()


def run(tx, grads=GRADS, params=PARAMS, *, jit=False):
    """The updates of each step (params held fixed) and the final state."""
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    outs = []
    for g in grads:
        u, state = update(g, state, params)
        outs.append(u)
    return outs, state


def run_optax(tx, grads=GRADS, params=PARAMS):
    with relaxed():
        return run(tx, grads, params)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def max_scaled_difference(x, ref) -> float:
    """``max |x - ref| / max |ref|`` per leaf, the worst leaf: robust where an update cancels to ~0.

    AdamW's step ``m/(sqrt(v)+eps) + wd * p`` can cancel to nearly zero in an element, where any
    elementwise relative measure blows up float32 rounding (adamx's plain `adamw` against optax's
    reaches 3e-4 there); scaled by the leaf's largest update the two agree to ~1e-6.
    """
    worst = 0.0
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(ref), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)))
    return worst


def state_elements(state):
    return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(state))


def np_adam(grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam in NumPy float64 (Kingma & Ba, Algorithm 1): the update of each step, one array."""
    m = v = 0.0
    outs = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        outs.append(-lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
    return outs


def pick(tree, path):
    for key in path:
        tree = tree[key]
    return tree


MATRICES = [("dense", "w"), ("conv",)]
VECTORS = [("dense", "b"), ("scale",)]


# ---- masked -------------------------------------------------------------------------------------


def test_masked_adam_against_float64_and_optax():
    outs, state = run(masked(adamx.adam(1e-2), MASK))
    for path in MATRICES:
        expected = np_adam([pick(g, path) for g in GRADS], 1e-2)
        for u, e in zip(outs, expected, strict=True):
            np.testing.assert_allclose(np.asarray(pick(u, path), np.float64), e, rtol=1e-5)
    for path in VECTORS:  # passed through unchanged
        for u, g in zip(outs, GRADS, strict=True):
            np.testing.assert_array_equal(np.asarray(pick(u, path)), np.asarray(pick(g, path)))
    theirs, _ = run_optax(optax.masked(optax.adam(1e-2), MASK))
    assert max_scaled_difference(outs, theirs) < 2e-5


def test_masked_keeps_no_state_for_masked_out_leaves():
    _, state = run(masked(adamx.adam(1e-2), MASK))
    assert isinstance(state, MaskedState)
    matrix_elements = sum(int(np.size(pick(PARAMS, path))) for path in MATRICES)
    assert state_elements(state) == 2 * matrix_elements + 2  # mu, nu, and two int32 counts
    mu = state.inner_state[0][0].ema
    assert isinstance(mu["dense"]["b"], MaskedNode) and isinstance(mu["scale"], MaskedNode)


def test_masked_blocks_in_a_chain_equal_masked_adam():
    blocks = adamx.chain(
        masked(adamx.ema(0.9), MASK),
        masked(adamx.bias_correction(0.9), MASK),
        masked(adamx.scale_by_second_moment(0.999), MASK),
        masked(adamx.scale_by_learning_rate(1e-2), MASK),
    )
    assert_trees_equal(run(blocks)[0], run(masked(adamx.adam(1e-2), MASK))[0])


def test_a_masked_moment_block_is_a_moment_block_and_sees_the_clipped_gradient():
    assert isinstance(masked(adamx.scale_by_adam(), MASK), adamx.MomentTransformation)
    assert not isinstance(masked(adamx.adam(1e-2), MASK), adamx.MomentTransformation)
    whole = adamx.chain(clip(1.0), masked(adamx.scale_by_adam(), MASK))
    # The second moment must see clip(g), not the first moment's output: if the masked blocks
    # were ordinary transformations, the chain would hand each the previous block's output.
    blocks = adamx.chain(
        clip(1.0),
        masked(adamx.ema(0.9), MASK),
        masked(adamx.bias_correction(0.9), MASK),
        masked(adamx.scale_by_second_moment(0.999), MASK),
    )
    inside = masked(adamx.chain(clip(1.0), adamx.scale_by_adam()), MASK)
    ours, reference, other = run(whole)[0], run(blocks)[0], run(inside)[0]
    assert_trees_equal(ours, reference)
    for u, v, g in zip(ours, other, GRADS, strict=True):
        for path in MATRICES:  # the same where masked in
            np.testing.assert_array_equal(np.asarray(pick(u, path)), np.asarray(pick(v, path)))
        for path in VECTORS:  # clipped by the chain, passed through by `masked`
            clipped = np.clip(np.asarray(pick(g, path)), -1, 1)
            np.testing.assert_array_equal(np.asarray(pick(u, path)), clipped)


def test_mask_as_a_function_of_params_and_as_a_prefix():
    by_tree = run(masked(adamx.adam(1e-2), MASK))[0]
    by_function = run(masked(adamx.adam(1e-2), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)))[0]
    assert_trees_equal(by_tree, by_function)
    prefix = {"dense": True, "conv": False, "scale": False}
    ours = run(masked(adamx.adam(1e-2), prefix))[0]
    theirs = run_optax(optax.masked(optax.adam(1e-2), prefix))[0]
    assert max_scaled_difference(ours, theirs) < 2e-5


def test_masked_under_jit_equals_eager():
    tx = masked(adamx.adamw(1e-2, weight_decay=0.1), MASK)
    # XLA may fuse differently under jit: equal to about one float32 rounding.
    assert max_scaled_difference(run(tx, jit=True)[0], run(tx)[0]) < 1e-6


# ---- partition ----------------------------------------------------------------------------------


def two_optimizers():
    return {
        "matrix": adamx.adamw(1e-2, weight_decay=0.1),
        "vector": adamx.chain(adamx.trace(0.9), adamx.scale_by_learning_rate(0.1)),  # SGD momentum
    }


def test_partition_equals_each_optimizer_on_its_own_subtree():
    transforms = two_optimizers()
    ours, state = run(partition(transforms, LABELS))
    assert set(state.inner_states) == {"matrix", "vector"}
    matrices = {"dense": {"w": PARAMS["dense"]["w"]}, "conv": PARAMS["conv"]}
    vectors = {"dense": {"b": PARAMS["dense"]["b"]}, "scale": PARAMS["scale"]}

    def sub(tree, like):
        return jax.tree.map(lambda _, path: pick(tree, path), like, _paths(like))

    alone_m = run(transforms["matrix"], [sub(g, matrices) for g in GRADS], matrices)[0]
    alone_v = run(transforms["vector"], [sub(g, vectors) for g in GRADS], vectors)[0]
    for u, m, v in zip(ours, alone_m, alone_v, strict=True):
        assert_trees_equal(sub(u, matrices), m)
        assert_trees_equal(sub(u, vectors), v)
    # Independent: the SGD-momentum group in float64 (b_t = 0.9 b + g, u = -0.1 b_t).
    b = 0.0
    for u, g in zip(ours, GRADS, strict=True):
        b = 0.9 * b + np.asarray(g["dense"]["b"], np.float64)
        np.testing.assert_allclose(np.asarray(u["dense"]["b"], np.float64), -0.1 * b, rtol=1e-5)
    with relaxed():
        optax_tx = optax.partition(
            {
                "matrix": optax.adamw(1e-2, weight_decay=0.1),
                "vector": optax.sgd(0.1, momentum=0.9),
            },
            LABELS,
        )
    assert max_scaled_difference(ours, run_optax(optax_tx)[0]) < 2e-5


def _paths(tree):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path), tree
    )


def test_partitioned_moment_blocks_see_the_gradient_of_their_run():
    labels = LABELS
    chained = adamx.chain(
        clip(1.0),
        partition({"matrix": adamx.ema(0.9), "vector": adamx.ema(0.5)}, labels),
        partition(
            {"matrix": adamx.bias_correction(0.9), "vector": adamx.bias_correction(0.5)}, labels
        ),
        adamx.scale_by_second_moment(0.999),
    )
    assert isinstance(
        partition({"matrix": adamx.ema(0.9), "vector": adamx.ema(0.5)}, labels),
        adamx.MomentTransformation,
    )
    per_group = partition(
        {
            "matrix": adamx.chain(clip(1.0), adamx.scale_by_adam(b1=0.9)),
            "vector": adamx.chain(clip(1.0), adamx.scale_by_adam(b1=0.5)),
        },
        labels,
    )
    assert_trees_equal(run(chained)[0], run(per_group)[0])


def test_partition_labels_as_a_function():
    label_fn = lambda p: jax.tree.map(lambda x: "matrix" if x.ndim > 1 else "vector", p)  # noqa: E731
    assert_trees_equal(
        run(partition(two_optimizers(), label_fn))[0], run(partition(two_optimizers(), LABELS))[0]
    )


# ---- freeze -------------------------------------------------------------------------------------


def test_freeze_allocates_no_state_and_keeps_frozen_params_bit_identical():
    frozen = jax.tree.map(lambda p: p.ndim <= 1, PARAMS)  # freeze the vectors and the scalar
    tx = freeze(adamx.adamw(1e-2, weight_decay=0.1), frozen)
    state = tx.init(PARAMS)
    trainable = sum(int(np.size(pick(PARAMS, path))) for path in MATRICES)
    assert state_elements(state) == 2 * trainable + 2  # mu and nu of the matrices, two counts
    step = jax.jit(lambda g, s, p: adamx.step(tx, g, s, p))
    params = PARAMS
    for g in GRADS:
        params, state = step(g, state, params)
    for path in VECTORS:
        assert np.asarray(pick(params, path)).tobytes() == np.asarray(pick(PARAMS, path)).tobytes()
    for path in MATRICES:
        assert not np.array_equal(np.asarray(pick(params, path)), np.asarray(pick(PARAMS, path)))
    ours = run(tx)[0]
    with relaxed():
        theirs_tx = optax.transforms.selective_transform(
            optax.adamw(1e-2, weight_decay=0.1), freeze_mask=frozen
        )
    assert max_scaled_difference(ours, run_optax(theirs_tx)[0]) < 2e-5


def test_freeze_with_a_mask_function_and_set_to_zero():
    tx = freeze(adamx.adam(1e-2), lambda p: jax.tree.map(lambda x: x.ndim <= 1, p))
    assert_trees_equal(
        run(tx)[0], run(freeze(adamx.adam(1e-2), jax.tree.map(np.logical_not, MASK)))[0]
    )
    zero = set_to_zero()
    out, _ = zero.update(GRADS[0], zero.init(PARAMS))
    for leaf in jax.tree.leaves(out):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)


# ---- errors -------------------------------------------------------------------------------------


def test_a_mask_of_the_wrong_structure_says_what_and_how():
    tx = masked(adamx.adam(1e-2), {"dense": True, "conv": False})  # "scale" missing
    with pytest.raises(
        ValueError, match=r"expected a mask with the structure.*got.*jax\.tree\.map"
    ):
        tx.init(PARAMS)


def test_a_mask_of_non_booleans_is_refused():
    tx = masked(adamx.adam(1e-2), jax.tree.map(lambda p: p.ndim, PARAMS))
    with pytest.raises(TypeError, match="mask of booleans.*got the leaf"):
        tx.init(PARAMS)


def test_labels_of_the_wrong_structure_or_without_a_transform():
    with pytest.raises(ValueError, match=r"`partition` expected labels with the structure"):
        partition(two_optimizers(), {"dense": "matrix"}).init(PARAMS)
    labels = jax.tree.map(lambda p: "bias" if p.ndim == 1 else "matrix", PARAMS)
    with pytest.raises(
        ValueError, match=r"labels \['bias'\] with no transformation.*keys \['matrix'\]"
    ):
        partition({"matrix": adamx.adam(1e-2)}, labels).init(PARAMS)


def test_freeze_needs_the_optimizer():
    with pytest.raises(TypeError, match=r"adamx\.freeze\(adamx\.adamw\(1e-3\), frozen_mask\)"):
        freeze(MASK)
    with pytest.raises(TypeError, match="expected an optimizer"):
        freeze(MASK, MASK)


def test_a_prefix_freeze_around_leaf_level_groups():
    """An outer prefix mask hides a whole subtree from inner groups labelled leaf by leaf."""
    inner = partition(two_optimizers(), LABELS)
    tx = freeze(inner, {"dense": True, "conv": False, "scale": False})
    outs, state = run(tx, jit=True)
    for u in outs:
        for leaf in jax.tree.leaves(u["dense"]):
            np.testing.assert_array_equal(np.asarray(leaf), 0.0)
    conv_alone = run(two_optimizers()["matrix"], [g["conv"] for g in GRADS], PARAMS["conv"])[0]
    assert max_scaled_difference([u["conv"] for u in outs], conv_alone) < 1e-6
    dense = sum(int(np.size(x)) for x in jax.tree.leaves(PARAMS["dense"]))
    everything = state_elements(partition(two_optimizers(), LABELS).init(PARAMS))
    assert state_elements(state) == everything - 2 * int(np.size(PARAMS["dense"]["w"])) - (
        dense - int(np.size(PARAMS["dense"]["w"]))
    )


def test_optax_tree_map_params_sees_only_trained_leaves():
    tx = freeze(adamx.adam(1e-2), jax.tree.map(np.logical_not, MASK))
    state = tx.init(PARAMS)
    with relaxed():
        mapped = optax.tree_map_params(
            tx,
            lambda p: p if isinstance(p, MaskedNode) else jnp.full(p.shape, 7.0, p.dtype),
            state,
            is_leaf=lambda v: isinstance(v, MaskedNode),
        )
    sevens = [leaf for leaf in jax.tree.leaves(mapped) if np.all(np.asarray(leaf) == 7)]
    assert len(sevens) == 2 * len(MATRICES)  # mu and nu of the trained leaves only
