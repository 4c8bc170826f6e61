"""Adam-mini against a NumPy transcription of the authors' code, step for step.

There is no optax or torch.optim Adam-mini, so the reference is an independent NumPy
transcription of ``zyushun/Adam-mini adam_mini/adam_mini.py`` (v1.1.1), written below from the
update and partition in docs/optimizers/adam_mini_mars.md (Adam-mini), on a tree of matrices,
vectors and a stacked ``(layers, rows, cols)`` leaf (tests/parity/adam_mini_mars.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adamx import (
    Blocks,
    adam_mini,
    adam_mini_blocks,
    adam_mini_decay_mask,
    adam_mini_partition,
    adamw,
)
from tests import helpers
from tests.helpers import max_relative_difference, x64
from tests.parity.adam_mini_mars import (
    DIM,
    LR,
    N_HEADS,
    N_KV_HEADS,
    TOL,
    WD,
    beta_update,
    check_dtypes_are_kept,
    check_zero_gradients_give_finite_params,
    cosine,
    gradients,
    run_jax,
    schedule,
    stacked,
    transformer_tree,
)


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
    """One-element blocks give AdamW (docs/optimizers/adam_mini_mars.md, Adam-mini); tolerance
    1e-12."""
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


@pytest.mark.parametrize("name", ["adam_mini"])
def test_zero_gradients_give_finite_params(name):
    check_zero_gradients_give_finite_params(name)


@pytest.mark.parametrize("name", ["adam_mini"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.complex64])
def test_dtypes_are_kept(name, dtype):
    check_dtypes_are_kept(name, dtype)
