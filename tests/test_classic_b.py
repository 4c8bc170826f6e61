"""AMSGrad, AdaMax(W) and NAdam(W) against torch.optim 2.13 and optax 0.2.8, step for step.

As in ``tests/test_adam.py``: 100 steps on a multi-leaf pytree with a cosine learning-rate schedule
and weight decay, gradients drawn in advance, here with a 10x spike every 10 steps (so AMSGrad's
running maximum matters). The measure is ``max |x - ref| / (|ref| + 1e-6)``; float64 parity must be
<= 1e-10. Then the documented differences between the references, and the papers' facts
(algorithms.md section 32).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from adamx._adam import adam
from adamx._adamax import adamax, adamaxw, scale_by_adamax
from adamx._amsgrad import amsgrad, scale_by_amsgrad
from adamx._chain import chain
from adamx._nadam import nadam, nadamw, scale_by_nadam
from adamx._scale import scale_by_learning_rate
from adamx._update import apply_updates
from adamx._weight_decay import add_decayed_weights
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
LR = 1e-2
WD = 0.1


def spiky_gradients(seed=2):
    return helpers.spiky_gradients(random_tree(0, np.float64), seed)


GRADS = spiky_gradients()
PARAMS = random_tree(0, np.float64)
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)
run_torch = functools.partial(helpers.run_torch, params=PARAMS, grads=GRADS)


def l2(make):
    """torch's coupled ``weight_decay``: decay added to the gradient before the optimizer."""
    return lambda lr: chain(add_decayed_weights(WD), make(lr))


def decoupled(scale_by):
    """torch's decoupled decay (AdamW-style) around a direction ``scale_by``."""
    return lambda lr: chain(scale_by, add_decayed_weights(WD), scale_by_learning_rate(lr))


def optax_l2(make):
    return lambda lr: optax.chain(optax.add_decayed_weights(WD), make(lr))


