"""Schedule-Free AdamW and Prodigy against optax 0.2.8 and NumPy transcriptions of the authors' code.

100 float64 steps on a multi-leaf pytree (matrix, vector, scalar, a 4-d leaf and a stacked
(layers, rows, cols) leaf). The gradients depend on the params, ``g = a * (theta - target) + noise``
with a fixed per-coordinate curvature ``a`` and fixed noise, so that Prodigy's distance estimate
grows and Schedule-Free's y, z and x separate. The measure is ``max |x - ref| / (|ref| + 1e-6)``;
parity must be <= 1e-10. The NumPy references are plain loops written from algorithms.md (sections
22 and 31): Schedule-Free in the authors' reference form, which stores x, y and z (adamx stores z
only), and Prodigy as ``Prodigy.step`` of konstmish/prodigy.

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

from adamx._base import identity
from adamx._chain import chain
from adamx._clipping import clip_by_global_norm
from adamx._prodigy import ProdigyState, prodigy
from adamx._schedule_free import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
)
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
WD = 0.1


def _problem(seed=5):
    rng = np.random.default_rng(seed)
    params = {**random_tree(0, np.float64), "stacked": rng.standard_normal((4, 6, 3))}
    curvature = jax.tree.map(lambda x: rng.uniform(0.5, 2.0, np.shape(x)), params)
    target = jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), params)
    noise = [
        jax.tree.map(lambda x: 0.1 * rng.standard_normal(np.shape(x)), params) for _ in range(STEPS)
    ]
    return params, curvature, target, noise


PARAMS, CURVATURE, TARGET, NOISE = _problem()
TREEDEF = jax.tree.structure(PARAMS)
LEAVES = [np.asarray(x, np.float64) for x in jax.tree.leaves(PARAMS)]
A = [np.asarray(x) for x in jax.tree.leaves(CURVATURE)]
B = [np.asarray(x) for x in jax.tree.leaves(TARGET)]
N = [[np.asarray(x) for x in jax.tree.leaves(n)] for n in NOISE]


def trajectory(tx, apply=apply_updates):
    """``tx`` for ``STEPS`` jitted float64 steps on the problem; returns ``(params, state)``."""
    p = jax.tree.map(jnp.asarray, PARAMS)
    state = tx.init(p)

    @jax.jit
    def one(p, state, noise):
        g = jax.tree.map(lambda x, a, b, n: a * (x - b) + n, p, CURVATURE, TARGET, noise)
        updates, state = tx.update(g, state, p)
        return apply(p, updates), state

    for noise in NOISE:
        p, state = one(p, state, jax.tree.map(jnp.asarray, noise))
    return p, state


def gradient(i, k, p):
    return A[i] * (p - B[i]) + N[k][i]


def tree(leaves):
    return jax.tree.unflatten(TREEDEF, leaves)


# ---- NumPy transcriptions of the authors' updates ----------------------------------------------


def official_schedule_free(
    lr, *, warmup=0, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, r=0.0, power=2.0, paper=False,
    multiplier=lambda k: 1.0,
):  # fmt: skip
    """facebookresearch/schedule_free, reference form (x, y, z stored); v1.3, or the paper's
    (pre-v1.3) with ``paper=True``. ``multiplier(k)`` scales ``lr`` as torch's LambdaLR would."""
    y = [x.copy() for x in LEAVES]
    z = [x.copy() for x in LEAVES]
    x = [x.copy() for x in LEAVES]
    v = [np.zeros_like(x) for x in LEAVES]
    lr_max, weight_sum = -1.0, 0.0
    for k in range(STEPS):
        sched = (k + 1) / warmup if k < warmup else 1.0
        correction = 1 - b2 ** (k + 1)
        gamma = lr * multiplier(k) * sched
        if paper:
            gamma *= math.sqrt(correction)
        lr_max = max(gamma, lr_max)
        weight = (k + 1) ** r * lr_max**power
        weight_sum += weight
        c = weight / weight_sum if weight_sum != 0 else 0.0
        for i in range(len(LEAVES)):
            g = gradient(i, k, y[i])
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = (np.sqrt(v[i]) if paper else np.sqrt(v[i] / correction)) + eps
            z[i] = z[i] - gamma * wd * y[i]  # decay at y
            z[i] = z[i] - gamma * g / denom
            x[i] = (1 - c) * x[i] + c * z[i]
            y[i] = (1 - b1) * z[i] + b1 * x[i]
    return tree(y), tree(x)


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


# ---- Schedule-Free AdamW -------------------------------------------------------------------------


