"""Prodigy against optax 0.2.8 and a NumPy transcription of the authors' code.

On the problem of tests/parity/schedule_free_prodigy.py. The NumPy reference is a plain loop
written from docs/optimizers/schedule_free_prodigy.md (Prodigy), as ``Prodigy.step`` of
konstmish/prodigy.

One rounding detail: Prodigy's first steps are d0 = 1e-6 small, so theta_0 - theta_t cancels and the
last bit of theta_1 reaches d with a gain of ~1e5. The authors' code applies the decay and the step
as two in-place ops (two roundings) where an update added by ``apply_updates`` rounds once; written
that way the transcription ends 1.8e-10 from adamx (d off by 3e-12 from step 2 on), written as one
addition it ends at ~2e-14. The transcription below adds once.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import ProdigyState, add_decayed_weights, apply_updates, chain, prodigy
from tests.helpers import (
    cases_of,
    check_validation,
    cosine,
    jax_cosine,
    max_relative_difference,
    relaxed,
    x64,
)
from tests.parity.schedule_free_prodigy import ALL as SHARED_ALL
from tests.parity.schedule_free_prodigy import (
    CURVATURE,
    LEAVES,
    NOISE,
    PARAMS,
    STEPS,
    TARGET,
    WD,
    check_dtypes_are_kept_in_a_scan,
    check_params_are_required,
    check_zero_gradients_give_finite_params,
    gradient,
    trajectory,
    tree,
)

ALL = cases_of(SHARED_ALL, "prodigy")


def official_prodigy(
    lr=1.0, *, b1=0.9, b2=0.999, b3=None, eps=1e-8, wd=0.0, decouple=True,
    use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0,
    multiplier=lambda k: 1.0,
):  # fmt: skip
    """konstmish/prodigy ``Prodigy.step`` (one group, growth_rate = inf, slice_p = 1)."""
    b3 = math.sqrt(b2) if b3 is None else b3
    p = [x.copy() for x in LEAVES]
    p0 = [x.copy() for x in LEAVES]
    m = [np.zeros_like(x) for x in LEAVES]
    v = [np.zeros_like(x) for x in LEAVES]
    s = [np.zeros_like(x) for x in LEAVES]
    d, d_max, numerator, k = d0, d0, 0.0, 0
    for step in range(STEPS):
        rate = lr * multiplier(step)
        bc = math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if use_bias_correction else 1.0
        dlr = d * rate * bc
        new_numerator = numerator * b3
        denominator = 0.0
        grads = []
        for i in range(len(p)):
            g = gradient(i, step, p[i])
            if wd != 0 and not decouple:
                g = g + wd * p[i]
            grads.append(g)
            new_numerator += (d / d0) * dlr * float(np.sum(g * (p0[i] - p[i])))
            m[i] = b1 * m[i] + d * (1 - b1) * g
            v[i] = b2 * v[i] + d * d * (1 - b2) * g * g
            s[i] = b3 * s[i] + (d / d0) * (d if safeguard_warmup else dlr) * g
            denominator += float(np.sum(np.abs(s[i])))
        if denominator == 0:
            continue
        numerator = new_numerator
        d_hat = d_coef * numerator / denominator
        if d == d0:
            d = max(d, d_hat)
        d_max = max(d_max, d_hat)
        d = d_max  # min(d_max, d * growth_rate) with growth_rate = inf
        for i in range(len(p)):
            # theta - dlr (lambda theta) - dlr m / (sqrt(v) + d eps), rounded once like an update
            # added by apply_updates (torch's two in-place ops round twice: see the module note).
            u = m[i] / (np.sqrt(v[i]) + d * eps)
            if wd != 0 and decouple:
                u = u + wd * p[i]
            p[i] = p[i] + -dlr * u
        k += 1
    return tree(p), d


def test_prodigy_bias_corrected_matches_optax():
    """optax.contrib.prodigy (always bias-corrected) with a cosine schedule and weight decay."""
    with x64():
        ours, state = trajectory(
            prodigy(jax_cosine(1.0, jnp.float64), weight_decay=WD, bias_correction=True)
        )
        with relaxed():
            ref, ref_state = trajectory(
                optax.contrib.prodigy(jax_cosine(1.0, jnp.float64), weight_decay=WD),
                optax.apply_updates,
            )
    gap = max_relative_difference(ours, ref)
    print(f"prodigy(bias_correction=True) vs optax: {gap:.2e}, d = {float(state.d):.4f}")
    assert gap <= 1e-10
    assert float(state.d) == pytest.approx(float(ref_state.estim_lr), rel=1e-12)
    assert float(state.d) > 1e4 * 1e-6  # the estimate grew: the comparison is not vacuous


PRODIGY_OFFICIAL = [
    ("default_cosine_wd", dict(weight_decay=WD), dict(wd=WD)),
    ("bias_corrected", dict(weight_decay=WD, bias_correction=True),
     dict(wd=WD, use_bias_correction=True)),
    ("safeguard_warmup", dict(safeguard_warmup=True), dict(safeguard_warmup=True)),
    ("b3_d_coef_d0", dict(b3=0.9, d_coef=0.5, d0=1e-4), dict(b3=0.9, d_coef=0.5, d0=1e-4)),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, ours_kwargs, ref_kwargs", PRODIGY_OFFICIAL, ids=[c[0] for c in PRODIGY_OFFICIAL]
)
def test_prodigy_matches_the_authors_code(name, ours_kwargs, ref_kwargs):
    """NumPy transcription of konstmish/prodigy ``Prodigy.step`` with a cosine LambdaLR: params
    within 1e-10, d to 1e-10 relative."""
    with x64():
        ours, state = trajectory(prodigy(jax_cosine(1.0, jnp.float64), **ours_kwargs))
    ref, d = official_prodigy(multiplier=cosine, **ref_kwargs)
    gap = max_relative_difference(ours, ref)
    print(f"prodigy {name} vs authors': {gap:.2e}, d = {float(state.d):.4f}")
    assert gap <= 1e-10
    assert float(state.d) == pytest.approx(d, rel=1e-10)


def test_prodigy_coupled_decay_is_the_l2_chain():
    """The authors' ``decouple=False``: decay added to the gradient before everything."""
    with x64():
        ours, _ = trajectory(chain(add_decayed_weights(WD), prodigy(jax_cosine(1.0, jnp.float64))))
    ref, _ = official_prodigy(wd=WD, decouple=False, multiplier=cosine)
    assert max_relative_difference(ours, ref) <= 1e-10