T = torch.optim
# (name, adamx builder, optax builder or None, torch builder or None); builders take the lr schedule.
CASES = [
    ("amsgrad", lambda lr: amsgrad(lr), lambda lr: optax.amsgrad(lr), None),
    (
        "amsgrad_l2",
        l2(lambda lr: amsgrad(lr)),
        optax_l2(lambda lr: optax.amsgrad(lr)),
        None,
    ),
    (
        "amsgrad_raw_l2",
        l2(lambda lr: amsgrad(lr, max_of="raw")),
        None,
        lambda ps: T.Adam(ps, lr=LR, amsgrad=True, weight_decay=WD, foreach=False),
    ),
    (
        "amsgrad_raw_decoupled",
        decoupled(scale_by_amsgrad(max_of="raw")),
        None,
        lambda ps: T.AdamW(ps, lr=LR, amsgrad=True, weight_decay=WD, foreach=False),
    ),
    (
        "adamax",
        lambda lr: adamax(lr),
        lambda lr: optax.adamax(lr),
        lambda ps: T.Adamax(ps, lr=LR, foreach=False),
    ),
    (
        "adamax_l2",
        l2(lambda lr: adamax(lr)),
        optax_l2(lambda lr: optax.adamax(lr)),
        lambda ps: T.Adamax(ps, lr=LR, weight_decay=WD, foreach=False),
    ),
    (
        "adamaxw",
        lambda lr: adamaxw(lr, weight_decay=WD),
        lambda lr: optax.adamaxw(lr, weight_decay=WD),
        None,
    ),
    (
        "nadam",
        lambda lr: nadam(lr),
        lambda lr: optax.nadam(lr),
        lambda ps: T.NAdam(ps, lr=LR, momentum_decay=1e9, foreach=False),
    ),
    (
        "nadamw",
        lambda lr: nadamw(lr, weight_decay=WD),
        lambda lr: optax.nadamw(lr, weight_decay=WD),
        lambda ps: T.NAdam(
            ps,
            lr=LR,
            momentum_decay=1e9,
            weight_decay=WD,
            decoupled_weight_decay=True,
            foreach=False,
        ),
    ),
    (
        "nadam_torch",
        lambda lr: nadam(lr, momentum_decay=4e-3),
        None,
        lambda ps: T.NAdam(ps, lr=LR, foreach=False),
    ),
    (
        "nadam_torch_l2",
        l2(lambda lr: nadam(lr, momentum_decay=4e-3)),
        None,
        lambda ps: T.NAdam(ps, lr=LR, weight_decay=WD, foreach=False),
    ),
    (
        "nadamw_torch",
        lambda lr: nadamw(lr, weight_decay=WD, momentum_decay=4e-3),
        None,
        lambda ps: T.NAdam(ps, lr=LR, weight_decay=WD, decoupled_weight_decay=True, foreach=False),
    ),
]
IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity(name, make_adamx, make_optax, make_torch):
    with x64():
        ours = run_jax(make_adamx(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
        if make_optax is not None:
            with relaxed():
                ref = run_jax(
                    make_optax(jax_cosine(LR, jnp.float64)), optax.apply_updates, jnp.float64
                )
            print(f"{name} float64 vs optax: {max_relative_difference(ours, ref):.2e}")
            assert max_relative_difference(ours, ref) <= 1e-10
    if make_torch is not None:
        ref = run_torch(make_torch, torch.float64)
        print(f"{name} float64 vs torch: {max_relative_difference(ours, ref):.2e}")
        assert max_relative_difference(ours, ref) <= 1e-10


F32_CASES = [case for case in CASES if case[2] is not None and "l2" not in case[0]]


@pytest.mark.parametrize(
    "name, make_adamx, make_optax, make_torch", F32_CASES, ids=[c[0] for c in F32_CASES]
)
def test_float32_against_optax(name, make_adamx, make_optax, make_torch):
    with x64():
        truth = run_jax(make_adamx(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
    ours = run_jax(make_adamx(jax_cosine(LR, jnp.float32)), apply_updates, jnp.float32)
    with relaxed():
        ref = run_jax(make_optax(jax_cosine(LR, jnp.float32)), optax.apply_updates, jnp.float32)
    ours_error = max_relative_difference(ours, truth)
    optax_error = max_relative_difference(ref, truth)
    difference = max_relative_difference(ours, ref)
    print(
        f"{name} float32: adamx to optax {difference:.2e}; distance to float64: adamx "
        f"{ours_error:.2e}, optax {optax_error:.2e}"
    )
    # Both are float32 roundings of the same float64 trajectory; optax's 1 - b**t cancels in
    # float32 (about 1e-3 on this measure for b2 = 0.999, see tests/test_adam.py), adamx's does not.
    # So adamx must be no further from float64 than optax (with 2x slack for rounding noise), and
    # the two float32 runs differ by at most their two distances to float64.
    assert ours_error <= 2 * optax_error + 1e-5
    assert difference <= ours_error + optax_error + 1e-6


# ---- documented differences between the references ----------------------------------------------


def test_optax_and_torch_amsgrad_differ_and_each_option_matches_its_reference():
    with x64():
        corrected = run_jax(amsgrad(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
        raw = run_jax(
            amsgrad(jax_cosine(LR, jnp.float64), max_of="raw"), apply_updates, jnp.float64
        )
        with relaxed():
            ref_optax = run_jax(
                optax.amsgrad(jax_cosine(LR, jnp.float64)), optax.apply_updates, jnp.float64
            )
    ref_torch = run_torch(lambda ps: T.Adam(ps, lr=LR, amsgrad=True, foreach=False), torch.float64)
    gap = max_relative_difference(ref_optax, ref_torch)
    print(f"optax vs torch AMSGrad on the spiky sequence: {gap:.2e}")
    assert gap > 1e-6
    assert max_relative_difference(corrected, ref_optax) <= 1e-10
    assert max_relative_difference(raw, ref_torch) <= 1e-10
    assert max_relative_difference(corrected, raw) > 1e-6


def test_optax_and_torch_nadam_differ():
    with x64():
        constant = run_jax(nadam(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
    scheduled = run_torch(lambda ps: T.NAdam(ps, lr=LR, foreach=False), torch.float64)
    gap = max_relative_difference(constant, scheduled)
    print(f"optax-form vs torch-default NAdam: {gap:.2e}")
    assert gap > 1e-6


# ---- the papers' facts (algorithms.md section 32) ------------------------------------------------


def adamax_bound(t, b1, b2):
    r = b1 / b2
    return (1 - b1) * (1 - r**t) / ((1 - b1**t) * (1 - r))


@pytest.mark.parametrize("b2", [0.99, 0.999])
def test_adamax_exact_bound_is_attained_by_decaying_gradients(b2):
    b1, steps = 0.9, 300
    with x64():
        opt = adamax(1.0, b1=b1, b2=b2, eps=0.0)
        g = jnp.array([2.0, -0.3])
        state = opt.init(g)
        for t in range(1, steps + 1):
            updates, state = opt.update(g * b2**t, state)
            bound = adamax_bound(t, b1, b2)
            np.testing.assert_allclose(np.abs(np.asarray(updates)), bound, rtol=1e-12)
    limit = (1 - b1) / (1 - b1 / b2)
    assert bound == pytest.approx(limit, rel=1e-6)
    assert limit > 1.009  # the paper's |step| <= lr does not hold for b2 < 1


def test_adamax_bound_holds_on_random_gradients():
    b1, b2 = 0.9, 0.99
    rng = np.random.default_rng(3)
    with x64():
        opt = adamax(1.0, b1=b1, b2=b2, eps=0.0)
        state = opt.init(jnp.zeros(50))
        for t in range(1, 201):
            g = jnp.asarray(rng.standard_normal(50) * rng.lognormal(0, 2))
            updates, state = opt.update(g, state)
            assert float(jnp.max(jnp.abs(updates))) <= adamax_bound(t, b1, b2) * (1 + 1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda: adamax(1e-2, eps=0.0),
        lambda: amsgrad(1e-2, eps=0.0),
        lambda: amsgrad(1e-2, eps=0.0, max_of="raw"),
    ],
    ids=["adamax", "amsgrad", "amsgrad_raw"],
)
def test_updates_are_invariant_to_diagonal_rescaling(make):
    rng = np.random.default_rng(4)
    with x64():
        scales = jnp.asarray(10.0 ** rng.uniform(-3, 3, 20))
        opt = make()
        state, state_scaled = opt.init(jnp.zeros(20)), opt.init(jnp.zeros(20))
        for i in range(50):
            g = jnp.asarray(rng.standard_normal(20) * (10.0 if i % 10 == 0 else 1.0))
            u, state = opt.update(g, state)
            u_scaled, state_scaled = opt.update(scales * g, state_scaled)
            np.testing.assert_allclose(np.asarray(u_scaled), np.asarray(u), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "make, factor",
    [
        (lambda: nadam(1.0, eps=0.0), 1 + 0.9 / 1.9),
        (
            lambda: nadam(1.0, eps=0.0, momentum_decay=4e-3),
            None,  # 1 + mu_2 (1 - b1) / (1 - mu_1 mu_2), computed below
        ),
        (lambda: nadamw(1.0, eps=0.0, weight_decay=0.0, algoperf=True), 1.9),
    ],
    ids=["optax", "torch", "algoperf"],
)
def test_nadam_first_step(make, factor):
    if factor is None:
        mu1, mu2 = (0.9 * (1 - 0.5 * 0.96 ** (t * 4e-3)) for t in (1, 2))
        factor = 1 + mu2 * 0.1 / (1 - mu1 * mu2)
        assert factor == pytest.approx(1.05645, abs=1e-5)
    with x64():
        g = jnp.array([3.0, -0.5, 1e-3])
        opt = make()
        updates, _ = opt.update(g, opt.init(g), g)
        np.testing.assert_allclose(
            np.asarray(updates), -factor * np.sign(np.asarray(g)), rtol=1e-14
        )


def test_algoperf_nadamw_matches_its_formula():
    """A NumPy transcription of init2winit's scale_by_nadam + decoupled decay, float64."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    with x64():
        ours = run_jax(
            nadamw(jax_cosine(LR, jnp.float64), weight_decay=WD, algoperf=True),
            apply_updates,
            jnp.float64,
        )
    p = {k: np.asarray(v) for k, v in enumerate(jax.tree.leaves(PARAMS))}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(GRADS, start=1):
        lr = LR * cosine(t - 1)
        for k, g in enumerate(jax.tree.leaves(grads)):
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_bar = (b1 * m[k] + (1 - b1) * g) / (1 - b1**t)
            v_hat = v[k] / (1 - b2**t)
            p[k] = p[k] - lr * (m_bar / (np.sqrt(v_hat) + eps) + WD * p[k])
    ref = jax.tree.unflatten(jax.tree.structure(PARAMS), [p[k] for k in range(len(p))])
    assert max_relative_difference(ours, ref) <= 1e-10


# ---- structure, dtypes, validation ----------------------------------------------------------------


ALL = [
    ("amsgrad", lambda: amsgrad(1e-2)),
    ("amsgrad_raw", lambda: amsgrad(1e-2, max_of="raw")),
    ("adamax", lambda: adamax(1e-2)),
    ("adamaxw", lambda: adamaxw(1e-2)),
    ("nadam", lambda: nadam(1e-2)),
    ("nadam_torch", lambda: nadam(1e-2, momentum_decay=4e-3)),
    ("nadamw_torch", lambda: nadamw(1e-2, momentum_decay=4e-3)),
    ("nadamw_algoperf", lambda: nadamw(1e-2, algoperf=True)),
]


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    helpers.scan_keeps_dtypes(make(), dtype)


def test_zero_gradient_with_eps_zero_gives_zero_not_nan():
    for opt in (adamax(0.1, eps=0.0), amsgrad(0.1, eps=0.0), amsgrad(0.1, eps=0.0, max_of="raw")):
        g = jnp.zeros(3)
        updates, _ = opt.update(g, opt.init(g))
        assert np.all(np.asarray(updates) == 0)


def test_state_layout_matches_optax_adamax():
    """optax's ScaleByAdamState(count, mu, nu) for adamax maps onto (Ema, BiasCorrection, InfNorm)."""
    with x64():
        params = jax.tree.map(jnp.asarray, PARAMS)
        with relaxed():
            ref = optax.scale_by_adamax()
            s_ref = ref.init(params)
            for g in GRADS[:5]:
                _, s_ref = ref.update(g, s_ref)
        ours = scale_by_adamax()
        s = ours.init(params)
        for g in GRADS[:5]:
            _, s = ours.update(g, s)
        assert max_relative_difference(s[0].ema, s_ref.mu) <= 1e-14
        assert max_relative_difference(s[2].norm, s_ref.nu) <= 1e-14
        assert int(s[1].count) == int(s_ref.count)


@pytest.mark.parametrize(
    "build, error",
    [
        (lambda: amsgrad(1e-2, max_of="max"), ValueError),
        (lambda: amsgrad(1e-2, b2=1.0), ValueError),
        (lambda: adamax(1e-2, eps=-1.0), ValueError),
        (lambda: adamax(-1.0), ValueError),
        (lambda: nadam(1e-2, momentum_decay=-1.0), ValueError),
        (lambda: nadamw(1e-2, momentum_decay=4e-3, algoperf=True), ValueError),
        (lambda: scale_by_nadam(b1=1.5, momentum_decay=4e-3), ValueError),
    ],
)
def test_validation(build, error):
    with pytest.raises(error):
        build()


def test_nadam_default_is_adam_nesterov():
    with x64():
        a = run_jax(nadam(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
        b = run_jax(adam(jax_cosine(LR, jnp.float64), nesterov=True), apply_updates, jnp.float64)
    assert max_relative_difference(a, b) == 0.0
