"""Lion, LaProp, StableAdamW and the cautious wrapper against optax 0.2.8 and the authors' code.

Parity: 100 steps (``PARITY_STEPS``) on the multi-leaf pytree of ``random_tree``, with a cosine
learning-rate schedule and weight decay, gradients drawn in advance (N(0, 1), 10x on every 10th step,
so StableAdamW's clipping triggers). References: ``optax.lion`` where optax has the algorithm, and
otherwise independent NumPy transcriptions of the authors' official updates, written below from
algorithms.md (sections 17, 21, 24, 25) as plain loops over float64 arrays. The measure is
``max |x - ref| / (|ref| + 1e-6)``; float64 parity must be <= 1e-10.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx._adam import adam, adamw, scale_by_adam
from adamx._amsgrad import scale_by_amsgrad
from adamx._base import GradientTransformation
from adamx._cautious import cautious, cautious_adamw, cautious_lion
from adamx._chain import chain
from adamx._laprop import decay_after_update, laprop, scale_by_laprop, weighted_ema
from adamx._lion import lion, scale_by_lion
from adamx._nadam import scale_by_nadam
from adamx._scale import scale_by_learning_rate
from adamx._stable_adamw import scale_by_stable_adamw, stable_adamw
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
TREEDEF = jax.tree.structure(PARAMS)
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)


def ours(tx):
    """``tx`` (built with a float64 schedule) over ``GRADS`` in float64, jitted."""
    with x64():
        return run_jax(tx, apply_updates, jnp.float64)


def numpy_run(step, state_init, multiplier=cosine):
    """Run ``step(t, lr_t, p, g, s) -> (p, s)`` leaf by leaf for ``t = 1..STEPS`` from ``PARAMS``,
    ``lr_t = LR * multiplier(t - 1)``; returns the final params in ``PARAMS``' structure."""
    leaves = [np.array(x, np.float64) for x in jax.tree.leaves(PARAMS)]
    states = [state_init(p) for p in leaves]
    for t, grads in enumerate(GRADS, start=1):
        lr = LR * multiplier(t - 1)
        for k, g in enumerate(jax.tree.leaves(grads)):
            leaves[k], states[k] = step(t, lr, leaves[k], np.asarray(g, np.float64), states[k])
    return jax.tree.unflatten(TREEDEF, leaves)


# ---- NumPy transcriptions of the official updates ------------------------------------------------


def official_lion(wd, b1=0.9, b2=0.99):
    """google/automl lion/lion_pytorch.py, ``Lion.step`` for one tensor."""

    def step(t, lr, p, g, m):
        p = p * (1 - lr * wd)
        c = m * b1 + g * (1 - b1)
        p = p - lr * np.sign(c)
        m = m * b2 + g * (1 - b2)
        return p, m

    return step, np.zeros_like


def official_laprop(wd, b1=0.9, b2=0.999, eps=1e-15):
    """Z-T-WANG/LaProp-Optimizer laprop.py, ``LaProp.step`` (amsgrad and centered off)."""

    def step(t, lr, p, g, s):
        m, v, lr1, lr2 = s
        v = v * b2 + (1 - b2) * g * g
        lr1 = lr1 * b1 + (1 - b1) * lr
        lr2 = lr2 * b2 + (1 - b2)
        bc1 = lr1 / lr if lr != 0.0 else 1.0
        step_size = 1 / bc1
        denom = np.sqrt(v / lr2) + eps
        m = m * b1 + (1 - b1) * lr * (g / denom)
        p = p - step_size * m
        if wd != 0:
            p = p - wd * p
        return p, (m, v, lr1, lr2)

    return step, lambda p: (np.zeros_like(p), np.zeros_like(p), 0.0, 0.0)


def official_stable_adamw(wd, b1=0.9, b2=0.99, eps=1e-8, d=1.0, clipped=None):
    """Wortsman's gist, ``StableAdamWUnfused.step`` for one tensor (debiased betas, step from 1);
    appends each step's RMS to ``clipped`` when given."""

    def step(t, lr, p, g, s):
        m, u = s
        b1hat = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
        b2hat = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
        m = m * b1hat + g * (1 - b1hat)
        u = u * b2hat + g * g * (1 - b2hat)
        denominator = np.sqrt(u) + eps
        rms = float(np.sqrt(np.mean(g**2 / np.maximum(u, eps**2 * np.ones_like(u)))))
        if clipped is not None:
            clipped.append(rms)
        p = p * (1 - lr * wd) - lr * (1 / max(1.0, rms / d)) * m / denominator
        return p, (m, u)

    return step, lambda p: (np.zeros_like(p), np.zeros_like(p))


