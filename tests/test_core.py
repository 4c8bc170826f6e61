"""The protocol and the chain: what a chain passes, in what order, and what bad input is told."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from tests.helpers import random_tree, relaxed


def clip_by_value(limit: float) -> adamx.GradientTransformation:
    """A gradient preprocessor written by a user: any ordinary transformation works."""
    return adamx.GradientTransformation(
        lambda params: adamx.EmptyState(),
        lambda updates, state, params=None, **kw: (
            jax.tree.map(lambda u: jnp.clip(u, -limit, limit), updates),
            state,
        ),
    )


def run(tx, grads_seq, params):
    state = tx.init(params)
    outs = []
    for g in grads_seq:
        u, state = tx.update(g, state, params)
        outs.append(u)
    return outs


def gradient_sequence(n=20, seed=0):
    rng = np.random.default_rng(seed)
    tree = random_tree(0)
    return [
        jax.tree.map(lambda x: jnp.asarray(3 * rng.standard_normal(np.shape(x)), jnp.float32), tree)
        for _ in range(n)
    ]


PARAMS = jax.tree.map(jnp.asarray, random_tree(0))


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_preprocessing_before_the_blocks_equals_preprocessing_before_adam():
    """Trap (a): the second moment sees the clipped gradient, not the first moment's output."""
    blocks = adamx.chain(
        clip_by_value(1.0),
        adamx.ema(0.9),
        adamx.bias_correction(0.9),
        adamx.scale_by_second_moment(0.999),
        adamx.scale_by_learning_rate(1e-2),
    )
    whole = adamx.chain(clip_by_value(1.0), adamx.adam(1e-2))
    assert_trees_equal(
        run(blocks, gradient_sequence(), PARAMS), run(whole, gradient_sequence(), PARAMS)
    )


def test_the_same_holds_for_a_foreign_preprocessor():
    blocks = adamx.chain(
        optax.clip_by_global_norm(1.0),
        adamx.ema(0.9),
        adamx.bias_correction(0.9),
        adamx.scale_by_second_moment(0.999),
    )
    whole = adamx.chain(optax.clip_by_global_norm(1.0), adamx.scale_by_adam())
    with relaxed():
        assert_trees_equal(
            run(blocks, gradient_sequence(), PARAMS), run(whole, gradient_sequence(), PARAMS)
        )


def test_second_moment_sees_the_gradient_not_the_first_moment():
    """With the moments in one run, v is built from g; fed m instead, the result would differ."""
    grads = gradient_sequence()
    ours = run(adamx.scale_by_adam(eps=0.0), grads, PARAMS)
    m = run(adamx.chain(adamx.ema(0.9), adamx.bias_correction(0.9)), grads, PARAMS)
    v = run(
        adamx.chain(adamx.ema(0.999), adamx.bias_correction(0.999)),
        [jax.tree.map(jnp.square, g) for g in grads],
        PARAMS,
    )
    expected = [
        jax.tree.map(lambda a, b: a / jnp.sqrt(b), mi, vi) for mi, vi in zip(m, v, strict=True)
    ]
    for a, b in zip(ours, expected, strict=True):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-6)


def test_correcting_after_the_division_is_a_different_algorithm():
    """Trap (b): correcting m and v *after* m / (sqrt(v) + eps) is the paper's eps-hat form."""
    grads = [jax.tree.map(lambda g: 1e-6 * g, g) for g in gradient_sequence(5)]
    adam = run(adamx.scale_by_adam(eps=1e-8), grads, PARAMS)
    late = adamx.chain(
        adamx.ema(0.9),
        adamx.scale_by_second_moment(0.999, eps=1e-8, bias_correction=False),
        adamx.bias_correction(0.9),
    )
    eps_hat_form = run(late, grads, PARAMS)
    # At t=1 Adam's step is g/(|g| + eps) ~ sign(g); with v uncorrected before the root the same
    # blocks give g/(sqrt(1 - b2)|g| + eps) ~ 31.6 sign(g): where a correction sits is the algorithm.
    a, b = jax.tree.leaves(adam[0])[0], jax.tree.leaves(eps_hat_form[0])[0]
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2


def test_nested_chains_equal_flat_chains():
    flat = adamx.chain(
        clip_by_value(1.0),
        adamx.ema(0.9),
        adamx.bias_correction(0.9),
        adamx.scale_by_second_moment(0.999),
    )
    nested = adamx.chain(
        clip_by_value(1.0),
        adamx.chain(
            adamx.ema(0.9),
            adamx.chain(adamx.bias_correction(0.9), adamx.scale_by_second_moment(0.999)),
        ),
    )
    assert_trees_equal(
        run(flat, gradient_sequence(), PARAMS), run(nested, gradient_sequence(), PARAMS)
    )


def test_a_chain_of_moment_blocks_is_a_moment_block():
    assert isinstance(adamx.scale_by_adam(), adamx.MomentTransformation)
    assert not isinstance(adamx.adam(1e-3), adamx.MomentTransformation)


def test_nesterov_needs_the_gradient_and_says_how_to_get_it():
    step = adamx.bias_correction(0.9, nesterov=True)
    with pytest.raises(ValueError, match="adamx.chain"):
        step.update(PARAMS, step.init(PARAMS))


def test_extra_arguments_reach_members_that_take_them():
    seen = {}

    def update(updates, state, params=None, *, value=None, **extra):
        seen["value"] = value
        return updates, state

    narrow = adamx.GradientTransformation(lambda p: adamx.EmptyState(), lambda u, s, p=None: (u, s))
    tx = adamx.chain(narrow, adamx.GradientTransformation(lambda p: adamx.EmptyState(), update))
    tx.update(PARAMS, tx.init(PARAMS), PARAMS, value=3.0)
    assert seen["value"] == 3.0


