"""AMSGrad, AdaMax(W) and NAdam(W): the shared trajectory and parity cases.

As in ``tests/test_adam.py``: 100 steps on a multi-leaf pytree with a cosine learning-rate
schedule and weight decay, gradients drawn in advance, here with a 10x spike every 10 steps (so
AMSGrad's running maximum matters). The measure is ``max |x - ref| / (|ref| + 1e-6)``; float64
parity must be <= 1e-10. The tests are in tests/test_amsgrad.py, test_adamax.py and
test_nadam.py.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from adamx import (
    adamax,
    adamaxw,
    add_decayed_weights,
    amsgrad,
    apply_updates,
    chain,
    nadam,
    nadamw,
    scale_by_amsgrad,
    scale_by_learning_rate,
)
from tests import helpers
from tests.helpers import (
    PARITY_STEPS,
    jax_cosine,
    max_relative_difference,
    random_tree,
    relaxed,
    x64,
)

STEPS = PARITY_STEPS
LR = 1e-2
WD = 0.1


def spiky_gradients(seed=2):
    return helpers.spiky_gradients(random_tree(0, np.float64), seed)


GRADS = spiky_gradients()
PARAMS = random_tree(0, np.float64)
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)
run_torch = functools.partial(helpers.run_torch, params=PARAMS, grads=GRADS)


def l2(make):
    """torch's coupled ``weight_decay``: decay added to the gradient before the optimizer."""
    return lambda lr: chain(add_decayed_weights(WD), make(lr))


def decoupled(scale_by):
    """torch's decoupled decay (AdamW-style) around a direction ``scale_by``."""
    return lambda lr: chain(scale_by, add_decayed_weights(WD), scale_by_learning_rate(lr))


def optax_l2(make):
    return lambda lr: optax.chain(optax.add_decayed_weights(WD), make(lr))


T = torch.optim
# (name, adamx builder, optax builder or None, torch builder or None); builders take the lr schedule.
CASES = [
    ("amsgrad", lambda lr: amsgrad(lr), lambda lr: optax.amsgrad(lr), None),
    (
        "amsgrad_l2",
        l2(lambda lr: amsgrad(lr)),
        optax_l2(lambda lr: optax.amsgrad(lr)),
        None,
    ),
    (
        "amsgrad_raw_l2",
        l2(lambda lr: amsgrad(lr, max_of="raw")),
        None,
        lambda ps: T.Adam(ps, lr=LR, amsgrad=True, weight_decay=WD, foreach=False),
    ),
    (
        "amsgrad_raw_decoupled",
        decoupled(scale_by_amsgrad(max_of="raw")),
        None,
        lambda ps: T.AdamW(ps, lr=LR, amsgrad=True, weight_decay=WD, foreach=False),
    ),
    (
        "adamax",
        lambda lr: adamax(lr),
        lambda lr: optax.adamax(lr),
        lambda ps: T.Adamax(ps, lr=LR, foreach=False),
    ),
    (
        "adamax_l2",
        l2(lambda lr: adamax(lr)),
        optax_l2(lambda lr: optax.adamax(lr)),
        lambda ps: T.Adamax(ps, lr=LR, weight_decay=WD, foreach=False),
    ),
    (
        "adamaxw",
        lambda lr: adamaxw(lr, weight_decay=WD),
        lambda lr: optax.adamaxw(lr, weight_decay=WD),
        None,
    ),
    (
        "nadam",
        lambda lr: nadam(lr),
        lambda lr: optax.nadam(lr),
        lambda ps: T.NAdam(ps, lr=LR, momentum_decay=1e9, foreach=False),
    ),
    (
        "nadamw",
        lambda lr: nadamw(lr, weight_decay=WD),
        lambda lr: optax.nadamw(lr, weight_decay=WD),
        lambda ps: T.NAdam(
            ps,
            lr=LR,
            momentum_decay=1e9,
            weight_decay=WD,
            decoupled_weight_decay=True,
            foreach=False,
        ),
    ),
    (
        "nadam_torch",
        lambda lr: nadam(lr, momentum_decay=4e-3),
        None,
        lambda ps: T.NAdam(ps, lr=LR, foreach=False),
    ),
    (
        "nadam_torch_l2",
        l2(lambda lr: nadam(lr, momentum_decay=4e-3)),
        None,
        lambda ps: T.NAdam(ps, lr=LR, weight_decay=WD, foreach=False),
    ),
    (
        "nadamw_torch",
        lambda lr: nadamw(lr, weight_decay=WD, momentum_decay=4e-3),
        None,
        lambda ps: T.NAdam(ps, lr=LR, weight_decay=WD, decoupled_weight_decay=True, foreach=False),
    ),
]


ALL = [
    ("amsgrad", lambda: amsgrad(1e-2)),
    ("amsgrad_raw", lambda: amsgrad(1e-2, max_of="raw")),
    ("adamax", lambda: adamax(1e-2)),
    ("adamaxw", lambda: adamaxw(1e-2)),
    ("nadam", lambda: nadam(1e-2)),
    ("nadam_torch", lambda: nadam(1e-2, momentum_decay=4e-3)),
    ("nadamw_torch", lambda: nadamw(1e-2, momentum_decay=4e-3)),
    ("nadamw_algoperf", lambda: nadamw(1e-2, algoperf=True)),
]


def check_float64_parity(name, make_adamx, make_optax, make_torch):
    with x64():
        ours = run_jax(make_adamx(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
        if make_optax is not None:
            with relaxed():
                ref = run_jax(
                    make_optax(jax_cosine(LR, jnp.float64)), optax.apply_updates, jnp.float64
                )
            print(f"{name} float64 vs optax: {max_relative_difference(ours, ref):.2e}")
            assert max_relative_difference(ours, ref) <= 1e-10
    if make_torch is not None:
        ref = run_torch(make_torch, torch.float64)
        print(f"{name} float64 vs torch: {max_relative_difference(ours, ref):.2e}")
        assert max_relative_difference(ours, ref) <= 1e-10


def check_float32_against_optax(name, make_adamx, make_optax, make_torch):
    with x64():
        truth = run_jax(make_adamx(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)
    ours = run_jax(make_adamx(jax_cosine(LR, jnp.float32)), apply_updates, jnp.float32)
    with relaxed():
        ref = run_jax(make_optax(jax_cosine(LR, jnp.float32)), optax.apply_updates, jnp.float32)
    ours_error = max_relative_difference(ours, truth)
    optax_error = max_relative_difference(ref, truth)
    difference = max_relative_difference(ours, ref)
    print(
        f"{name} float32: adamx to optax {difference:.2e}; distance to float64: adamx "
        f"{ours_error:.2e}, optax {optax_error:.2e}"
    )
    # Both are float32 roundings of the same float64 trajectory; optax's 1 - b**t cancels in
    # float32 (about 1e-3 on this measure for b2 = 0.999, see tests/test_adam.py), adamx's does not.
    # So adamx must be no further from float64 than optax (with 2x slack for rounding noise), and
    # the two float32 runs differ by at most their two distances to float64.
    assert ours_error <= 2 * optax_error + 1e-5
    assert difference <= ours_error + optax_error + 1e-6


def check_validation(build, error):
    with pytest.raises(error):
        build()
