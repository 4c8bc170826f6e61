"""Adafactor, LAMB and LARS against torch.optim 2.13, optax 0.2.8 and the papers, step for step.

Parity: 100 steps (``PARITY_STEPS``) in float64 on ``random_tree`` plus a stacked ``(6, 5, 4)``
leaf (six layers of 5x4 matrices), gradients drawn in advance with a 10x spike every 10 steps, a
cosine learning-rate schedule and weight decay where the algorithm has it; the measure is
``max |x - ref| / (|ref| + 1e-6)`` and must be <= 1e-10. References: ``torch.optim.Adafactor``;
optax's Adafactor chain (its own blocks, with its second-moment decay in float64), ``optax.lamb``,
``optax.lars``; and NumPy transcriptions of the papers' updates written here (algorithms.md,
sections 16 and 18). Then the documented differences between the references and the papers' facts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from adamx._adafactor import adafactor, scale_by_adafactor, scale_by_factored_rms
from adamx._adam import adam, adamw
from adamx._lamb import lamb, lars, scale_by_trust_ratio
from adamx._update import apply_updates
from tests import helpers
from tests.helpers import (
    PARITY_STEPS,
    cosine,
    jax_cosine,
    max_relative_difference,
    random_tree,
    relaxed,
    x64,
)

STEPS = PARITY_STEPS
WD = 0.1


def make_params(seed=0):
    tree = random_tree(seed, np.float64)
    tree["stack"] = np.random.default_rng(seed + 10).standard_normal((6, 5, 4))
    return tree


def spiky_gradients(params, seed=9, steps=STEPS):
    return helpers.spiky_gradients(params, seed, steps)


PARAMS = make_params()
GRADS = spiky_gradients(PARAMS)
TREEDEF = jax.tree.structure(PARAMS)
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)
run_torch = functools.partial(helpers.run_torch, params=PARAMS, grads=GRADS)


def stacked(p):
    """``batch_dims`` for the tree: the ``(6, 5, 4)`` stack has one leading layer axis."""
    return 1 if p.ndim == 3 and p.shape[0] == 6 else 0


def ours(tx, grads=GRADS, params=PARAMS):
    with x64():
        return helpers.run_jax(tx, apply_updates, jnp.float64, params, grads)


def optax_run(build, grads=GRADS, params=PARAMS):
    """``build()`` runs under x64: optax fixes dtypes such as ``accumulator_dtype=jnp.float64``
    when the transformation is built, to float32 if x64 is off then."""
    with x64(), relaxed():
        return helpers.run_jax(build(), optax.apply_updates, jnp.float64, params, grads)


def numpy_run(step, state_init, base_lr, params=PARAMS, grads=GRADS, multiplier=cosine):
    """Run ``step(t, lr_t, p, g, s) -> (p, s)`` leaf by leaf for ``t = 1..len(grads)``."""
    leaves = [np.array(x, np.float64) for x in jax.tree.leaves(params)]
    states = [state_init(p) for p in leaves]
    for t, g_tree in enumerate(grads, start=1):
        lr = base_lr * multiplier(t - 1)
        for k, g in enumerate(jax.tree.leaves(g_tree)):
            leaves[k], states[k] = step(t, lr, leaves[k], np.asarray(g, np.float64), states[k])
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


# ---- Adafactor --------------------------------------------------------------------------------------

AF_LR = 0.5  # large enough that rho_t = min(lr_t, 1/sqrt(t)) takes both branches in 100 steps
TORCH_OPTIONS = dict(
    eps_placement="clamp", eps=None, factored_dims="last", min_dim_size_to_factor=1
)


def f64_decay(count, exponent):
    """optax's ``_decay_rate_pow`` in float64 (optax's own evaluates ``t^-c`` in float32)."""
    return 1.0 - (count.astype(jnp.float64) + 1.0) ** (-exponent)


def optax_adafactor(lr, momentum=None, wd=None, min_dim=128):
    """The chain of ``optax.adafactor`` (0.2.8), from optax's own blocks in its order."""
    members = [
        optax.scale_by_factored_rms(min_dim_size_to_factor=min_dim, decay_rate_fn=f64_decay),
        optax.clip_by_block_rms(1.0),
        optax.scale_by_learning_rate(lr, flip_sign=False),
        optax.scale_by_param_block_rms(),
    ]
    if momentum is not None:
        members.append(optax.ema(momentum, debias=False, accumulator_dtype=jnp.float64))
    if wd is not None:
        members.append(optax.add_decayed_weights(wd))
    members.append(optax.scale(-1.0))
    return optax.chain(*members)


