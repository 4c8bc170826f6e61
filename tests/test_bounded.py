"""The bounded jnp step (adamx/kernels/_bounded.py): low-bit moments updated a chunk at a time.

Memory is a compiled property: ``memory_analysis()`` of the jitted step on
``jax.ShapeDtypeStruct``s, params and state donated, nothing run. Reference for the numbers: the
eager (op-by-op) jnp path, one step at a time from the same state.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.core._chain import unbounded
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


_MATRIX = {"w": jax.ShapeDtypeStruct((2048, N // 2048), jnp.float32)}  # rank-1 v's layer


def _like(leaves: int = 1, n: int = N) -> dict:
    return {f"w{i:02d}": jax.ShapeDtypeStruct((n // leaves,), jnp.float32) for i in range(leaves)}


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", QUANTISED)
def test_update_with_low_bit_moments_keeps_its_temporaries_to_a_chunk(name, bits):
    """``update`` + ``apply_updates`` of every optimizer of the registry with 8-bit moments (one
    leaf) and with `low_bit_moments(4)`'s (block-wise m, rank-1 v: a matrix): at most one float32
    buffer (the updates) beyond 0.25 bytes per param + 8 MiB (the jnp path had 8-24 bytes per
    param, 5.06 with rank-1 v)."""
    if bits == 8:
        tx, like = _optimizer(name, 8), _like()
    else:
        moments = adamx.low_bit_moments(4)
        tx, like = _optimizer(name, 4, (moments["mu_dtype"], moments["nu_dtype"])), _MATRIX
    state = jax.eval_shape(tx.init, like)
    temps = _temporaries(_update_apply(tx), like, state)
    assert temps <= 4 * N + N // 4 + 8 * MIB, (name, temps / N)


@pytest.mark.parametrize(
    ("storage", "leaves", "n"),
    [
        (adamx.low_bit_moments(8), 1, N),
        (adamx.low_bit_moments(8), 16, N),
        (adamx.low_bit_moments(8), 64, N),
        (adamx.low_bit_moments(8), 64, 4 * N),
        ({"mu_dtype": adamx.blockwise_4bit(True), "nu_dtype": adamx.blockwise_4bit(False)}, 1, N),
    ],
    ids=["8bit-1", "8bit-16", "8bit-64x1", "8bit-64x4", "4bit-1"],
)
def test_step_without_the_kernel_keeps_its_temporaries_to_a_chunk(monkeypatch, storage, leaves, n):
    """`adamx.step` where the kernel does not run (GPU, TPU): 0.25 bytes per param + 8 MiB, for
    one leaf, for 16, and for 64 leaves of one chunk and of four. Before: XLA:CPU ran leaves of
    one chunk in one piece, all at once (8.08 bytes per param), and began every leaf's loop up
    front (64 leaves of four chunks, 16.8M params: 1.54); now each leaf's loops run in a loop of
    their own, and a leaf of one chunk is cut in two."""
    monkeypatch.setattr(_derived, "_unavailable", lambda: "not here")
    tx = adamx.adamw(1e-3, weight_decay=0.1, **storage)
    like = _like(leaves, n)
    state = jax.eval_shape(tx.init, like)

    def fn(p, s, g):
        return adamx.step(tx, g, s, p)

    temps = _temporaries(fn, like, state)
    assert temps <= n // 4 + 8 * MIB, temps / n


def _decoded(tree):
    """Quantised moments' codes are compared as codes (``_codes_close``); the rest as is."""
    is_q = lambda x: isinstance(x, adamx.QuantizedBuffer)  # noqa: E731
    plain = jax.tree.map(lambda x: None if is_q(x) else x, tree, is_leaf=is_q)
    codes = [x.codes for x in jax.tree.leaves(tree, is_leaf=is_q) if is_q(x)]
    scales = [x.scales for x in jax.tree.leaves(tree, is_leaf=is_q) if is_q(x)]
    return plain, codes, scales


def _steps_against_eager(fn, params, state, grads, codes_apart: float) -> tuple:
    """``fn`` jitted (the bounded path) against ``fn`` eager (op by op, the reference), step by
    step from the same inputs: params, float state and scales within 2 ulp, and at most
    ``codes_apart`` of each moment's codes different. Returns the eager params and state."""
    assert "scan" in str(jax.make_jaxpr(fn)(params, state, grads[0]))  # the bounded path ran
    jitted = jax.jit(fn)
    for g in grads:
        p_b, s_b = jitted(params, state, g)
        with jax.disable_jit():
            params, state = fn(params, state, g)  # eager: op by op
        plain_b, codes_b, scales_b = _decoded((p_b, s_b))
        plain_r, codes_r, scales_r = _decoded((params, state))
        with np.errstate(invalid="ignore"):  # inf - inf where both are inf (then 0 apart)
            assert _ulps_apart((plain_b, scales_b), (plain_r, scales_r)) <= 2
        for x, y in zip(codes_b, codes_r, strict=True):
            assert np.mean(np.asarray(x) != np.asarray(y)) <= codes_apart
    return params, state


