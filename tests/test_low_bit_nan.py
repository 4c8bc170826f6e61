"""One NaN rule for 8- and 4-bit moments, the same on the fused kernel and on the jnp path.

The rule (``adamx/storage/_quantize.py``, `adam`'s docstring, docs/low_bit.md): a NaN anywhere in a block
makes the block's scale NaN (for rank-1 second moments, its row's and its column's scales), and a
NaN scale reads back as NaN for every element it scales, code 0 included. So after a step with one
NaN gradient element only that element's parameter is NaN (the step uses the float32 moments), the
state keeps the NaN visible over the element's block (its row and column), and from the next step
on the parameters of that block (row and column) are NaN as well. An infinite element keeps its own
coordinate (the top code under an infinite scale) and reads the rest of its block as 0, not NaN.

Paths compared, tolerance 0 outside the NaNs (the same NaN mask, bit-identical finite values,
identical codes): for the 8-bit pair, the derived kernel as built here (AVX-512 where the CPU has
it), the kernel's programs built without their AVX-512 path (``-DADAMX_NO_AVX512``: the portable
loops of adamx/kernels/_native/blockwise.h) and the eager jnp path; for the block-wise 4-bit pair,
the kernel and the eager jnp path. `low_bit_moments(4)` (rank-1 second moment) has no kernel:
its eager jnp path against the jitted one (where XLA fuses the maxima), the same NaN masks (under
jit XLA contracts multiply-adds, so the finite bits may differ).
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adamx
from adamx.kernels import _native

KERNEL = _native.status()[0]
EXAMPLES = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ---- the cases ------------------------------------------------------------------------------------


@st.composite
def cases(draw, kind: str):
    """(shape, batch_dims, block, (layer, index in the layer), NaN's sign, seed)."""
    blocks = [8, 32, 256] if kind == "8bit" else [8, 32, 128]
    block = draw(st.sampled_from(blocks))
    layout = draw(st.sampled_from(["1d", "2d", "3d", "stacked1d", "stacked2d"]))
    tail = draw(st.sampled_from([0, 1, block // 2, block - 1]))  # past the whole blocks
    if layout in ("1d", "stacked1d"):
        core: tuple[int, ...] = (block * draw(st.integers(0, 40)) + tail or block,)
    else:  # (XLA:CPU's float maximum dropped NaNs in leaves of a few dozen blocks, not in tiny ones)
        cols = draw(st.sampled_from([block, 2 * block, block + 1, block // 2 + 1, 3]))
        core = (draw(st.integers(1, 40)), cols)
        if layout == "3d":
            core = (draw(st.integers(1, 3)), *core)
    stacked = layout.startswith("stacked")
    layers = draw(st.integers(2, 3)) if stacked else 1
    shape = (layers, *core) if stacked else core
    size = math.prod(core)
    n_blocks = -(-size // block)
    where = draw(st.sampled_from(["first", "middle", "last"]))
    b = draw(st.integers(0, n_blocks - 1))
    offset = {"first": 0, "middle": block // 2, "last": block - 1}[where]
    index = min(b * block + offset, size - 1)
    layer = draw(st.integers(0, layers - 1))
    return shape, int(stacked), block, (layer, index), draw(st.booleans()), draw(st.integers(0, 99))


def _storages(kind: str, block: int, batch_dims: int):
    if kind == "8bit":
        mu = adamx.blockwise_8bit(True, block_size=block, min_size=0, batch_dims=batch_dims)
        nu = adamx.blockwise_8bit(False, block_size=block, min_size=0, batch_dims=batch_dims)
    elif kind == "4bit":  # low_bit_moments(4): block-wise m, rank-1 v
        mu = adamx.blockwise_4bit(True, block_size=block, min_size=0, batch_dims=batch_dims)
        nu = adamx.rank1_4bit(min_size=0, block_size=block, batch_dims=batch_dims)
    else:  # "4bit_blockwise": block-wise m and v
        mu = adamx.blockwise_4bit(True, block_size=block, min_size=0, batch_dims=batch_dims)
        nu = adamx.blockwise_4bit(False, block_size=block, min_size=0, batch_dims=batch_dims)
    return mu, nu


# ---- the predicted sets -----------------------------------------------------------------------------


def _block_mask(shape, nb, block, layer, index):
    """The elements of the block (of its layer) that holds ``index``."""
    layers, size = math.prod(shape[:nb]), math.prod(shape[nb:])
    mask = np.zeros((layers, size), bool)
    first = index // block * block
    mask[layer, first : first + block] = True
    return mask.reshape(shape)


def _cross_mask(shape, nb, layer, index):
    """The row and the column of ``index`` in its layer viewed as (rows, last axis)."""
    core = shape[nb:]
    rows, cols = math.prod(core[:-1]), core[-1]
    mask = np.zeros((math.prod(shape[:nb]), rows, cols), bool)
    r, c = divmod(index, cols)
    mask[layer, r, :] = mask[layer, :, c] = True
    return mask.reshape(shape)


def _layer_mask(shape, nb, layer):
    mask = np.zeros((math.prod(shape[:nb]), math.prod(shape[nb:])), bool)
    mask[layer] = True
    return mask.reshape(shape)


def _rank1_matrix(nu, shape, nb) -> bool:
    return isinstance(nu, adamx.Rank1) and len(shape) - nb >= 2


# ---- running the steps ------------------------------------------------------------------------------


@contextlib.contextmanager
def _portable():
    """The derived kernel's programs built without their AVX-512 path (each its own library in
    the cache) and registered under their keys for the time of the block; then the others again."""
    flags = _native.FLAGS
    _native.FLAGS = (*flags, "-DADAMX_NO_AVX512")
    _native._PROGRAMS.clear()
    try:
        yield
    finally:
        _native.FLAGS = flags
        _native._PROGRAMS.clear()


def _quantized(state):
    """The state's (m, v) `QuantizedBuffer`s (one parameter: m first, as in the state's tree)."""
    buffers = [
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, adamx.QuantizedBuffer))
        if isinstance(x, adamx.QuantizedBuffer)
    ]
    assert len(buffers) == 2
    return buffers


def _run(opt, params, grads, path, portable=False):
    """The params and state after each of ``grads``, on ``path``."""
    jitted = jax.jit(lambda g, s, p: adamx.step(opt, g, s, p, fused=False))
    p, s = params, opt.init(params)
    out = []
    for g in grads:
        if path == "kernel":
            with _portable() if portable else contextlib.nullcontext():
                p, s = adamx.step(opt, g, s, p, fused=True)
        elif path == "jit":
            p, s = jitted(g, s, p)
        else:
            p, s = adamx.step(opt, g, s, p, fused=False)
        out.append((p, s))
    return out


def _assert_same(a, b, what, exact=True):
    """The same NaN mask of every float array (scales, params), and ``exact``: every other bit
    equal, codes included. Not ``exact`` (jit against eager): the NaN masks only, since XLA
    contracts multiply-adds under jit, and an ulp can move a moment to the next code."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, what
        if x.dtype.kind == "f":
            nan = np.isnan(x)
            np.testing.assert_array_equal(nan, np.isnan(y), err_msg=f"{what}: NaN masks differ")
            if exact:
                assert x[~nan].tobytes() == y[~nan].tobytes(), f"{what}: finite values differ"
        elif exact:
            np.testing.assert_array_equal(x, y, err_msg=what)


def _problem(shape, batch_dims, block, at, negative, seed, bad=np.nan):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.standard_normal(shape), jnp.float32)}
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    layer, index = at
    nb = batch_dims
    flat = grads[1].reshape(math.prod(shape[:nb]), -1)
    flat[layer, index] = -bad if negative else bad
    return params, [{"w": jnp.asarray(g)} for g in grads]


def _check_nan_rule(kind, case, paths):
    shape, batch_dims, block, (layer, index), negative, seed = case
    mu, nu = _storages(kind, block, batch_dims)
    opt = adamx.adamw(1e-2, weight_decay=0.1, mu_dtype=mu, nu_dtype=nu)
    params, grads = _problem(shape, batch_dims, block, (layer, index), negative, seed)
    runs = {name: _run(opt, params, grads, *how) for name, how in paths.items()}
    reference, *others = runs
    for name in others:  # (c) every path: the same NaNs, the same bits elsewhere
        exact = paths[name][0] != "jit"
        _assert_same(runs[name], runs[reference], f"{name} vs {reference}", exact)

    nb = batch_dims
    element = np.zeros(shape, bool)
    element.reshape(math.prod(shape[:nb]), -1)[layer, index] = True
    m_set = _block_mask(shape, nb, block, layer, index)
    rank1 = _rank1_matrix(nu, shape, nb)
    v_set = _cross_mask(shape, nb, layer, index) if rank1 else m_set
    (_, s0), (p1, s1), (p2, s2) = runs[reference]
    for m, v in (_quantized(s0),):
        assert not np.isnan(np.asarray(mu.read(m, jnp.float32))).any()
        assert not np.isnan(np.asarray(nu.read(v, jnp.float32))).any()

    # (a) the NaN is visible in the state: the block's scale (the row's and column's) is NaN,
    # and the moment reads NaN exactly there.
    m, v = _quantized(s1)
    m_scales = np.isnan(np.asarray(m.scales))
    assert m_scales.sum() == 1 and m_scales[layer, index // block]
    np.testing.assert_array_equal(np.isnan(np.asarray(mu.read(m, jnp.float32))), m_set)
    if rank1:
        rows, cols = (np.isnan(np.asarray(x)) for x in v.scales)
        r, c = divmod(index, shape[-1])
        assert rows.sum() == 1 and rows[layer, r] and cols.sum() == 1 and cols[layer, c]
    else:
        v_scales = np.isnan(np.asarray(v.scales))
        assert v_scales.sum() == 1 and v_scales[layer, index // block]
    np.testing.assert_array_equal(np.isnan(np.asarray(nu.read(v, jnp.float32))), v_set)
    # (b) the NaN parameters: the element itself after its step, then the predicted set.
    np.testing.assert_array_equal(np.isnan(np.asarray(p1["w"])), element)
    np.testing.assert_array_equal(np.isnan(np.asarray(p2["w"])), m_set | v_set)
    # ... and the NaN stays in the state: the block stays NaN; a rank-1 v's NaN row and column
    # reach every row's and column's maximum of the layer, never another layer.
    m, v = _quantized(s2)
    np.testing.assert_array_equal(np.isnan(np.asarray(mu.read(m, jnp.float32))), m_set)
    spread = _layer_mask(shape, nb, layer) if rank1 else v_set
    np.testing.assert_array_equal(np.isnan(np.asarray(nu.read(v, jnp.float32))), spread)


# ---- the tests --------------------------------------------------------------------------------------


@pytest.mark.skipif(not KERNEL, reason="native kernel unavailable")
@EXAMPLES
@given(case=cases("8bit"))
def test_8bit_nan_rule_is_the_same_on_the_kernel_its_portable_loops_and_the_jnp_path(case):
    paths = {
        "jnp": ("eager",),
        "kernel": ("kernel",),
        "portable kernel": ("kernel", True),
    }
    _check_nan_rule("8bit", case, paths)


@pytest.mark.skipif(not KERNEL, reason="native kernel unavailable")
@EXAMPLES
@given(case=cases("4bit_blockwise"))
def test_4bit_blockwise_nan_rule_is_the_same_on_the_kernel_and_the_jnp_path(case):
    _check_nan_rule("4bit_blockwise", case, {"jnp": ("eager",), "kernel": ("kernel",)})


@EXAMPLES
@given(kind=st.sampled_from(["4bit", "4bit_blockwise"]), data=st.data())
def test_4bit_nan_rule_blockwise_and_rank1_eager_and_jitted(kind, data):
    """The jnp path, eagerly and jitted (where XLA fuses the maxima)."""
    case = data.draw(cases(kind))
    _check_nan_rule(kind, case, {"eager": ("eager",), "jit": ("jit",)})


# The issue's leaves, with `low_bit_moments`' blocks: where the old float maximum lost the NaN.
FIXED = [
    ("8bit", ((64, 96), 0, 256, (0, 100), False, 0)),
    ("8bit", ((3, 40, 70), 1, 256, (1, 2300), True, 1)),
    ("4bit", ((64, 96), 0, 128, (0, 3000), False, 2)),
    ("4bit", ((3, 48, 256), 1, 128, (2, 5000), False, 3)),
]


@pytest.mark.parametrize("kind,case", FIXED, ids=[f"{k}-{c[0]}" for k, c in FIXED])
def test_realistic_leaves_follow_the_rule_eager_and_jitted(kind, case):
    """The jitted jnp path too (XLA fuses the block maximum there): the whole block goes NaN."""
    _check_nan_rule(kind, case, {"eager": ("eager",), "jit": ("jit",)})


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_an_infinite_gradient_stays_in_its_coordinate_on_every_path(kind, bad):
    """An Inf keeps its element at +-inf (the top code under an infinite scale) and reads the rest
    of its block as 0, not NaN: only that parameter goes NaN (inf / inf), as with float32."""
    shape, block, at = (3, 24, 40), 32, (2, 517)
    mu, nu = _storages(kind, block, 1)
    opt = adamx.adamw(1e-2, weight_decay=0.1, mu_dtype=mu, nu_dtype=nu)
    params, grads = _problem(shape, 1, block, at, False, 7, bad=bad)
    paths = {"eager": ("eager",), "jit": ("jit",)}
    if kind == "8bit" and KERNEL:
        paths.update(kernel=("kernel",), portable=("kernel", True))
    runs = {name: _run(opt, params, grads, *how) for name, how in paths.items()}
    for name in list(runs)[1:]:
        _assert_same(runs[name], runs["eager"], f"{name} vs eager", exact=name != "jit")
    element = np.zeros(shape, bool)
    element.reshape(3, -1)[at] = True
    for p, s in runs["eager"][1:]:
        np.testing.assert_array_equal(np.isnan(np.asarray(p["w"])), element)
        m, v = _quantized(s)
        m_read, v_read = np.asarray(mu.read(m, jnp.float32)), np.asarray(nu.read(v, jnp.float32))
        assert not np.isnan(m_read).any() and not np.isnan(v_read).any()
        assert m_read[element][0] == bad and v_read[element][0] == np.inf
        assert np.isinf(m_read).sum() == 1 and np.isinf(v_read).sum() == 1
