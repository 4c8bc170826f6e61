"""Muon against the authors' update (KellerJordan/Muon ``muon.py``) and ``optax.contrib.muon``.

50 steps in float64 on a Flax-like tree (an embedding, a stacked ``(layers, in, out)`` kernel with
stacked biases, a tall and a wide kernel, a norm scale, an output head), N(0, 1) gradients drawn in
advance, a cosine learning-rate schedule and weight decay on both branches. The measure is
``max |x - ref| / (|ref| + 1e-6)``; parity must be <= 1e-10. The authors' update is transcribed
below in NumPy float64 (their code runs the iteration in bfloat16: float64 is the exact form of the
same arithmetic). Then the difference between the two references, the Newton-Schulz facts, the
routing and the dtype rules.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import apply_updates, muon, muon_labels, newton_schulz, orthogonalize, scale_by_muon
from tests import helpers
from tests.helpers import max_relative_difference, relaxed, x64

STEPS = 50
LR, ADAM_LR = 0.02, 3e-3
WD, ADAM_WD = 0.1, 0.01
BETA = 0.95
KELLER = (3.4445, -4.7750, 2.0315)


def flax_like_tree(seed=0, dtype=np.float64):
    """Flax names and ``(in, out)`` kernels; ``layers`` is an ``nn.scan`` stack of 3 layers."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return {
        "Embed_0": {"embedding": normal(11, 6)},
        "layers": {"kernel": normal(3, 6, 8), "bias": normal(3, 8)},
        "down": {"kernel": normal(8, 6)},  # tall: orthogonalised through its transpose
        "up": {"kernel": normal(6, 9), "bias": normal(9)},  # wide: fan_out > fan_in, scaled
        "LayerNorm_0": {"scale": normal(6)},
        "lm_head": {"kernel": normal(6, 4)},
    }


PARAMS = flax_like_tree()
BATCH_DIMS = {k: int(k == "layers") for k in PARAMS}  # a prefix tree: everything under layers
MUON_LEAVES = {("layers", "kernel"), ("down", "kernel"), ("up", "kernel")}


def gradients(seed=1):
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), PARAMS) for _ in range(STEPS)]


GRADS = gradients()
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)


def cosine(t):
    return helpers.cosine(t, STEPS)


def jax_cosine(base):
    return helpers.jax_cosine(base, jnp.float64, STEPS)


def muon_part(tree):
    return {k: tree[k]["kernel"] for k in ("layers", "down", "up")}


# ---- the authors' update, transcribed in NumPy float64 ------------------------------------------


def keller_newton_schulz(g, steps=5, eps=1e-7):
    """``zeropower_via_newtonschulz5`` on one torch-layout matrix, in float64."""
    a, b, c = KELLER
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def keller_muon(params, grads, *, nesterov=True, eps=1e-7, b1=0.9, b2=0.95, adam_eps=1e-10):
    """``SingleDeviceMuonWithAuxAdam.step`` over ``grads``: Muon groups for ``MUON_LEAVES`` (each
    ``(in, out)`` kernel given to it as the torch ``(out, in)`` weight, each stacked layer its own
    matrix), Adam groups for the rest; both learning rates times ``cosine(t)`` (LambdaLR)."""
    p = jax.tree.map(np.array, params)
    momentum = jax.tree.map(np.zeros_like, p)
    exp_avg = jax.tree.map(np.zeros_like, p)
    exp_avg_sq = jax.tree.map(np.zeros_like, p)
    for t, g in enumerate(grads):
        lr, adam_lr = LR * cosine(t), ADAM_LR * cosine(t)
        for module, leaves in p.items():
            for name in leaves:
                grad, w = g[module][name], p[module][name]
                if (module, name) in MUON_LEAVES:
                    buf = momentum[module][name]
                    buf += (1 - BETA) * (grad - buf)  # momentum.lerp_(grad, 1 - beta)
                    update = grad + BETA * (buf - grad) if nesterov else buf  # grad.lerp_(m, beta)
                    for layer in np.ndindex(w.shape[:-2]):
                        torch_grad = update[layer].T  # (out, in)
                        o = keller_newton_schulz(torch_grad, eps=eps)
                        o *= max(1, torch_grad.shape[0] / torch_grad.shape[1]) ** 0.5
                        w[layer] = (w[layer].T * (1 - lr * WD) - lr * o).T
                else:
                    m, v, step = exp_avg[module][name], exp_avg_sq[module][name], t + 1
                    m += (1 - b1) * (grad - m)
                    v += (1 - b2) * (grad**2 - v)
                    update = (m / (1 - b1**step)) / (np.sqrt(v / (1 - b2**step)) + adam_eps)
                    w *= 1 - adam_lr * ADAM_WD
                    w -= adam_lr * update
    return p


