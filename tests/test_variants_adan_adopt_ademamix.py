"""Adan, ADOPT and AdEMAMix against their official code (NumPy transcriptions) and optax 0.2.8.

torch.optim has none of the three, so each is checked against an independent NumPy float64
transcription of the authors' official update (algorithms.md sections 26, 19, 20), written below
as a plain loop over steps, and against optax where optax implements the same formula. As in
``tests/test_classic_b.py``: 100 steps on a multi-leaf pytree with a cosine learning-rate schedule
and weight decay where the algorithm has it, gradients drawn in advance with a 10x spike every 10
steps (so ADOPT's clip binds). The measure is ``max |x - ref| / (|ref| + 1e-6)``; float64 parity
must be <= 1e-10. Then the documented differences between references, and cheap paper facts.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx._adam import adamw
from adamx._adan import adan, proximal_step, scale_by_adan
from adamx._ademamix import ademamix, scale_by_ademamix
from adamx._adopt import adopt, scale_by_adopt
from adamx._chain import chain
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


def spiky_gradients(seed=5):
    return helpers.spiky_gradients(random_tree(0, np.float64), seed)


GRADS = spiky_gradients()
PARAMS = random_tree(0, np.float64)
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)


def ours(make):
    """``make(lr_schedule)`` run in float64 with adamx's apply_updates."""
    with x64():
        return run_jax(make(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)


def optax_run(make):
    with x64(), relaxed():
        return run_jax(make(jax_cosine(LR, jnp.float64)), optax.apply_updates, jnp.float64)


def numpy_run(step_fn, state_fn):
    """Apply ``step_fn(t, lr, p, g, state) -> p`` leaf by leaf over the gradients, in float64."""
    leaves, treedef = jax.tree.flatten(PARAMS)
    params = [np.array(x, np.float64) for x in leaves]
    states = [state_fn(x) for x in params]
    for t, grads in enumerate(GRADS, start=1):
        lr = LR * cosine(t - 1)  # torch's LambdaLR: the multiplier of the 0-based step
        for k, g in enumerate(jax.tree.leaves(grads)):
            params[k] = step_fn(t, lr, params[k], np.asarray(g, np.float64), states[k])
    return jax.tree.unflatten(treedef, params)


# ---- Adan: sail-sg/Adan adan.py::_single_tensor_adan, transcribed ---------------------------------


def official_adan(b1=0.98, b2=0.92, b3=0.99, eps=1e-8, weight_decay=0.0, no_prox=False):
    def state(p):
        return {"m": np.zeros_like(p), "v": np.zeros_like(p), "n": np.zeros_like(p), "g": None}

    def step(t, lr, p, g, s):
        if s["g"] is None:  # pre_grad starts at the first gradient: d_1 = 0
            s["g"] = g.copy()
        diff = g - s["g"]
        s["m"] = s["m"] * b1 + (1 - b1) * g
        s["v"] = s["v"] * b2 + (1 - b2) * diff
        look = g + b2 * diff
        s["n"] = s["n"] * b3 + (1 - b3) * look * look
        denom = np.sqrt(s["n"]) / math.sqrt(1 - b3**t) + eps
        update = (s["m"] / (1 - b1**t) + b2 * s["v"] / (1 - b2**t)) / denom
        if no_prox:
            p = p * (1 - lr * weight_decay)
            p = p - lr * update
        else:
            p = p - lr * update
            p = p / (1 + lr * weight_decay)
        s["g"] = g.copy()
        return p

    return numpy_run(step, state)


@pytest.mark.parametrize("proximal", [True, False], ids=["proximal", "additive"])
def test_adan_matches_official(proximal):
    """adamx.adan vs the official update (NumPy, float64), cosine lr, decay 0.1: <= 1e-10."""
    mine = ours(lambda lr: adan(lr, weight_decay=WD, proximal=proximal))
    ref = official_adan(weight_decay=WD, no_prox=not proximal)
    print(f"adan {proximal=} vs official: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


def test_adan_decay_forms_differ():
    prox = official_adan(weight_decay=WD)
    additive = official_adan(weight_decay=WD, no_prox=True)
    gap = max_relative_difference(prox, additive)
    print(f"adan proximal vs additive decay (official): {gap:.2e}")
    assert gap > 1e-6


def test_adan_differs_from_optax_only_by_the_b2_coefficient():
    """optax 0.2.8 weights d_t by 1 - b2 where the official code uses b2 (optax PR #1715)."""
    mine = ours(lambda lr: adan(lr))
    theirs = optax_run(lambda lr: optax.adan(lr, eps_root=0.0))
    gap = max_relative_difference(mine, theirs)
    print(f"adan (b2=0.92) vs optax.adan: {gap:.2e}")
    assert gap > 0.1  # measured 1.2 (largest absolute difference 8.9e-2)
    # At b2 = 0.5, 1 - b2 = b2: with optax's eps_root and additive decay they coincide.
    mine = ours(lambda lr: adan(lr, b2=0.5, eps_root=1e-8, weight_decay=WD, proximal=False))
    theirs = optax_run(lambda lr: optax.adan(lr, b2=0.5, weight_decay=WD))
    print(f"adan (b2=0.5) vs optax.adan: {max_relative_difference(mine, theirs):.2e}")
    assert max_relative_difference(mine, theirs) <= 1e-10


def test_adan_constant_gradient_steps_by_lr():
    """d_1 = 0 (g_0 := g_1): on a constant gradient v stays 0 and every step is -lr sign(g)."""
    with x64():
        opt = adan(0.1, eps=0.0)
        g = jnp.array([3.0, -0.5, 1e-3])
        state = opt.init(g)
        for _ in range(5):
            updates, state = opt.update(g, state, g)
            np.testing.assert_allclose(np.asarray(updates), -0.1 * np.sign(g), rtol=1e-14)


def test_adan_proximal_decay_is_a_contraction():
    """With zero gradients the proximal step is theta / (1 + lr wd) exactly, every step."""
    with x64():
        opt = adan(0.5, weight_decay=0.2)
        p = jnp.array([1.0, -2.0, 3.0])
        state = opt.init(p)
        for _ in range(4):
            u, state = opt.update(jnp.zeros(3), state, p)
            new = apply_updates(p, u)
            np.testing.assert_allclose(np.asarray(new), np.asarray(p) / 1.1, rtol=1e-15)
            p = new


def test_proximal_step_without_decay_is_the_learning_rate():
    with x64():
        u = jnp.array([1.0, -2.0])
        step = proximal_step(0.3)
        out, _ = step.update(u, step.init(u), u)
        assert np.all(np.asarray(out) == -0.3 * np.asarray(u))


# ---- ADOPT: iShohei220/adopt src/adopt/adopt.py::_single_tensor_adopt, transcribed -----------------


def official_adopt(b1=0.9, b2=0.9999, eps=1e-6, weight_decay=0.0, decouple=False, clip=True):
    def state(p):
        return {"step": 0, "m": np.zeros_like(p), "v": np.zeros_like(p)}

    def step(t, lr, p, g, s):
        if weight_decay != 0 and not decouple:
            g = g + weight_decay * p
        if s["step"] == 0:
            s["v"] = s["v"] + g * g
            s["step"] += 1
            return p
        if weight_decay != 0 and decouple:
            p = p - lr * weight_decay * p
        normed = g / np.maximum(np.sqrt(s["v"]), eps)
        if clip:
            c = s["step"] ** 0.25
            normed = np.clip(normed, -c, c)
        s["m"] = s["m"] + (1 - b1) * (normed - s["m"])  # lerp_
        p = p - lr * s["m"]
        s["v"] = s["v"] * b2 + (1 - b2) * g * g
        s["step"] += 1
        return p

    return numpy_run(step, state)


ADOPT_CASES = [
    ("clip", lambda lr: adopt(lr), lambda: official_adopt()),
    ("no_clip", lambda lr: adopt(lr, use_clipping=False), lambda: official_adopt(clip=False)),
    (
        "decoupled",
        lambda lr: adopt(lr, weight_decay=WD),
        lambda: official_adopt(weight_decay=WD, decouple=True),
    ),
    (
        "l2",
        lambda lr: chain(add_decayed_weights(WD), adopt(lr)),
        lambda: official_adopt(weight_decay=WD),
    ),
]


@pytest.mark.parametrize(
    "make, reference", [c[1:] for c in ADOPT_CASES], ids=[c[0] for c in ADOPT_CASES]
)
def test_adopt_matches_official(make, reference):
    """adamx.adopt vs the official update (NumPy, float64), cosine lr: <= 1e-10."""
    mine, ref = ours(make), reference()
    print(f"adopt vs official: {max_relative_difference(mine, ref):.2e}")
    assert max_relative_difference(mine, ref) <= 1e-10


@pytest.mark.parametrize("clipping", [True, False], ids=["clip", "no_clip"])
def test_adopt_matches_optax(clipping):
    """adamx.adopt vs optax.contrib.adopt (float64, cosine lr): <= 1e-10."""
    mine = ours(lambda lr: adopt(lr, use_clipping=clipping))
    theirs = optax_run(lambda lr: optax.contrib.adopt(lr, use_clipping=clipping))
    print(f"adopt {clipping=} vs optax: {max_relative_difference(mine, theirs):.2e}")
    assert max_relative_difference(mine, theirs) <= 1e-10


def test_adopt_clipping_matters_here():
    gap = max_relative_difference(official_adopt(), official_adopt(clip=False))
    print(f"adopt official with vs without clipping: {gap:.2e}")
    assert gap > 1e-6


def test_adopt_first_call_makes_no_step_even_with_decay():
    opt = adopt(0.1, weight_decay=0.5)
    p = jnp.array([1.0, -2.0])
    u, state = opt.update(jnp.array([4.0, 0.1]), opt.init(p), p)
    assert np.all(np.asarray(u) == 0)
    np.testing.assert_allclose(np.asarray(state[0][0].nu), [16.0, 0.01], rtol=1e-6)


def test_adopt_clip_binds_on_the_first_step():
    """The first real step normalises by sqrt(v_1) = |g_1| and clips to (2 - 1)^(1/4) = 1."""
    with x64():
        opt = scale_by_adopt(b1=0.9)
        g1, g2 = jnp.array([1e-3, -1e-3, 2.0]), jnp.array([5.0, 5.0, 1.0])
        state = opt.init(g1)
        _, state = opt.update(g1, state)
        u, _ = opt.update(g2, state)
        np.testing.assert_allclose(np.asarray(u), 0.1 * np.array([1.0, 1.0, 0.5]), rtol=1e-14)


# ---- AdEMAMix: apple/ml-ademamix pytorch/ademamix.py, transcribed ---------------------------------


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


# ---- all three: zero gradients, dtypes, validation --------------------------------------------------

ALL = [
    ("adan", lambda: adan(1e-2, weight_decay=1e-2)),
    ("adan_additive", lambda: adan(1e-2, weight_decay=1e-2, proximal=False)),
    ("adopt", lambda: adopt(1e-2, weight_decay=1e-2)),
    ("adopt_eps0", lambda: adopt(1e-2, eps=0.0)),
    ("ademamix", lambda: ademamix(1e-2, weight_decay=1e-2, alpha_warmup=10, b3_warmup=10)),
]


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    for _ in range(5):
        grads = jax.tree.map(jnp.zeros_like, params)
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    helpers.scan_keeps_dtypes(make(), dtype)


def test_float32_moments_stay_float32_under_x64():
    with x64():
        for opt in (adan(1e-2), adopt(1e-2), ademamix(1e-2, alpha_warmup=5, b3_warmup=5)):
            params = {"w": jnp.ones(3, jnp.float32)}
            state = opt.init(params)
            updates, state = opt.update(params, state, params)
            assert updates["w"].dtype == jnp.float32
            floats = [x.dtype for x in jax.tree.leaves(state) if x.dtype != jnp.int32]
            assert set(floats) == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(
    "build",
    [
        lambda: adan(1e-2, b3=1.0),
        lambda: adan(1e-2, weight_decay=-1.0),
        lambda: adan(-1.0),
        lambda: scale_by_adan(b2=-0.1),
        lambda: adopt(1e-2, eps=-1.0),
        lambda: adopt(1e-2, b2=1.5),
        lambda: adopt(1e-2, weight_decay=-0.1),
        lambda: ademamix(1e-2, alpha=-1.0),
        lambda: ademamix(1e-2, b3=1.0),
        lambda: ademamix(1e-2, alpha_warmup=0),
        lambda: ademamix(1e-2, b3_warmup=10, b3=lambda c: 0.99),
        lambda: scale_by_ademamix(schedule_step="one"),
    ],
)
def test_validation(build):
    with pytest.raises(ValueError):
        build()