def test_identity_and_empty_chain():
    for tx in (adamx.identity(), adamx.chain()):
        u, _ = tx.update(PARAMS, tx.init(PARAMS))
        assert_trees_equal(u, PARAMS)


def test_trace_is_heavy_ball_momentum():
    g = jnp.array([1.0, -2.0])
    for nesterov in (False, True):
        tx = adamx.trace(0.5, nesterov=nesterov)
        state = tx.init(g)
        u1, state = tx.update(g, state)
        u2, state = tx.update(g, state)
        b2 = g + 0.5 * g  # b_2 = mu b_1 + g
        np.testing.assert_allclose(np.asarray(u2), np.asarray(g + 0.5 * b2 if nesterov else b2))


def test_scale_and_schedule():
    g = jnp.array([1.0, -2.0])
    u, _ = adamx.scale(-3.0).update(g, adamx.scale(-3.0).init(g))
    np.testing.assert_array_equal(np.asarray(u), [-3.0, 6.0])
    tx = adamx.scale_by_learning_rate(lambda count: 0.1 * (count.astype(jnp.float32) + 1))
    state = tx.init(g)
    u1, state = tx.update(g, state)
    u2, state = tx.update(g, state)
    np.testing.assert_allclose(np.asarray(u1), [-0.1, 0.2])
    np.testing.assert_allclose(np.asarray(u2), [-0.2, 0.4])
    assert int(state.count) == 2


def test_a_schedule_must_return_a_scalar():
    tx = adamx.adam(lambda count: jnp.ones(3))
    with pytest.raises(ValueError, match="must return a scalar"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)


def test_weight_decay_mask_and_params_required():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = adamx.add_decayed_weights(0.5, mask={"w": True, "b": False})
    u, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(u["w"]), [0.5, 0.5])
    np.testing.assert_array_equal(np.asarray(u["b"]), [0.0, 0.0])
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(zeros, tx.init(params))


def test_step_equals_update_then_apply_updates():
    opt = adamx.adamw(1e-2, weight_decay=0.1)
    grads = gradient_sequence(1)[0]
    state = opt.init(PARAMS)
    u, s1 = opt.update(grads, state, PARAMS)
    p2, s2 = adamx.step(opt, grads, state, PARAMS)
    assert_trees_equal(adamx.apply_updates(PARAMS, u), p2)
    assert_trees_equal(s1, s2)


def test_apply_updates_keeps_dtypes_and_none():
    params = {"a": jnp.ones(2, jnp.bfloat16), "b": None, "c": jnp.ones(2, jnp.float32)}
    updates = {"a": jnp.full(2, 1e-3, jnp.float32), "b": None, "c": jnp.full(2, 1e-3, jnp.float32)}
    out = adamx.apply_updates(params, updates)
    assert out["b"] is None
    assert out["a"].dtype == jnp.bfloat16 and out["c"].dtype == jnp.float32


def test_chain_rejects_a_non_transformation():
    with pytest.raises(TypeError, match="position 1"):
        adamx.chain(adamx.identity(), "adam")


def test_state_from_another_optimizer_is_refused():
    opt = adamx.adam(1e-3)
    with pytest.raises(ValueError, match="state has"):
        opt.update(PARAMS, (adamx.EmptyState(),), PARAMS)


# ---- validation at construction (docs/design.md, section 6) -------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: adamx.adam(-1e-3), "learning_rate.*>= 0.*minimise its negative"),
        (lambda: adamx.adam(float("nan")), "learning_rate"),
        (lambda: adamx.adam(1e-3, b1=1.0), r"b1|decay.*\[0, 1\)"),
        (lambda: adamx.adam(1e-3, b2=-0.1), r"decay.*\[0, 1\)"),
        (lambda: adamx.adam(1e-3, eps=-1e-8), "eps"),
        (lambda: adamx.adam(1e-3, eps_root=float("inf")), "eps_root"),
        (lambda: adamx.adamw(1e-3, weight_decay=-0.1), "weight_decay"),
        (lambda: adamx.adam(1e-3, mu_dtype=jnp.int32), "floating-point dtype"),
        (lambda: adamx.adam("0.1"), "real number"),
        (lambda: adamx.adam(jnp.ones(2)), "scalar"),
        (lambda: adamx.adam(1e-3, b1=True), "bool"),
    ],
)
def test_bad_hyperparameters_are_refused_with_a_sentence(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_traced_hyperparameters_are_not_checked_at_construction():
    @jax.jit
    def f(lr, b1):
        opt = adamx.adam(lr, b1=b1)
        u, _ = opt.update(jnp.ones(2), opt.init(jnp.ones(2)))
        return u

    np.testing.assert_allclose(
        np.asarray(f(jnp.float32(0.1), jnp.float32(0.9))), [-0.1, -0.1], rtol=1e-5
    )


@pytest.mark.parametrize(
    "grads, where",
    [
        (
            {"a": jnp.ones(2), "b": {"d": jnp.ones(3)}},
            r"`\['b'\]\['d'\]` where .* has `\['b'\]\['c'\]`",
        ),
        ({"a": jnp.ones(2)}, r"lack `\['b'\]\['c'\]`"),
        ([jnp.ones(2), jnp.ones(3)], r"`\[0\]` where .* has `\['a'\]`"),
    ],
    ids=["renamed", "missing", "list"],
)
def test_gradients_of_another_structure_name_the_first_differing_key(grads, where):
    params = {"a": jnp.ones(2), "b": {"c": jnp.ones(3)}}
    opt = adamx.adamw(1e-3)
    with pytest.raises(ValueError, match=f"do not have the structure.*{where}.*call `init` again"):
        opt.update(grads, opt.init(params), params)
