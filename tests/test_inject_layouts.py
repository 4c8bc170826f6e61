"""Wrapping never changes an optimizer: every registry optimizer under `inject_hyperparams`.

For each registry line, its very call (``tests/helpers.Call``) is wrapped in ``optax.inject_hyperparams``
(optax 0.2.8) and in ``adamx.inject_hyperparams``, so every numeric argument, defaults included, is
injected as an array and traced under ``jax.jit``. Then, in float64:

* every numeric argument of the call is in the wrapped state's ``hyperparams`` (nothing left out);
* the wrapped optimizer's inner state has the plain optimizer's tree structure: the layout is a
  function of the arguments given, never of their values (a Python 0 and an array 0 agree);
* both run the same trajectory as the plain optimizer (params and state, relative 1e-12);
* a checkpoint of the plain state (``np.savez`` by key path) restores into the wrapped state, and
  one of the wrapped state into the plain one; either run continues on the plain trajectory.

A schedule given to a wrapper is evaluated by the wrapper, which passes its value to the factory (as
optax does): the inner layout is then that of the optimizer given that number, so the layout is
compared with the plain optimizer built from numbers, and the trajectory with the scheduled one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from tests.helpers import OPTIMIZER_IDS, OPTIMIZERS, Call, random_tree, x64

STEPS, SPLIT = 4, 2
WRAPPERS = {
    "optax": lambda call: call.wrapped(optax.inject_hyperparams),
    # hyperparam_dtype=None: float64 params keep float64 hyperparameters (the default is float32).
    "adamx": lambda call: call.wrapped(adamx.inject_hyperparams, hyperparam_dtype=None),
}


def _is_schedule(name: str, value, call: Call) -> bool:
    return callable(value) and name not in call.static and not isinstance(value, tuple)


def _bound(call: Call) -> dict:
    """The call's arguments by name, defaults included (what a wrapper sees)."""
    import inspect

    bound = inspect.signature(call.factory).bind(*call.args, **call.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _with_numbers(call: Call) -> Call:
    """``call`` with each schedule replaced by its value at step 0 (what a wrapper passes on)."""
    arguments = {
        name: (float(value(jnp.asarray(0))) if _is_schedule(name, value, call) else value)
        for name, value in _bound(call).items()
    }
    return Call(call.factory, static=call.static, **arguments)


def _injected_names(call: Call) -> set[str]:
    """The arguments a wrapper keeps in ``state.hyperparams``: numbers and schedules."""
    return {
        name
        for name, value in _bound(call).items()
        if name not in call.static
        and not isinstance(value, bool)
        and (
            isinstance(value, (int, float, np.ndarray, jax.Array))
            or _is_schedule(name, value, call)
        )
    }


def _gradients(params, seed: int = 3):
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), params) for _ in range(STEPS)]


def _step(tx):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return adamx.apply_updates(params, updates), state

    return jax.jit(step)


def _run(step, params, state, grads, inner=lambda s: s):
    states = []
    for g in grads:
        params, state = step(params, state, g)
        states.append(inner(state))
    return params, state, states


def _assert_close(a, b, what: str):
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.complexfloating):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-300, err_msg=what)
        else:
            np.testing.assert_array_equal(x, y, err_msg=what)


