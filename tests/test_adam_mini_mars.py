"""Adam-mini and MARS-AdamW against NumPy transcriptions of the authors' code, step for step.

Neither has an optax or torch.optim version, so each reference is an independent NumPy
transcription of the official update written below from algorithms.md sections 23 and 27:
``zyushun/Adam-mini adam_mini/adam_mini.py`` (v1.1.1) and ``AGI-Arena/MARS MARS/optimizers/mars.py``
(``mars_type="mars-adamw"``, ``is_approx=True``). 50 float64 steps (issue 11) on a tree of
matrices, vectors and a stacked ``(layers, rows, cols)`` leaf, with a cosine learning-rate schedule
and weight decay; the measure is ``max |x - ref| / (|ref| + 1e-6)`` and must be <= 1e-10.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adamx._adam import adamw
from adamx._adam_mini import (
    Blocks,
    adam_mini,
    adam_mini_blocks,
    adam_mini_decay_mask,
    adam_mini_partition,
)
from adamx._mars import clip_by_block_norm, mars, mars_correction, mars_labels
from adamx._update import apply_updates
from tests import helpers
from tests.helpers import jax_cosine, max_relative_difference, x64

STEPS = 50
LR = 1e-2
WD = 0.1
TOL = 1e-10


def cosine(t: int) -> float:
    """The schedule multiplier at the 0-based step ``t`` (what adamx's schedule sees)."""
    return helpers.cosine(t, STEPS)


def schedule(base: float):
    return jax_cosine(base, jnp.float64, STEPS)


def run_jax(tx, params, grads):
    return helpers.run_jax(tx, apply_updates, jnp.float64, params, grads)


def gradients(tree, seed: int, scales=(1.0,)):
    """N(0, 1) gradients like ``tree``, step ``i`` multiplied by ``scales[i % len(scales)]``."""
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda x, s=scale: s * rng.standard_normal(np.shape(x)), tree)
        for scale in (scales[i % len(scales)] for i in range(STEPS))
    ]


# ---- Adam-mini ------------------------------------------------------------------------------------

DIM, N_HEADS, N_KV_HEADS = 8, 2, 1
HEAD_DIM = DIM // N_HEADS