def _mask(agree, rescale):
    mask = agree.astype(np.float64)
    if rescale == "mean":
        return mask / max(mask.mean(), 1e-3)
    return mask * (mask.size / (mask.sum() + 1))  # the original rule


def official_c_adamw(wd, rescale, b1=0.9, b2=0.999, eps=1e-6):
    """kyleliang919/C-Optim c_adamw.py, the single-tensor path of ``AdamW.step`` (HF-style)."""

    def step(t, lr, p, g, s):
        m, v = s
        if wd > 0:
            p = p - lr * wd * p
        m = m * b1 + (1 - b1) * g
        v = v * b2 + (1 - b2) * g * g
        denom = np.sqrt(v) + eps
        step_size = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        mask = _mask(m * g > 0, rescale)
        p = p - step_size * ((m * mask) / denom)
        return p, (m, v)

    return step, lambda p: (np.zeros_like(p), np.zeros_like(p))


def official_c_lion(wd, b1=0.9, b2=0.99):
    """kyleliang919/C-Optim c_lion.py, ``update_fn`` (numel / (sum + 1) rescaling)."""

    def step(t, lr, p, g, m):
        p = p * (1 - lr * wd)
        update = np.sign(m * b1 + g * (1 - b1))
        mask = _mask(update * g > 0, "sum_plus_one")
        p = p - lr * update * mask
        m = m * b2 + g * (1 - b2)
        return p, m

    return step, np.zeros_like


def cos64(base=LR):
    return jax_cosine(base, jnp.float64)


# ---- Lion ----------------------------------------------------------------------------------------


def test_lion_matches_optax_and_the_official_code():
    """Reference: optax.lion (0.2.8) and google/automl lion_pytorch.py; tolerance 1e-10."""
    mine = ours(lion(cos64(), weight_decay=WD))
    with x64(), relaxed():
        ref_optax = run_jax(optax.lion(cos64(), weight_decay=WD), optax.apply_updates, jnp.float64)
    ref_official = numpy_run(*official_lion(WD))
    print(
        f"lion float64: vs optax {max_relative_difference(mine, ref_optax):.2e}, "
        f"vs official {max_relative_difference(mine, ref_official):.2e}"
    )
    assert max_relative_difference(mine, ref_optax) <= 1e-10
    assert max_relative_difference(mine, ref_official) <= 1e-10


def test_lion_moves_every_coordinate_by_exactly_the_learning_rate():
    rng = np.random.default_rng(7)
    lr = 3e-3
    with x64():
        opt = lion(lr, weight_decay=0.0)
        params = jnp.asarray(rng.standard_normal(64))
        state = opt.init(params)
        for _ in range(30):
            g = jnp.asarray(rng.standard_normal(64) * rng.lognormal(0, 2))
            updates, state = opt.update(g, state, params)
            np.testing.assert_array_equal(np.abs(np.asarray(updates)), lr)
            params = apply_updates(params, updates)


def test_lion_sign_of_zero_is_zero():
    opt = lion(0.1, weight_decay=0.0)
    g = jnp.array([0.0, 2.0, -3.0])
    updates, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_array_equal(np.asarray(updates), np.float32([0.0, -0.1, 0.1]))


def test_lion_state_layout_matches_optax():
    with x64():
        params = jax.tree.map(jnp.asarray, PARAMS)
        with relaxed():
            ref = optax.scale_by_lion()
            s_ref = ref.init(params)
            for g in GRADS[:5]:
                _, s_ref = ref.update(g, s_ref)
        mine = scale_by_lion()
        s = mine.init(params)
        for g in GRADS[:5]:
            _, s = mine.update(g, s)
    assert max_relative_difference(s.mu, s_ref.mu) <= 1e-14
    assert int(s.count) == int(s_ref.count) == 5


