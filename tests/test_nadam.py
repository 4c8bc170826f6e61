"""NAdam and NAdamW (optax's, torch's and AlgoPerf's forms) against torch.optim 2.13 and optax 0.2.8.

On the trajectory of tests/parity/amsgrad_adamax_nadam.py; the three look-aheads and their
first steps are in docs/optimizers/nadam.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from adamx import adam, apply_updates, nadam, nadamw, scale_by_nadam
from tests.helpers import (
    cases_of,
    check_dtypes_are_kept_in_a_scan,
    cosine,
    jax_cosine,
    max_relative_difference,
    x64,
)
from tests.parity.amsgrad_adamax_nadam import ALL as SHARED_ALL
from tests.parity.amsgrad_adamax_nadam import CASES as SHARED_CASES
from tests.parity.amsgrad_adamax_nadam import (
    GRADS,
    LR,
    PARAMS,
    WD,
    T,
    check_float32_against_optax,
    check_float64_parity,
    check_validation,
    run_jax,
    run_torch,
)

CASES = cases_of(SHARED_CASES, "nadam", "nadamw")
ALL = cases_of(SHARED_ALL, "nadam", "nadamw")

IDS = [case[0] for case in CASES]


F32_CASES = [case for case in CASES if case[2] is not None and "l2" not in case[0]]


@pytest.mark.parametrize("name, make_adamx, make_optax, make_torch", CASES, ids=IDS)
def test_float64_parity(name, make_adamx, make_optax, make_torch):
    check_float64_parity(name, make_adamx, make_optax, make_torch)


@pytest.mark.parametrize(
    "name, make_adamx, make_optax, make_torch", F32_CASES, ids=[c[0] for c in F32_CASES]
)
def test_float32_against_optax(name, make_adamx, make_optax, make_torch):
    check_float32_against_optax(name, make_adamx, make_optax, make_torch)


def test_optax_and_torch_nadam_differ():
    with x64():
        constant = run_jax(nadam(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
    scheduled = run_torch(lambda ps: T.NAdam(ps, lr=LR, foreach=False), torch.float64)
    gap = max_relative_difference(constant, scheduled)
    print(f"optax-form vs torch-default NAdam: {gap:.2e}")
    assert gap > 1e-6


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


@pytest.mark.parametrize("name, make", ALL, ids=[a[0] for a in ALL])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64])
def test_dtypes_are_kept_in_a_scan(name, make, dtype):
    check_dtypes_are_kept_in_a_scan(name, make, dtype)


def test_nadam_default_is_adam_nesterov():
    with x64():
        a = run_jax(nadam(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
        b = run_jax(adam(jax_cosine(LR, jnp.float64), nesterov=True), apply_updates, jnp.float64)
    assert max_relative_difference(a, b) == 0.0


@pytest.mark.parametrize(
    "build, error",
    [
        (lambda: nadam(1e-2, momentum_decay=-1.0), ValueError),
        (lambda: nadamw(1e-2, momentum_decay=4e-3, algoperf=True), ValueError),
        (lambda: scale_by_nadam(b1=1.5, momentum_decay=4e-3), ValueError),
    ],
)
def test_validation(build, error):
    check_validation(build, error)
