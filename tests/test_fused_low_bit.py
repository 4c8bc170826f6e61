"""The fused step with `stochastic_bfloat16` moments and with `kahan_summation`, against the jnp path.

Reference: the jnp path, ``update`` then ``apply_updates``, evaluated operation by operation
(eagerly), as in tests/test_fused.py. Tolerance: 0, every bit of the params and of the state,
including the stochastic-rounding write counters and the Kahan compensations. The kernel rounds a
stochastic moment with the bits ``hash32(index * golden + hash32(counter))`` of
`adamx/storage/_quantize.py`'s ``stochastic_round_bfloat16`` (index: the element's in its leaf), and a
Kahan chain with `adamx.kahan_summation`'s own sequence of roundings.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx import RoundedBuffer, StochasticBfloat16
from adamx.kernels import _derived, _native
from tests.test_fused import _gradients  # the same zero step and spike, same shapes

pytestmark = pytest.mark.skipif(
    not _native.status()[0], reason=f"native kernel unavailable: {_native.status()[1]}"
)

SR = adamx.stochastic_bfloat16
MASK = {"w": True, "b": False, "s": True}


def _lr_schedule(count):
    return 1e-2 * jnp.minimum(1.0, (count.astype(jnp.float32) + 1) / 5)


def _decay_schedule(count):
    return 0.1 * 0.99 ** count.astype(jnp.float32)


def _kahan(tx):
    return adamx.chain(tx, adamx.kahan_summation())


OPTIMIZERS = {
    "adamw_sr": lambda: adamx.adamw(1e-2, weight_decay=0.1, mu_dtype=SR(), nu_dtype=SR()),
    "adam_sr_mu_only": lambda: adamx.adam(1e-2, mu_dtype=SR()),
    "adamw_sr_nu_bf16_mu": lambda: adamx.adamw(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=SR()),
    "adamw_sr_schedules_mask": lambda: adamx.adamw(
        _lr_schedule, weight_decay=_decay_schedule, mask=MASK, mu_dtype=SR(), nu_dtype=SR()
    ),
    "adam_sr_eps_root": lambda: adamx.adam(
        1e-2, eps=0.0, eps_root=1e-8, **adamx.low_bit_moments(16)
    ),
    "nadamw_sr": lambda: adamx.nadamw(
        _lr_schedule, weight_decay=0.1, mask=MASK, mu_dtype=SR(), nu_dtype=SR()
    ),
    "adamax_sr": lambda: adamx.adamax(1e-2, mu_dtype=SR(), nu_dtype=SR()),
    "adamaxw_sr_eps0": lambda: adamx.adamaxw(
        1e-2, eps=0.0, weight_decay=0.1, mask=MASK, mu_dtype=SR(), nu_dtype=SR()
    ),
    "lion_sr": lambda: adamx.lion(1e-3, weight_decay=0.1, mu_dtype=SR()),
    "lion_sr_schedules_mask": lambda: adamx.lion(
        _lr_schedule, weight_decay=_decay_schedule, mask=MASK, mu_dtype=SR()
    ),
    "kahan_adamw": lambda: _kahan(adamx.adamw(1e-3, weight_decay=0.1)),
    "kahan_adamw_sr": lambda: _kahan(
        adamx.adamw(1e-3, weight_decay=0.1, **adamx.low_bit_moments(16))
    ),
    "kahan_nadamw_schedules_mask": lambda: _kahan(
        adamx.nadamw(_lr_schedule, weight_decay=_decay_schedule, mask=MASK)
    ),
    "kahan_adamax_sr": lambda: _kahan(adamx.adamax(1e-3, mu_dtype=SR(), nu_dtype=SR())),
    "kahan_lion_sr": lambda: _kahan(adamx.lion(1e-4, weight_decay=0.1, mu_dtype=SR())),
}
CASES = [(name, dtype) for name in OPTIMIZERS for dtype in ("float32", "bfloat16")]


def _tree(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((40, 33)) + 4.0, dtype),
        "b": jnp.asarray(rng.standard_normal(7), dtype),
        "s": jnp.asarray(rng.standard_normal(()), dtype),
    }


def _run(tx, params, grads, *, fused):
    """Both paths from the same start: the kernel (jitted, ``fused=True``) or the eager jnp path."""
    step = jax.jit(lambda g, s, p: adamx.step(tx, g, s, p, fused=True))
    p, s = params, tx.init(params)
    for g in grads:
        if fused:
            p, s = step(g, s, p)
        else:
            with jax.disable_jit():
                p, s = adamx.step(tx, g, s, p, fused=False)
    return p, s


def _differing(a, b) -> list[int]:
    """Indices of the leaves of two trees (same structure required) whose bytes differ."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    out = []
    for i, (x, y) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            out.append(i)
    return out