# ---- LaProp --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduled", [True, False], ids=["cosine", "constant"])
def test_laprop_matches_the_official_code(scheduled):
    """Reference: a NumPy transcription of LaProp.step (official); tolerance 1e-10. The constant
    learning rate takes the ``ema`` + ``bias_correction`` path, the schedule `weighted_ema`."""
    wd = 1e-2
    if scheduled:
        mine = ours(laprop(cos64(), weight_decay=wd))
        ref = numpy_run(*official_laprop(wd))
    else:
        mine = ours(laprop(LR, weight_decay=wd))
        ref = numpy_run(*official_laprop(wd), multiplier=lambda t: 1.0)
    gap = max_relative_difference(mine, ref)
    print(f"laprop ({'cosine' if scheduled else 'constant'}) float64 vs official: {gap:.2e}")
    assert gap <= 1e-10


def test_laprop_learning_rate_weighting_matters_under_a_schedule():
    """The official lr-weighted momentum differs from the Adam convention (lr outside it)."""
    official_form = ours(laprop(cos64(), weight_decay=0.0))
    lr_outside = ours(chain(scale_by_laprop(), scale_by_learning_rate(cos64())))
    gap = max_relative_difference(official_form, lr_outside)
    print(f"laprop lr inside vs outside the momentum: {gap:.2e}")
    assert gap > 1e-4


def test_laprop_decay_acts_after_the_step_and_ignores_the_learning_rate():
    with x64():
        opt = laprop(0.0, weight_decay=0.1)
        params = jnp.array([1.0, -2.0, 3.0])
        state = opt.init(params)
        for t in range(1, 6):
            updates, state = opt.update(jnp.array([1.0, 1.0, -1.0]), state, params)
            params = apply_updates(params, updates)
            np.testing.assert_allclose(np.asarray(params), 0.9**t * np.array([1.0, -2.0, 3.0]))
        # and with a learning rate: theta_t = (1 - wd) (theta_{t-1} + u_t)
        tx = decay_after_update(0.5)
        u, _ = tx.update(jnp.array([1.0]), tx.init(params), jnp.array([3.0]))
        assert float(u[0]) == pytest.approx((1 - 0.5) * (3.0 + 1.0) - 3.0)


def test_weighted_ema_with_a_constant_weight_is_ema_with_bias_correction():
    from adamx._moments import bias_correction, ema

    with x64():
        a = run_jax(
            chain(weighted_ema(0.9, lambda count: 0.3), scale_by_learning_rate(LR)),
            apply_updates,
            jnp.float64,
        )
        b = run_jax(
            chain(ema(0.9), bias_correction(0.9), scale_by_learning_rate(LR)),
            apply_updates,
            jnp.float64,
        )
    assert max_relative_difference(a, b) <= 1e-13


# ---- StableAdamW ---------------------------------------------------------------------------------


def test_stable_adamw_matches_the_gist_and_clips():
    """Reference: a NumPy transcription of Wortsman's StableAdamWUnfused gist; tolerance 1e-10.
    The spikes make it clip (RMS > 1), so this is not AdamW."""
    rms = []
    mine = ours(stable_adamw(cos64(), weight_decay=WD))
    ref = numpy_run(*official_stable_adamw(WD, clipped=rms))
    gap = max_relative_difference(mine, ref)
    plain = ours(adamw(cos64(), b2=0.99, weight_decay=WD))
    print(
        f"stable_adamw float64 vs gist: {gap:.2e}; clipped {sum(r > 1 for r in rms)} of "
        f"{len(rms)} tensor-steps (max RMS {max(rms):.2f}); vs adamw "
        f"{max_relative_difference(mine, plain):.2e}"
    )
    assert gap <= 1e-10
    assert sum(r > 1 for r in rms) > 10
    assert max_relative_difference(mine, plain) > 1e-3