def transformer_tree(seed: int = 0, dtype=np.float64) -> dict:
    """A small transformer-like tree in flax's layout (Dense kernels are ``(in, out)``)."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return {
        "embed": {"embedding": normal(11, DIM)},
        "attn": {
            "q_proj": {"kernel": normal(DIM, DIM), "bias": normal(DIM)},
            "k_proj": {"kernel": normal(DIM, N_KV_HEADS * HEAD_DIM)},
            "v_proj": {"kernel": normal(DIM, N_KV_HEADS * HEAD_DIM)},
            "o_proj": {"kernel": normal(DIM, DIM)},
        },
        "layers": {"mlp": {"kernel": normal(3, DIM, 16)}},  # nn.scan: 3 stacked layers
        "final_norm": {"scale": normal(DIM)},
        "lm_head": {"kernel": normal(DIM, 11)},
        "other": {"w": normal(5, 3)},
    }


def stacked(leaf):
    return 1 if np.ndim(leaf) == 3 else 0


def numpy_adam_mini(params, grads, *, lr, b1, b2, eps, wd, dim, n_heads):
    """Adam-mini v1.1.1 (``Adam_mini.step``), transcribed: torch ``(out, in)`` weights.

    Each leaf becomes one or more named torch parameters: Dense kernels are transposed, the
    stacked leaf is split into its layers, embeddings keep their ``(vocab, dim)`` layout.
    """
    head_numel = dim * dim // n_heads
    embd = {"embed", "embd", "wte"}
    output = {"lm_head", "output", "final_layer"}
    wqk = {"k_proj", "q_proj", "wq", "wk", "query", "key"}
    wv = {"v_proj", "wv", "value"}
    attn_proj = {"o_proj", "wo", "attn.proj"}
    mlp = {"feed_forward", "linear", "mlp"}

    def to_torch(name, x):
        if x.ndim == 3:
            return [(f"{name}.{i}", x[i].T.copy()) for i in range(x.shape[0])]
        if x.ndim == 2 and "embed" not in name:
            return [(name, x.T.copy())]
        return [(name, np.array(x, np.float64))]

    def from_torch(name, like, tensors):
        if like.ndim == 3:
            return np.stack([tensors[f"{name}.{i}"].T for i in range(like.shape[0])])
        if like.ndim == 2 and "embed" not in name:
            return tensors[name].T
        return tensors[name]

    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [".".join(k.key for k in path) for path, _ in flat]
    tensors = dict(
        pair for name, (_, x) in zip(names, flat, strict=True) for pair in to_torch(name, x)
    )
    state = {name: None for name in tensors}
    for t, g_tree in enumerate(grads):
        lr_t = lr * cosine(t)
        g_flat = jax.tree.leaves(g_tree)
        g_named = dict(
            pair
            for name, g in zip(names, g_flat, strict=True)
            for pair in to_torch(name, np.asarray(g))
        )
        for name, p in tensors.items():
            g = g_named[name]
            decay = 0.0 if ("norm" in name or "ln" in name or "bias" in name) else wd
            if "bias" in name:
                kind = "adam"
            elif any(n in name for n in wqk):
                kind = "head"
            elif any(n in name for n in embd | output | wv | mlp | attn_proj):
                kind = "neuron"
            else:
                kind = "other"
            if state[name] is None:
                m = np.zeros_like(p)
                if kind == "adam":
                    v = np.zeros_like(p)
                elif kind == "head":
                    v = np.zeros((p.size // head_numel, 1))
                elif kind == "neuron":
                    v = np.zeros((p.shape[0], 1))
                else:
                    v = np.zeros(())
                state[name] = [m, v, 0]
            m, v, step = state[name]
            if kind == "adam":
                tmp = g * g
            elif kind == "head":
                tmp = np.mean((g * g).reshape(-1, head_numel), axis=1, keepdims=True)
            elif kind == "neuron":
                tmp = np.mean(g * g, axis=1, keepdims=True)
            else:
                tmp = np.sum(g * g) / p.size
            v = beta_update(v, tmp, b2)
            step += 1
            p = p * (1 - lr_t * decay)
            m = m + (1 - b1) * (g - m)  # lerp_(grad, 1 - beta1)
            bc1, bc2 = 1 - b1**step, 1 - b2**step
            h = np.sqrt(v) / math.sqrt(bc2) + eps
            if kind == "adam":
                p = p - (lr_t / bc1) * m / h
            elif kind == "head":
                update = (m.reshape(-1, head_numel) * ((1 / bc1) / h)).reshape(p.shape)
                p = p - lr_t * update
            else:
                p = p - lr_t * (m * ((1 / bc1) / h))
            tensors[name] = p
            state[name] = [m, v, step]
    leaves = [from_torch(name, x, tensors) for name, (_, x) in zip(names, flat, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


def beta_update(v, x, b):
    return v * b + x * (1 - b)


ADAM_MINI_PARAMS = transformer_tree(0)
ADAM_MINI_GRADS = gradients(ADAM_MINI_PARAMS, seed=1, scales=(1.0, 1.0, 10.0))


def make_adam_mini(**kwargs):
    return adam_mini(
        schedule(LR),
        weight_decay=WD,
        n_heads=N_HEADS,
        n_kv_heads=N_KV_HEADS,
        batch_dims=stacked,
        **kwargs,
    )


def test_adam_mini_partition_follows_the_authors_names():
    kinds = jax.tree.map(lambda b: b.kind, adam_mini_blocks(ADAM_MINI_PARAMS, make_partition()))
    assert kinds == {
        "embed": {"embedding": "token"},
        "attn": {
            "q_proj": {"kernel": "head", "bias": "element"},
            "k_proj": {"kernel": "head"},
            "v_proj": {"kernel": "neuron"},
            "o_proj": {"kernel": "neuron"},
        },
        "layers": {"mlp": {"kernel": "neuron"}},
        "final_norm": {"scale": "tensor"},
        "lm_head": {"kernel": "token"},
        "other": {"w": "tensor"},
    }
    mask = adam_mini_decay_mask(ADAM_MINI_PARAMS)
    assert not mask["attn"]["q_proj"]["bias"] and not mask["final_norm"]["scale"]
    assert mask["attn"]["q_proj"]["kernel"] and mask["embed"]["embedding"]


def make_partition():
    return adam_mini_partition(n_heads=N_HEADS, n_kv_heads=N_KV_HEADS, batch_dims=stacked)


def test_adam_mini_state_has_one_value_per_block():
    state = make_adam_mini().init(jax.tree.map(jnp.asarray, ADAM_MINI_PARAMS))
    v = state[0][2].estimator.estimator[0].ema
    shapes = jax.tree.map(np.shape, v)
    assert shapes["attn"]["q_proj"]["kernel"] == (1, N_HEADS, 1)
    assert shapes["attn"]["k_proj"]["kernel"] == (1, N_KV_HEADS, 1)
    assert shapes["attn"]["q_proj"]["bias"] == (DIM,)
    assert shapes["embed"]["embedding"] == (11, 1)
    assert shapes["lm_head"]["kernel"] == (1, 11)
    assert shapes["layers"]["mlp"]["kernel"] == (3, 1, 16)
    assert shapes["final_norm"]["scale"] == (1,)


def test_adam_mini_matches_the_authors_code():
    """Reference: NumPy transcription of adam_mini.py v1.1.1; tolerance 1e-10 (float64)."""
    with x64():
        ours = run_jax(make_adam_mini(), ADAM_MINI_PARAMS, ADAM_MINI_GRADS)
        ref = numpy_adam_mini(
            ADAM_MINI_PARAMS,
            ADAM_MINI_GRADS,
            lr=LR,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            wd=WD,
            dim=DIM,
            n_heads=N_HEADS,
        )
    assert max_relative_difference(ours, ref) <= TOL
    # The blocks matter: AdamW on the same run is far away.
    with x64():
        plain = run_jax(adamw(schedule(LR), weight_decay=WD), ADAM_MINI_PARAMS, ADAM_MINI_GRADS)
    assert max_relative_difference(plain, ref) > 1e-3


def test_adam_mini_with_singleton_blocks_is_adamw():
    """Paper fact (algorithms.md section 23): one-element blocks give AdamW; tolerance 1e-12."""
    with x64():
        tree = helpers.random_tree(0, np.float64)
        grads = gradients(tree, seed=3)
        ours = run_jax(
            adam_mini(
                schedule(LR), weight_decay=WD, mask=None, partition=lambda p, x: Blocks("e", ())
            ),
            tree,
            grads,
        )
        ref = run_jax(adamw(schedule(LR), weight_decay=WD), tree, grads)
    assert max_relative_difference(ours, ref) <= 1e-12


def test_adam_mini_state_is_about_half_of_adamw():
    """Bytes per parameter of ``init``'s arrays on a small float32 transformer (d=256, 4 heads,
    vocabulary 1000, MLP 1024, 2 stacked layers): AdamW 8, Adam-mini about 4."""
    d, vocab, hidden, layers = 256, 1000, 1024, 2
    shapes = {
        "embed": {"embedding": (vocab, d)},
        "layers": {
            "attn": {name: {"kernel": (layers, d, d)} for name in ("q_proj", "k_proj", "v_proj")}
            | {"o_proj": {"kernel": (layers, d, d)}},
            "mlp": {"up": {"kernel": (layers, d, hidden)}, "down": {"kernel": (layers, hidden, d)}},
            "norm": {"scale": (layers, d)},
        },
        "final_norm": {"scale": (d,)},
        "lm_head": {"kernel": (d, vocab), "bias": (vocab,)},
    }
    params = jax.tree.map(
        lambda s: jnp.zeros(s, jnp.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    n = sum(x.size for x in jax.tree.leaves(params))

    def bytes_per_param(tx):
        return sum(x.nbytes for x in jax.tree.leaves(tx.init(params))) / n

    assert bytes_per_param(adamw(1e-3)) == pytest.approx(8.0, abs=1e-4)
    mini = adam_mini(1e-3, n_heads=4, batch_dims=lambda x: 1 if x.ndim == 3 else 0)
    assert 4.0 < bytes_per_param(mini) < 4.02  # m: 4 bytes; v: one value per block


def test_adam_mini_errors_are_sentences():
    tree = {"attn": {"q_proj": {"kernel": jnp.zeros((8, 8))}}}
    with pytest.raises(ValueError, match="n_heads"):
        adam_mini(1e-3).init(tree)
    with pytest.raises(ValueError, match="n_heads"):
        adam_mini(1e-3, n_heads=3).init(tree)
    with pytest.raises(TypeError, match="Blocks"):
        adam_mini(1e-3, partition=lambda p, x: "tensor").init(tree)
    with pytest.raises(ValueError, match="do not fit"):
        adam_mini(1e-3, partition=lambda p, x: Blocks("t", (0,), (3, 3))).init(tree)
    with pytest.raises(ValueError, match="either"):
        adam_mini(1e-3, n_heads=2, partition=make_partition())
    with pytest.raises(ValueError, match="b2"):
        adam_mini(1e-3, b2=1.0)


# ---- MARS -----------------------------------------------------------------------------------------


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
MARS_LR, MARS_LR_1D, MARS_WD_1D = 3e-3, 2e-3, 0.05


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


# ---- shared properties ----------------------------------------------------------------------------

BUILDERS = {
    "adam_mini": lambda: adam_mini(
        1e-2, weight_decay=0.1, n_heads=N_HEADS, n_kv_heads=1, batch_dims=stacked
    ),
    "mars": lambda: mars(1e-2, weight_decay=0.1),
    "mars_1d": lambda: mars(1e-2, weight_decay=0.1, optimize_1d=True, batch_dims=stacked),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_zero_gradients_give_finite_params(name):
    params = jax.tree.map(lambda x: jnp.zeros(np.shape(x), jnp.float32), transformer_tree(0))
    tx = BUILDERS[name]()
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(5):
        updates, state = step(jax.tree.map(jnp.zeros_like, params), state, params)
        params = apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", ["adam_mini", "mars"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.complex64])
def test_dtypes_are_kept(name, dtype):
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), transformer_tree(0, np.float32))
    tx = BUILDERS[name]()
    state = tx.init(params)
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * jnp.asarray(0.5, dtype), params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    new_params = apply_updates(params, updates)
    assert jax.tree.map(lambda x: x.dtype, new_params) == jax.tree.map(lambda x: x.dtype, params)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new_params))
