"""MARS-AdamW against a NumPy transcription of the authors' code, step for step.

There is no optax or torch.optim MARS, so the reference is an independent NumPy transcription
of ``AGI-Arena/MARS MARS/optimizers/mars.py`` (``mars_type="mars-adamw"``, ``is_approx=True``),
written below from the update in docs/optimizers/adam_mini_mars.md (MARS).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adamx import adamw, clip_by_block_norm, mars, mars_correction, mars_labels
from tests.helpers import max_relative_difference, x64
from tests.parity.adam_mini_mars import (
    MARS_LR,
    MARS_LR_1D,
    MARS_WD_1D,
    TOL,
    WD,
    check_dtypes_are_kept,
    check_zero_gradients_give_finite_params,
    cosine,
    gradients,
    run_jax,
    schedule,
    stacked,
)


def mars_tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((6, 4)),
        "w2": rng.standard_normal((4, 9)),
        "b": rng.standard_normal(4),
        "scale": np.asarray(rng.standard_normal()),
        "stack": rng.standard_normal((3, 5, 4)),  # nn.scan: 3 layers of 5 x 4
    }


def numpy_mars(params, grads, *, lr, b1, b2, eps, wd, gamma, optimize_1d, lr_1d, betas_1d, wd_1d):
    """``MARS.step`` / ``update_fn`` of mars.py (mars-adamw, is_approx=True, amsgrad=False).

    ``params`` is a dict of torch parameters (already split into layers where the test wants
    stacked leaves to be separate matrices). The schedule multiplies ``lr``, and the 1-D
    learning rate is ``lr * (lr_1d / lr)``, as torch's LambdaLR would.
    """
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    exp_avg = {k: np.zeros_like(v) for k, v in p.items()}
    exp_avg_sq = {k: np.zeros_like(v) for k, v in p.items()}
    last_grad = {k: np.zeros_like(v) for k, v in p.items()}
    lr_1d_factor = lr_1d / lr
    for t, g_all in enumerate(grads):
        lr_t = lr * cosine(t)
        step = t + 1
        for k in p:
            grad = np.asarray(g_all[k], np.float64)
            if optimize_1d or grad.ndim == 2:
                c = (grad - last_grad[k]) * (gamma * (b1 / (1.0 - b1))) + grad
                c_norm = np.sqrt(np.sum(c * c))
                if c_norm > 1.0:
                    c = c / c_norm
                exp_avg[k] = exp_avg[k] * b1 + c * (1.0 - b1)
                exp_avg_sq[k] = exp_avg_sq[k] * b2 + c * c * (1.0 - b2)
                bc1, bc2 = 1.0 - b1**step, 1.0 - b2**step
                denom = (np.sqrt(exp_avg_sq[k]) * (1 / math.sqrt(bc2)) + eps) * bc1
                p[k] = p[k] + -lr_t * (p[k] * wd + exp_avg[k] / denom)
            else:
                beta1_1d, beta2_1d = betas_1d
                exp_avg[k] = exp_avg[k] * beta1_1d + grad * (1.0 - beta1_1d)
                exp_avg_sq[k] = exp_avg_sq[k] * beta2_1d + grad * grad * (1.0 - beta2_1d)
                bc1, bc2 = 1.0 - beta1_1d**step, 1.0 - beta2_1d**step
                denom = (np.sqrt(exp_avg_sq[k]) * (1 / math.sqrt(bc2)) + eps) * bc1
                p[k] = p[k] + -lr_t * lr_1d_factor * (p[k] * wd_1d + exp_avg[k] / denom)
            last_grad[k] = grad
    return p


MARS_PARAMS = mars_tree(0)
# Gradient norms on both sides of the clipping threshold 1.
MARS_GRADS = gradients(MARS_PARAMS, seed=4, scales=(0.02, 1.0, 0.05, 0.01))


def split_layers(tree):
    out = {k: v for k, v in tree.items() if k != "stack"}
    out.update({f"stack.{i}": np.asarray(tree["stack"])[i] for i in range(3)})
    return out


def join_layers(flat):
    out = {k: v for k, v in flat.items() if not k.startswith("stack.")}
    out["stack"] = np.stack([flat[f"stack.{i}"] for i in range(3)])
    return out


def test_mars_matches_the_authors_code():
    """Reference: NumPy transcription of mars.py defaults (1-D and 3-D leaves to AdamW); 1e-10."""
    tx = mars(
        schedule(MARS_LR),
        weight_decay=WD,
        learning_rate_1d=schedule(MARS_LR_1D),
        weight_decay_1d=MARS_WD_1D,
    )
    with x64():
        ours = run_jax(tx, MARS_PARAMS, MARS_GRADS)
    ref = numpy_mars(
        MARS_PARAMS,
        MARS_GRADS,
        lr=MARS_LR,
        b1=0.95,
        b2=0.99,
        eps=1e-8,
        wd=WD,
        gamma=0.025,
        optimize_1d=False,
        lr_1d=MARS_LR_1D,
        betas_1d=(0.9, 0.95),
        wd_1d=MARS_WD_1D,
    )
    assert max_relative_difference(ours, ref) <= TOL


def test_mars_batched_matrices_match_separate_layers():
    """Stacked leaf with ``batch_dims=1``: each layer is a matrix (clipped on its own norm), as if
    it were a separate torch parameter; ``optimize_1d=True`` sends every leaf through MARS.
    Reference: the same NumPy transcription on the split layers; tolerance 1e-10."""
    tx = mars(schedule(MARS_LR), weight_decay=WD, optimize_1d=True, batch_dims=stacked)
    with x64():
        ours = run_jax(tx, MARS_PARAMS, MARS_GRADS)
    kwargs = dict(lr=MARS_LR, b1=0.95, b2=0.99, eps=1e-8, wd=WD, gamma=0.025)
    extra = dict(lr_1d=MARS_LR, betas_1d=(0.9, 0.95), wd_1d=WD)
    ref = join_layers(
        numpy_mars(
            split_layers(MARS_PARAMS),
            [split_layers(g) for g in MARS_GRADS],
            optimize_1d=True,
            **kwargs,
            **extra,
        )
    )
    assert max_relative_difference(ours, ref) <= TOL
    # Per-layer clipping is not the whole-leaf clipping of the unbatched leaf.
    with x64():
        whole = run_jax(
            mars(schedule(MARS_LR), weight_decay=WD, optimize_1d=True), MARS_PARAMS, MARS_GRADS
        )
    assert max_relative_difference(whole["stack"], ref["stack"]) > 1e-6


def test_mars_labels_route_as_the_authors():
    labels = mars_labels(MARS_PARAMS)
    assert labels == {"w1": "mars", "w2": "mars", "b": "adamw", "scale": "adamw", "stack": "adamw"}
    assert mars_labels(MARS_PARAMS, batch_dims=stacked)["stack"] == "mars"
    assert set(jax.tree.leaves(mars_labels(MARS_PARAMS, optimize_1d=True))) == {"mars"}


def test_mars_first_correction_and_clipping():
    """c_1 = (1 + gamma b1 / (1 - b1)) g_1 (g_0 = 0: 1.475 g_1 by default); then norm <= 1."""
    g = {"w": jnp.full((2, 2), 0.1)}
    tx = mars_correction(0.025, 0.95)
    c, state = tx.update(g, tx.init(g))
    np.testing.assert_allclose(c["w"], 1.475 * 0.1, rtol=1e-6)
    c2, _ = tx.update(g, state)
    np.testing.assert_allclose(c2["w"], 0.1, rtol=1e-6)  # equal gradients: no correction
    clip = clip_by_block_norm(1.0)
    big, _ = clip.update({"w": jnp.full((2, 2), 3.0)}, clip.init(g))
    np.testing.assert_allclose(jnp.linalg.norm(big["w"]), 1.0, rtol=1e-6)
    small, _ = clip.update(g, clip.init(g))
    np.testing.assert_array_equal(small["w"], g["w"])


def test_mars_without_correction_or_clipping_is_adamw():
    """gamma = 0 and gradient norms below 1: MARS is AdamW with its betas (tolerance 1e-12)."""
    with x64():
        tree = {"w": MARS_PARAMS["w1"]}
        grads = [{"w": 0.01 * g["w1"]} for g in MARS_GRADS]
        ours = run_jax(mars(schedule(MARS_LR), weight_decay=WD, gamma=0.0), tree, grads)
        ref = run_jax(adamw(schedule(MARS_LR), 0.95, 0.99, weight_decay=WD), tree, grads)
        assert max_relative_difference(ours, ref) <= 1e-12
        corrected = run_jax(mars(schedule(MARS_LR), weight_decay=WD), tree, grads)
    assert max_relative_difference(corrected, ref) > 1e-3


@pytest.mark.parametrize("name", ["mars", "mars_1d"])
def test_zero_gradients_give_finite_params(name):
    check_zero_gradients_give_finite_params(name)


@pytest.mark.parametrize("name", ["mars"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.complex64])
def test_dtypes_are_kept(name, dtype):
    check_dtypes_are_kept(name, dtype)