def relative(base):
    """The paper's relative step as an optax schedule: ``min(base * cosine, 1/sqrt(t))``."""
    cos = jax_cosine(base, jnp.float64)
    return lambda c: jnp.minimum(cos(c), 1 / jnp.sqrt(c.astype(jnp.float64) + 1))


def test_adafactor_matches_torch():
    """torch.optim.Adafactor(lr=0.5 with LambdaLR cosine, weight_decay=0.1); <= 1e-10."""
    mine = ours(adafactor(jax_cosine(AF_LR, jnp.float64), weight_decay=WD, **TORCH_OPTIONS))
    ref = run_torch(
        lambda ps: torch.optim.Adafactor(ps, lr=AF_LR, weight_decay=WD, foreach=False),
        torch.float64,
    )
    print(f"adafactor (torch options) vs torch: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


OPTAX_CASES = [
    ("plain_min1", dict(), dict(), 1, False),
    (
        "momentum_decay_min1",
        dict(momentum=0.9, weight_decay=WD),
        dict(momentum=0.9, wd=WD),
        1,
        False,
    ),
    ("optax_min_dim", dict(momentum=0.9, weight_decay=WD), dict(momentum=0.9, wd=WD), 128, False),
    ("relative_step", dict(), dict(), 1, True),
]


@pytest.mark.parametrize(
    "name, mine_kw, ref_kw, min_dim, rel", OPTAX_CASES, ids=[c[0] for c in OPTAX_CASES]
)
def test_adafactor_matches_optax(name, mine_kw, ref_kw, min_dim, rel):
    """optax's adafactor chain (beta2 in float64); ``relative_step=False``, decay not scaled by
    the learning rate (optax's ``weight_decay_rate``); <= 1e-10."""
    base = AF_LR
    mine = ours(
        adafactor(
            jax_cosine(base, jnp.float64),
            relative_step=rel,
            decay_by_learning_rate=False,
            min_dim_size_to_factor=min_dim,
            **mine_kw,
        )
    )
    lr = relative(base) if rel else jax_cosine(base, jnp.float64)
    ref = optax_run(lambda: optax_adafactor(lr, min_dim=min_dim, **ref_kw))
    print(f"adafactor {name} vs optax: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


def test_optax_alias_differs_only_by_its_float32_decay():
    """``optax.adafactor`` itself computes 1 - t^-0.8 in float32: the rest is the same chain."""
    mine = ours(
        adafactor(
            jax_cosine(AF_LR, jnp.float64),
            relative_step=False,
            decay_by_learning_rate=False,
            min_dim_size_to_factor=1,
        )
    )
    ref = optax_run(
        lambda: optax.adafactor(jax_cosine(AF_LR, jnp.float64), min_dim_size_to_factor=1)
    )
    gap = max_relative_difference(mine, ref)
    print(f"adafactor vs optax.adafactor (float32 beta2): {gap:.2e}")
    assert 1e-10 < gap < 1e-2


def paper_adafactor(eps1=1e-30, eps2=1e-3, d=1.0, c=0.8):
    """Shazeer & Stern, Algorithms 4 and 5 (algorithms.md section 18), with row and column *sums*:
    ``R = sum over columns``, ``C = sum over rows``, ``V = R C^T / (1^T R)``. A leaf of rank 3 is a
    stack of matrices, each run as its own matrix."""

    def matrix_step(t, rho, x, g, state):
        beta = 1 - t ** (-c)
        alpha = max(eps2, np.sqrt(np.mean(x * x))) * rho
        sq = g * g + eps1
        if x.ndim == 2:
            r, col = state
            r = beta * r + (1 - beta) * sq.sum(axis=1)
            col = beta * col + (1 - beta) * sq.sum(axis=0)
            v = np.outer(r, col) / r.sum()
            state = (r, col)
        else:
            state = beta * state + (1 - beta) * sq
            v = state
        u = g / np.sqrt(v)
        u_hat = u / max(1.0, np.sqrt(np.mean(u * u)) / d)
        return x - alpha * u_hat, state

    def init_one(x):
        return (np.zeros(x.shape[0]), np.zeros(x.shape[1])) if x.ndim == 2 else np.zeros_like(x)

    def step(t, lr, x, g, state):
        rho = min(lr, 1 / np.sqrt(t))
        if x.ndim == 3:
            layers = [matrix_step(t, rho, x[i], g[i], state[i]) for i in range(x.shape[0])]
            return np.stack([p for p, _ in layers]), [s for _, s in layers]
        return matrix_step(t, rho, x, g, state)

    def init(x):
        return [init_one(layer) for layer in x] if x.ndim == 3 else init_one(x)

    return step, init


def without_conv(tree):
    return {k: v for k, v in tree.items() if k != "conv"}


def test_adafactor_matches_the_paper_layer_by_layer():
    """The defaults (eps1 added, relative step, parameter scale, clipping) with every matrix
    factored and the stack per layer, against a NumPy transcription of the paper; <= 1e-10."""
    params = without_conv(PARAMS)
    grads = [without_conv(g) for g in GRADS]
    mine = ours(
        adafactor(jax_cosine(AF_LR, jnp.float64), min_dim_size_to_factor=1, batch_dims=stacked),
        grads,
        params,
    )
    ref = numpy_run(*paper_adafactor(), AF_LR, params, grads)
    print(f"adafactor vs paper (NumPy): {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


def test_per_layer_factoring_is_exactly_separate_layers():
    with x64():
        stack = jnp.asarray(PARAMS["stack"], jnp.float64)
        grads = [jnp.asarray(g["stack"], jnp.float64) for g in GRADS[:30]]
        opt = adafactor(1e-2, min_dim_size_to_factor=1, batch_dims=1, momentum=0.9, weight_decay=WD)
        state = opt.init(stack)
        assert state[0][0].v_row.shape == (6, 5) and state[0][0].v_col.shape == (6, 4)
        together = helpers.run_jax(opt, apply_updates, jnp.float64, stack, grads)
        single = adafactor(1e-2, min_dim_size_to_factor=1, momentum=0.9, weight_decay=WD)
        one_step = jax.jit(lambda p, s, g: single.update(g, s, p))  # compiled once for all layers
        apart = []
        for i in range(6):
            p = stack[i]
            s = single.init(p)
            for g in grads:
                u, s = one_step(p, s, g[i])
                p = apply_updates(p, u)
            apart.append(p)
        across = helpers.run_jax(
            adafactor(1e-2, min_dim_size_to_factor=1, momentum=0.9, weight_decay=WD),
            apply_updates,
            jnp.float64,
            stack,
            grads,
        )
    np.testing.assert_array_equal(np.asarray(together), np.stack([np.asarray(a) for a in apart]))
    # batch_dims=0 factors the two largest axes, (layers, rows): statistics across layers.
    gap = max_relative_difference(across, together)
    print(f"adafactor stack: per layer vs across layers: {gap:.2e}")
    assert gap > 1e-3


def tiny(params, steps=10, scale=1e-17, seed=3):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda x: scale * rng.standard_normal(np.shape(x)), params)
        for _ in range(steps)
    ]


def test_eps_placement_matters_and_each_matches_its_reference():
    """Gradients of 1e-17 (|g|^2 below eps1 = 1e-30): optax's added eps1 and torch's floor give
    different steps; each option matches its own reference (<= 1e-10), and they differ by > 1e-6."""
    params = {"w": np.random.default_rng(1).standard_normal((4, 3)), "b": np.ones(3)}
    grads = tiny(params)
    constant = helpers.cosine  # the schedule multiplier torch sees; ours gets the same
    add = ours(adafactor(jax_cosine(1e-2, jnp.float64), min_dim_size_to_factor=1), grads, params)
    clamp = ours(adafactor(jax_cosine(1e-2, jnp.float64), **TORCH_OPTIONS), grads, params)
    ref_optax = optax_run(lambda: optax_adafactor(relative(1e-2), min_dim=1), grads, params)
    ref_torch = helpers.run_torch(
        lambda ps: torch.optim.Adafactor(ps, lr=1e-2, foreach=False),
        torch.float64,
        params,
        grads,
        constant,
    )
    assert max_relative_difference(add, ref_optax) <= 1e-10
    assert max_relative_difference(clamp, ref_torch) <= 1e-10
    gap = max_relative_difference(ref_optax, ref_torch)
    print(f"adafactor eps placement, optax vs torch on 1e-17 gradients: {gap:.2e}")
    assert gap > 1e-6


def test_torch_and_optax_defaults_differ():
    """The same lr 1e-2: torch (relative step, every matrix factored over its last two axes) and
    optax (lr as given, only dims >= 128 factored) are different optimizers."""
    ref_torch = run_torch(
        lambda ps: torch.optim.Adafactor(ps, lr=1e-2, foreach=False), torch.float64
    )
    ref_optax = optax_run(lambda: optax_adafactor(jax_cosine(1e-2, jnp.float64)))
    mine_torch = ours(adafactor(jax_cosine(1e-2, jnp.float64), **TORCH_OPTIONS))
    mine_optax = ours(
        adafactor(jax_cosine(1e-2, jnp.float64), relative_step=False, decay_by_learning_rate=False)
    )
    gap = max_relative_difference(ref_torch, ref_optax)
    print(f"adafactor defaults, torch vs optax: {gap:.2e}")
    assert gap > 1e-3
    assert max_relative_difference(mine_torch, ref_torch) <= 1e-10
    assert max_relative_difference(mine_optax, ref_optax) <= 1e-10


def test_decay_forms_differ():
    """torch's decay is multiplied by the learning rate (decay_by_learning_rate=True), optax's not."""
    lr = jax_cosine(AF_LR, jnp.float64)
    torch_form = ours(adafactor(lr, weight_decay=WD))
    optax_form = ours(adafactor(lr, weight_decay=WD, decay_by_learning_rate=False))
    assert max_relative_difference(torch_form, optax_form) > 1e-3


@pytest.mark.parametrize("theta_scale, lr", [(1.0, 1e-2), (1e-5, 1e-2), (3.0, 2.0)])
def test_adafactor_first_step_on_a_vector(theta_scale, lr):
    """Delta_1 = -max(eps2, RMS(theta_0)) * min(lr, 1) * sign(g_1) (algorithms.md section 18)."""
    with x64():
        theta = theta_scale * jnp.array([1.0, -2.0, 0.5, 3.0])
        g = jnp.array([0.3, -4.0, 1e-3, 7.0])
        opt = adafactor(lr)
        updates, _ = opt.update(g, opt.init(theta), theta)
        rms = float(jnp.sqrt(jnp.mean(theta**2)))
        expected = -max(1e-3, rms) * min(lr, 1.0) * np.sign(np.asarray(g))
        np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-12)


