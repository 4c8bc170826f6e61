"""Sophia against a NumPy transcription of the authors' code and ``optax.contrib.sophia``.

``Liuhong99/Sophia`` ``sophia.py`` (a7e1572), with ``step`` then ``update_hessian`` as
``train_sophiag.py`` calls them, is transcribed below from docs/optimizers/soap_sophia.md
(Sophia); ``optax.contrib.sophia`` is fed the same estimates. On the tree and gradients of
tests/parity/soap_sophia.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adamx
from adamx import apply_updates, hutchinson_diagonal, sophia
from tests.helpers import cosine, jax_cosine, max_relative_difference, relaxed, x64
from tests.parity.soap_sophia import GRADS, LR, PARAMS, STEPS, WD, draw

K = 10  # hess_interval of train_sophiag.py
RHO, TOKENS = 0.04, 64  # gamma = rho * bs: the authors' step(bs) with bs tokens per step
SAMPLED = [draw(500 + i) for i in range(STEPS)]  # gradients on labels sampled from the model


def sophia_reference(b1=0.965, b2=0.99, rho=RHO, bs=TOKENS, wd=WD):
    """SophiaG as train_sophiag.py drives it: ``step(bs)`` every iteration, then on iterations
    ``i % K == K - 1`` ``update_hessian()`` from the sampled-label gradient ``SAMPLED[i]``."""
    out = {}
    for name, p in PARAMS.items():
        m, h = np.zeros_like(p), np.zeros_like(p)
        for i in range(STEPS):
            lr = LR * cosine(i, STEPS)
            p = p * (1 - lr * wd)
            m = m * b1 + (1 - b1) * GRADS[i][name]
            ratio = np.minimum(np.abs(m) / (rho * bs * h + 1e-15), 1)
            p = p + (-lr) * np.sign(m) * ratio
            if i % K == K - 1:
                h = h * b2 + (1 - b2) * SAMPLED[i][name] * SAMPLED[i][name]
        out[name] = p
    return out


def run_sophia(tx, hessians):
    """``tx`` over GRADS with ``hessian=hessians[i]`` (``None``: no estimate that step)."""
    p = jax.tree.map(jnp.asarray, PARAMS)
    state = tx.init(p)
    step = jax.jit(lambda p, s, g, h: tx.update(g, s, p, hessian=h))
    for g, h in zip(GRADS, hessians, strict=True):
        u, state = step(p, state, g, h)
        p = apply_updates(p, u)
    return p


def _official_estimates():
    # The estimate made after step i (i % K == K - 1) is first used by step i + 1.
    squares = [jax.tree.map(lambda x: x * x, s) for s in SAMPLED]
    return [squares[i - 1] if i >= 1 and (i - 1) % K == K - 1 else None for i in range(STEPS)]


def test_sophia_matches_the_authors_code():
    """sophia vs the NumPy transcription of SophiaG, 50 float64 steps: <= 1e-10."""
    with x64():
        tx = sophia(jax_cosine(LR, jnp.float64, STEPS), gamma=RHO * TOKENS, weight_decay=WD)
        ours = run_sophia(tx, _official_estimates())
    assert max_relative_difference(ours, sophia_reference()) <= 1e-10


def _estimator_from_extra_args():
    """An optax ``hessian_diagonal_fn`` that returns the estimate handed to ``update``."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, hessian=None, **extra):
        del updates, params, extra
        return hessian, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def test_sophia_matches_optax_and_differs_from_the_authors():
    """optax.contrib.sophia (debiased m, max(gamma h, eps), h updated after use on counts 0, K, ..)
    vs adamx with ``debias=True, eps=1e-8, eps_placement="max"`` fed optax's estimate one call
    later: <= 1e-10. The two references differ by > 1e-3 (bias correction of m)."""
    gamma = 0.5
    estimates = [jax.tree.map(lambda x: x * x, s) for s in SAMPLED]
    zero = jax.tree.map(np.zeros_like, PARAMS)
    with x64():
        theirs_tx = optax.contrib.sophia(
            jax_cosine(LR, jnp.float64, STEPS), weight_decay=WD, gamma=gamma,
            update_interval=K, hessian_diagonal_fn=_estimator_from_extra_args(),
        )  # fmt: skip
        with relaxed():
            theirs = run_sophia(theirs_tx, [e if i % K == 0 else zero
                                            for i, e in enumerate(estimates)])  # fmt: skip
        ours_tx = sophia(
            jax_cosine(LR, jnp.float64, STEPS), gamma=gamma, eps=1e-8, weight_decay=WD,
            eps_placement="max", debias=True,
        )  # fmt: skip
        shifted = [estimates[i - 1] if i >= 1 and (i - 1) % K == 0 else None for i in range(STEPS)]
        ours = run_sophia(ours_tx, shifted)
        official_form = run_sophia(
            sophia(jax_cosine(LR, jnp.float64, STEPS), gamma=gamma, weight_decay=WD), shifted
        )
    assert max_relative_difference(ours, theirs) <= 1e-10
    assert max_relative_difference(official_form, theirs) > 1e-3