def ours(**kwargs):
    return muon(
        jax_cosine(LR), beta=BETA, weight_decay=WD, batch_dims=BATCH_DIMS,
        adam_learning_rate=jax_cosine(ADAM_LR),
        adam_weight_decay=ADAM_WD, **kwargs,
    )  # fmt: skip


def optax_muon(**kwargs):
    dims = optax.contrib.MuonDimensionNumbers
    numbers = jax.tree.map(lambda _: None, PARAMS)
    numbers["layers"]["kernel"] = dims(reduction_axis=1, output_axis=2)
    numbers["down"]["kernel"] = numbers["up"]["kernel"] = dims()
    return optax.contrib.muon(
        jax_cosine(LR), beta=BETA, weight_decay=WD, adam_learning_rate=jax_cosine(ADAM_LR),
        adam_weight_decay=ADAM_WD, muon_weight_dimension_numbers=numbers, **kwargs,
    )  # fmt: skip


# optax's settings in adamx's terms: corrected momentum, eps 1e-8, optax's AdamW branch.
OPTAX_FORM = dict(debias=True, eps=1e-8, adam_b2=0.999, adam_eps=1e-8)


@pytest.mark.parametrize("nesterov", [True, False])
def test_float64_parity_with_the_authors_update(nesterov):
    """adamx's defaults vs the NumPy transcription of KellerJordan/Muon: <= 1e-10."""
    with x64():
        mine = run_jax(ours(nesterov=nesterov), apply_updates, jnp.float64)
    ref = keller_muon(PARAMS, GRADS, nesterov=nesterov)
    difference = max_relative_difference(mine, ref)
    print(f"muon nesterov={nesterov} float64 vs Keller: {difference:.2e}")
    assert difference <= 1e-10


@pytest.mark.parametrize("nesterov", [True, False])
def test_float64_parity_with_optax(nesterov):
    """``debias=True`` and optax's AdamW settings vs ``optax.contrib.muon`` 0.2.8: <= 1e-10."""
    with x64():
        mine = run_jax(
            ours(nesterov=nesterov, adam_nesterov=nesterov, **OPTAX_FORM), apply_updates,
            jnp.float64,
        )  # fmt: skip
        with relaxed():
            ref = run_jax(optax_muon(nesterov=nesterov), optax.apply_updates, jnp.float64)
    difference = max_relative_difference(mine, ref)
    print(f"muon nesterov={nesterov} float64 vs optax: {difference:.2e}")
    assert difference <= 1e-10


def test_float64_parity_with_optax_consistent_rms():
    """``adjust_lr="match_rms_adamw"`` vs optax's ``consistent_rms=0.2`` (Moonshot): <= 1e-10."""
    with x64():
        mine = run_jax(
            ours(adjust_lr="match_rms_adamw", adam_nesterov=True, **OPTAX_FORM), apply_updates,
            jnp.float64,
        )  # fmt: skip
        with relaxed():
            ref = run_jax(optax_muon(consistent_rms=0.2), optax.apply_updates, jnp.float64)
    difference = max_relative_difference(mine, ref)
    print(f"muon match_rms_adamw float64 vs optax consistent_rms: {difference:.2e}")
    assert difference <= 1e-10


def test_the_references_differ_in_the_nesterov_momentum():
    """Same eps and AdamW branch, only the momentum form differs: Keller's uncorrected look-ahead
    vs optax's bias-corrected Dozat form. On the Muon matrices the trajectories part by > 1e-3;
    without Nesterov the two forms differ only through eps (the iteration is scale-invariant)."""
    with x64():
        keller = run_jax(ours(eps=1e-8), apply_updates, jnp.float64)
        corrected = run_jax(ours(eps=1e-8, debias=True), apply_updates, jnp.float64)
        keller_plain = run_jax(ours(eps=1e-8, nesterov=False), apply_updates, jnp.float64)
        corrected_plain = run_jax(
            ours(eps=1e-8, nesterov=False, debias=True), apply_updates, jnp.float64
        )
    nesterov_gap = max_relative_difference(muon_part(keller), muon_part(corrected))
    plain_gap = max_relative_difference(muon_part(keller_plain), muon_part(corrected_plain))
    print(f"Keller vs optax momentum: nesterov {nesterov_gap:.2e}, plain {plain_gap:.2e}")
    assert nesterov_gap > 1e-3
    assert plain_gap < 1e-5
    # The AdamW branch is the same in both runs.
    assert max_relative_difference(keller["LayerNorm_0"], corrected["LayerNorm_0"]) == 0.0


# ---- Newton-Schulz ------------------------------------------------------------------------------


