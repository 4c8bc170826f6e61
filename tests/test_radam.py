"""RAdam against torch.optim 2.13, optax 0.2.8, the authors' code and the paper.

On the trajectory of tests/parity/radam_adabelief_yogi.py. Where a reference has no library
form (the authors' code, the paper) it is transcribed below into a NumPy float64 loop from
the update in docs/optimizers/radam_adabelief_yogi.md (RAdam), whose section "Where the
references disagree" lists the differences checked here.
"""

from __future__ import annotations

import decimal
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from adamx import (
    adam,
    apply_updates,
    chain,
    inject_hyperparams,
    radam,
    rectification,
    root_bias_correction,
    scale_by_radam,
    scale_by_second_moment,
)
from adamx.blocks._rectification import _sma_length
from tests.helpers import cases_of, check_validation, cosine, max_relative_difference, relaxed, x64
from tests.parity.radam_adabelief_yogi import CASES as SHARED_CASES
from tests.parity.radam_adabelief_yogi import F32_CASES as SHARED_F32_CASES
from tests.parity.radam_adabelief_yogi import (
    GRADS,
    LR,
    PARAMS,
    WD,
    T,
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
    run_torch,
    skip_first,
)
from tests.parity.radam_adabelief_yogi import SCANNED as SHARED_SCANNED
from tests.parity.radam_adabelief_yogi import ZERO_SAFE as SHARED_ZERO_SAFE

CASES = cases_of(SHARED_CASES, "radam")
F32_CASES = cases_of(SHARED_F32_CASES, "radam")
SCANNED = cases_of(SHARED_SCANNED, "radam")
ZERO_SAFE = cases_of(SHARED_ZERO_SAFE, "radam")

IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity(name, make_adamx, make_optax, make_torch):
    check_float64_parity(name, make_adamx, make_optax, make_torch)


@pytest.mark.parametrize(
    "name, make_adamx, make_optax, make_torch", F32_CASES, ids=[c[0] for c in F32_CASES]
)
def test_float32_against_optax(name, make_adamx, make_optax, make_torch):
    check_float32_against_optax(name, make_adamx, make_optax, make_torch)


def official_radam(*, degenerated_to_sgd, wd, b1=0.9, b2=0.999, eps=1e-8):
    """LiyuanLucasLiu/RAdam ``RAdam.step``: rectify when N_sma >= 5 (eps before the correction of
    v); below it an SGD step or, by default, nothing at all, and the decoupled decay only with a
    step."""
    p = leaves_of(PARAMS)
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, grads in enumerate(GRADS, start=1):
        lr = LR * cosine(t - 1)
        n_max, n_sma = rho(t, b2)
        for k, g in enumerate(leaves_of(grads)):
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m[k] = b1 * m[k] + (1 - b1) * g
            if n_sma >= 5:
                step = math.sqrt(
                    (1 - b2**t)
                    * (n_sma - 4)
                    / (n_max - 4)
                    * (n_sma - 2)
                    / n_sma
                    * n_max
                    / (n_max - 2)
                ) / (1 - b1**t)
                p[k] = p[k] - wd * lr * p[k]
                p[k] = p[k] - step * lr * m[k] / (np.sqrt(v[k]) + eps)
            elif degenerated_to_sgd:
                p[k] = p[k] - wd * lr * p[k]
                p[k] = p[k] - lr / (1 - b1**t) * m[k]
    return as_tree(p)