def test_stable_adamw_clips_a_spike_by_its_rms():
    """After 20 steps of the same gradient a 30x spike gives RMS = 30 sqrt(1/(b2 + (1 - b2) 900))
    on every coordinate: the step is AdamW's divided by that RMS."""
    b2 = 0.99
    with x64():
        g = jnp.array([1.0, -2.0, 0.5, 4.0])
        stable = scale_by_stable_adamw(b2=b2, eps=0.0)
        plain = scale_by_adam(b2=b2, eps=0.0)
        s, p = stable.init(g), plain.init(g)
        for _ in range(20):
            u, s = stable.update(g, s)
            u_plain, p = plain.update(g, p)
            np.testing.assert_allclose(np.asarray(u), np.asarray(u_plain), rtol=1e-13)
        u, s = stable.update(30 * g, s)
        u_plain, p = plain.update(30 * g, p)
    # v_hat after the spike, per coordinate: g^2 (b2 (1 - b2^20) + (1 - b2) 900) / (1 - b2^21)
    v_over_g2 = (b2 * (1 - b2**20) + (1 - b2) * 900) / (1 - b2**21)
    expected_rms = np.sqrt(900 / v_over_g2)
    assert expected_rms > 1
    np.testing.assert_allclose(np.asarray(u), np.asarray(u_plain) / expected_rms, rtol=1e-12)


def test_stable_adamw_without_a_trigger_is_adamw():
    """|g_t| non-increasing per coordinate keeps g_t^2 <= v_hat_t, so RMS <= 1: AdamW (form 1A)."""
    rng = np.random.default_rng(11)
    tree = random_tree(0, np.float64)
    size = jax.tree.map(lambda x: rng.uniform(0.5, 2.0, np.shape(x)), tree)
    grads = [
        jax.tree.map(lambda a, t=t: rng.choice([-1.0, 1.0], np.shape(a)) * a * 0.97**t, size)
        for t in range(STEPS)
    ]
    with x64():
        a = helpers.run_jax(
            stable_adamw(cos64(), weight_decay=WD), apply_updates, jnp.float64, PARAMS, grads
        )
        b = helpers.run_jax(
            adamw(cos64(), b2=0.99, weight_decay=WD), apply_updates, jnp.float64, PARAMS, grads
        )
    print(f"stable_adamw vs adamw without clipping: {max_relative_difference(a, b):.2e}")
    assert max_relative_difference(a, b) <= 1e-12


# ---- Cautious ------------------------------------------------------------------------------------


@functools.cache
def c_adamw_run(rescale, eps_before_correction):
    """Our C-AdamW trajectory (eps = 1e-6, the official default), computed once per option."""
    return ours(
        cautious_adamw(
            cos64(),
            eps=1e-6,
            weight_decay=WD,
            rescale=rescale,
            eps_before_correction=eps_before_correction,
        )
    )


@pytest.mark.parametrize("rescale", ["mean", "sum_plus_one"])
def test_cautious_adamw_matches_the_official_code(rescale):
    """Reference: a NumPy transcription of C-Optim c_adamw.py's single-tensor path (eps form 1C,
    eps = 1e-6); tolerance 1e-10."""
    mine = c_adamw_run(rescale, True)
    ref = numpy_run(*official_c_adamw(WD, rescale))
    gap = max_relative_difference(mine, ref)
    print(f"cautious_adamw ({rescale}) float64 vs official: {gap:.2e}")
    assert gap <= 1e-10


def test_cautious_adamw_options_matter():
    official, original = c_adamw_run("mean", True), c_adamw_run("sum_plus_one", True)
    adam_eps = c_adamw_run("mean", False)
    plain = ours(adamw(cos64(), eps=1e-6, weight_decay=WD))
    eps_gap = max_relative_difference(official, adam_eps)
    rescale_gap = max_relative_difference(official, original)
    caution_gap = max_relative_difference(adam_eps, plain)
    print(
        f"cautious_adamw: eps form 1C vs 1A {eps_gap:.2e}; mean vs sum+1 rescaling "
        f"{rescale_gap:.2e}; cautious vs plain adamw {caution_gap:.2e}"
    )
    assert eps_gap > 1e-7
    assert rescale_gap > 1e-3
    assert caution_gap > 1e-2


def test_cautious_lion_matches_the_official_code():
    """Reference: a NumPy transcription of C-Optim c_lion.py; tolerance 1e-10."""
    mine = ours(cautious_lion(cos64(), weight_decay=WD, rescale="sum_plus_one"))
    ref = numpy_run(*official_c_lion(WD))
    gap = max_relative_difference(mine, ref)
    print(f"cautious_lion float64 vs official: {gap:.2e}")
    assert gap <= 1e-10


