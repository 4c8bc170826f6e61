"""SOAP and Sophia against NumPy transcriptions of the authors' code (and optax for Sophia).

SOAP: ``nikhilvyas/SOAP`` ``soap.py`` (a1e5535) transcribed below; optax 0.2.8 has no SOAP.
Sophia: ``Liuhong99/Sophia`` ``sophia.py`` (a7e1572), with ``step`` then ``update_hessian`` as
``train_sophiag.py`` calls them, transcribed below; and ``optax.contrib.sophia`` fed the same
estimates. 50 float64 steps (the issue's parity length) with a cosine learning rate and weight
decay; the measure is ``max |x - ref| / (|ref| + 1e-6)``, bound 1e-10.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx._soap import Unrotated, scale_by_soap, soap, soap_labels
from adamx._sophia import hutchinson_diagonal, sophia
from adamx._update import apply_updates
from tests import helpers
from tests.helpers import cosine, jax_cosine, max_relative_difference, relaxed, x64

STEPS = 50
LR = 1e-2
WD = 0.1


def _stacked(leaf):
    return 1 if np.ndim(leaf) == 3 else 0


def matrix_tree(seed=0, dtype=np.float64):
    """Square and tall matrices, a stacked (layers, rows, cols) leaf, a 4-D kernel, a vector and a
    scalar. Every Shampoo statistic here has full rank (see `soap`: a rank-deficient one has no
    unique eigenbasis), with ``max_precond_dim=6`` leaving the tall matrix's 8-axis unrotated."""
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((6, 6)).astype(dtype),
        "tall": rng.standard_normal((8, 4)).astype(dtype),
        "stack": rng.standard_normal((3, 4, 4)).astype(dtype),
        "conv": rng.standard_normal((3, 3, 2, 4)).astype(dtype),
        "b": rng.standard_normal(6).astype(dtype),
        "s": np.asarray(rng.standard_normal(), dtype),
    }


PARAMS = matrix_tree()


def _draw(seed):
    """A tree like PARAMS of N(0, 1) draws."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), PARAMS)


GRADS = [_draw(100 + i) for i in range(STEPS)]


# ---- SOAP: the authors' update, transcribed (one torch parameter per array) ----------------------


def _project(x, qs, back=False):
    for q in qs:
        if q is None:
            x = np.transpose(x, list(range(1, x.ndim)) + [0])
        else:
            x = np.tensordot(x, q, axes=([0], [1 if back else 0]))
    return x


def _soap_reference_step(p, g, st, lr, b1, b2, bs, eps, wd, freq, max_dim):
    def update_preconditioner():
        if st["Q"] is not None:
            st["m"] = _project(st["m"], st["Q"], back=True)
        if g.ndim > 1:
            for idx, sh in enumerate(g.shape):
                if sh <= max_dim:
                    others = [j for j in range(g.ndim) if j != idx]
                    outer = np.tensordot(g, g, axes=(others, others))
                    st["GG"][idx] = st["GG"][idx] + (1 - bs) * (outer - st["GG"][idx])
        if st["Q"] is None:
            st["Q"] = [
                None if m is None else np.flip(np.linalg.eigh(m + 1e-30 * np.eye(len(m)))[1], 1)
                for m in st["GG"]
            ]
        if st["step"] > 0 and st["step"] % freq == 0:
            new = []
            for ind, (m, o) in enumerate(zip(st["GG"], st["Q"], strict=True)):
                if m is None:
                    new.append(None)
                    continue
                idx = np.argsort(-np.diag(o.T @ m @ o), kind="stable")
                st["v"] = np.take(st["v"], idx, axis=ind)
                new.append(np.linalg.qr(m @ o[:, idx])[0])
            st["Q"] = new
        if st["step"] > 0:
            st["m"] = _project(st["m"], st["Q"])

    if "Q" not in st:
        st.update(step=0, m=np.zeros_like(g), v=np.zeros_like(g), Q=None)
        if g.ndim == 1:
            st["GG"] = [None]
        else:
            st["GG"] = [np.zeros((sh, sh)) if sh <= max_dim else None for sh in g.shape]
        update_preconditioner()
        return p
    gp = _project(g, st["Q"])
    st["step"] += 1
    k = st["step"]
    st["m"] = b1 * st["m"] + (1 - b1) * gp
    st["v"] = b2 * st["v"] + (1 - b2) * gp**2
    step_size = lr * (1 - b2**k) ** 0.5 / (1 - b1**k)
    p = p - step_size * _project(st["m"] / (np.sqrt(st["v"]) + eps), st["Q"], back=True)
    p = p + (-lr * wd) * p
    update_preconditioner()
    return p


def soap_reference(b1=0.95, b2=0.95, shampoo_beta=None, eps=1e-8, wd=WD, freq=3, max_dim=6):
    """The authors' SOAP over GRADS; a stacked leaf is one torch parameter per layer."""
    bs = b2 if shampoo_beta is None else shampoo_beta
    out = {}
    for name, p0 in PARAMS.items():
        slices = list(p0) if _stacked(p0) else [p0]
        results = []
        for j, p in enumerate(slices):
            st: dict = {}
            for t in range(STEPS):
                g = GRADS[t][name][j] if _stacked(p0) else GRADS[t][name]
                p = _soap_reference_step(
                    p, g, st, LR * cosine(t, STEPS), b1, b2, bs, eps, wd, freq, max_dim
                )
            results.append(p)
        out[name] = np.stack(results) if _stacked(p0) else results[0]
    return out


