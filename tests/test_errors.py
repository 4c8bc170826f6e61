"""Bad input gets a sentence, never an error from deep inside XLA (docs/design.md, section 6).

Each message says what was expected, what was received and the fix. `tests/test_core.py` checks the
rule on Adam; here it is carried to every optimizer factory and to the inputs of ``update``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from tests.helpers import OPTIMIZER_IDS, OPTIMIZERS

PARAMS = {"w": jnp.ones((2, 3)), "b": {"bias": jnp.zeros(3)}}
GRADS = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)

# Every factory that takes a learning rate, as ``name -> (lr -> transformation)``.
FACTORIES = {
    "adam": adamx.adam,
    "adamw": adamx.adamw,
    "adamax": adamx.adamax,
    "adamaxw": adamx.adamaxw,
    "amsgrad": adamx.amsgrad,
    "nadam": adamx.nadam,
    "nadamw": adamx.nadamw,
    "sgd": adamx.sgd,
    "rmsprop": adamx.rmsprop,
    "adagrad": adamx.adagrad,
    "adadelta": adamx.adadelta,
    "scale_by_learning_rate": adamx.scale_by_learning_rate,
}


@pytest.mark.parametrize(
    "value", [-1e-3, float("nan"), float("inf")], ids=["negative", "nan", "inf"]
)
@pytest.mark.parametrize("factory", list(FACTORIES.values()), ids=list(FACTORIES))
def test_a_negative_or_non_finite_learning_rate_points_at_the_way_to_ascend(factory, value):
    with pytest.raises(ValueError, match=r"`learning_rate` must be a finite number >= 0.*negative"):
        factory(value)


# (factory, argument, a value outside its range, the range the message must state)
DECAYS = [
    (adamx.adam, "b1", 1.0, r"\[0, 1\)"),
    (adamx.adam, "b2", -0.1, r"\[0, 1\)"),
    (adamx.adamw, "b2", 1.0, r"\[0, 1\)"),
    (adamx.amsgrad, "b1", 1.5, r"\[0, 1\)"),
    (adamx.amsgrad, "b2", 1.0, r"\[0, 1\)"),
    (adamx.nadam, "b1", -1e-3, r"\[0, 1\)"),
    (adamx.nadamw, "b2", 1.0, r"\[0, 1\)"),
    (adamx.adamax, "b1", 1.0, r"\[0, 1\)"),
    (adamx.adamax, "b2", 1.001, r"\[0, 1\]"),  # AdaMax's b2 may be 1
    (adamx.adamaxw, "b2", float("nan"), r"\[0, 1\]"),
    (adamx.sgd, "momentum", 1.0, r"\[0, 1\)"),
    (adamx.rmsprop, "decay", 1.0, r"\[0, 1\)"),
    (adamx.rmsprop, "momentum", -0.5, r"\[0, 1\)"),
    (adamx.adadelta, "rho", 1.0, r"\[0, 1\)"),
]


@pytest.mark.parametrize(
    "factory, name, value, interval",
    DECAYS,
    ids=[f"{f.__name__}-{n}-{v}" for f, n, v, _ in DECAYS],
)
def test_a_decay_outside_its_algorithms_range_is_refused(factory, name, value, interval):
    with pytest.raises(ValueError, match=rf"`{name}` is a decay rate .*{interval}.*typical values"):
        factory(1e-3, **{name: value})


def test_adamax_accepts_b2_equal_to_one_and_steps_by_at_most_the_learning_rate():
    for factory in (adamx.adamax, adamx.adamaxw):
        opt = factory(1e-3, b2=1.0)
        state = opt.init(PARAMS)
        params = PARAMS
        for scale in (1.0, 3.0, 0.5):
            grads = jax.tree.map(lambda g, s=scale: s * g, GRADS)
            updates, state = opt.update(grads, state, params)
            params = adamx.apply_updates(params, updates)
            for u in jax.tree.leaves(updates):
                assert np.all(np.isfinite(u)) and np.max(np.abs(u)) <= 1e-3 * (1 + 1e-4) + 1e-9


# (factory, argument, a negative value)
NON_NEGATIVE = [
    (adamx.adam, "eps"),
    (adamx.adam, "eps_root"),
    (adamx.adamw, "weight_decay"),
    (adamx.adamax, "eps"),
    (adamx.adamaxw, "weight_decay"),
    (adamx.amsgrad, "eps"),
    (adamx.nadam, "eps"),
    (adamx.nadamw, "weight_decay"),
    (adamx.rmsprop, "eps"),
    (adamx.rmsprop, "initial_scale"),
    (adamx.adagrad, "eps"),
    (adamx.adagrad, "initial_accumulator_value"),
    (adamx.adadelta, "eps"),
    (adamx.adadelta, "weight_decay"),
]


@pytest.mark.parametrize(
    "factory, name", NON_NEGATIVE, ids=[f"{f.__name__}-{n}" for f, n in NON_NEGATIVE]
)
def test_a_negative_eps_or_weight_decay_is_refused(factory, name):
    with pytest.raises(ValueError, match=rf"`{name}` must be a finite number >= 0, got -0.1; pass"):
        factory(1e-3, **{name: -0.1})


@pytest.mark.parametrize(
    "build",
    [
        lambda: adamx.adamw(1e-3, weight_decay=lambda count: jnp.ones(3)),
        lambda: adamx.sgd(lambda count: jnp.full((1,), 0.1), momentum=0.9),
        lambda: adamx.multi_steps(adamx.adam(1e-3), lambda step: jnp.array([2, 2])),
    ],
    ids=["weight_decay", "sgd_learning_rate", "multi_steps_k"],
)
def test_a_schedule_returning_the_wrong_shape_is_refused_at_trace_time(build):
    tx = build()
    with pytest.raises(ValueError, match=r"schedule must return a scalar.*shape \(.*\)"):
        jax.jit(tx.update)(GRADS, tx.init(PARAMS), PARAMS)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_gradients_of_another_structure_name_the_missing_and_extra_keys_for_every_optimizer(case):
    tx = case.make(1e-3)
    grads = {"w": jnp.ones((2, 3)), "b": {"beta": jnp.zeros(3)}}
    message = (
        r"`\['b'\]\['beta'\]` where the params has `\['b'\]\['bias'\]`; "
        r"missing: the gradients lack `\['b'\]\['bias'\]`; "
        r"extra: the gradients have `\['b'\]\['beta'\]`, not in the params\."
    )
    with pytest.raises(ValueError, match=message):
        adamx.step(tx, grads, tx.init(PARAMS), PARAMS)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_params_required_but_not_passed(case):
    """Every optimizer either steps without params or says it needs them and how to pass them."""
    tx = case.make(1e-3)
    try:
        updates, _ = tx.update(GRADS, tx.init(PARAMS))
    except ValueError as error:
        assert "needs the parameters" in str(error) and "update(grads, state, params)" in str(error)
    else:
        assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_], ids=["int32", "bool"])
@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_integer_and_boolean_leaves_are_refused_with_their_key_path(case, dtype):
    """The rule of docs/design.md, section 5: refused at ``init`` by any block keeping moments,
    at ``apply_updates`` by a stateless optimizer; a masked-out leaf is fine."""
    params = {**PARAMS, "step": {"n": jnp.zeros(2, dtype)}}
    grads = {**GRADS, "step": {"n": jnp.zeros(2, jnp.float32)}}
    tx = case.make(1e-3)
    message = r"`\['step'\]\['n'\]` has dtype (int32|bool).*floating-point.*eqx.is_inexact_array"
    with pytest.raises(TypeError, match=message):
        adamx.step(tx, grads, tx.init(params), params)
    mask = {**jax.tree.map(lambda _: True, PARAMS), "step": {"n": False}}
    masked = adamx.masked(tx, mask)
    new_params, _ = adamx.step(
        masked, {**grads, "step": {"n": params["step"]["n"]}}, masked.init(params), params
    )
    np.testing.assert_array_equal(new_params["step"]["n"], params["step"]["n"])


@pytest.mark.parametrize(
    "saved, used, expected, received",
    [
        (adamx.adamax(1e-3), adamx.adam(1e-3), "SecondMomentState", "InfinityNormState"),
        (
            adamx.nadam(1e-3, momentum_decay=4e-3),
            adamx.adam(1e-3),
            "BiasCorrectionState",
            "DozatMomentum",
        ),
        (adamx.adam(1e-3), adamx.sgd(1e-3, 0.9), "TraceState", "tuple"),
        (adamx.adam(1e-3), adamx.adamw(1e-3), "3 transformations", "2 entries"),
    ],
    ids=["adamax-to-adam", "nadam-to-adam", "adam-to-sgd", "adam-to-adamw"],
)
def test_a_state_from_a_different_optimizer_says_what_was_expected(saved, used, expected, received):
    state = saved.init(PARAMS)
    with pytest.raises((TypeError, ValueError), match=f"{expected}.*{received}.*`init`"):
        used.update(GRADS, state, PARAMS)


def test_apply_updates_names_the_first_differing_key():
    with pytest.raises(
        ValueError,
        match=r"`\['b'\]\['beta'\]` where the params has `\['b'\]\['bias'\]`; missing: the "
        r"updates lack `\['b'\]\['bias'\]`; extra: the updates have `\['b'\]\['beta'\]`",
    ):
        adamx.apply_updates(PARAMS, {"w": jnp.ones((2, 3)), "b": {"beta": jnp.zeros(3)}})


# Mistakes a new user makes (a transposed leaf, integer gradients, a missing key, a string learning
# rate): each is refused at trace time with the leaf's key path or the argument's name, for every
# optimizer, on both paths: `adamx.step`, and `update` + `apply_updates` (what `nnx.Optimizer` and
# linen's `TrainState` run).
WIDE = {"w": jnp.ones((2, 3)), "b": {"bias": jnp.zeros(3)}}


def _both_paths(tx, grads):
    """The two ways a step is taken, each a thunk."""

    def through_update():
        updates, _ = tx.update(grads, tx.init(WIDE), WIDE)
        return adamx.apply_updates(WIDE, updates)

    return (lambda: adamx.step(tx, grads, tx.init(WIDE), WIDE), through_update)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_a_transposed_gradient_names_its_key_path_and_both_shapes(case):
    grads = {"w": jnp.ones((3, 2)), "b": {"bias": jnp.zeros(3)}}
    for run in _both_paths(case.make(1e-3), grads):
        with pytest.raises(ValueError, match=r"`\['w'\]`.*shape \(2, 3\).*shape \(3, 2\).*\.T"):
            run()


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_integer_gradients_for_float_params_name_the_leaf_and_both_dtypes(case):
    grads = {"w": jnp.ones((2, 3), jnp.int32), "b": {"bias": jnp.zeros(3)}}
    for run in _both_paths(case.make(1e-3), grads):
        with pytest.raises(TypeError, match=r"`\['w'\]`.*float32.*int32.*astype"):
            run()


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_a_missing_gradient_key_is_named(case):
    grads = {"w": jnp.ones((2, 3))}
    for run in _both_paths(case.make(1e-3), grads):
        with pytest.raises(ValueError, match=r"missing: the gradients lack `\['b'\]\['bias'\]`\."):
            run()


@pytest.mark.parametrize("factory", list(FACTORIES.values()), ids=list(FACTORIES))
def test_a_learning_rate_of_the_wrong_type_names_the_argument(factory):
    message = r"`learning_rate` to be a real number, got '1e-3' of type str; pass a Python float"
    with pytest.raises(TypeError, match=message):
        factory("1e-3")
    with pytest.raises(ValueError, match=r"`learning_rate` to be a scalar, got an array of shape"):
        factory(np.array([1e-3, 2e-3]))


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_every_registry_optimizer_names_a_string_learning_rate(case):
    try:
        tx = case.make("1e-3")
    except TypeError as error:
        assert "`learning_rate`" in str(error) and "'1e-3'" in str(error)
    else:  # the registry wraps this one's rate in a schedule: the schedule's arithmetic fails
        assert callable(tx.update)


def test_the_checks_cost_nothing_in_the_jaxpr():
    """Shape, dtype and structure checks are trace-time Python: Adam's jaxpr is the same whether
    ``update`` gets the params (and checks the gradients against them) or not."""
    tx = adamx.adam(1e-3)
    state = tx.init(WIDE)
    unchecked = jax.make_jaxpr(lambda p, s, g: tx.update(g, s))(WIDE, state, GRADS)
    checked = jax.make_jaxpr(lambda p, s, g: tx.update(g, s, p))(WIDE, state, GRADS)
    assert str(checked) == str(unchecked)
