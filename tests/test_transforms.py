"""Transformations of the optimizer step: ``jax.grad`` through k steps (meta-gradients) and
``jax.vmap`` over hyperparameters.

Meta-learning differentiates the loss after a few optimizer steps with respect to a hyperparameter.
Every registry optimizer accepts a traced learning rate (``jax.grad(lambda lr: run(case.make(lr)))``),
and Adam a traced ``b1``/``b2``. The meta-gradients are checked against a float64 central finite
difference; ``vmap`` over a batch of hyperparameters is checked against separate runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from tests.helpers import OPTIMIZER_IDS, OPTIMIZERS, random_tree, x64

STEPS = 5  # k, the number of optimizer steps differentiated through

# A quadratic with four different curvatures, so the trajectory depends on every hyperparameter
# non-trivially (on a round parabola Adam's first step would not depend on b1 at all).
CURVATURE = np.array([0.5, 1.0, 2.0, 4.0])
TARGET = np.array([1.0, -2.0, 0.5, 3.0])
START = np.array([0.3, 0.7, -1.1, 2.0])


def quadratic(params):
    x = params["x"]
    return 0.5 * jnp.sum(jnp.asarray(CURVATURE, x.dtype) * (x - jnp.asarray(TARGET, x.dtype)) ** 2)


def loss_after(tx, params, loss=quadratic, steps: int = STEPS):
    """The loss after ``steps`` steps of ``tx`` from ``params`` (a ``lax.scan``, so one trace)."""

    def body(carry, _):
        p, s = carry
        return adamx.step(tx, jax.grad(loss)(p), s, p), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return loss(params)


# Tolerance of jax.grad against the finite difference, both in float64. The step h = 1e-5 x (the
# hyperparameter) leaves a truncation error ~ h^2 f''' and a rounding error ~ 1e-16 |f| / h, both
# below 1e-9 relative here; 1e-6 leaves room for a kink of AdaMax's/AMSGrad's max near x, and is
# still ~1e5 times smaller than any real error in a derivative (a dropped term is O(1) relative).
META_RTOL = 1e-6
# `adamw_warmup`'s schedule (tests/helpers.py) multiplies the learning rate by a float32 array, which
# strict promotion refuses for a float64 learning rate. There the learning rate is a float32 argument
# (parameters and loss stay float64), the difference step is 1e-3 x (float32 spacing near 0.1 is
# 7e-9, so x +- h is rounded first and the actual distance used), and the truncation error
# ~ (1e-3)^2 relative sets the tolerance.
META_RTOL_FLOAT32_ARGUMENT = 1e-4
FLOAT32_SCHEDULES = {"adamw_warmup"}
# 8- and 4-bit moments are codes: piecewise constant in the learning rate, so the loss after k steps
# is piecewise smooth, with a jump wherever an element changes code. jax.grad differentiates the
# smooth piece (through the block scales); the central difference over +-1e-5 x also sees the jumps
# inside it. Measured: they agree to 0.11% (8-bit) and 0.13% (4-bit); a real error in the
# derivative is O(1) relative. (bfloat16 stochastic rounding differentiates as the identity.)
META_RTOL_QUANTISED = 1e-2
QUANTISED = {"adamw_8bit", "adamw_4bit"}


def _check_meta_gradient(make, x0: float, start=START, dtype=np.float64, rtol=None):
    """d(loss after k steps)/dx for ``make(x)``: finite, and equal to the central difference.

    One compiled ``value_and_grad`` gives the gradient at ``x0`` and the values at ``x0 +- h``.
    """
    h, default = (1e-5, META_RTOL) if dtype == np.float64 else (1e-3, META_RTOL_FLOAT32_ARGUMENT)
    rtol = default if rtol is None else rtol
    with x64():
        params = {"x": jnp.asarray(start, jnp.float64)}
        f = jax.jit(jax.value_and_grad(lambda x: loss_after(make(x), params)))
        grad = float(f(jnp.asarray(x0, dtype))[1])
        up, down = dtype(x0 + h * x0), dtype(x0 - h * x0)
        fd = (float(f(jnp.asarray(up))[0]) - float(f(jnp.asarray(down))[0])) / (
            float(up) - float(down)
        )
    assert np.isfinite(grad)
    assert grad == pytest.approx(fd, rel=rtol, abs=1e-12), (grad, fd)
    return grad


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_meta_gradient_wrt_learning_rate_matches_finite_difference(case):
    """The learning rate is a traced argument of every registry optimizer; the gradient of the loss
    after 5 steps with respect to it is finite and equals a float64 central difference."""
    dtype = np.float32 if case.name in FLOAT32_SCHEDULES else np.float64
    rtol = META_RTOL_QUANTISED if case.name in QUANTISED else None
    grad = _check_meta_gradient(case.make, case.learning_rate, dtype=dtype, rtol=rtol)
    assert grad != 0.0  # the loss does depend on the learning rate


B1_CASES = {
    "adam": lambda b1: adamx.adam(0.1, b1=b1),
    "adam_eps_root": lambda b1: adamx.adam(0.1, b1=b1, eps_root=1e-8),
    "adam_nesterov": lambda b1: adamx.adam(0.1, b1=b1, nesterov=True),
    "amsgrad": lambda b1: adamx.amsgrad(0.1, b1=b1),
    "adamax": lambda b1: adamx.adamax(0.1, b1=b1, b2=0.99),
    "nadam": lambda b1: adamx.nadam(0.1, b1=b1),
}


@pytest.mark.parametrize("name", list(B1_CASES))
def test_meta_gradient_wrt_b1_matches_finite_difference(name):
    grad = _check_meta_gradient(B1_CASES[name], 0.9)
    assert grad != 0.0


def test_meta_gradient_wrt_b2_matches_finite_difference():
    _check_meta_gradient(lambda b2: adamx.adam(0.1, b2=b2, eps_root=1e-8), 0.99)


def test_meta_gradient_with_eps_root_and_a_dead_coordinate():
    """A coordinate whose gradient is always exactly zero: v = 0 there, and d sqrt(v)/dv = inf. The
    meta-learning recipe (eps_root > 0, as optax documents) keeps the meta-gradient finite and
    exact; the dead coordinate contributes nothing."""
    start = np.array([0.3, 0.7, -1.1, TARGET[3]])  # x[3] starts at its optimum: g[3] = 0 forever
    grad = _check_meta_gradient(lambda lr: adamx.adam(lr, eps_root=1e-8), 0.1, start)
    with x64():
        alive = {"x": jnp.asarray(start[:3], jnp.float64)}

        def f(lr):
            def loss(p):
                x = p["x"]
                return 0.5 * jnp.sum(
                    jnp.asarray(CURVATURE[:3]) * (x - jnp.asarray(TARGET[:3])) ** 2
                )

            return loss_after(adamx.adam(lr, eps_root=1e-8), alive, loss)

        without = float(jax.grad(f)(jnp.float64(0.1)))
    assert grad == pytest.approx(without, rel=1e-12)


@pytest.mark.parametrize("eps", [1e-8, 0.0], ids=["eps", "eps0"])
def test_meta_gradient_without_eps_root_and_a_dead_coordinate(eps):
    """A coordinate whose gradient is always zero: sqrt(v) at v = 0 has an infinite derivative, so a
    plain sqrt gives 0 * inf = NaN from the second step on; adamx's root has derivative 0 there."""
    start = np.array([0.3, 0.7, -1.1, TARGET[3]])  # x[3] at its optimum: g[3] = 0 forever
    with x64():
        params = {"x": jnp.asarray(start, jnp.float64)}
        # The forward pass is fine: the dead coordinate's update is exactly zero.
        tx = adamx.adam(0.1, eps=eps)
        updates, _ = tx.update(jax.grad(quadratic)(params), tx.init(params), params)
        assert float(updates["x"][3]) == 0.0
        grad = jax.grad(lambda lr: loss_after(adamx.adam(lr, eps=eps), params))(jnp.float64(0.1))
    assert np.isfinite(float(grad)), float(grad)