@pytest.mark.parametrize(
    "make",
    [
        lambda: cautious_adamw(0.1, weight_decay=0.5),
        lambda: cautious_adamw(0.1, weight_decay=0.5, eps_before_correction=True),
        lambda: cautious_lion(0.1, weight_decay=0.5),
    ],
    ids=["adamw", "adamw_1c", "lion"],
)
def test_mask_never_touches_the_decay(make):
    with x64():
        opt = make()
        params = jnp.array([1.0, -2.0, 3.0, -4.0])
        state = opt.init(params)
        # Coordinates 0 and 2 get no gradient: masked to 0, yet decayed.
        g = jnp.array([0.0, 1.0, 0.0, -1.0])
        updates, state = opt.update(g, state, params)
        np.testing.assert_allclose(np.asarray(updates)[[0, 2]], -0.1 * 0.5 * np.array([1.0, 3.0]))
        assert np.all(np.asarray(updates)[[1, 3]] != -0.05 * np.array([-2.0, -4.0]))
        params = apply_updates(params, updates)
        # A gradient against the momentum everywhere: the whole direction is masked, decay stays.
        updates, state = opt.update(-0.01 * g, state, params)
        np.testing.assert_allclose(
            np.asarray(updates)[[1, 3]], -0.1 * 0.5 * np.asarray(params)[[1, 3]], rtol=1e-14
        )


def test_cautious_with_agreeing_signs_is_the_base_optimizer():
    """On the first step Adam's direction is g/|g|, so every sign agrees: "mean" gives Adam's
    direction exactly and "sum_plus_one" scales each tensor's by n / (n + 1)."""
    g = jax.tree.map(jnp.asarray, GRADS[0])
    with x64():
        params = jax.tree.map(jnp.asarray, PARAMS)
        for rescale, factor in [("mean", lambda n: 1.0), ("sum_plus_one", lambda n: n / (n + 1))]:
            tx = chain(cautious(scale_by_adam(), rescale=rescale), scale_by_learning_rate(1.0))
            base = chain(scale_by_adam(), scale_by_learning_rate(1.0))
            u, _ = jax.jit(tx.update)(g, tx.init(params), params)
            u_base, _ = jax.jit(base.update)(g, base.init(params), params)
            for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_base), strict=True):
                np.testing.assert_allclose(
                    np.asarray(a), factor(b.size) * np.asarray(b), rtol=1e-14
                )


DIRECTIONS = [
    ("adam", lambda: scale_by_adam()),
    ("nadam", lambda: scale_by_nadam(momentum_decay=4e-3)),
    ("amsgrad", lambda: scale_by_amsgrad()),
    ("lion", lambda: scale_by_lion()),
    ("laprop", lambda: scale_by_laprop()),
    ("stable_adamw", lambda: scale_by_stable_adamw()),
]


WRAPPED = [(name, make, "mean") for name, make in DIRECTIONS] + [
    (DIRECTIONS[0][0], DIRECTIONS[0][1], "sum_plus_one"),
    (DIRECTIONS[3][0], DIRECTIONS[3][1], "none"),
]


@pytest.mark.parametrize("name, make, rescale", WRAPPED, ids=[f"{w[0]}-{w[2]}" for w in WRAPPED])
def test_cautious_wraps_any_direction(name, make, rescale):
    """cautious(D) outputs D's direction masked where it disagrees with g, rescaled per tensor
    (checked against NumPy), and its state is D's."""
    with x64():
        params = jax.tree.map(jnp.asarray, PARAMS)
        base, wrapped = make(), cautious(make(), rescale=rescale)
        s, s_wrapped = base.init(params), wrapped.init(params)
        for g in GRADS[:4]:
            u, s = base.update(g, s, params)
            u_wrapped, s_wrapped = wrapped.update(g, s_wrapped, params)
            for a, b, gl in zip(
                jax.tree.leaves(u_wrapped), jax.tree.leaves(u), jax.tree.leaves(g), strict=True
            ):
                b = np.asarray(b)
                agree = b * np.asarray(gl) > 0
                mask = agree.astype(np.float64) if rescale == "none" else _mask(agree, rescale)
                np.testing.assert_allclose(np.asarray(a), b * mask, rtol=1e-14, atol=0)
        assert max_relative_difference(s_wrapped.inner, s) == 0.0