def _soap(**kwargs):
    return soap(
        jax_cosine(LR, jnp.float64, STEPS), weight_decay=WD, precondition_frequency=3,
        max_precond_dim=6, batch_dims=_stacked, **kwargs,
    )  # fmt: skip


def test_soap_matches_the_authors_code():
    """SOAP vs the NumPy transcription of soap.py, 50 float64 steps: <= 1e-10."""
    with x64():
        ours = helpers.run_jax(_soap(), apply_updates, jnp.float64, PARAMS, GRADS)
    assert max_relative_difference(ours, soap_reference()) <= 1e-10


def test_soap_shampoo_beta_matches_and_matters():
    """A separate decay of L and R: parity <= 1e-10, and it changes the trajectory (> 1e-6)."""
    with x64():
        ours = helpers.run_jax(_soap(shampoo_beta=0.5), apply_updates, jnp.float64, PARAMS, GRADS)
    reference = soap_reference(shampoo_beta=0.5)
    assert max_relative_difference(ours, reference) <= 1e-10
    assert max_relative_difference(reference, soap_reference()) > 1e-6


def test_soap_labels_and_routing():
    labels = soap_labels(PARAMS, batch_dims=_stacked)
    assert labels == {
        "w": "soap", "tall": "soap", "stack": "soap", "conv": "soap", "b": "adam", "s": "adam",
    }  # fmt: skip
    assert soap_labels(PARAMS, precondition_1d=True)["b"] == "soap"
    state = scale_by_soap(max_precond_dim=6, batch_dims=_stacked).init(PARAMS)
    assert isinstance(state.stats["tall"][0], Unrotated) and state.stats["tall"][1].shape == (4, 4)
    assert state.stats["stack"][0].shape == (3, 4, 4)  # one L per layer
    assert state.stats["b"] == (Unrotated(),) and state.stats["s"] == ()
    # Relabelling a matrix "adam" gives it the standard basis: SOAP's Adam (eps before the
    # correction), the authors' treatment of vectors.
    relabel = scale_by_soap(labels=lambda p: jax.tree.map(lambda _: "adam", p)).init(PARAMS)
    assert relabel.stats["w"] == (Unrotated(), Unrotated())
    with pytest.raises(ValueError, match="labels must be"):
        scale_by_soap(labels={k: "muon" for k in PARAMS}).init(PARAMS)


def test_soap_first_call_is_skipped():
    """The first call builds L, R and their bases, and moves nothing, not even by weight decay."""
    params = jax.tree.map(jnp.asarray, matrix_tree(1, np.float32))
    opt = soap(0.1, weight_decay=0.5)
    state = opt.init(params)
    updates, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
    q = state[0].bases["w"][0]
    np.testing.assert_allclose(np.asarray(q.T @ q), np.eye(6), atol=1e-5)


def test_soap_rotation_invariance():
    """SOAP is equivariant under orthogonal changes of basis of a matrix: with G -> U G V^T every
    statistic, basis and step rotates alike (float64, 12 steps, two refreshes)."""
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    v, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    grads = [rng.standard_normal((5, 5)) for _ in range(12)]
    with x64():
        opt = soap(1e-2, weight_decay=0.0, precondition_frequency=5)
        plain = helpers.run_jax(opt, apply_updates, jnp.float64, {"w": np.zeros((5, 5))},
                                [{"w": g} for g in grads])  # fmt: skip
        turned = helpers.run_jax(opt, apply_updates, jnp.float64, {"w": np.zeros((5, 5))},
                                 [{"w": u @ g @ v.T} for g in grads])  # fmt: skip
    np.testing.assert_allclose(u @ np.asarray(plain["w"]) @ v.T, turned["w"], atol=1e-12)


def test_soap_zero_gradients_and_dtypes():
    params = jax.tree.map(jnp.asarray, matrix_tree(1, np.float32))
    params["half"] = jnp.ones((4, 3), jnp.bfloat16)
    opt = soap(0.1, batch_dims=_stacked)
    state = opt.init(params)
    step = jax.jit(lambda p, s, g: (lambda u, s: (apply_updates(p, u), s))(*opt.update(g, s, p)))
    for _ in range(5):
        params, state = step(params, state, jax.tree.map(jnp.zeros_like, params))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    assert params["half"].dtype == jnp.bfloat16
    assert state[0].stats["half"][0].dtype == jnp.float32
    assert all(x.dtype != jnp.float64 for x in jax.tree.leaves(state))


def test_soap_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="precondition_frequency"):
        soap(1e-3, precondition_frequency=0)
    with pytest.raises(ValueError, match="b2"):
        soap(1e-3, b2=1.0)
    with pytest.raises(ValueError, match="batch_dims"):
        soap(1e-3, batch_dims=5).init({"w": jnp.ones((2, 2))})


# ---- Sophia -------------------------------------------------------------------------------------

K = 10  # hess_interval of train_sophiag.py
RHO, TOKENS = 0.04, 64  # gamma = rho * bs: the authors' step(bs) with bs tokens per step
SAMPLED = [_draw(500 + i) for i in range(STEPS)]  # gradients on labels sampled from the model


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