@pytest.mark.parametrize("name,dtype", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_kernel_equals_the_jnp_path_bit_for_bit(name, dtype):
    """Reference: the eager jnp path; tolerance: 0 (params, moments, counters, compensations),
    10 steps including an all-zero gradient and a spike."""
    tx = OPTIMIZERS[name]()
    params, grads = _tree(dtype), _gradients(dtype, 10)
    kernel = _run(tx, params, grads, fused=True)
    reference = _run(tx, params, grads, fused=False)
    assert _differing(kernel, reference) == []
    counters = [
        x.counter for x in jax.tree.leaves(kernel[1], is_leaf=_is_rounded) if _is_rounded(x)
    ]
    assert all(int(c) == len(grads) for c in counters)  # one write per step


def _is_rounded(x) -> bool:
    return isinstance(x, RoundedBuffer)


def test_non_finite_values_and_overflow_match_the_jnp_path():
    """NaN, +-inf, |g| = 1e30 (g**2 = inf in v) and subnormal moments, and moments just above
    bfloat16's largest finite value, which stochastic rounding rounds up to inf about half the
    time. Tolerance: 0."""
    above_max = float(jnp.finfo(jnp.bfloat16).max) * (1 + 2.0**-9)  # halfway to inf: float32 only
    rng = np.random.default_rng(2)
    grads32 = []
    for i in range(4):
        g = rng.standard_normal(4096).astype(np.float32)
        if i % 2:
            g[:5] = [np.nan, np.inf, -np.inf, 1e30, -1e30]
            g[64:128] = above_max
        g[128:192] = np.geomspace(1e-38, 1e-20, 64)  # g**2 and the moments subnormal
        grads32.append({"w": g.reshape(64, 64)})
    for dtype in (jnp.float32, jnp.bfloat16):
        params = {"w": jnp.asarray(np.linspace(-3, 3, 4096).reshape(64, 64), dtype)}
        grads = [jax.tree.map(lambda x, d=dtype: jnp.asarray(x, d), g) for g in grads32]
        lion = adamx.lion(1e-3, b1=0.0, b2=0.0, mu_dtype=SR())  # m = g: above_max is rounded
        for tx in (
            adamx.adamw(1e-2, **adamx.low_bit_moments(16)),
            adamx.adamax(1e-2, mu_dtype=SR(), nu_dtype=SR()),
            lion,
            _kahan(adamx.adamw(1e-3, mu_dtype=SR(), nu_dtype=SR())),
        ):
            kernel = _run(tx, params, grads, fused=True)
            reference = _run(tx, params, grads, fused=False)
            assert _differing(kernel, reference) == []
            floats = [x for x in jax.tree.leaves(kernel) if jnp.issubdtype(x.dtype, jnp.floating)]
            assert any(np.isnan(np.asarray(x, np.float32)).any() for x in floats)
            if tx is lion and dtype == jnp.float32:
                m = np.asarray(_run(tx, params, grads[:2], fused=True)[1][0].mu["w"].value)
                m = m.reshape(-1)[64:128].astype(np.float32)
                assert np.isinf(m).any() and np.isfinite(m).any()  # rounded both ways


def test_the_comparison_can_fail():
    """The bit-for-bit comparison above detects a change: with a write counter off by one the
    kernel's stochastic moments differ from the jnp path's (in about half of the elements, where
    the rounding goes the other way), and so do Kahan's params with the compensation dropped."""
    tx = adamx.adamw(1e-2, **adamx.low_bit_moments(16))
    params, (g,) = _tree(jnp.float32), _gradients(jnp.float32, 1)
    state = tx.init(params)
    _, s_ref = adamx.step(tx, g, state, params, fused=False)
    shifted = jax.tree.map(
        lambda x: RoundedBuffer(x.value, x.counter + jnp.uint32(1)) if _is_rounded(x) else x,
        state,
        is_leaf=_is_rounded,
    )
    _, s_off = adamx.step(tx, g, shifted, params, fused=True)
    m_ref, m_off = s_ref[0][0].ema["w"].value, s_off[0][0].ema["w"].value
    fraction = float(np.mean(np.asarray(m_ref) != np.asarray(m_off)))
    assert 0.2 < fraction < 0.8, fraction
    # Round-to-nearest bfloat16 moments differ from stochastic ones too.
    rn = adamx.adamw(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)
    _, s_rn = adamx.step(rn, g, rn.init(params), params, fused=True)
    assert np.mean(np.asarray(s_rn[0][0].ema["w"]) != np.asarray(m_ref)) > 0.1
    # Kahan: the fused chain's params differ from plain AdamW's within a few steps on bfloat16,
    # and a compensation nudged by 2**-12 changes the kernel's new compensation.
    params, grads = _tree(jnp.bfloat16), _gradients(jnp.bfloat16, 4)
    tx = _kahan(adamx.adamw(1e-3))
    kahan_params, state = _run(tx, params, grads, fused=True)
    plain = _run(adamx.adamw(1e-3), params, grads, fused=True)[0]
    assert _differing(kahan_params, plain) != []
    nudged = (
        state[0],
        state[1]._replace(compensation=jax.tree.map(lambda c: c + 2.0**-12, state[1].compensation)),
    )
    _, s_ref = adamx.step(tx, grads[0], state, kahan_params, fused=False)
    _, s_off = adamx.step(tx, grads[0], nudged, kahan_params, fused=True)
    assert _differing(s_ref[1], s_off[1]) != []


def test_kahan_after_any_elementwise_chain_is_fused_bit_for_bit():
    """Kahan is fused after whatever elementwise chain precedes it, not after a list of
    optimizers: a clip first, SGD, Kahan twice, Kahan first. Reference: the eager jnp path;
    tolerance: 0 (every bit), 3 steps."""
    params, grads = _tree(jnp.bfloat16), _gradients(jnp.bfloat16, 3)
    for tx in (
        _kahan(adamx.adamw(1e-3)),
        adamx.chain(adamx.clip(1.0), adamx.adamw(1e-3), adamx.kahan_summation()),
        adamx.chain(adamx.kahan_summation(), adamx.adamw(1e-3)),
        _kahan(adamx.sgd(1e-3, 0.9)),
        _kahan(_kahan(adamx.adamw(1e-3))),
    ):
        assert (
            _differing(_run(tx, params, grads, fused=True), _run(tx, params, grads, fused=False))
            == []
        )


def test_what_is_not_fused_says_why():
    # One leaf above low_bit_moments' min_size (4096), so that its moments are quantised. (With
    # 8-bit moments the derived kernel takes this chain: tests/test_derived_blockwise.py.)
    params = {**_tree(jnp.bfloat16), "big": jnp.ones((8192,), jnp.bfloat16)}
    grads = jax.tree.map(jnp.ones_like, params)

    for tx in (_kahan(adamx.adamw(1e-3, **adamx.low_bit_moments(4))),):
        with pytest.raises(ValueError, match="cannot fuse this step"):
            adamx.step(tx, grads, tx.init(params), params, fused=True)
        new_params, _ = adamx.step(tx, grads, tx.init(params), params)  # the jnp path runs
        assert jax.tree.structure(new_params) == jax.tree.structure(params)


def test_what_the_rules_did_not_cover_the_derived_kernel_takes_as_written():
    """A storage subclass that writes otherwise, and a compensation of another dtype than the
    params, had no rule; the kernel derived from the optimizer's own jaxpr follows their code.
    Reference: the eager jnp path; tolerance: 0 (every bit)."""
    params = _tree(jnp.bfloat16)
    grads = jax.tree.map(lambda x: x * 0.5 + 0.25, params)

    class Other(StochasticBfloat16):  # writes its value rounded to nearest, not stochastically
        def write(self, value, stored):
            return stored._replace(value=value.astype(jnp.bfloat16))

    tx = adamx.adamw(1e-3, mu_dtype=Other())
    kahan = _kahan(adamx.adamw(1e-3))
    inner, compensation = kahan.init(params)
    wide = (inner, compensation._replace(compensation=_tree(jnp.float32)))
    for opt, state in ((tx, tx.init(params)), (kahan, wide)):
        got = adamx.step(opt, grads, state, params, fused=True)
        with jax.disable_jit():
            want = adamx.step(opt, grads, state, params, fused=False)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert a.dtype == b.dtype and np.array_equal(
                np.asarray(a).reshape(-1).view(np.uint8), np.asarray(b).reshape(-1).view(np.uint8)
            )


def test_float32_params_with_kahan_are_fused_and_equal_the_jnp_path():
    """Kahan on float32 params (compensation float32) runs in the kernel too, bit for bit."""
    tx = _kahan(adamx.adamw(1e-3, weight_decay=0.1))
    params, grads = _tree(jnp.float32), _gradients(jnp.float32, 5)
    assert _derived.why_not(tx, adamx.apply_updates, grads[0], tx.init(params), params) is None
    assert (
        _differing(_run(tx, params, grads, fused=True), _run(tx, params, grads, fused=False)) == []
    )


@pytest.mark.parametrize("kind", ["sr", "kahan_sr"])
def test_the_step_is_donated_without_param_sized_temporaries(kind):
    """As tests/test_fused.py's check, with stochastic moments (and a Kahan compensation): p, m, v
    (and c) written in place, no param- or state-sized temporary (<= 4 KiB)."""
    n = 1 << 18
    dtype = jnp.float32 if kind == "sr" else jnp.bfloat16
    params = {"w": jnp.zeros((n,), dtype), "b": jnp.zeros((3,), dtype)}
    tx = adamx.adamw(1e-3, **adamx.low_bit_moments(16))
    if kind == "kahan_sr":
        tx = _kahan(tx)
    step = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p, fused=True), donate_argnums=(0, 1))
    compiled = step.lower(params, tx.init(params), params).compile()
    memory = compiled.memory_analysis()
    assert 'custom_call_target="adamx_derived_step"' in compiled.as_text()
    p_bytes = n * jnp.dtype(dtype).itemsize
    in_place = p_bytes + 2 * 2 * n + (p_bytes if kind == "kahan_sr" else 0)
    assert memory.alias_size_in_bytes >= in_place
    assert memory.temp_size_in_bytes <= 4096, memory.temp_size_in_bytes