def singular_values(x):
    x = np.asarray(x)
    return np.linalg.svd(
        x.astype(np.complex128 if np.iscomplexobj(x) else np.float64), compute_uv=False
    )


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (3, 32, 64)])
def test_newton_schulz_singular_values_lie_in_the_band(shape):
    """Keller's coefficients, 5 steps: singular values in [0.68, 1.13] (docs/optimizers/muon.md,
    section Update) for 2:1 Gaussian matrices, whose singular values are not small against the norm (the band
    widens towards [0, 1.2023] as the matrix nears square, see the next test)."""
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    s = singular_values(newton_schulz(x, batch_dims=len(shape) - 2))
    print(f"{shape}: singular values in [{s.min():.3f}, {s.max():.3f}]")
    assert 0.68 <= s.min() and s.max() <= 1.13


def test_newton_schulz_never_exceeds_the_maximum_of_the_quintic():
    """p(x) = a x + b x^3 + c x^5 maps [0, p_max] into itself, p_max = p(0.5545...) = 1.2023, and
    the normalised input has singular values <= 1: no output singular value exceeds p_max. A
    square Gaussian matrix has singular values near 0, some of which land near the maximum."""
    a, b, c = KELLER
    roots = np.roots([5 * c, 0, 3 * b, 0, a])
    peak = min(r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0)
    p_max = a * peak + b * peak**3 + c * peak**5
    assert abs(p_max - 1.2023) < 1e-4
    x = np.random.default_rng(3).standard_normal((50, 50)).astype(np.float32)
    s = singular_values(newton_schulz(x))
    print(f"(50, 50): singular values in [{s.min():.3f}, {s.max():.3f}], p_max {p_max:.4f}")
    assert s.max() <= p_max + 1e-5 and s.max() > 1.13


def test_newton_schulz_commutes_with_scaling_transposition_and_rotation():
    rng = np.random.default_rng(4)
    with x64():
        x = jnp.asarray(rng.standard_normal((12, 7)))
        q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
        ns = functools.partial(newton_schulz, eps=0.0)
        np.testing.assert_allclose(ns(3.7 * x), ns(x), atol=1e-12)
        np.testing.assert_allclose(ns(x.T), ns(x).T, atol=1e-12)
        np.testing.assert_allclose(ns(jnp.asarray(q) @ x), q @ np.asarray(ns(x)), atol=1e-12)


def test_batched_leaves_are_independent_matrices():
    """A (layers, rows, cols) leaf with batch_dims=1 is each layer orthogonalised on its own."""
    x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 6, 4)), jnp.float32)
    batched = newton_schulz(x, batch_dims=1)
    for layer in range(3):
        np.testing.assert_allclose(batched[layer], newton_schulz(x[layer]), rtol=1e-5, atol=1e-6)
    # With batch_dims=0 the same leaf is one (18, 4) matrix: a different result.
    assert not np.allclose(newton_schulz(x), batched, atol=1e-2)


def test_newton_schulz_matmuls_use_the_requested_precision():
    x = jnp.ones((4, 3), jnp.float32)
    assert "HIGHEST" in str(jax.make_jaxpr(newton_schulz)(x))
    fast = jax.make_jaxpr(functools.partial(newton_schulz, precision=jax.lax.Precision.DEFAULT))
    assert "HIGHEST" not in str(fast(x))


def test_newton_schulz_in_bfloat16_as_the_authors_run_it():
    x = np.random.default_rng(6).standard_normal((64, 32)).astype(np.float32)
    low = newton_schulz(x, dtype=jnp.bfloat16)
    assert low.dtype == jnp.float32
    s = singular_values(low)
    assert 0.5 <= s.min() and s.max() <= 1.5  # Keller's "S' ~ Uniform(0.5, 1.5)"
    assert np.max(np.abs(np.asarray(low) - np.asarray(newton_schulz(x)))) < 5e-2


def test_newton_schulz_of_a_complex_matrix():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((6, 9)) + 1j * rng.standard_normal((6, 9))).astype(np.complex64)
    y = newton_schulz(x)
    assert y.dtype == jnp.complex64
    s = singular_values(y)
    assert 0.68 <= s.min() and s.max() <= 1.13


def test_a_zero_matrix_stays_zero_even_without_eps():
    for eps in (1e-7, 0.0):
        assert np.all(np.asarray(newton_schulz(jnp.zeros((3, 5)), eps=eps)) == 0)


# ---- routing ------------------------------------------------------------------------------------