def test_sophia_steps_are_clipped_and_h_moves_only_when_given():
    """Paper facts: without an estimate (h = 0) every coordinate moves by exactly lr (sign
    momentum); no coordinate ever moves by more than lr * clip_threshold; h changes only on calls
    given ``hessian=``."""
    params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal(64), jnp.float32)}
    opt = sophia(0.01, weight_decay=0.0)
    state = opt.init(params)
    updates, state = opt.update({"w": params["w"]}, state, params)
    np.testing.assert_allclose(np.abs(np.asarray(updates["w"])), 0.01, rtol=1e-6)
    h_before = state[0][1].hessian.ema["w"]
    assert float(jnp.max(jnp.abs(h_before))) == 0.0
    estimate = {"w": jnp.full(64, 1e3, jnp.float32)}
    updates, state = opt.update({"w": params["w"]}, state, params, hessian=estimate)
    np.testing.assert_allclose(np.asarray(state[0][1].hessian.ema["w"]), 10.0, rtol=1e-6)
    assert float(jnp.max(jnp.abs(updates["w"]))) < 0.01  # a large h un-clips the step
    _, state2 = opt.update({"w": params["w"]}, state, params)
    assert state2[0][1].hessian.ema["w"] is not None
    np.testing.assert_array_equal(state2[0][1].hessian.ema["w"], state[0][1].hessian.ema["w"])


def test_sophia_through_optax_chain():
    """optax.chain passes ``hessian=`` only to optax.GradientTransformationExtraArgs members and
    drops it for others (adamx's NamedTuple included): as the docstring says, wrapped in that class
    sophia in an optax chain equals sophia alone; unwrapped, the estimate is lost."""
    params = {"w": jnp.linspace(-1.0, 1.0, 8)}
    grads = {"w": jnp.linspace(0.5, -0.5, 8)}
    estimate = {"w": jnp.full(8, 0.5)}
    alone = sophia(0.1, gamma=1.0)
    wrapped = optax.chain(optax.GradientTransformationExtraArgs(alone.init, alone.update))
    dropped = optax.chain(alone)
    u1, _ = alone.update(grads, alone.init(params), params, hessian=estimate)
    u2, _ = wrapped.update(grads, wrapped.init(params), params, hessian=estimate)
    u3, s3 = dropped.update(grads, dropped.init(params), params, hessian=estimate)
    np.testing.assert_allclose(np.asarray(u1["w"]), np.asarray(u2["w"]), rtol=1e-6)
    assert float(jnp.max(jnp.abs(s3[0][0][1].hessian.ema["w"]))) == 0.0


def test_sophia_zero_gradients_and_hutchinson():
    params = {"w": jnp.zeros((3, 2), jnp.float32), "z": jnp.zeros(4, jnp.complex64)}
    opt = sophia(0.1)
    state = opt.init(params)
    for _ in range(5):
        u, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
        params = apply_updates(params, u)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    assert state[0][1].hessian.ema["z"].dtype == jnp.float32
    # Hutchinson is exact on a diagonal quadratic: u * (D u) = D for Rademacher u.
    d = jnp.array([1.0, 2.0, 3.0])
    h = hutchinson_diagonal(lambda p: 0.5 * jnp.sum(d * p["x"] ** 2), {"x": jnp.ones(3)},
                            jax.random.key(0))  # fmt: skip
    np.testing.assert_allclose(np.asarray(h["x"]), np.asarray(d), rtol=1e-6)
    with pytest.raises(ValueError, match="eps_placement"):
        sophia(0.1, eps_placement="outside")


@pytest.mark.parametrize("storage", ["bf16_sr", "8bit"])
def test_sophia_reads_its_hessian_through_a_low_bit_storage(storage):
    """With ``nu_dtype`` a storage (stochastic bfloat16, 8-bit blocks), h is read through it (it
    used to be taken for an array and fail). Reference: the float32 run; tolerance: the storage's
    rounding of h (bfloat16: 2^-8 relative; 8-bit: a code step, 5e-2 relative here)."""
    nu_dtype = (
        adamx.stochastic_bfloat16()
        if storage == "bf16_sr"
        else adamx.low_bit_moments(8)["nu_dtype"]
    )
    params = {"w": jnp.linspace(0.5, 2.0, 8192, dtype=jnp.float32)}
    grads = {"w": jnp.full((8192,), 0.1, jnp.float32)}
    hessian = {"w": jnp.linspace(1.0, 3.0, 8192, dtype=jnp.float32)}
    results = []
    for tx in (adamx.sophia(1e-2, nu_dtype=nu_dtype), adamx.sophia(1e-2)):
        state = tx.init(params)
        _, state = tx.update(grads, state, params, hessian=hessian)
        updates, _ = tx.update(grads, state, params)
        results.append(np.asarray(updates["w"]))
    low, full = results
    assert np.all(np.isfinite(low))
    np.testing.assert_allclose(low, full, rtol=1e-2 if storage == "bf16_sr" else 5e-2)