@pytest.mark.parametrize(
    ("name", "bits"), [("adamw", 8), ("adamw", 4), ("adopt", 8), ("schedule_free_adamw", 4)]
)
def test_the_bounded_update_is_the_jnp_update_within_2_ulp(monkeypatch, name, bits):
    """Under ``jit`` (where XLA may contract ``a * b + c``) each step is within 2 ulp of the eager
    jnp path's, params, float state and scales; a code may then round to its neighbour (at most
    one in a thousand, as the unbounded jitted path does). Chunks of 1024 elements: a leaf of
    several chunks and a short last one, a matrix with a partial last block, stacked layers with
    a partial block per layer, small float32 moments and an empty leaf. Schedule-free: its z (a
    transformation around a chain, `with_bounded_update`) in the same loop."""
    monkeypatch.setattr(_bounded, "CHUNK", 1024)
    tx = _optimizer(name, bits)
    params = _tree()
    grads = _gradients({k: v for k, v in params.items() if k != "e"}, 2)
    for g in grads:
        g["e"] = params["e"]
    state = tx.init(params)
    _steps_against_eager(_update_apply(tx), params, state, grads, codes_apart=1e-3)


# ---- rank-1 4-bit second moments (`rank1_4bit`, the default of `low_bit_moments(4)`) ----------


def _rank1_pair(kind: str) -> dict:
    """``mu_dtype``/``nu_dtype``: "4bit", `low_bit_moments(4)`'s (block-wise m, rank-1 v);
    "rank1", a float32 m (chunks of whole rows, no blocks to align to)."""
    nu = adamx.rank1_4bit(min_size=1000, batch_dims=_stacked)
    if kind == "rank1":
        return {"nu_dtype": nu}
    return {
        "mu_dtype": adamx.blockwise_4bit(True, min_size=1000, batch_dims=_stacked),
        "nu_dtype": nu,
    }


def _stacked(leaf) -> int:
    return 1 if jnp.ndim(leaf) == 3 else 0


def _rank1_tree() -> dict:
    """With chunks of 1024 elements: row chunks with a shorter last one ("rows"), odd columns
    (codes' pairs across rows, "odd"), stacked layers several a chunk with a rest ("layers") and
    cut into rows across layers ("stack"), a vector (block-wise linear code), a small matrix in
    one piece and under ``min_size``, and an empty leaf."""
    rng = np.random.default_rng(3)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    return {
        "rows": normal(100, 80),
        "odd": normal(70, 129),
        "layers": normal(5, 8, 40),
        "stack": normal(2, 60, 48),
        "vector": normal(5000),
        "one": normal(30, 34),
        "small": normal(20, 30),
        "e": jnp.zeros((0, 3), jnp.float32),
    }


def _rank1_gradients(params: dict, steps: int) -> list:
    """Random gradients; the second step holds a NaN in "rows" (its row's and its column's scales
    turn NaN) and an inf in "odd" and in "stack"'s second layer (v overflows to inf)."""
    rng = np.random.default_rng(4)
    out = []
    for t in range(steps):
        g = {k: jnp.asarray(rng.standard_normal(p.shape), p.dtype) for k, p in params.items()}
        if t == 1:
            g["rows"] = g["rows"].at[3, 5].set(np.nan)
            g["odd"] = g["odd"].at[7, 2].set(np.inf)
            g["stack"] = g["stack"].at[1, 40, 9].set(np.inf)
        out.append(g)
    return out


