"""The derived kernel over block-quantised moments (adamx/kernels/_derived.py, `Blockwise`).

A moment stored by `blockwise_8bit` or `blockwise_4bit` is decoded and encoded block by block
inside the leaf's one pass: its read and write are named calls (adamx/storage/_quantize.py,
`CODECS`) that the planner keeps whole and lowers with the code of adamx/kernels/_native/blockwise.h.
Reference: the eager jnp path, every bit of params and state (a NaN equals any NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.kernels import _derived, _native
from tests.helpers import ELEMENTWISE, REDUCING
from tests.test_derived import (  # noqa: F401 (_kernel: the autouse fixture, here too)
    CASES,
    _gradients,
    _kernel,
    _same,
    _ulps_apart,
    _with_storage,
)


def _stacked(leaf) -> int:
    return 1 if jnp.ndim(leaf) == 3 else 0


def _tree() -> dict:
    """Blocks of every kind: a matrix whose size is not a multiple of the block, a stacked leaf
    (three layers, ``batch_dims`` 1, each with a short last block), a leaf of more than one task,
    a vector and a scalar under ``min_size`` (float32 moments), and an empty leaf."""
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.standard_normal((70, 100)), jnp.float32),
        "stack": jnp.asarray(rng.standard_normal((3, 33, 40)), jnp.float32),
        "long": jnp.asarray(rng.standard_normal(40_000), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(6), jnp.float32),
        "s": jnp.asarray(0.5, jnp.float32),
        "e": jnp.zeros((0, 3), jnp.float32),
    }


def _pair(bits: int) -> tuple:
    make = adamx.blockwise_8bit if bits == 8 else adamx.blockwise_4bit
    return (
        make(True, min_size=1000, batch_dims=_stacked),
        make(False, min_size=1000, batch_dims=_stacked),
    )


def _optimizer(name: str, bits: int, pair: tuple | None = None):
    """The case's optimizer with a signed ``mu_dtype`` and an unsigned ``nu_dtype`` of ``bits``
    (or the storages ``pair``; those of the two it takes), or ``None`` if it takes neither."""
    mu, nu = _pair(bits) if pair is None else pair
    tx = _with_storage(CASES[name], mu)
    if tx is None:
        return None
    call = CASES[name].call(CASES[name].learning_rate)
    import inspect

    accepted = inspect.signature(call.factory).parameters
    kwargs = {"mu_dtype": mu} if "mu_dtype" in accepted else {}
    if "nu_dtype" in accepted:
        kwargs["nu_dtype"] = nu
    return call.factory(*call.args, **{**call.kwargs, **kwargs})


def _check(tx, params, steps: int = 3, ulps: float = 0, nan: bool = True) -> None:
    grads = _gradients({k: v for k, v in params.items() if k != "e"}, steps)
    for g in grads:
        if "e" in params:
            g["e"] = params["e"]
        if "long" in g and nan:
            g["long"] = g["long"].at[:2].set(jnp.asarray([np.nan, np.inf], jnp.float32))
    state = tx.init(params)
    assert any(
        isinstance(x, adamx.QuantizedBuffer)
        for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, adamx.QuantizedBuffer))
    )
    assert _derived.why_not(tx, adamx.apply_updates, grads[0], state, params) is None
    p_k, s_k = params, state
    p_r, s_r = params, state
    for g in grads:
        if ulps:  # one step at a time from the reference's state
            p_k, s_k = p_r, s_r
        p_k, s_k = adamx.step(tx, g, s_k, p_k, fused=True)
        with jax.disable_jit():
            p_r, s_r = adamx.step(tx, g, s_r, p_r, fused=False)
        if ulps:
            assert _ulps_apart((p_k, s_k), (p_r, s_r)) <= ulps
        else:
            assert _same((p_k, s_k), (p_r, s_r))


QUANTISED = [n for n in ELEMENTWISE if _with_storage(CASES[n], jnp.bfloat16) is not None]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", QUANTISED)
def test_every_elementwise_optimizer_with_quantised_moments_is_fused_bit_for_bit(name, bits):
    """Every elementwise optimizer that takes ``mu_dtype``/``nu_dtype``, with 8- and 4-bit
    block-wise moments (signed first moment, unsigned second), runs through the derived kernel
    and equals the jnp path, over leaves of every layout (and a NaN and an inf in a gradient)."""
    _check(_optimizer(name, bits), _tree())


@pytest.mark.parametrize(
    "name", [n for n in REDUCING if n != "prodigy" and _optimizer(n, 8) is not None]
)
def test_a_reduction_to_a_scalar_reads_the_decoded_moment_too(name):
    """The optimizers that reduce a leaf to a scalar first (cautious's mean, LAMB's norms, ...):
    JAX's pass binds the decode itself, then the kernel decodes again. (Prodigy, with quantised
    moments, is declined: an equation of its step mixes a leaf with its moment's blocks.) A leaf
    small enough to keep float32 moments takes the kernel's reduction pass, whose float sums may
    differ from XLA's in the last bit (tests/test_derived.py): reference the eager jnp path, one
    step at a time from the same state, tolerance 4 ulp of each leaf's magnitude. No NaN in the
    gradients here: XLA:CPU's max of a long leaf may skip a NaN in its vectorised loop (measured:
    the max of |[NaN, inf, ...]| over 40000 elements is inf, over 6 NaN), where the kernel's max
    is NaN, as XLA's documentation has it."""
    _check(_optimizer(name, 8), _tree(), steps=2, ulps=4, nan=False)