# ---- vmap over hyperparameters -------------------------------------------------------------------

LEARNING_RATES = np.array([1e-3, 1e-2, 1e-1, 3e-1], np.float32)


def final_params(tx, params, steps: int = STEPS):
    def body(carry, _):
        p, s = carry
        return adamx.step(tx, jax.grad(_tree_loss)(p), s, p), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params


def _tree_loss(params):
    return sum(jnp.sum((x - 1) ** 2) for x in jax.tree.leaves(params))


# float32 tolerance of a vmapped run against separate runs. The same arithmetic is done either way,
# but XLA vectorises and fuses the batched program differently (and may contract to FMA), so a few
# float32 ulps of O(1) parameters after 5 steps (measured: up to 1 ulp, 1.2e-7, for adam and
# amsgrad; bitwise for most others). 1e-6 is 8 ulps of 1; a mixed-up batch element would be off by
# ~lr.
VMAP_RTOL = VMAP_ATOL = 1e-6


def _assert_batch_matches(batched, separate):
    for i, one in enumerate(separate):
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(
                np.asarray(a[i]), np.asarray(b), rtol=VMAP_RTOL, atol=VMAP_ATOL
            )


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_vmap_over_learning_rates_equals_separate_runs(case):
    params = jax.tree.map(jnp.asarray, random_tree(5))
    run = lambda lr: final_params(case.make(lr), params)  # noqa: E731
    batched = jax.jit(jax.vmap(run))(jnp.asarray(LEARNING_RATES))
    single = jax.jit(run)  # one compile for the separate runs: the learning rate is an argument
    _assert_batch_matches(batched, [single(jnp.float32(lr)) for lr in LEARNING_RATES])


def test_vmap_over_adam_betas_equals_separate_runs():
    """Separate runs here are as a user writes them, with Python floats (constants in the program)."""
    b1s = np.array([0.0, 0.5, 0.9, 0.95], np.float32)
    b2s = np.array([0.9, 0.99, 0.999, 0.9999], np.float32)
    params = jax.tree.map(jnp.asarray, random_tree(6))
    run = lambda b1, b2: final_params(adamx.adam(0.05, b1=b1, b2=b2), params)  # noqa: E731
    batched = jax.jit(jax.vmap(run))(jnp.asarray(b1s), jnp.asarray(b2s))
    separate = [
        jax.jit(lambda b1=b1, b2=b2: run(float(b1), float(b2)))()
        for b1, b2 in zip(b1s, b2s, strict=True)
    ]
    _assert_batch_matches(batched, separate)
    # The batch is a grid, not one value repeated: its members differ.
    x = np.asarray(batched["scale"])
    assert len(np.unique(x)) == len(b1s)
