"""SOAP against a NumPy transcription of the authors' code, step for step.

``nikhilvyas/SOAP`` ``soap.py`` (a1e5535) is transcribed below (one torch parameter per
array) from docs/optimizers/soap_sophia.md (SOAP); optax 0.2.8 has no SOAP. On the tree and
gradients of tests/parity/soap_sophia.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adamx import apply_updates, scale_by_soap, soap, soap_labels
from adamx.optimizers._soap import Unrotated
from tests import helpers
from tests.helpers import cosine, jax_cosine, max_relative_difference, x64
from tests.parity.soap_sophia import GRADS, LR, PARAMS, STEPS, WD, matrix_tree, stacked


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
        slices = list(p0) if stacked(p0) else [p0]
        results = []
        for j, p in enumerate(slices):
            st: dict = {}
            for t in range(STEPS):
                g = GRADS[t][name][j] if stacked(p0) else GRADS[t][name]
                p = _soap_reference_step(
                    p, g, st, LR * cosine(t, STEPS), b1, b2, bs, eps, wd, freq, max_dim
                )
            results.append(p)
        out[name] = np.stack(results) if stacked(p0) else results[0]
    return out


def _soap(**kwargs):
    return soap(
        jax_cosine(LR, jnp.float64, STEPS), weight_decay=WD, precondition_frequency=3,
        max_precond_dim=6, batch_dims=stacked, **kwargs,
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
    labels = soap_labels(PARAMS, batch_dims=stacked)
    assert labels == {
        "w": "soap", "tall": "soap", "stack": "soap", "conv": "soap", "b": "adam", "s": "adam",
    }  # fmt: skip
    assert soap_labels(PARAMS, precondition_1d=True)["b"] == "soap"
    state = scale_by_soap(max_precond_dim=6, batch_dims=stacked).init(PARAMS)
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
    opt = soap(0.1, batch_dims=stacked)
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
