"""AdaBelief against optax 0.2.8 and the authors' code (``adabelief_pytorch`` 0.2.1), step for step.

On the trajectory of tests/parity/radam_adabelief_yogi.py; the authors' update is transcribed
below into a NumPy float64 loop from docs/optimizers/radam_adabelief_yogi.md (AdaBelief).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import (
    adabelief,
    adam,
    apply_updates,
    chain,
    inject_hyperparams,
    scale_by_belief,
    scale_by_belief_moment,
)
from tests.helpers import cases_of, check_validation, cosine, max_relative_difference, x64
from tests.parity.radam_adabelief_yogi import CASES as SHARED_CASES
from tests.parity.radam_adabelief_yogi import F32_CASES as SHARED_F32_CASES
from tests.parity.radam_adabelief_yogi import (
    GRADS,
    LR,
    PARAMS,
    WD,
    as_tree,
    check_dtypes_are_kept_in_a_scan,
    check_float32_against_optax,
    check_float64_parity,
    check_zero_gradients_give_finite_params,
    leaves_of,
    optax64,
    ours64,
    rho,
    run_jax,
)
from tests.parity.radam_adabelief_yogi import SCANNED as SHARED_SCANNED
from tests.parity.radam_adabelief_yogi import ZERO_SAFE as SHARED_ZERO_SAFE

CASES = cases_of(SHARED_CASES, "adabelief")
F32_CASES = cases_of(SHARED_F32_CASES, "adabelief")
SCANNED = cases_of(SHARED_SCANNED, "adabelief")
ZERO_SAFE = cases_of(SHARED_ZERO_SAFE, "adabelief")

IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity(name, make_adamx, make_optax, make_torch):
    check_float64_parity(name, make_adamx, make_optax, make_torch)


@pytest.mark.parametrize(
    "name, make_adamx, make_optax, make_torch", F32_CASES, ids=[c[0] for c in F32_CASES]
)
def test_float32_against_optax(name, make_adamx, make_optax, make_torch):
    check_float32_against_optax(name, make_adamx, make_optax, make_torch)


def official_adabelief(*, rectify, eps, wd, b1=0.9, b2=0.999, degenerated_to_sgd=True):
    """adabelief_pytorch 0.2.1 ``AdaBelief.step`` with weight_decouple=True, fixed_decay=False,
    amsgrad=False: eps added into s every step; rectified path as RAdam's (N_sma >= 5)."""
    p = leaves_of(PARAMS)
    m = [np.zeros_like(x) for x in p]
    s = [np.zeros_like(x) for x in p]
    for t, grads in enumerate(GRADS, start=1):
        lr = LR * cosine(t - 1)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        n_max, n_sma = rho(t, b2)
        for k, g in enumerate(leaves_of(grads)):
            p[k] = p[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g
            residual = g - m[k]
            s[k] = b2 * s[k] + (1 - b2) * residual * residual
            s[k] = s[k] + eps
            if not rectify:
                p[k] = p[k] - lr / bc1 * m[k] / (np.sqrt(s[k]) / math.sqrt(bc2) + eps)
            elif n_sma >= 5:
                step = (
                    math.sqrt(
                        bc2 * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma * n_max / (n_max - 2)
                    )
                    / bc1
                )
                p[k] = p[k] - step * lr * m[k] / (np.sqrt(s[k]) + eps)
            elif degenerated_to_sgd:
                p[k] = p[k] - lr / bc1 * m[k]
    return as_tree(p)


@pytest.mark.parametrize("eps", [1e-16, 1e-8])
@pytest.mark.parametrize("rectify", [True, False], ids=["rectified", "plain"])
def test_adabelief_matches_the_authors_code(rectify, eps):
    """adabelief_pytorch 0.2.1 with decoupled decay; float64 tolerance 1e-10."""
    with x64():
        ours = ours64(
            lambda lr: adabelief(lr, eps=eps, eps_root=eps, rectify=rectify, weight_decay=WD)
        )
    ref = official_adabelief(rectify=rectify, eps=eps, wd=WD)
    print(f"adabelief rectify={rectify} eps={eps} vs authors' code: ", end="")
    print(f"{max_relative_difference(ours, ref):.2e}")
    assert max_relative_difference(ours, ref) <= 1e-10


def test_adabelief_sgd_fallback_none():
    """``fallback="none"`` is the authors' ``degenerated_to_sgd=False``; tolerance 1e-10."""
    with x64():
        ours = ours64(lambda lr: adabelief(lr, fallback="none", weight_decay=WD))
    ref = official_adabelief(rectify=True, eps=1e-16, wd=WD, degenerated_to_sgd=False)
    assert max_relative_difference(ours, ref) <= 1e-10


def test_adabelief_authors_default_differs_from_optax():
    """Rectified (authors' default) against optax's plain AdaBelief: they differ at every step."""
    with x64():
        rectified = ours64(lambda lr: adabelief(lr))
        ref_optax = optax64(lambda lr: optax.adabelief(lr))
    gap = max_relative_difference(rectified, ref_optax)
    print(f"AdaBelief authors' default vs optax: {gap:.2e}")
    assert gap > 1e-3
    ref = official_adabelief(rectify=True, eps=1e-16, wd=0.0)
    assert max_relative_difference(rectified, ref) <= 1e-10


def test_adabelief_eps_accumulates_in_the_belief():
    """With zero gradients s_t = eps_root (1 - b2^t) / (1 - b2): eps_root is added every step."""
    b2, eps_root = 0.999, 1e-8
    with x64():
        block = scale_by_belief_moment(b2, eps=0.0, eps_root=eps_root)
        zero = jnp.zeros(3)
        state = block.init(zero)
        for t in range(1, 51):
            _, state = block.update(zero, state, gradient=zero)
            expected = eps_root * (1 - b2**t) / (1 - b2)
            np.testing.assert_allclose(np.asarray(state.nu), expected, rtol=1e-12)


def test_adabelief_steps_far_when_the_gradient_follows_its_prediction():
    """A constant gradient (belief confirmed, g_t - m_t -> 0) gets a step several times Adam's;
    an alternating one (belief refuted) a step within 10% of Adam's (after 100 steps)."""
    with x64():
        for gradient, low, high in [
            (lambda t: 1.0, 4.0, np.inf),
            (lambda t: (-1.0) ** t, 0.9, 1.1),
        ]:
            steps = {}
            for name, opt in [("belief", adabelief(1.0, rectify=False)), ("adam", adam(1.0))]:
                state, update = opt.init(jnp.zeros(1)), jax.jit(opt.update)
                for t in range(100):
                    updates, state = update(jnp.full(1, gradient(t)), state)
                steps[name] = abs(float(updates[0]))
            print(f"AdaBelief / Adam step: {steps['belief'] / steps['adam']:.3f}")
            assert low < steps["belief"] / steps["adam"] <= high, steps


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


@pytest.mark.parametrize("name, make", ZERO_SAFE, ids=[a[0] for a in ZERO_SAFE])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


def test_injected_hyperparameters_match_the_plain_optimizers():
    """Traced b2 and weight decay (inject_hyperparams) give the same numbers."""
    with x64():
        plain = run_jax(adabelief(LR, b2=0.99, weight_decay=WD), apply_updates, jnp.float64)
        injected = run_jax(
            inject_hyperparams(adabelief, hyperparam_dtype=None)(
                learning_rate=LR, b2=0.99, weight_decay=WD
            ),
            apply_updates,
            jnp.float64,
        )
        assert max_relative_difference(injected, plain) <= 1e-12


def test_blocks_compose_as_documented():
    """`scale_by_belief(rectify=False)` is the chain of docs/optimizers/radam_adabelief_yogi.md,
    bitwise."""
    from adamx import bias_correction, ema

    with x64():
        params = jax.tree.map(jnp.asarray, PARAMS)
        a = scale_by_belief(rectify=False)
        b = chain(ema(0.9), scale_by_belief_moment(0.999), bias_correction(0.9))
        sa, sb = a.init(params), b.init(params)
        update_a, update_b = jax.jit(a.update), jax.jit(b.update)
        for g in GRADS[:10]:
            ua, sa = update_a(g, sa)
            ub, sb = update_b(g, sb)
        assert max_relative_difference(ua, ub) == 0.0


@pytest.mark.parametrize(
    "build",
    [
        lambda: adabelief(1e-2, eps_root=-1.0),
        lambda: adabelief(1e-2, fallback="sgdm"),
    ],
)
def test_validation(build):
    check_validation(build)


def test_update_without_params_needs_no_decay_block():
    g = jnp.ones(3)
    opt = adabelief(1e-2)
    updates, _ = opt.update(g, opt.init(g))
    assert bool(jnp.all(jnp.isfinite(updates)))