def paper_radam(b1=0.9, b2=0.999):
    """Liu et al., Algorithm 2: rectify when rho_t > 4, l_t = sqrt((1 - b2^t) / v_t), no eps."""
    p = leaves_of(PARAMS)
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, grads in enumerate(GRADS, start=1):
        lr = LR * cosine(t - 1)
        rho_inf, rho_t = rho(t, b2)
        for k, g in enumerate(leaves_of(grads)):
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1**t)
            if rho_t > 4:
                l_t = np.sqrt((1 - b2**t) / v[k])
                r_t = math.sqrt(
                    (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                )
                p[k] = p[k] - lr * r_t * m_hat * l_t
            else:
                p[k] = p[k] - lr * m_hat
    return as_tree(p)


def test_radam_matches_the_authors_code():
    """Official RAdam (no step, no decay while N_sma < 5): ``inclusive=True, fallback="none"``,
    the decay switched on from step 6; float64 tolerance 1e-10."""
    with x64():
        ours = ours64(
            lambda lr: radam(lr, inclusive=True, fallback="none", weight_decay=skip_first(5, WD))
        )
    ref = official_radam(degenerated_to_sgd=False, wd=WD)
    print(f"radam vs authors' code: {max_relative_difference(ours, ref):.2e}")
    assert max_relative_difference(ours, ref) <= 1e-10


def test_radam_matches_the_authors_code_degenerated_to_sgd():
    """Official RAdam before 2021 (``degenerated_to_sgd=True``); float64 tolerance 1e-10."""
    with x64():
        ours = ours64(lambda lr: radam(lr, inclusive=True, weight_decay=WD))
    ref = official_radam(degenerated_to_sgd=True, wd=WD)
    print(f"radam vs authors' code (sgd fallback): {max_relative_difference(ours, ref):.2e}")
    assert max_relative_difference(ours, ref) <= 1e-10


def test_radam_matches_the_paper():
    """Algorithm 2 (rho_t > 4, no eps): ``threshold=4.0, eps=0``; float64 tolerance 1e-10."""
    with x64():
        ours = ours64(lambda lr: radam(lr, threshold=4.0, eps=0.0))
    ref = paper_radam()
    print(f"radam vs paper: {max_relative_difference(ours, ref):.2e}")
    assert max_relative_difference(ours, ref) <= 1e-10


def test_radam_eps_forms_differ_and_each_matches_its_reference():
    """eps = 1e-8 before (torch) or after (optax) the correction of v: measured 2.5e-8 apart."""
    with x64():
        before = ours64(lambda lr: radam(lr, inclusive=True))
        after = ours64(lambda lr: radam(lr, inclusive=True, eps_before_correction=False))
        ref_optax = optax64(lambda lr: optax.radam(lr))
    ref_torch = run_torch(lambda ps: T.RAdam(ps, lr=LR, foreach=False), torch.float64)
    gap = max_relative_difference(ref_torch, ref_optax)
    print(f"torch vs optax RAdam, eps 1e-8: {gap:.2e}")
    assert gap > 1e-8
    assert max_relative_difference(before, ref_torch) <= 1e-10
    assert max_relative_difference(after, ref_optax) <= 1e-10
    with x64():  # with eps = 0 the two forms agree
        a = ours64(lambda lr: radam(lr, eps=0.0))
        b = ours64(lambda lr: radam(lr, eps=0.0, eps_before_correction=False))
    assert max_relative_difference(a, b) <= 1e-12


def test_radam_thresholds_and_fallbacks_differ():
    """Paper (> 4) against torch (> 5), and the authors' no-step fallback against torch's SGD."""
    with x64():
        torch_rule = ours64(lambda lr: radam(lr, eps=0.0))
        paper_rule = ours64(lambda lr: radam(lr, eps=0.0, threshold=4.0))
        optax_rule = ours64(lambda lr: radam(lr, eps=0.0, inclusive=True))
        no_step = ours64(lambda lr: radam(lr, eps=0.0, fallback="none"))
    paper_gap = max_relative_difference(paper_rule, torch_rule)
    none_gap = max_relative_difference(no_step, torch_rule)
    print(f"RAdam paper vs torch threshold: {paper_gap:.2e}; no-step vs sgd: {none_gap:.2e}")
    assert paper_gap > 1e-4
    assert none_gap > 1e-3
    # For b2 = 0.999, rho_t is never 5: > 5 and >= 5 agree exactly.
    assert max_relative_difference(optax_rule, torch_rule) == 0.0


def exact_rho(t, b2=0.999):
    """rho_t in 50-digit decimal arithmetic (float64's textbook formula cancels to ~1e-11)."""
    with decimal.localcontext() as context:
        context.prec = 50
        b = decimal.Decimal(b2)  # the float64 b2, exactly
        power = (t * b.ln()).exp()
        return float(2 / (1 - b) - 1 - 2 * t * power / (1 - power))


def test_rho_values_and_accuracy():
    """rho_1..rho_8 of docs/optimizers/radam_adabelief_yogi.md (RAdam); rho_t within 1e-13 (float64)
    and 2e-7 (float32) of exact (the textbook formula in float32 is off by ~1e-3 at t = 6)."""
    table = [1.0, 1.9995, 2.9987, 3.9975, 4.996, 5.9942, 6.992, 7.9895]
    counts = [1, 2, 3, 4, 5, 6, 7, 8, 50, 500, 999, 1000, 1001, 3000, 10**5, 10**7]
    exact = np.array([exact_rho(t) for t in counts])
    with x64():
        r64 = np.asarray(_sma_length(0.999, jnp.asarray(counts, jnp.int32), jnp.float64)[0])
    r32 = np.asarray(_sma_length(0.999, jnp.asarray(counts, jnp.int32), jnp.float32)[0])
    np.testing.assert_allclose(exact[:8], table, atol=1e-4)
    np.testing.assert_allclose(r64, exact, rtol=1e-13)
    np.testing.assert_allclose(r32, exact, rtol=2e-7)


@pytest.mark.parametrize(
    "make, first_rectified",
    [
        (lambda: radam(1.0), 6),
        (lambda: radam(1.0, inclusive=True), 6),
        (lambda: radam(1.0, threshold=4.0), 5),
    ],
    ids=["torch", "optax", "paper"],
)
def test_radam_is_sgd_with_momentum_until_rectified(make, first_rectified):
    """Below the threshold the step is exactly -lr m_hat (first step -lr g_1); after it is not."""
    rng = np.random.default_rng(5)
    b1 = 0.9
    with x64():
        opt = make()
        state = opt.init(jnp.zeros(6))
        m = np.zeros(6)
        for t in range(1, first_rectified + 1):
            g = rng.standard_normal(6)
            m = b1 * m + (1 - b1) * g
            updates, state = opt.update(jnp.asarray(g), state)
            if t == 1:
                np.testing.assert_allclose(np.asarray(updates), -g, rtol=1e-14)
            sgd = -m / (1 - b1**t)
            if t < first_rectified:
                np.testing.assert_allclose(np.asarray(updates), sgd, rtol=1e-14)
            else:
                assert np.max(np.abs(np.asarray(updates) - sgd)) > 1e-2


def test_radam_no_step_fallback_and_rectifier_limit():
    with x64():
        opt = radam(1.0, fallback="none")
        g = jnp.array([1.0, -2.0, 3.0])
        state = opt.init(g)
        for _ in range(5):
            updates, state = opt.update(g, state)
            assert np.all(np.asarray(updates) == 0)
        # r_t -> 1: long after the start RAdam's step equals Adam's (same eps form, eps = 0).
        rad, ad = radam(1.0, eps=0.0), adam(1.0, eps=0.0)
        s_rad, s_ad = rad.init(g), ad.init(g)

        def run(opt, state, steps):
            def body(s, _):
                return opt.update(g, s)[1], None

            state, _ = jax.lax.scan(body, state, None, length=steps)
            return opt.update(g, state)[0]

        np.testing.assert_allclose(run(rad, s_rad, 30000), run(ad, s_ad, 30000), rtol=1e-3)


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


@pytest.mark.parametrize("name, make", ZERO_SAFE, ids=[a[0] for a in ZERO_SAFE])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


def test_injected_hyperparameters_match_the_plain_optimizers():
    """Traced b2, threshold and weight decay (inject_hyperparams) give the same numbers."""
    with x64():
        for factory, kwargs in [(radam, {"threshold": 5.0, "weight_decay": WD})]:
            plain = run_jax(factory(LR, b2=0.99, **kwargs), apply_updates, jnp.float64)
            injected = run_jax(
                inject_hyperparams(factory, hyperparam_dtype=None)(
                    learning_rate=LR, b2=0.99, **kwargs
                ),
                apply_updates,
                jnp.float64,
            )
            assert max_relative_difference(injected, plain) <= 1e-12, factory.__name__


def test_state_layout_matches_optax_radam():
    """optax's ScaleByAdamState(count, mu, nu) for radam maps onto (Ema, BiasCorrection,
    Rectification(count, SecondMoment((Ema(nu), BiasCorrection))))."""
    with x64():
        params = jax.tree.map(jnp.asarray, PARAMS)
        with relaxed():
            ref = optax.scale_by_radam()
            s_ref, update_ref = ref.init(params), jax.jit(ref.update)
            for g in GRADS[:7]:
                _, s_ref = update_ref(g, s_ref)
        ours = scale_by_radam(eps_before_correction=False)
        s, update = ours.init(params), jax.jit(ours.update)
        for g in GRADS[:7]:
            _, s = update(g, s)
        assert max_relative_difference(s[0].ema, s_ref.mu) <= 1e-14
        assert max_relative_difference(s[2].adaptive.estimator[0].ema, s_ref.nu) <= 1e-14
        assert int(s[2].count) == int(s_ref.count) == 7


def test_blocks_compose_as_documented():
    """`scale_by_radam` (both eps forms) is the chain of docs/optimizers/radam_adabelief_yogi.md,
    bitwise."""
    from adamx import bias_correction, ema

    with x64():
        params = jax.tree.map(jnp.asarray, PARAMS)
        pairs = [
            (
                scale_by_radam(eps_before_correction=False),
                chain(
                    ema(0.9),
                    bias_correction(0.9),
                    rectification(scale_by_second_moment(0.999), 0.999),
                ),
            ),
            (
                scale_by_radam(),
                chain(
                    ema(0.9),
                    bias_correction(0.9),
                    rectification(
                        chain(
                            scale_by_second_moment(0.999, eps=1e-8, bias_correction=False),
                            root_bias_correction(0.999),
                        ),
                        0.999,
                        threshold=5.0,
                    ),
                ),
            ),
        ]
        for a, b in pairs:
            sa, sb = a.init(params), b.init(params)
            update_a, update_b = jax.jit(a.update), jax.jit(b.update)
            for g in GRADS[:10]:
                ua, sa = update_a(g, sa)
                ub, sb = update_b(g, sb)
            assert max_relative_difference(ua, ub) == 0.0


@pytest.mark.parametrize(
    "build",
    [
        lambda: radam(1e-2, threshold=3.0),
        lambda: radam(1e-2, fallback="adam"),
        lambda: radam(1e-2, b2=1.0),
        lambda: radam(-1.0),
        lambda: radam(1e-2, weight_decay=-1.0),
    ],
)
def test_validation(build):
    check_validation(build)


def test_update_without_params_needs_no_decay_block():
    g = jnp.ones(3)
    opt = radam(1e-2)
    updates, _ = opt.update(g, opt.init(g))
    assert bool(jnp.all(jnp.isfinite(updates)))
    with pytest.raises(ValueError, match="needs the parameters"):
        opt = radam(1e-2, weight_decay=0.1)
        opt.update(g, opt.init(g))
