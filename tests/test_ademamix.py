"""AdEMAMix against the authors' code (apple/ml-ademamix, NumPy transcription) and optax 0.2.8.

The official PyTorch update and its warm-up schedulers are transcribed below as float64 NumPy
loops from docs/optimizers/adan_adopt_ademamix.md (AdEMAMix), on the trajectory of
tests/parity/adan_adopt_ademamix.py; float64 parity must be <= 1e-10.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import adamw, ademamix, scale_by_ademamix
from tests.helpers import (
    cases_of,
    check_dtypes_are_kept_in_a_scan,
    check_validation,
    max_relative_difference,
    x64,
)
from tests.parity.adan_adopt_ademamix import ALL as SHARED_ALL
from tests.parity.adan_adopt_ademamix import (
    WD,
    check_zero_gradients_give_finite_params,
    numpy_run,
    optax_run,
    ours,
)

ALL = cases_of(SHARED_ALL, "ademamix")


def linear_warmup_scheduler(step, alpha_end, alpha_start=0, warmup=1):
    if step < warmup:
        a = step / float(warmup)
        return (1.0 - a) * alpha_start + a * alpha_end
    return alpha_end


def linear_hl_warmup_scheduler(step, beta_end, beta_start=0, warmup=1, log_eps=1e-8):
    def f(beta):
        return math.log(0.5) / math.log(beta + log_eps) - 1

    def f_inv(t):
        return math.pow(0.5, 1 / (t + 1))

    if step < warmup:
        a = step / float(warmup)
        return f_inv((1.0 - a) * f(beta_start) + a * f(beta_end))
    return beta_end


def official_ademamix(
    b1=0.9,
    b2=0.999,
    b3=0.9999,
    alpha=2.0,
    beta3_warmup=None,
    alpha_warmup=None,
    eps=1e-8,
    weight_decay=0.0,
    log_eps=1e-8,
):
    def state(p):
        return {"step": 0, "m1": np.zeros_like(p), "m2": np.zeros_like(p), "v": np.zeros_like(p)}

    def step(t, lr, p, g, s):
        s["step"] += 1
        bc1, bc2 = 1 - b1 ** s["step"], 1 - b2 ** s["step"]
        a = alpha
        if alpha_warmup is not None:
            a = linear_warmup_scheduler(s["step"], alpha, 0, alpha_warmup)
        beta3 = b3
        if beta3_warmup is not None:
            beta3 = linear_hl_warmup_scheduler(s["step"], b3, b1, beta3_warmup, log_eps)
        s["m1"] = s["m1"] * b1 + (1 - b1) * g
        s["m2"] = s["m2"] * beta3 + (1 - beta3) * g
        s["v"] = s["v"] * b2 + (1 - b2) * g * g
        denom = np.sqrt(s["v"]) / math.sqrt(bc2) + eps
        update = (s["m1"] / bc1 + a * s["m2"]) / denom
        update = update + weight_decay * p
        return p - lr * update

    return numpy_run(step, state)


WARMUP = 60  # within the 100 steps, so both the warm-up and the constant phase are exercised


def test_ademamix_matches_official_pytorch_without_schedules():
    """adamx.ademamix(alpha=2) vs the official PyTorch update (NumPy, float64): <= 1e-10."""
    mine = ours(lambda lr: ademamix(lr, alpha=2.0, weight_decay=WD))
    ref = official_ademamix(alpha=2.0, weight_decay=WD)
    print(f"ademamix vs official pytorch: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


def official_with_warmups(log_eps):
    return official_ademamix(
        alpha=5.0, weight_decay=WD, alpha_warmup=WARMUP, beta3_warmup=WARMUP, log_eps=log_eps
    )


def ademamix_step_schedules(half_life_eps):
    return ours(
        lambda lr: ademamix(
            lr,
            alpha=5.0,
            weight_decay=WD,
            alpha_warmup=WARMUP,
            b3_warmup=WARMUP,
            schedule_step="step",
            half_life_eps=half_life_eps,
        )
    )


def test_ademamix_matches_official_pytorch_with_warmups():
    """With the official schedulers at the 1-based step (``schedule_step="step"``) and its 1e-8
    inside the half-life's logarithm (``half_life_eps=1e-8``), vs the official PyTorch update
    (NumPy, float64): <= 1e-10. The exact half-life (adamx's default) vs the same transcription
    with the 1e-8 removed: <= 1e-10."""
    verbatim = ademamix_step_schedules(1e-8)
    exact = ademamix_step_schedules(0.0)
    ref_verbatim, ref_exact = official_with_warmups(1e-8), official_with_warmups(0.0)
    print(
        f"ademamix warm-ups vs official pytorch: {max_relative_difference(verbatim, ref_verbatim):.2e}"
        f"; exact half-life vs the transcription without 1e-8: "
        f"{max_relative_difference(exact, ref_exact):.2e}"
    )
    assert max_relative_difference(verbatim, ref_verbatim) <= 1e-10
    assert max_relative_difference(exact, ref_exact) <= 1e-10
    gap = max_relative_difference(ref_verbatim, ref_exact)
    print(f"official pytorch half-life with vs without its 1e-8: {gap:.2e}")
    assert gap > 1e-6  # measured 2.9e-5


def alpha_schedule(alpha, warmup):
    """The paper's alpha warm-up in JAX, for optax (written here, independent of adamx)."""
    return lambda count: jnp.minimum(count.astype(jnp.float64) / warmup, 1.0) * alpha


def b3_schedule(b1, b3, warmup):
    """The paper's beta3 warm-up in JAX (half-life interpolation), for optax."""

    def schedule(count):
        a = jnp.minimum(count.astype(jnp.float64) / warmup, 1.0)
        log_b1, log_b3 = math.log(b1), math.log(b3)
        value = jnp.exp(log_b1 * log_b3 / ((1 - a) * log_b3 + a * log_b1))
        return jnp.minimum(value, b3)

    return schedule


def test_ademamix_matches_optax():
    """adamx.ademamix vs optax.contrib.ademamix (float64, cosine lr, decay 0.1): <= 1e-10,
    without schedules (both defaults, alpha = 5) and with warm-ups at the 0-based count."""
    mine = ours(lambda lr: ademamix(lr, weight_decay=WD))
    theirs = optax_run(lambda lr: optax.contrib.ademamix(lr, weight_decay=WD))
    print(f"ademamix vs optax: {max_relative_difference(mine, theirs):.2e}")
    assert max_relative_difference(mine, theirs) <= 1e-10
    mine = ours(lambda lr: ademamix(lr, weight_decay=WD, alpha_warmup=WARMUP, b3_warmup=WARMUP))
    theirs = optax_run(
        lambda lr: optax.contrib.ademamix(
            lr,
            b3=b3_schedule(0.9, 0.9999, WARMUP),
            alpha=alpha_schedule(5.0, WARMUP),
            weight_decay=WD,
        )
    )
    print(f"ademamix warm-ups vs optax: {max_relative_difference(mine, theirs):.2e}")
    assert max_relative_difference(mine, theirs) <= 1e-10


def test_ademamix_schedule_offsets_differ():
    def run(schedule_step):
        return ours(
            lambda lr: ademamix(
                lr, alpha_warmup=WARMUP, b3_warmup=WARMUP, schedule_step=schedule_step
            )
        )

    gap = max_relative_difference(run("count"), run("step"))
    print(f"ademamix 0-based vs 1-based schedules: {gap:.2e}")
    assert gap > 1e-6


def test_ademamix_with_alpha_zero_is_adamw():
    mine = ours(lambda lr: ademamix(lr, alpha=0.0, weight_decay=WD))
    ref = ours(lambda lr: adamw(lr, weight_decay=WD))
    assert max_relative_difference(mine, ref) == 0.0


def test_ademamix_user_schedules_are_evaluated_like_warmups():
    """A callable ``alpha``/``b3`` sees the same step as the warm-up built from ``*_warmup``."""
    a = ours(lambda lr: ademamix(lr, alpha_warmup=WARMUP, b3_warmup=WARMUP))
    b = ours(
        lambda lr: ademamix(
            lr, b3=b3_schedule(0.9, 0.9999, WARMUP), alpha=alpha_schedule(5.0, WARMUP)
        )
    )
    assert max_relative_difference(a, b) <= 1e-10


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


def test_float32_moments_stay_float32_under_x64():
    with x64():
        opt = ademamix(1e-2, alpha_warmup=5, b3_warmup=5)
        params = {"w": jnp.ones(3, jnp.float32)}
        state = opt.init(params)
        updates, state = opt.update(params, state, params)
        assert updates["w"].dtype == jnp.float32
        floats = [x.dtype for x in jax.tree.leaves(state) if x.dtype != jnp.int32]
        assert set(floats) == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(
    "build",
    [
        lambda: ademamix(1e-2, alpha=-1.0),
        lambda: ademamix(1e-2, b3=1.0),
        lambda: ademamix(1e-2, alpha_warmup=0),
        lambda: ademamix(1e-2, b3_warmup=10, b3=lambda c: 0.99),
        lambda: scale_by_ademamix(schedule_step="one"),
    ],
)
def test_validation(build):
    check_validation(build)
