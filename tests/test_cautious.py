"""The cautious wrapper (C-AdamW, C-Lion, any direction) against the authors' code, step for step.

On the trajectory of tests/parity/lion_laprop_stable_cautious.py; the official updates
(kyleliang919/C-Optim) are transcribed below as float64 NumPy loops from
docs/optimizers/lion_laprop_stable_cautious.md (Cautious optimizers). float64 parity must be
<= 1e-10.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamx import (
    GradientTransformation,
    adam,
    adamw,
    add_decayed_weights,
    apply_updates,
    cautious,
    cautious_adamw,
    cautious_lion,
    chain,
    scale_by_adam,
    scale_by_amsgrad,
    scale_by_laprop,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_nadam,
    scale_by_stable_adamw,
)
from tests.helpers import (
    cases_of,
    check_dtypes_are_kept_in_a_scan,
    check_validation,
    max_relative_difference,
    relaxed,
    x64,
)
from tests.parity.lion_laprop_stable_cautious import ALL as SHARED_ALL
from tests.parity.lion_laprop_stable_cautious import (
    GRADS,
    PARAMS,
    WD,
    check_zero_gradients_give_finite_params,
    cos64,
    numpy_run,
    ours,
    run_jax,
)
from tests.parity.lion_laprop_stable_cautious import SCANNED as SHARED_SCANNED

ALL = cases_of(SHARED_ALL, "cautious")
SCANNED = cases_of(SHARED_SCANNED, "cautious")


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


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
def test_zero_gradients_give_finite_params(name, make):
    check_zero_gradients_give_finite_params(name, make)


@pytest.mark.parametrize("name, make", SCANNED, ids=[a[0] for a in SCANNED])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


def test_cautious_needs_a_transformation():
    with pytest.raises(TypeError, match="wraps a transformation"):
        cautious(lambda g: g)  # type: ignore[arg-type]


def test_cautious_is_a_plain_transformation_in_a_chain():
    """After clipping in an adamx chain the mask compares with the clipped gradient (the input)."""
    from adamx import clip

    tx = chain(clip(0.5), cautious(scale_by_adam()), add_decayed_weights(0.0))
    assert isinstance(tx, GradientTransformation)
    params = jnp.array([1.0, 2.0])
    updates, _ = tx.update(jnp.array([3.0, -0.1]), tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates), [1.0, -1.0], rtol=1e-6)


def test_mu_dtype_is_used():
    params = {"w": jnp.ones((3, 2))}
    opt = cautious_lion(1e-2, mu_dtype=jnp.bfloat16)
    state = opt.init(params)
    assert np.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(state)}
    updates, state = opt.update(params, state, params)
    assert np.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(state)}


@pytest.mark.parametrize(
    "build",
    [
        lambda: cautious_adamw(1e-2, rescale="median"),
        lambda: cautious_lion(1e-2, b2=1.0),
        lambda: cautious_adamw(1e-2, b1=2.0, eps_before_correction=True),
    ],
)
def test_validation(build):
    check_validation(build)