def test_prodigy_defaults_differ_between_the_authors_and_optax():
    """Bias correction off (the authors' default, adamx's) against on (optax's, always)."""
    default, d_default = official_prodigy(wd=WD, multiplier=cosine)
    corrected, d_corrected = official_prodigy(wd=WD, use_bias_correction=True, multiplier=cosine)
    gap = max_relative_difference(default, corrected)
    print(
        f"prodigy authors' default vs bias-corrected: {gap:.2e} (d {d_default:.4f} vs "
        f"{d_corrected:.4f})"
    )
    assert gap > 1e-3


@pytest.mark.parametrize("corrected, factor", [(False, 0.1 / math.sqrt(1e-3)), (True, 1.0)])
def test_prodigy_first_step(corrected, factor):
    """r_1 = 0 (theta_0 = x_0), so d_1 = d_0 and, with eps = 0, every coordinate moves by
    lr d_0 (1 - b1) / sqrt(1 - b2) (the authors' default) or lr d_0 (bias-corrected)."""
    with x64():
        opt = prodigy(0.5, eps=0.0, d0=1e-3, bias_correction=corrected)
        p = jnp.array([2.0, -0.5, 1e-3, 7.0])
        g = jnp.array([3.0, -0.25, 1e-6, -40.0])
        updates, state = opt.update(g, opt.init(p), p)
    expected = -0.5 * 1e-3 * factor * np.sign(np.asarray(g))
    np.testing.assert_allclose(np.asarray(updates), expected, rtol=1e-12)
    assert float(state.d) == 1e-3


def test_prodigy_estimate_never_decreases_and_grows_from_a_tiny_start():
    with x64():
        opt = prodigy(weight_decay=WD)
        p = jax.tree.map(jnp.asarray, PARAMS)
        state = opt.init(p)

        @jax.jit
        def one(p, state, noise):
            g = jax.tree.map(lambda x, a, b, n: a * (x - b) + n, p, CURVATURE, TARGET, noise)
            updates, state = opt.update(g, state, p)
            return apply_updates(p, updates), state

        ds = [float(state.d)]
        for noise in NOISE:
            p, state = one(p, state, jax.tree.map(jnp.asarray, noise))
            ds.append(float(state.d))
    assert all(b >= a for a, b in zip(ds, ds[1:], strict=False))
    assert ds[-1] > 1e4 * ds[0]
    assert int(state.count) == STEPS


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


def test_prodigy_skips_all_zero_gradients_where_optax_gives_nan():
    params = {"w": jnp.ones(3)}
    zero = {"w": jnp.zeros(3)}
    opt = prodigy(weight_decay=0.1)
    state = opt.init(params)
    updates, state = opt.update(zero, state, params)
    assert np.all(np.asarray(updates["w"]) == 0) and int(state.count) == 0
    with relaxed():
        ref = optax.contrib.prodigy()
        ref_updates, _ = ref.update(zero, ref.init(params), params)
    assert np.all(np.isnan(np.asarray(ref_updates["w"])))


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


def test_prodigy_state_names_its_pieces():
    state = prodigy().init({"w": jnp.ones(2)})
    assert isinstance(state, ProdigyState) and float(state.d) == pytest.approx(1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda: prodigy(d0=0.0),
        lambda: prodigy(b3=1.0),
        lambda: prodigy(eps=-1.0),
        lambda: prodigy(-1.0),
    ],
)
def test_validation(build):
    check_validation(build)


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_params_are_required(name, make):
    check_params_are_required(name, make)
