"""Converting Adam-family states between optax 0.2.8 and adamx, both ways, mid-training (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import from_optax_state, get_hyperparam, inject_hyperparams, to_optax_state
from tests.helpers import max_relative_difference, random_tree, relaxed, x64

LR = 1e-2


def _grads(steps=20):
    rng = np.random.default_rng(7)
    tree = random_tree(0, np.float64)
    return [jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), tree) for _ in range(steps)]


GRADS = _grads()


def _cosine(count):
    return LR * 0.5 * (1 + jnp.cos(jnp.pi * count.astype(jnp.float64) / 20))


def _ndim_mask(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


# (name, optax builder, adamx builder), all float64.
CASES = [
    ("adam", lambda: optax.adam(LR), lambda: adamx.adam(LR)),
    (
        "adamw_schedule_mask",
        lambda: optax.adamw(_cosine, weight_decay=0.1, mask=_ndim_mask),
        lambda: adamx.adamw(_cosine, weight_decay=0.1, mask=_ndim_mask),
    ),
    ("nadam", lambda: optax.nadam(LR), lambda: adamx.adam(LR, nesterov=True)),
    (
        "nadamw",
        lambda: optax.nadamw(LR, weight_decay=0.1),
        lambda: adamx.adamw(LR, weight_decay=0.1, nesterov=True),
    ),
    (
        "inject_adamw",
        lambda: optax.inject_hyperparams(optax.adamw)(learning_rate=LR, weight_decay=0.1),
        lambda: inject_hyperparams(adamx.adamw, hyperparam_dtype=jnp.float64)(
            learning_rate=LR, weight_decay=0.1
        ),
    ),
    (
        "inject_to_plain_adamw",
        lambda: optax.inject_hyperparams(optax.adamw)(learning_rate=LR, weight_decay=0.1),
        lambda: adamx.adamw(LR, weight_decay=0.1),
    ),
]
IDS = [case[0] for case in CASES]


def _steps(tx, state, params, grads, optax_side):
    """Apply ``grads``; returns the list of updates and the final state (params held fixed)."""
    outs = []
    for g in grads:
        if optax_side:
            with relaxed():
                u, state = tx.update(g, state, params)
        else:
            u, state = tx.update(g, state, params)
        outs.append(u)
    return outs, state


def _max_difference(ours, theirs):
    return max(max_relative_difference(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("name, make_optax, make_adamx", CASES, ids=IDS)
def test_optax_state_resumes_under_adamx_and_back(name, make_optax, make_adamx):
    with x64():
        params = jax.tree.map(jnp.asarray, random_tree(0, np.float64))
        with relaxed():
            opt_optax = make_optax()
            state_optax = opt_optax.init(params)
        opt_adamx = make_adamx()
        _, state_optax = _steps(opt_optax, state_optax, params, GRADS[:10], True)

        # optax -> adamx: ten more steps on each side agree.
        state = from_optax_state(state_optax, opt_adamx, params)
        ours, state = jax.jit(lambda s: _steps(opt_adamx, s, params, GRADS[10:15], False))(state)
        theirs, state_optax = _steps(opt_optax, state_optax, params, GRADS[10:15], True)
        forward = _max_difference(ours, theirs)

        # adamx -> optax: continue under optax from adamx's state.
        back = to_optax_state(state, opt_optax, params)
        theirs, _ = _steps(opt_optax, back, params, GRADS[15:], True)
        ours, _ = _steps(opt_adamx, state, params, GRADS[15:], False)
        backward = _max_difference(ours, theirs)
    print(f"{name}: optax->adamx {forward:.1e}, adamx->optax {backward:.1e}")
    assert forward <= 1e-10 and backward <= 1e-10
    assert jax.tree.structure(back) == jax.tree.structure(state_optax)


def test_a_fresh_adamx_state_would_not_match():
    """The check above can fail: resuming from a fresh state instead of the converted one."""
    with x64():
        params = jax.tree.map(jnp.asarray, random_tree(0, np.float64))
        with relaxed():
            opt = optax.adam(LR)
            _, state = _steps(opt, opt.init(params), params, GRADS[:10], True)
            theirs, _ = _steps(opt, state, params, GRADS[10:12], True)
        ours, _ = _steps(adamx.adam(LR), adamx.adam(LR).init(params), params, GRADS[10:12], False)
    assert _max_difference(ours, theirs) > 1e-3


def test_hyperparameters_move_with_the_state():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    with relaxed():
        tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, b2=0.999)
        state = tx.init(params)
        state.hyperparams["learning_rate"] = jnp.asarray(5e-4, jnp.bfloat16)  # a user's change
    ours = inject_hyperparams(adamx.adamw)(learning_rate=1e-3, b2=0.999)
    converted = from_optax_state(state, ours, params)
    # optax's bfloat16 b2 is 1.0, a rounding of our 0.999: ours is kept. The changed lr moves.
    assert float(get_hyperparam(converted, "b2")) == float(np.float32(0.999))
    assert float(get_hyperparam(converted, "learning_rate")) == float(
        jnp.asarray(5e-4, jnp.bfloat16)
    )
    assert converted.hyperparams["learning_rate"].dtype == jnp.float32


def test_unsupported_states_are_refused_clearly():
    params = jnp.zeros(3)
    with relaxed():
        amsgrad = optax.amsgrad(LR).init(params)
        momentum = optax.sgd(LR, momentum=0.9).init(params)
        two_adams = (optax.adam(LR).init(params), optax.adam(LR).init(params))
    with pytest.raises(ValueError, match="ScaleByAmsgradState.*supports"):
        from_optax_state(amsgrad, adamx.adam(LR), params)
    with pytest.raises(ValueError, match="TraceState"):
        from_optax_state(momentum, adamx.adam(LR), params)
    with pytest.raises(ValueError, match="exactly one Adam block.*found 2"):
        from_optax_state(two_adams, adamx.adam(LR), params)
    with pytest.raises(ValueError, match="adamx state piece TraceState"):
        from_optax_state(optax.adam(LR).init(params), adamx.trace(0.9), params)
    with pytest.raises(ValueError, match="structure"):
        from_optax_state(optax.adam(LR).init(params), adamx.adam(LR), {"w": params})
    # Counts that disagree (a schedule advanced on its own) are refused, not silently merged.
    with relaxed():
        state = optax.adamw(_cosine_f32).init(params)
    state = (state[0]._replace(count=jnp.asarray(3, jnp.int32)), *state[1:])
    with pytest.raises(ValueError, match="counts"):
        from_optax_state(state, adamx.adamw(_cosine_f32), params)


def _cosine_f32(count):
    return LR * jnp.cos(count.astype(jnp.float32))


def test_complex_nu_becomes_real_and_back():
    params = jnp.array([1.0 + 2.0j, -1.0j], jnp.complex64)
    grads = jnp.array([0.5 - 1.0j, 2.0 + 0.5j], jnp.complex64)
    with relaxed():
        opt = optax.adam(LR)
        _, state = opt.update(grads, opt.init(params), params)
    converted = from_optax_state(state, adamx.adam(LR), params)
    nu = converted[0][2].estimator[0].ema
    assert nu.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(nu), np.real(np.asarray(state[0].nu)), rtol=1e-6)
    with relaxed():
        back = to_optax_state(converted, opt, params)
    assert back[0].nu.dtype == jnp.complex64 and int(back[0].count) == 1