def test_adafactor_clipped_update_has_rms_at_most_d():
    """RMS(U_hat_t) <= d at every step, and the clipping is active on the spikes."""
    with x64():
        opt = scale_by_adafactor(min_dim_size_to_factor=1, multiply_by_parameter_scale=False)
        params = jax.tree.map(jnp.asarray, PARAMS)
        state = opt.init(params)
        update = jax.jit(opt.update)
        clipped = 0
        for grads in GRADS[:40]:
            updates, state = update(grads, state, params)
            for u in jax.tree.leaves(updates):
                rms = float(jnp.sqrt(jnp.mean(u**2)))
                assert rms <= 1 + 1e-12
                clipped += rms > 1 - 1e-12
        assert clipped > 0


def test_adafactor_second_moment_decay_schedule():
    """beta2_t = 1 - t^-0.8: v_1 = g_1^2 + eps1 (beta2_1 = 0), then the increasing average."""
    with x64():
        opt = scale_by_factored_rms()
        g1, g2 = jnp.array([2.0, -1.0]), jnp.array([0.5, 3.0])
        _, state = opt.update(g1, opt.init(g1))
        np.testing.assert_allclose(np.asarray(state.v), np.asarray(g1**2 + 1e-30), rtol=1e-15)
        _, state = opt.update(g2, state)
        w = 2.0**-0.8
        expected = (1 - w) * (g1**2 + 1e-30) + w * (g2**2 + 1e-30)
        np.testing.assert_allclose(np.asarray(state.v), np.asarray(expected), rtol=1e-14)