def _save_restore(state, like, path):
    """``state`` through ``np.savez`` keyed by key path, restored into the structure of ``like``."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
    target, treedef = jax.tree_util.tree_flatten_with_path(like)
    with np.load(path) as saved:
        leaves = [
            jnp.asarray(saved[jax.tree_util.keystr(k)].view(np.asarray(v).dtype)) for k, v in target
        ]
    return jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_wrapping_keeps_layout_numbers_and_checkpoints(case, wrapper, tmp_path):
    with x64():
        params = jax.tree.map(jnp.asarray, random_tree(0, np.float64))
        grads = _gradients(params)
        call = case.call(case.learning_rate)
        plain, wrapped = call(), WRAPPERS[wrapper](call)

        wrapped_state = wrapped.init(params)
        assert set(wrapped_state.hyperparams) == _injected_names(call)
        numbers_are_plain = not any(
            _is_schedule(name, value, call) for name, value in _bound(call).items()
        )
        numbers = plain if numbers_are_plain else _with_numbers(call)()
        assert jax.tree.structure(wrapped_state.inner_state) == jax.tree.structure(
            numbers.init(params)
        ), f"{case.name}: the wrapped state's layout differs from the plain optimizer's"

        step_plain, step_wrapped = _step(plain), _step(wrapped)
        p_plain, _, s_plain = _run(step_plain, params, plain.init(params), grads)
        p_wrapped, _, s_wrapped = _run(
            step_wrapped, params, wrapped_state, grads, lambda s: s.inner_state
        )
        _assert_close(p_wrapped, p_plain, f"{case.name}: params")
        if jax.tree.structure(s_plain) == jax.tree.structure(s_wrapped):
            _assert_close(s_wrapped, s_plain, f"{case.name}: state")

        # A checkpoint of the plain optimizer restores into the wrapped one (both given numbers).
        step_numbers = step_plain if numbers_are_plain else _step(numbers)
        wrapped = wrapped if numbers_are_plain else WRAPPERS[wrapper](_with_numbers(call))
        step_wrapped = step_wrapped if numbers_are_plain else _step(wrapped)
        p_mid, s_mid, _ = _run(step_numbers, params, numbers.init(params), grads[:SPLIT])
        p_end, s_end, _ = _run(step_numbers, p_mid, s_mid, grads[SPLIT:])
        _, w_mid, _ = _run(step_wrapped, params, wrapped.init(params), grads[:SPLIT])
        restored = w_mid._replace(
            inner_state=_save_restore(s_mid, w_mid.inner_state, tmp_path / "plain.npz")
        )
        p_resumed, w_end, _ = _run(step_wrapped, p_mid, restored, grads[SPLIT:])
        _assert_close(p_resumed, p_end, f"{case.name}: params after a restore")
        _assert_close(w_end.inner_state, s_end, f"{case.name}: state after a restore")
        # And the other way: the wrapped optimizer's checkpoint restores into the plain one.
        back = _save_restore(w_mid.inner_state, s_mid, tmp_path / "wrapped.npz")
        p_back, s_back, _ = _run(step_numbers, p_mid, back, grads[SPLIT:])
        _assert_close(p_back, p_end, f"{case.name}: params after a restore into the plain one")
        _assert_close(s_back, s_end, f"{case.name}: state after a restore into the plain one")


@pytest.mark.parametrize("wrapper", [optax.inject_hyperparams, adamx.inject_hyperparams])
def test_a_shape_argument_given_as_an_array_names_static_args(wrapper):
    """An int that decides shapes cannot be injected: the error names the argument and the fix."""
    params = {"w": jnp.zeros((4, 6, 8))}
    with pytest.raises(TypeError, match=r"static_args=\('batch_dims',\)"):
        wrapper(adamx.adafactor)(batch_dims=1).init(params)
    wrapped = wrapper(adamx.adafactor, static_args=("batch_dims",))(batch_dims=1)
    plain = adamx.adafactor(batch_dims=1)
    state = wrapped.init(params)
    assert jax.tree.structure(state.inner_state) == jax.tree.structure(plain.init(params))


@pytest.mark.parametrize("wrapper", [optax.inject_hyperparams, adamx.inject_hyperparams])
def test_an_injected_loop_count_is_traced(wrapper):
    """Muon's Newton-Schulz count under optax's keyword, injected and traced under `jit`, runs
    as a `fori_loop` and gives the unrolled Python loop's numbers (float64, relative 1e-12)."""
    with x64():
        params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)))}
        grads = _gradients(params)
        wrapped = wrapper(adamx.muon, hyperparam_dtype=jnp.float64)(0.02, ns_steps=4)
        assert "ns_steps" in wrapped.init(params).hyperparams
        plain = adamx.muon(0.02, steps=4)
        p_wrapped, _, _ = _run(_step(wrapped), params, wrapped.init(params), grads)
        p_plain, _, _ = _run(_step(plain), params, plain.init(params), grads)
        _assert_close(p_wrapped, p_plain, "muon ns_steps injected")


@pytest.mark.parametrize(
    "make, optional",
    [
        (lambda wd: adamx.radam(0.1, weight_decay=wd), "decay"),
        (lambda wd: adamx.adabelief(0.1, weight_decay=wd), "decay"),
        (lambda wd: adamx.schedule_free_adamw(0.1, weight_decay=wd), "decay"),
        # Prodigy's decay state is EmptyState with or without the block: one layout throughout.
        (lambda wd: adamx.prodigy(weight_decay=wd), None),
        (lambda wd: adamx.adafactor(0.1, weight_decay=wd), "decay"),
        (lambda tau: adamx.sgd(0.1, 0.9, dampening=tau), "dampening"),
    ],
    ids=["radam", "adabelief", "schedule_free_adamw", "prodigy", "adafactor", "sgd"],
)
def test_an_optional_block_follows_the_argument_not_its_value(make, optional):
    """Given (a Python 0, an array 0 or 0.1) the block is there; not given, it is not."""
    params = {"w": jnp.ones(3)}
    given = [jax.tree.structure(make(v).init(params)) for v in (0.0, np.asarray(0.0), 0.1)]
    assert given[0] == given[1] == given[2]
    without = jax.tree.structure(make(None).init(params))
    assert (without == given[0]) if optional is None else (without != given[0])
