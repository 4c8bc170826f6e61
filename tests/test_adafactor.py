"""Adafactor against torch.optim 2.13, optax 0.2.8 and the paper, step for step.

On the trajectory of tests/parity/adafactor_lamb_lars.py. References: ``torch.optim.Adafactor``;
optax's Adafactor chain (its own blocks, with its second-moment decay in float64); and a NumPy
transcription of the paper's update (Algorithms 4 and 5) written here from
docs/optimizers/adafactor_lamb_lars.md (Adafactor), whose section "Where torch and optax
differ" lists the differences checked here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from adamx import adafactor, adam, apply_updates, scale_by_adafactor, scale_by_factored_rms
from tests import helpers
from tests.helpers import cases_of, check_validation, jax_cosine, max_relative_difference, x64
from tests.parity.adafactor_lamb_lars import ALL as SHARED_ALL
from tests.parity.adafactor_lamb_lars import (
    GRADS,
    PARAMS,
    TORCH_OPTIONS,
    WD,
    check_dtypes_are_kept_in_a_scan,
    check_zero_gradients_give_finite_params,
    numpy_run,
    optax_run,
    ours,
    run_torch,
    stacked,
)
from tests.parity.adafactor_lamb_lars import SCANNED as SHARED_SCANNED

ALL = cases_of(SHARED_ALL, "adafactor")
SCANNED = cases_of(SHARED_SCANNED, "adafactor")

AF_LR = 0.5  # large enough that rho_t = min(lr_t, 1/sqrt(t)) takes both branches in 100 steps


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
    """Shazeer & Stern, Algorithms 4 and 5 (docs/optimizers/adafactor_lamb_lars.md, Adafactor), with
    row and column *sums*:
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
    """Delta_1 = -max(eps2, RMS(theta_0)) * min(lr, 1) * sign(g_1) (docs/optimizers/
    adafactor_lamb_lars.md, Adafactor: the first step)."""
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


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


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
    ],
)
def test_validation(build):
    check_validation(build)


def test_batch_dims_beyond_the_rank_is_refused_at_init():
    opt = adafactor(1e-2, batch_dims=lambda p: 3)
    with pytest.raises(ValueError, match="batch_dims"):
        opt.init({"w": jnp.ones((3, 2))})


def test_integer_leaves_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        adafactor(1e-2).init({"n": jnp.ones(3, jnp.int32)})