def test_schedule_free_adamw_matches_optax():
    """optax.contrib.schedule_free_adamw, constant lr (where the two agree), weight decay: y and
    the evaluation point x within 1e-10."""
    with x64():
        ours, state = trajectory(schedule_free_adamw(5e-2, weight_decay=WD))
        with relaxed():
            ref, ref_state = trajectory(
                optax.contrib.schedule_free_adamw(5e-2, weight_decay=WD), optax.apply_updates
            )
            ref_x = optax.contrib.schedule_free_eval_params(ref_state, ref)
        x = schedule_free_eval_params(state, ours)
    print(
        f"schedule_free_adamw vs optax: y {max_relative_difference(ours, ref):.2e}, "
        f"x {max_relative_difference(x, ref_x):.2e}"
    )
    assert max_relative_difference(ours, ref) <= 1e-10
    assert max_relative_difference(x, ref_x) <= 1e-10
    assert max_relative_difference(ours, PARAMS) > 1e-1  # it moved
    assert max_relative_difference(x, ours) > 1e-3  # and x is not y


SF_OFFICIAL = [
    # (name, adamx kwargs, reference kwargs); a cosine schedule where marked
    ("v13_cosine_warmup_wd", dict(warmup_steps=10, weight_decay=WD), dict(warmup=10, wd=WD)),
    ("v13_r1_power1", dict(r=1.0, weight_lr_power=1.0), dict(r=1.0, power=1.0)),
    (
        "paper_cosine_warmup_wd",
        dict(warmup_steps=10, weight_decay=WD, bias_correction="learning_rate"),
        dict(warmup=10, wd=WD, paper=True),
    ),
]


@pytest.mark.parametrize(
    "name, ours_kwargs, ref_kwargs", SF_OFFICIAL, ids=[c[0] for c in SF_OFFICIAL]
)
def test_schedule_free_adamw_matches_the_authors_code(name, ours_kwargs, ref_kwargs):
    """NumPy transcription of AdamWScheduleFree v1.3 (or AdamWScheduleFreePaper for
    ``bias_correction="learning_rate"``), with a cosine multiplier as torch's LambdaLR applies
    it, warm-up and decay: y and x within 1e-10."""
    lr = 5e-2
    scheduled = "cosine" in name
    with x64():
        rate = jax_cosine(lr, jnp.float64) if scheduled else lr
        ours, state = trajectory(schedule_free_adamw(rate, **ours_kwargs))
        x = schedule_free_eval_params(state, ours)
    ref, ref_x = official_schedule_free(
        lr, multiplier=cosine if scheduled else (lambda k: 1.0), **ref_kwargs
    )
    print(
        f"{name} vs authors': y {max_relative_difference(ours, ref):.2e}, "
        f"x {max_relative_difference(x, ref_x):.2e}"
    )
    assert max_relative_difference(ours, ref) <= 1e-10
    assert max_relative_difference(x, ref_x) <= 1e-10


def test_schedule_free_versions_and_optax_warmup_differ():
    """The documented differences are real: the paper's bias correction against v1.3, and optax's
    warm-up (its z step lags the averaging weights by one step) against the authors'."""
    lr = 5e-2
    v13, _ = official_schedule_free(lr, warmup=10, wd=WD)
    paper, _ = official_schedule_free(lr, warmup=10, wd=WD, paper=True)
    with x64():
        ours, _ = trajectory(schedule_free_adamw(lr, warmup_steps=10, weight_decay=WD))
        with relaxed():
            ref_optax, _ = trajectory(
                optax.contrib.schedule_free_adamw(lr, warmup_steps=10, weight_decay=WD),
                optax.apply_updates,
            )
    versions, warmups = max_relative_difference(paper, v13), max_relative_difference(ref_optax, v13)
    print(f"paper vs v1.3: {versions:.2e}; optax warm-up vs authors': {warmups:.2e}")
    assert versions > 1e-3
    assert warmups > 1e-3
    assert max_relative_difference(ours, v13) <= 1e-10


@pytest.mark.parametrize("correction", ["moment", "learning_rate"])
def test_schedule_free_first_step_is_sign_descent(correction):
    """With eps = 0 the first step moves every coordinate by exactly the learning rate (c_1 = 1
    puts y_2 = x_2 = z_2); algorithms.md section 34's first-step factor 1."""
    with x64():
        opt = schedule_free_adamw(0.3, eps=0.0, bias_correction=correction)
        p = jnp.array([2.0, -0.5, 1e-3, 7.0])
        g = jnp.array([3.0, -0.25, 1e-6, -40.0])
        updates, _ = opt.update(g, opt.init(p), p)
    np.testing.assert_allclose(np.asarray(updates), -0.3 * np.sign(np.asarray(g)), rtol=1e-14)


