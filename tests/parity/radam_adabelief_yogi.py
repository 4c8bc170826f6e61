"""RAdam, AdaBelief and Yogi: the shared trajectory, parity cases and NumPy helpers.

As in ``tests/parity/amsgrad_adamax_nadam.py``: 100 steps on a multi-leaf pytree with a cosine
learning-rate schedule (and weight decay where the algorithm has it), gradients drawn in
advance with a 10x spike every 10 steps. The measure is ``max |x - ref| / (|ref| + 1e-6)``;
float64 parity must be <= 1e-10. The tests are in tests/test_radam.py, test_adabelief.py and
test_yogi.py; the updates they transcribe are in docs/optimizers/radam_adabelief_yogi.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from adamx import adabelief, add_decayed_weights, apply_updates, chain, radam, yogi
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
T = torch.optim


def spiky_gradients(seed=2):
    return helpers.spiky_gradients(random_tree(0, np.float64), seed)


GRADS = spiky_gradients()
PARAMS = random_tree(0, np.float64)
run_jax = functools.partial(helpers.run_jax, params=PARAMS, grads=GRADS)
run_torch = functools.partial(helpers.run_torch, params=PARAMS, grads=GRADS)


def ours64(make):
    """``make(lr_schedule)`` run in float64 (call inside ``x64()``)."""
    return run_jax(make(jax_cosine(LR, jnp.float64)), apply_updates, jnp.float64)


def optax64(make):
    with relaxed():
        return run_jax(make(jax_cosine(LR, jnp.float64)), optax.apply_updates, jnp.float64)


# (name, adamx builder, optax builder or None, torch builder or None); builders take the lr schedule.
CASES = [
    ("radam", lambda lr: radam(lr), None, lambda ps: T.RAdam(ps, lr=LR, foreach=False)),
    (
        "radam_l2",
        lambda lr: chain(add_decayed_weights(WD), radam(lr)),
        None,
        lambda ps: T.RAdam(ps, lr=LR, weight_decay=WD, foreach=False),
    ),
    (
        "radam_decoupled",
        lambda lr: radam(lr, weight_decay=WD),
        None,
        lambda ps: T.RAdam(ps, lr=LR, weight_decay=WD, decoupled_weight_decay=True, foreach=False),
    ),
    (
        "radam_optax",
        lambda lr: radam(lr, inclusive=True, eps_before_correction=False),
        lambda lr: optax.radam(lr),
        None,
    ),
    (
        "adabelief_optax",
        lambda lr: adabelief(lr, rectify=False),
        lambda lr: optax.adabelief(lr),
        None,
    ),
    (
        "adabelief_optax_eps",
        lambda lr: adabelief(lr, eps=1e-8, eps_root=1e-8, rectify=False),
        lambda lr: optax.adabelief(lr, eps=1e-8, eps_root=1e-8),
        None,
    ),
    ("yogi", lambda lr: yogi(lr), lambda lr: optax.yogi(lr), None),
    (
        "yogi_b2_eps",
        lambda lr: yogi(lr, b2=0.99, eps=1e-6),
        lambda lr: optax.yogi(lr, b2=0.99, eps=1e-6),
        None,
    ),
]


F32_CASES = [case for case in CASES if case[0] in ("radam_optax", "adabelief_optax", "yogi")]


def leaves_of(tree):
    return [np.array(x, np.float64) for x in jax.tree.leaves(tree)]


def as_tree(leaves):
    return jax.tree.unflatten(jax.tree.structure(PARAMS), leaves)


def rho(t, b2):
    rho_inf = 2 / (1 - b2) - 1
    return rho_inf, rho_inf - 2 * t * b2**t / (1 - b2**t)


def skip_first(steps, value):
    """A weight-decay schedule that is 0 for the first ``steps`` updates, then ``value``."""
    return lambda count: jnp.where(count < steps, 0.0, value).astype(jnp.float64)


ALL = [
    ("radam", lambda: radam(1e-2)),
    ("radam_optax", lambda: radam(1e-2, inclusive=True, eps_before_correction=False)),
    ("radam_none_wd", lambda: radam(1e-2, fallback="none", weight_decay=1e-2)),
    ("adabelief", lambda: adabelief(1e-2)),
    ("adabelief_plain", lambda: adabelief(1e-2, rectify=False)),
    ("yogi", lambda: yogi(1e-2)),
]
SCANNED = [a for a in ALL if a[0] in ("radam_none_wd", "adabelief", "adabelief_plain", "yogi")]


ZERO_SAFE = ALL + [
    ("radam_eps0", lambda: radam(1e-2, eps=0.0)),
    ("radam_optax_eps0", lambda: radam(1e-2, eps=0.0, eps_before_correction=False)),
    ("adabelief_eps0", lambda: adabelief(1e-2, eps=0.0, eps_root=0.0)),
    ("adabelief_plain_eps0", lambda: adabelief(1e-2, eps=0.0, eps_root=0.0, rectify=False)),
    ("yogi_eps0", lambda: yogi(1e-2, eps=0.0)),
]


def check_float64_parity(name, make_adamx, make_optax, make_torch):
    """Against optax 0.2.8 and/or torch.optim.RAdam 2.13, float64, tolerance 1e-10."""
    with x64():
        ours = ours64(make_adamx)
        if make_optax is not None:
            ref = optax64(make_optax)
            print(f"{name} float64 vs optax: {max_relative_difference(ours, ref):.2e}")
            assert max_relative_difference(ours, ref) <= 1e-10
    if make_torch is not None:
        ref = run_torch(make_torch, torch.float64)
        print(f"{name} float64 vs torch: {max_relative_difference(ours, ref):.2e}")
        assert max_relative_difference(ours, ref) <= 1e-10


def check_float32_against_optax(name, make_adamx, make_optax, make_torch):
    """Both float32 runs are roundings of the float64 trajectory; adamx's is no further from it."""
    with x64():
        truth = ours64(make_adamx)
    ours = run_jax(make_adamx(jax_cosine(LR, jnp.float32)), apply_updates, jnp.float32)
    with relaxed():
        ref = run_jax(make_optax(jax_cosine(LR, jnp.float32)), optax.apply_updates, jnp.float32)
    ours_error = max_relative_difference(ours, truth)
    optax_error = max_relative_difference(ref, truth)
    print(f"{name} float32 distance to float64: adamx {ours_error:.2e}, optax {optax_error:.2e}")
    assert ours_error <= 2 * optax_error + 1e-5


def check_dtypes_are_kept_in_a_scan(name, make, dtype):
    # 8 steps: past RAdam's threshold, so the rectified branch is scanned too
    helpers.scan_keeps_dtypes(make(), dtype, steps=8)


def check_zero_gradients_give_finite_params(name, make):
    opt = make()
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
        return apply_updates(params, updates), state

    for _ in range(8):  # past the rectification threshold
        params, state = step(params, state)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