def test_cautious_wraps_a_whole_optimizer_without_decay():
    """descent=True: adamx.adam(lr) or optax.adam(lr) wrapped whole equals the wrapped direction."""
    expected = ours(chain(cautious(scale_by_adam()), scale_by_learning_rate(cos64())))
    whole = ours(cautious(adam(cos64()), descent=True))
    assert max_relative_difference(whole, expected) <= 1e-14
    with x64(), relaxed():
        foreign = run_jax(cautious(optax.adam(cos64()), descent=True), apply_updates, jnp.float64)
    assert max_relative_difference(foreign, expected) <= 1e-12


def test_cautious_refuses_to_mask_a_whole_optimizers_decay():
    opt = cautious(adamw(1e-2, weight_decay=0.1), descent=True)
    params = jnp.ones(3)
    with pytest.raises(ValueError, match="Wrap its direction instead"):
        opt.update(jnp.ones(3), opt.init(params), params)


# ---- every optimizer of this file: zero gradients, dtypes, validation ------------------------------

ALL = [
    ("lion", lambda: lion(1e-2)),
    ("laprop", lambda: laprop(1e-2, weight_decay=1e-3)),
    ("laprop_schedule", lambda: laprop(lambda c: 1e-2 * 0.99 ** c.astype(jnp.float32))),
    ("laprop_eps0", lambda: laprop(1e-2, eps=0.0)),
    ("stable_adamw", lambda: stable_adamw(1e-2)),
    ("stable_adamw_eps0", lambda: stable_adamw(1e-2, eps=0.0)),
    ("cautious_adamw", lambda: cautious_adamw(1e-2)),
    ("cautious_adamw_1c", lambda: cautious_adamw(1e-2, eps_before_correction=True)),
    ("cautious_lion", lambda: cautious_lion(1e-2, rescale="sum_plus_one")),
    ("cautious_adam_whole", lambda: cautious(adam(1e-2), descent=True)),
]


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    for _ in range(5):
        grads = jax.tree.map(jnp.zeros_like, params)
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


SCANNED = [a for a in ALL if not a[0].endswith(("_eps0", "_1c"))]


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    helpers.scan_keeps_dtypes(make(), dtype)


def test_mu_dtype_is_used():
    params = {"w": jnp.ones((3, 2))}
    for opt in (lion(1e-2, mu_dtype=jnp.bfloat16), cautious_lion(1e-2, mu_dtype=jnp.bfloat16)):
        state = opt.init(params)
        assert np.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(state)}
        updates, state = opt.update(params, state, params)
        assert np.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(state)}


@pytest.mark.parametrize(
    "build",
    [
        lambda: lion(-1.0),
        lambda: lion(1e-2, b1=1.0),
        lambda: lion(1e-2, weight_decay=-1.0),
        lambda: laprop(1e-2, b2=1.5),
        lambda: laprop(1e-2, eps=-1.0),
        lambda: stable_adamw(1e-2, clip_threshold=0.0),
        lambda: stable_adamw(1e-2, clip_threshold=-1.0),
        lambda: stable_adamw(1e-2, b2=-0.1),
        lambda: cautious_adamw(1e-2, rescale="median"),
        lambda: cautious_lion(1e-2, b2=1.0),
        lambda: cautious_adamw(1e-2, b1=2.0, eps_before_correction=True),
        lambda: weighted_ema(0.9, -1.0),
        lambda: decay_after_update(-0.1),
    ],
)
def test_validation(build):
    with pytest.raises(ValueError):
        build()


def test_cautious_needs_a_transformation():
    with pytest.raises(TypeError, match="wraps a transformation"):
        cautious(lambda g: g)  # type: ignore[arg-type]


def test_cautious_is_a_plain_transformation_in_a_chain():
    """After clipping in an adamx chain the mask compares with the clipped gradient (the input)."""
    from adamx._clipping import clip

    tx = chain(clip(0.5), cautious(scale_by_adam()), add_decayed_weights(0.0))
    assert isinstance(tx, GradientTransformation)
    params = jnp.array([1.0, 2.0])
    updates, _ = tx.update(jnp.array([3.0, -0.1]), tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates), [1.0, -1.0], rtol=1e-6)