def state_bytes(opt, params):
    shapes = jax.eval_shape(opt.init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def test_adafactor_state_is_sublinear():
    """A 4096 x 4096 float32 matrix: row and column statistics, 8 bytes per row/column pair."""
    n = 4096
    params = jax.ShapeDtypeStruct((n, n), jnp.float32)
    ours_bytes = state_bytes(adafactor(1e-2), params)
    adam_bytes = state_bytes(adam(1e-3), params)
    print(
        f"state bytes per parameter, 4096x4096 float32: adafactor {ours_bytes / n**2:.6f} "
        f"({ours_bytes} bytes), adam {adam_bytes / n**2:.6f}"
    )
    assert ours_bytes == 4 * (n + n + 1) + 4 + 4  # v_row, v_col, the unused v, two counts
    assert adam_bytes >= 8 * n * n


# ---- LAMB ----------------------------------------------------------------------------------------

LAMB_LR = 1e-2


def test_lamb_matches_optax():
    """optax.lamb(cosine lr, weight_decay=0.1); <= 1e-10."""
    mine = ours(lamb(jax_cosine(LAMB_LR, jnp.float64), weight_decay=WD))
    ref = optax_run(lambda: optax.lamb(jax_cosine(LAMB_LR, jnp.float64), weight_decay=WD))
    print(f"lamb vs optax: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


def paper_lamb(wd, b1=0.9, b2=0.999, eps=1e-6):
    """You et al. (2020), Algorithm 2 with phi = identity (algorithms.md section 16); a rank-3 leaf
    is a stack of layers, each with its own trust ratio."""

    def step(t, lr, x, g, state):
        m, v = state
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * x

        def layer(xi, ri):
            xn, rn = np.linalg.norm(xi), np.linalg.norm(ri)
            ratio = xn / rn if xn > 0 and rn > 0 else 1.0
            return xi - lr * ratio * ri

        if x.ndim == 3:
            return np.stack([layer(xi, ri) for xi, ri in zip(x, r, strict=True)]), (m, v)
        return layer(x, r), (m, v)

    return step, lambda x: (np.zeros_like(x), np.zeros_like(x))


def test_lamb_matches_the_paper_with_a_ratio_per_layer():
    """A NumPy transcription of LAMB, one trust ratio per layer of the stack; <= 1e-10."""
    mine = ours(lamb(jax_cosine(LAMB_LR, jnp.float64), weight_decay=WD, batch_dims=stacked))
    ref = numpy_run(*paper_lamb(WD), LAMB_LR)
    print(f"lamb (per layer) vs paper (NumPy): {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10
    whole = ours(lamb(jax_cosine(LAMB_LR, jnp.float64), weight_decay=WD))
    assert max_relative_difference(whole["stack"], ref["stack"]) > 1e-6


def layer_norms(x, batch):
    return np.sqrt(np.sum(np.asarray(x) ** 2, axis=tuple(range(batch, np.ndim(x)))))


@pytest.mark.parametrize(
    "make, factor",
    [
        (lambda lr: lamb(lr, weight_decay=WD, batch_dims=stacked), 1.0),
        (lambda lr: lars(lr, weight_decay=WD, momentum=0.0, batch_dims=stacked), 1e-3),
    ],
    ids=["lamb", "lars"],
)
def test_each_layer_moves_by_lr_times_its_norm(make, factor):
    """||Delta_t|| = lr * kappa * ||theta_{t-1}|| per layer (no zero norms; LARS without momentum)."""
    with x64():
        lr = 0.05
        opt = make(lr)
        params = jax.tree.map(jnp.asarray, PARAMS)
        state = opt.init(params)
        update = jax.jit(opt.update)
        for grads in GRADS[:10]:
            updates, state = update(grads, state, params)
            for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
                batch = stacked(p)
                np.testing.assert_allclose(
                    layer_norms(u, batch), lr * factor * layer_norms(p, batch), rtol=1e-12
                )
            params = apply_updates(params, updates)


def test_trust_ratio_is_one_for_zero_norms_and_masked_leaves():
    with x64():
        params = {"zero": jnp.zeros(3), "w": jnp.array([1.0, 2.0]), "b": jnp.array([3.0, -1.0])}
        grads = {"zero": jnp.array([1.0, -1.0, 2.0]), "w": jnp.zeros(2), "b": jnp.array([0.5, 1.0])}
        block = scale_by_trust_ratio(mask={"zero": True, "w": True, "b": False})
        out, _ = block.update(grads, block.init(params), params)
        for key in params:  # zero param norm, zero update norm, masked out: all untouched
            np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(grads[key]))
        masked_fn = lamb(
            0.1, weight_decay=WD, trust_ratio_mask=lambda p: {"zero": True, "w": True, "b": False}
        )
        reference = adamw(0.1, eps=1e-6, weight_decay=WD)
        u, _ = masked_fn.update(grads, masked_fn.init(params), params)
        u_ref, _ = reference.update(grads, reference.init(params), params)
        np.testing.assert_allclose(np.asarray(u["b"]), np.asarray(u_ref["b"]), rtol=1e-15)


# ---- LARS ----------------------------------------------------------------------------------------

LARS_LR = 1.0


def not_vectors(params):
    return jax.tree.map(lambda p: np.ndim(p) > 1, params)


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy_ball", "nesterov"])
def test_lars_matches_optax(nesterov):
    """optax.lars(cosine lr, wd 0.1, trust coefficient 0.02, masks leaving vectors out); <= 1e-10."""
    kw = dict(
        weight_decay=WD,
        weight_decay_mask=not_vectors,
        trust_coefficient=0.02,
        trust_ratio_mask=not_vectors,
        nesterov=nesterov,
    )
    mine = ours(lars(jax_cosine(LARS_LR, jnp.float64), **kw))
    ref = optax_run(lambda: optax.lars(jax_cosine(LARS_LR, jnp.float64), **kw))
    print(f"lars nesterov={nesterov} vs optax: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


# ---- every optimizer of this file: zero gradients, dtypes, validation ----------------------------

ALL = [
    ("adafactor", lambda: adafactor(1e-2)),
    ("adafactor_factored", lambda: adafactor(1e-2, min_dim_size_to_factor=1, momentum=0.9)),
    ("adafactor_torch", lambda: adafactor(1e-2, weight_decay=1e-2, **TORCH_OPTIONS)),
    ("adafactor_eps0", lambda: adafactor(1e-2, eps=0.0, min_dim_size_to_factor=1)),
    ("adafactor_clamp_eps0", lambda: adafactor(1e-2, eps=0.0, eps_placement="clamp")),
    ("lamb", lambda: lamb(1e-2, weight_decay=1e-2)),
    ("lars", lambda: lars(1e-2, weight_decay=1e-4, nesterov=True)),
]


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(5):
        grads = jax.tree.map(jnp.zeros_like, params)
        updates, state = update(grads, state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


SCANNED = [a for a in ALL if "eps0" not in a[0]]


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    _, s = helpers.scan_keeps_dtypes(make(), dtype)
    if dtype == jnp.complex64:  # statistics of complex parameters are real
        real = {np.dtype(jnp.float32), np.dtype(jnp.int32)}
        stats = jax.tree.leaves(s[0][0]) if name.startswith("adafactor") else []
        assert {x.dtype for x in stats} <= real


def test_nu_dtype_is_used():
    opt = adafactor(1e-2, min_dim_size_to_factor=1, nu_dtype=jnp.bfloat16)
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    state = opt.init(params)
    updates, state = opt.update(params, state, params)
    stats = state[0][0]
    assert {x.dtype for x in jax.tree.leaves((stats.v_row, stats.v_col, stats.v))} == {
        np.dtype(jnp.bfloat16)
    }


@pytest.mark.parametrize(
    "build",
    [
        lambda: adafactor(-1.0),
        lambda: adafactor(1e-2, decay_rate=-0.8),
        lambda: adafactor(1e-2, eps=-1.0),
        lambda: adafactor(1e-2, eps=None),
        lambda: adafactor(1e-2, eps_placement="inside"),
        lambda: adafactor(1e-2, factored_dims="first"),
        lambda: adafactor(1e-2, clipping_threshold=0.0),
        lambda: adafactor(1e-2, min_scale=-1.0),
        lambda: adafactor(1e-2, momentum=1.0),
        lambda: adafactor(1e-2, weight_decay=-1.0),
        lambda: adafactor(1e-2, batch_dims=-1),
        lambda: lamb(1e-2, b1=1.0),
        lambda: lamb(-1e-2),
        lambda: lars(1e-2, momentum=1.0),
        lambda: lars(1e-2, trust_coefficient=-1.0),
        lambda: scale_by_trust_ratio(min_norm=-1.0),
    ],
)
def test_validation(build):
    with pytest.raises(ValueError):
        build()


def test_batch_dims_beyond_the_rank_is_refused_at_init():
    opt = adafactor(1e-2, batch_dims=lambda p: 3)
    with pytest.raises(ValueError, match="batch_dims"):
        opt.init({"w": jnp.ones((3, 2))})


def test_integer_leaves_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        adafactor(1e-2).init({"n": jnp.ones(3, jnp.int32)})