def test_stochastic_moments_stay_unbiased_in_the_kernel():
    """A cheap property that can fail: a constant gradient 1e-3 * (1 + 2**-10), whose EMA is not
    a bfloat16 value, stored by the kernel; the mean over 65536 elements of the stochastic m is
    within 2e-4 relative of the exact float32 EMA, while round to nearest is off by far more."""
    n = 1 << 16
    value = 1e-3 * (1 + 2.0**-10)
    params = {"w": jnp.zeros((n,), jnp.float32)}
    grads = {"w": jnp.full((n,), value, jnp.float32)}
    for tx_kind in ("sr", "rn"):
        dtype = SR() if tx_kind == "sr" else jnp.bfloat16
        tx = adamx.adam(1e-3, b1=0.9, mu_dtype=dtype)
        p, s = params, tx.init(params)
        for _ in range(20):
            p, s = adamx.step(tx, grads, s, p, fused=True)
        m = s[0][0].ema["w"]
        m = np.asarray(m.value if _is_rounded(m) else m, np.float64)
        exact = value * (1 - 0.9**20)
        error = abs(m.mean() - exact) / exact
        if tx_kind == "sr":
            assert error < 2e-4, error
        else:
            assert error > 1e-3, error


def test_on_a_mesh_kahan_is_fused_and_stochastic_rounding_is_not():
    """Two CPU devices (a subprocess): Kahan runs per shard, bit for bit, the compensation keeping
    its sharding; stochastic-rounding moments go to the jnp path (the kernel would see shard-local
    element indices), and `why_not` says so."""
    code = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import adamx
from adamx.kernels import _derived
why_not = lambda tx, g, s, p: _derived.why_not(tx, adamx.apply_updates, g, s, p)
mesh = jax.make_mesh((2,), ("d",))
jax.set_mesh(mesh).__enter__()
put = lambda t: jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P("d"))), t)
params = put({"w": jnp.linspace(-1, 1, 64, dtype=jnp.bfloat16).reshape(8, 8)})
grads = put({"w": jnp.full((8, 8), 0.3, jnp.bfloat16)})
sr = adamx.adamw(1e-2, **adamx.low_bit_moments(16))
assert "index in its whole leaf" in why_not(sr, grads, sr.init(params), params)
kahan = adamx.chain(adamx.adamw(1e-3), adamx.kahan_summation())
state = kahan.init(params)
assert why_not(kahan, grads, state, params) is None
fused = adamx.step(kahan, grads, state, params, fused=True)
with jax.disable_jit():
    plain = adamx.step(kahan, grads, state, params, fused=False)
for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(plain)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
assert fused[1][1].compensation["w"].sharding.spec == P("d", None)
"""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
