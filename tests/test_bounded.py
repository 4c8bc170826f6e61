"""The bounded jnp step (adamx/kernels/_bounded.py): low-bit moments updated a chunk at a time.

Memory is a compiled property: ``memory_analysis()`` of the jitted step on
``jax.ShapeDtypeStruct``s, params and state donated, nothing run. Reference for the numbers: the
eager (op-by-op) jnp path, one step at a time from the same state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.kernels import _bounded, _derived
from tests.test_derived import _gradients, _ulps_apart
from tests.test_derived_blockwise import QUANTISED, _optimizer, _tree

N = 1 << 22  # one leaf of 4M float32 params (16 MiB)
MIB = 1 << 20


def _temporaries(fn, like, state) -> int:
    compiled = jax.jit(fn, donate_argnums=(0, 1)).lower(like, state, like).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def _update_apply(tx):
    def fn(p, s, g):
        updates, s = tx.update(g, s, p)
        return adamx.apply_updates(p, updates), s

    return fn


def _like(leaves: int = 1) -> dict:
    return {f"w{i:02d}": jax.ShapeDtypeStruct((N // leaves,), jnp.float32) for i in range(leaves)}


@pytest.mark.parametrize("name", QUANTISED)
def test_update_with_8bit_moments_keeps_its_temporaries_to_a_chunk(name):
    """``update`` + ``apply_updates`` of every optimizer of the registry with 8-bit moments: at
    most one float32 buffer (the updates) beyond 0.25 bytes per param + 8 MiB (the jnp path had
    8-24 bytes per param)."""
    tx = _optimizer(name, 8)
    like = _like()
    state = jax.eval_shape(tx.init, like)
    temps = _temporaries(_update_apply(tx), like, state)
    assert temps <= 4 * N + N // 4 + 8 * MIB, (name, temps / N)


@pytest.mark.parametrize(
    ("storage", "leaves"),
    [
        (adamx.low_bit_moments(8), 1),
        (adamx.low_bit_moments(8), 16),
        ({"mu_dtype": adamx.blockwise_4bit(True), "nu_dtype": adamx.blockwise_4bit(False)}, 1),
    ],
    ids=["8bit-1", "8bit-16", "4bit-1"],
)
def test_step_without_the_kernel_keeps_its_temporaries_to_a_chunk(monkeypatch, storage, leaves):
    """`adamx.step` where the kernel does not run (GPU, TPU): 0.25 bytes per param + 8 MiB, for
    one leaf and for 16."""
    monkeypatch.setattr(_derived, "_unavailable", lambda: "not here")
    tx = adamx.adamw(1e-3, weight_decay=0.1, **storage)
    like = _like(leaves)
    state = jax.eval_shape(tx.init, like)

    def fn(p, s, g):
        return adamx.step(tx, g, s, p)

    temps = _temporaries(fn, like, state)
    assert temps <= N // 4 + 8 * MIB, temps / N


def _decoded(tree):
    """Quantised moments' codes are compared as codes (``_codes_close``); the rest as is."""
    is_q = lambda x: isinstance(x, adamx.QuantizedBuffer)  # noqa: E731
    plain = jax.tree.map(lambda x: None if is_q(x) else x, tree, is_leaf=is_q)
    codes = [x.codes for x in jax.tree.leaves(tree, is_leaf=is_q) if is_q(x)]
    scales = [x.scales for x in jax.tree.leaves(tree, is_leaf=is_q) if is_q(x)]
    return plain, codes, scales


@pytest.mark.parametrize(("name", "bits"), [("adamw", 8), ("adamw", 4), ("adopt", 8)])
def test_the_bounded_update_is_the_jnp_update_within_2_ulp(monkeypatch, name, bits):
    """Under ``jit`` (where XLA may contract ``a * b + c``) each step is within 2 ulp of the eager
    jnp path's, params, float state and scales; a code may then round to its neighbour (at most
    one in a thousand, as the unbounded jitted path does). Chunks of 1024 elements: a leaf of
    several chunks and a short last one, a matrix with a partial last block, stacked layers with
    a partial block per layer, small float32 moments and an empty leaf."""
    monkeypatch.setattr(_bounded, "CHUNK", 1024)
    tx = _optimizer(name, bits)
    params = _tree()
    grads = _gradients({k: v for k, v in params.items() if k != "e"}, 2)
    for g in grads:
        g["e"] = params["e"]
    state = tx.init(params)
    fn = _update_apply(tx)
    assert "scan" in str(jax.make_jaxpr(fn)(params, state, grads[0]))  # the bounded path ran
    jitted = jax.jit(fn)
    for g in grads:
        p_b, s_b = jitted(params, state, g)
        params, state = fn(params, state, g)  # eager: op by op
        plain_b, codes_b, scales_b = _decoded((p_b, s_b))
        plain_r, codes_r, scales_r = _decoded((params, state))
        with np.errstate(invalid="ignore"):  # inf - inf where both are inf (then 0 apart)
            assert _ulps_apart((plain_b, scales_b), (plain_r, scales_r)) <= 2
        for x, y in zip(codes_b, codes_r, strict=True):
            assert np.mean(np.asarray(x) != np.asarray(y)) <= 1e-3


def test_rank1_moments_say_why_they_are_not_bounded():
    """`rank1_4bit` takes its row and column maxima over the whole layer, which no chunk sees:
    such a step is not planned (the reason names the reduction) and runs as written."""
    tx = adamx.adamw(1e-3, **adamx.low_bit_moments(4))
    params = {"w": jnp.ones((128, 64), jnp.float32)}
    why = _bounded.why_not(tx, adamx.apply_updates, params, tx.init(params), params)
    assert why is not None and "reduces a leaf to an array" in why, why


def test_eager_update_stays_op_by_op():
    """The reference is untouched: an eager ``update`` runs no loop."""
    tx = adamx.adamw(1e-3, **adamx.low_bit_moments(8))
    params = {"w": jnp.ones((70_000,), jnp.float32)}
    state = tx.init(params)
    called = []
    original = _bounded.update

    def spy(*args):
        called.append(True)
        return original(*args)

    from adamx.core import _chain

    _chain.set_bounded_update(spy)
    try:
        tx.update(params, state, params)
        assert not called
        jax.jit(tx.update)(params, state, params)
        assert called
    finally:
        _chain.set_bounded_update(original)