def test_the_default_pairs_under_bfloat16_params_and_a_kahan_chain():
    """`low_bit_moments(8)` (256-element blocks, the 4096-element minimum) and block-wise 4-bit
    moments, under bfloat16 params, and chained with `kahan_summation`: bit for bit."""
    rng = np.random.default_rng(2)
    params = {
        "w": jnp.asarray(rng.standard_normal((80, 70)), jnp.bfloat16),
        "b": jnp.asarray(rng.standard_normal(6), jnp.bfloat16),
        "e": jnp.zeros((0,), jnp.bfloat16),
    }
    eight = adamx.low_bit_moments(8)
    four = dict(mu_dtype=adamx.blockwise_4bit(True), nu_dtype=adamx.blockwise_4bit(False))
    for moments in (eight, four):
        _check(adamx.adamw(1e-2, weight_decay=0.1, **moments), params)
        _check(adamx.chain(adamx.adamw(1e-2, **moments), adamx.kahan_summation()), params)
    signed = adamx.blockwise_8bit(True, block_size=64, min_size=0)
    _check(adamx.adam(1e-2, mu_dtype=signed, nu_dtype=signed), params)  # a signed v


def test_one_pass_and_bounded_temporaries_under_jit_with_donation():
    """Jitted with params and state donated, the step is one custom call per group of leaves,
    writes params, codes and scales in place, and allocates no leaf-sized temporary (the blocks'
    scratch lives on the kernel's stack)."""
    n = 1 << 20
    params = {"w": jnp.zeros((n,), jnp.float32), "stack": jnp.zeros((4, 1000, 70), jnp.float32)}
    tx = adamx.adamw(1e-3, **adamx.low_bit_moments(8, batch_dims=_stacked))
    step = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p, fused=True), donate_argnums=(0, 1))
    compiled = step.lower(params, tx.init(params), params).compile()
    text = compiled.as_text()
    assert text.count(f'custom_call_target="{_native.DERIVED_TARGET}"') == 1
    memory = compiled.memory_analysis()
    assert memory.alias_size_in_bytes >= 4 * n + 2 * (n + n // 256 * 4)
    assert memory.temp_size_in_bytes <= 4096, memory.temp_size_in_bytes


def test_what_stays_on_the_jnp_path_says_why():
    """`low_bit_moments(4)`'s rank-1 second moment (a row and column maximum) and the linear
    4-bit code of its vectors are not lowered (the bounded jnp path takes them,
    tests/test_bounded.py); ``fused=True`` names them."""
    matrix = {"w": jnp.ones((64, 128), jnp.float32)}
    tx = adamx.adamw(1e-3, **adamx.low_bit_moments(4))
    with pytest.raises(ValueError, match="rank-1 4-bit moment"):
        adamx.step(tx, matrix, tx.init(matrix), matrix, fused=True)
    vector = {"v": jnp.ones((8192,), jnp.float32)}
    with pytest.raises(ValueError, match="linear 4-bit code"):
        adamx.step(tx, vector, tx.init(vector), vector, fused=True)


@pytest.mark.parametrize("bits", [8, 4])
def test_blocks_of_extreme_magnitudes(bits):
    """Blocks whose absmax is subnormal (its inverse is inf), tiny, huge or overflowing to inf
    (the encoders' general path), next to ordinary ones: bit for bit, codes included."""
    rng = np.random.default_rng(5)
    scales = 10.0 ** rng.integers(-25, 25, size=60)
    scales[:4] = [1e-22, 1e-20, 1e19, 1e30]
    w = rng.standard_normal((60, 256)) * scales[:, None]
    params = {"w": jnp.zeros((60, 256), jnp.float32), "b": jnp.zeros(6, jnp.float32)}
    mu, nu = _pair(bits)
    tx = adamx.adam(1e-3, mu_dtype=mu, nu_dtype=nu)
    state = tx.init(params)
    p_k, s_k, p_r, s_r = params, state, params, state
    for t in range(3):
        g = {"w": jnp.asarray(w * (t + 1), jnp.float32), "b": jnp.ones(6, jnp.float32)}
        p_k, s_k = adamx.step(tx, g, s_k, p_k, fused=True)
        with jax.disable_jit():
            p_r, s_r = adamx.step(tx, g, s_r, p_r, fused=False)
        assert _same((p_k, s_k), (p_r, s_r))