def test_schedule_free_x_is_the_running_mean_of_z():
    """Constant lr and r = 0: c_{t+1} = 1/t, so after t steps x is the mean of the t iterates z
    those steps made (the initial point, x_1 = z_1 = theta_0, gets weight 0)."""
    with x64():
        opt = schedule_free_adamw(0.1, b1=0.8, weight_decay=WD)
        p = jnp.asarray(LEAVES[0])
        state = opt.init(p)
        zs = [np.asarray(state.z)]
        step = jax.jit(lambda p, s, n: opt.update(2.0 * (p - 1.0) + n, s, p))
        for k in range(30):
            updates, state = step(p, state, jnp.asarray(N[k][0]))
            p = apply_updates(p, updates)
            zs.append(np.asarray(state.z))
            x = schedule_free_eval_params(state, p)
            np.testing.assert_allclose(
                np.asarray(x), np.mean(zs[1:], axis=0), rtol=1e-11, atol=1e-12
            )
            np.testing.assert_allclose(
                np.asarray(p), 0.2 * zs[-1] + 0.8 * np.asarray(x), rtol=1e-12, atol=1e-13
            )


def test_schedule_free_sgd_is_the_wrapper_around_identity():
    """``schedule_free(direction=identity(), learning_rate=lr)``: z takes plain gradient steps, x averages them."""
    with x64():
        opt = schedule_free(direction=identity(), learning_rate=0.1, b1=0.5)
        p = jnp.array([1.0, -2.0])
        state = opt.init(p)
        for _ in range(3):
            updates, state = opt.update(2.0 * p, state, p)
            p = apply_updates(p, updates)
        z = [np.array([1.0, -2.0])]
        y = z[0]
        for _ in range(3):
            z.append(z[-1] - 0.1 * 2.0 * y)
            y = 0.5 * z[-1] + 0.5 * np.mean(z[1:], axis=0)  # x: the mean of the new z's
    np.testing.assert_allclose(np.asarray(p), y, rtol=1e-14)


def test_eval_params_are_found_inside_a_chain():
    with x64():
        opt = chain(clip_by_global_norm(1.0), schedule_free_adamw(0.1))
        p = {"w": jnp.array([1.0, -2.0])}
        state = opt.init(p)
        updates, state = opt.update({"w": jnp.array([0.5, 0.5])}, state, p)
        p = apply_updates(p, updates)
        x = schedule_free_eval_params(state, p)
        assert isinstance(state[1], ScheduleFreeState)
        np.testing.assert_allclose(np.asarray(x["w"]), np.asarray(p["w"]), rtol=1e-15)  # t = 1
    p = {"w": jnp.ones(2)}
    with pytest.raises(KeyError, match="ScheduleFreeState"):
        schedule_free_eval_params(prodigy().init(p), p)


# ---- Prodigy -------------------------------------------------------------------------------------


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


# ---- zero gradients, dtypes, validation ----------------------------------------------------------


ALL = [
    ("schedule_free_adamw", lambda: schedule_free_adamw(1e-2, weight_decay=1e-4)),
    ("schedule_free_paper", lambda: schedule_free_adamw(1e-2, bias_correction="learning_rate")),
    ("prodigy", lambda: prodigy(weight_decay=1e-4)),
    ("prodigy_optax", lambda: prodigy(bias_correction=True)),
]


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    for _ in range(5):
        updates, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


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
    _, s = helpers.scan_keeps_dtypes(make(), dtype)
    real = jnp.float32
    scalars = [x for x in jax.tree.leaves(s) if x.ndim == 0 and x.dtype != jnp.int32]
    assert all(x.dtype == real for x in scalars)  # float32 bookkeeping, never float64


def test_prodigy_state_names_its_pieces():
    state = prodigy().init({"w": jnp.ones(2)})
    assert isinstance(state, ProdigyState) and float(state.d) == pytest.approx(1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda: schedule_free_adamw(1e-2, b1=0.0),
        lambda: schedule_free_adamw(1e-2, b1=1.0),
        lambda: schedule_free_adamw(1e-2, warmup_steps=-1),
        lambda: schedule_free_adamw(1e-2, warmup_steps=2.5),
        lambda: schedule_free_adamw(1e-2, bias_correction="paper"),
        lambda: schedule_free_adamw(-1.0),
        lambda: schedule_free(direction=identity(), learning_rate=1e-2, weight_lr_power=-1.0),
        lambda: prodigy(d0=0.0),
        lambda: prodigy(b3=1.0),
        lambda: prodigy(eps=-1.0),
        lambda: prodigy(-1.0),
    ],
)
def test_validation(build):
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_params_are_required(name, make):
    opt = make()
    g = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="needs the parameters"):
        opt.update(g, opt.init(g))