@pytest.mark.parametrize(
    ("name", "kind", "path"),
    [
        ("adamw", "4bit", "update"),
        ("adamw", "4bit", "step"),
        ("adamw", "rank1", "update"),
        ("adopt", "4bit", "update"),
    ],
)
def test_rank1_moments_are_bounded_within_2_ulp_of_the_jnp_path(monkeypatch, name, kind, path):
    """Rank-1 second moments through the bounded path (two passes over a leaf's chunks: the row
    and column maxima, then the step), ``update`` and `adamx.step`: each step within 2 ulp of the
    eager jnp path's, params, float state and scales, the codes equal (here every one: the
    maxima are exact, so only a value 2 ulp off a code's edge could round otherwise), over
    leaves of every layout and with a NaN and an inf in a gradient."""
    monkeypatch.setattr(_bounded, "CHUNK", 1024)
    tx = _optimizer(name, 4, tuple(_rank1_pair(kind).get(k) for k in ("mu_dtype", "nu_dtype")))
    params = _rank1_tree()
    state = tx.init(params)
    rank1 = [x for x in jax.tree.leaves(state, is_leaf=_is_q) if _is_q(x)]
    assert sum(isinstance(x.scales, tuple) for x in rank1) == 5  # rows, odd, layers, stack, one
    assert _bounded.why_not(tx, adamx.apply_updates, params, state, params) is None
    assert "rank-1" in _derived.unsupported(tx, adamx.apply_updates, params, state, params)

    def fn(p, s, g):
        if path == "step":
            return adamx.step(tx, g, s, p)
        updates, s = tx.update(g, s, p)
        return adamx.apply_updates(p, updates), s

    grads = _rank1_gradients(params, 3)
    params, state = _steps_against_eager(fn, params, state, grads, codes_apart=0.0)
    # The NaN stayed in the state: the scales of "rows"' row 3 and column 5.
    (v,) = [
        x
        for x in jax.tree.leaves(state, is_leaf=_is_q)
        if _is_q(x) and isinstance(x.scales, tuple) and x.shape == (100, 80)
    ]
    assert np.isnan(v.scales[0][0, 3]) and np.isnan(v.scales[1][0, 5])


def _is_q(x) -> bool:
    return isinstance(x, adamx.QuantizedBuffer)


_SHAPES = {
    "1": _MATRIX,
    "16": {
        f"w{i:02d}": jax.ShapeDtypeStruct((512, N // 16 // 512), jnp.float32) for i in range(16)
    },
    "stacked": {"w": jax.ShapeDtypeStruct((16, 512, N // 16 // 512), jnp.float32)},
    "rest": {"w": jax.ShapeDtypeStruct((4100, 1023), jnp.float32)},  # rows: a shorter last chunk
    "vector": {"w": jax.ShapeDtypeStruct((N + 1000,), jnp.float32)},  # block-wise, linear code
}


@pytest.mark.parametrize("shapes", list(_SHAPES))
def test_rank1_moments_keep_their_temporaries_to_a_chunk(monkeypatch, shapes):
    """`low_bit_moments(4)` (rank-1 v): ``update`` + ``apply_updates`` at most the updates' float32
    buffer beyond 0.25 bytes per param + 8 MiB, `adamx.step` (the kernel declines, the bounded
    path runs) and `adamx.step` without the kernel 0.25 bytes per param + 8 MiB: one leaf, 16,
    stacked layers, a leaf whose last chunk is shorter, a vector (before: 5.06 bytes per param
    on every path)."""
    like = _SHAPES[shapes]
    tx = adamx.adamw(1e-3, weight_decay=0.1, **adamx.low_bit_moments(4, batch_dims=_stacked))
    state = jax.eval_shape(tx.init, like)
    n = sum(math.prod(x.shape) for x in like.values())

    def step(p, s, g):
        return adamx.step(tx, g, s, p)

    assert _temporaries(_update_apply(tx), like, state) <= 4 * n + n // 4 + 8 * MIB
    assert _temporaries(step, like, state) <= n // 4 + 8 * MIB
    monkeypatch.setattr(_derived, "_unavailable", lambda: "not here")
    assert _temporaries(lambda p, s, g: step(p, s, g), like, state) <= n // 4 + 8 * MIB


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


def test_a_jitted_bounded_step_is_differentiated_as_the_op_by_op_one():
    """`jax.grad` through jitted steps that take the bounded path (a leaf of two chunks and a
    shorter third: loops of counts XLA does not know, which JAX cannot reverse) differentiates
    the same equations run whole (a `custom_jvp`): the meta-gradient with respect to the
    learning rate equals the op-by-op step's (reference: `unbounded`, the chain as written;
    float32, rtol 1e-5)."""
    params = {"w": jnp.linspace(-1.0, 1.0, 2 * _bounded.CHUNK + 1000)}

    def loss_after(lr):
        tx = adamx.adamw(lr, weight_decay=0.1, **adamx.low_bit_moments(8))

        @jax.jit
        def step(p, s):
            updates, s = tx.update(jax.tree.map(lambda x: 2 * x, p), s, p)
            return adamx.apply_updates(p, updates), s

        p, s = params, tx.init(params)
        for _ in range(2):
            p, s = step(p, s)
        return jnp.sum(p["w"] ** 2)

    lr = jnp.float32(0.01)
    assert "scan" in str(jax.make_jaxpr(loss_after)(lr))  # the bounded path ran
    bounded = jax.grad(loss_after)(lr)
    with unbounded():
        reference = jax.grad(loss_after)(lr)
    assert np.isfinite(reference) and reference != 0
    np.testing.assert_allclose(bounded, reference, rtol=1e-5)
