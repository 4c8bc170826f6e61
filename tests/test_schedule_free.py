"""Schedule-Free AdamW against optax 0.2.8 and a NumPy transcription of the authors' code.

On the problem of tests/parity/schedule_free_prodigy.py. The NumPy reference is a plain loop
written from docs/optimizers/schedule_free_prodigy.md (Schedule-Free AdamW), in the authors'
reference form, which stores x, y and z (adamx stores z only).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import (
    ScheduleFreeState,
    apply_updates,
    chain,
    clip_by_global_norm,
    identity,
    prodigy,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
)
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
    LEAVES,
    PARAMS,
    STEPS,
    WD,
    N,
    check_dtypes_are_kept_in_a_scan,
    check_params_are_required,
    check_zero_gradients_give_finite_params,
    gradient,
    trajectory,
    tree,
)

ALL = cases_of(SHARED_ALL, "schedule_free")


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
    puts y_2 = x_2 = z_2); docs/optimizers/schedule_free_prodigy.md, "Two versions of the bias
    correction": both first steps move every coordinate by exactly the learning rate."""
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


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_params_are_required(name, make):
    check_params_are_required(name, make)


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
    ],
)
def test_validation(build):
    check_validation(build)