def test_muon_labels_on_a_flax_like_tree():
    tree = flax_like_tree(dtype=np.float32)
    tree["MultiHeadDotProductAttention_0"] = {"query": {"kernel": np.zeros((6, 2, 3))}}
    tree["Conv_0"] = {"kernel": np.zeros((3, 3, 2, 4))}
    labels = muon_labels(tree)
    assert labels == {
        "Embed_0": {"embedding": "adam"},
        "layers": {"kernel": "adam", "bias": "muon"},  # stacked: wrong without batch_dims
        "down": {"kernel": "muon"},
        "up": {"kernel": "muon", "bias": "adam"},
        "LayerNorm_0": {"scale": "adam"},
        "lm_head": {"kernel": "adam"},
        "MultiHeadDotProductAttention_0": {"query": {"kernel": "adam"}},
        "Conv_0": {"kernel": "adam"},
    }
    stacked = muon_labels(tree, batch_dims={**{k: 0 for k in tree}, "layers": 1})
    assert stacked["layers"] == {"kernel": "muon", "bias": "adam"}
    by_function = muon_labels(tree, batch_dims=lambda x: 1 if np.ndim(x) == 3 else 0)
    assert by_function["layers"]["kernel"] == "muon"
    assert by_function["MultiHeadDotProductAttention_0"]["query"]["kernel"] == "muon"
    # optax's rule: every 2-D leaf, embeddings and heads included.
    everything = muon_labels(tree, exclude=lambda path: False)
    assert everything["Embed_0"]["embedding"] == everything["lm_head"]["kernel"] == "muon"


def test_the_optimizer_routes_by_the_labels():
    """Muon keeps one momentum per Muon leaf; the rest get Adam's two moments. A label function
    of the user's overrides the default."""
    params = jax.tree.map(jnp.asarray, flax_like_tree(dtype=np.float32))
    state = muon(0.02, batch_dims=BATCH_DIMS).init(params)
    muon_momentum = state.inner_states["muon"].inner_state[0][0].ema
    assert {k for k, v in muon_momentum.items() if jax.tree.leaves(v)} == {"layers", "down", "up"}
    only_down = lambda p: jax.tree.map(lambda _: "adam", p) | {"down": {"kernel": "muon"}}  # noqa: E731
    state = muon(0.02, labels=only_down).init(params)
    muon_momentum = state.inner_states["muon"].inner_state[0][0].ema
    assert {k for k, v in muon_momentum.items() if jax.tree.leaves(v)} == {"down"}


# ---- dtypes, zeros, errors ----------------------------------------------------------------------


def test_zero_gradients_from_zero_state_give_finite_params():
    params = jax.tree.map(jnp.asarray, flax_like_tree(dtype=np.float32))
    opt = muon(0.02, batch_dims=BATCH_DIMS)
    state = opt.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    update = jax.jit(opt.update)
    for _ in range(5):
        updates, state = update(zeros, state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params))


def test_dtypes_are_kept():
    rng = np.random.default_rng(8)
    params = {
        "w": jnp.asarray(rng.standard_normal((4, 6)), jnp.bfloat16),
        "z": jnp.asarray(
            rng.standard_normal((5, 3)) + 1j * rng.standard_normal((5, 3)), jnp.complex64
        ),  # fmt: skip
        "b": jnp.zeros(3, jnp.float32),
    }
    opt = muon(0.02, mu_dtype=None)
    state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    updates, new_state = jax.jit(opt.update)(grads, state, params)
    assert {k: u.dtype for k, u in updates.items()} == {k: p.dtype for k, p in params.items()}
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
        assert before.dtype == after.dtype and after.dtype != jnp.float64
    assert state.inner_states["muon"].inner_state[0][0].ema["z"].dtype == jnp.complex64


def test_errors_are_sentences():
    with pytest.raises(ValueError, match="decay rate"):
        muon(0.02, beta=1.0)
    with pytest.raises(ValueError, match="`eps`"):
        muon(0.02, eps=-1.0)
    with pytest.raises(ValueError, match="Newton-Schulz iterations"):
        orthogonalize(steps=0)
    with pytest.raises(ValueError, match=r"\(a, b, c\)"):
        orthogonalize(coefficients=(1.0, 2.0))
    with pytest.raises(ValueError, match="adjust_lr"):
        muon(0.02, adjust_lr="spectral")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="learning_rate"):
        muon(-1.0)
    with pytest.raises(ValueError, match="at least 2 axes"):
        scale_by_muon().init({"b": jnp.zeros(3)})
    with pytest.raises(ValueError, match="batch_dims"):
        muon_labels({"w": jnp.zeros((2, 3))}, batch_dims=-1)
    with pytest.raises(TypeError, match="batch_dims"):
        muon_labels({"w": jnp.zeros((2, 3))}, batch_dims=True)
    with pytest.raises(ValueError, match="prefix"):
        muon_labels({"w": jnp.zeros((2, 3))}, batch_dims={"v": 0})


def test_registry_case_converges_where_the_matrix_tests_it():
    """The registry line's settings (see the integrator's `tests/helpers.OPTIMIZERS`)."""
    params = jax.tree.map(jnp.asarray, helpers.random_tree(0))
    start = float(helpers.parabola(params))
    opt = muon(0.1)
    params, _ = helpers.minimise(opt, helpers.parabola, params, steps=300)
    assert float(helpers.parabola(params)) < 1e-3 * start
    assert math.isfinite(start)
