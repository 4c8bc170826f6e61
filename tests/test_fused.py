"""The fused step (the kernel derived from the chain, adamx/kernels/_derived.py) against the jnp path.

The reference is the jnp path, ``update`` then ``apply_updates``, evaluated operation by operation
(eagerly): IEEE float32 arithmetic in the order the blocks write it. The kernel is compiled without
floating-point contraction, so it must agree with that reference **bit for bit** (tolerance 0), for
every optimizer it covers, for float32 and bfloat16 leaves, with schedules and masks. Under
``jax.jit`` XLA:CPU contracts ``a*b + c`` into fused multiply-adds, so the jitted jnp path differs
from both in the last bits; that difference is measured and bounded below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.benchmarks import leaf_sizes
from adamx.benchmarks import main as benchmark_main
from adamx.kernels import _derived, _native
from tests.helpers import relaxed

pytestmark = pytest.mark.skipif(
    not _native.status()[0], reason=f"native kernel unavailable: {_native.status()[1]}"
)


def _decay_schedule(count):
    return 0.1 * 0.99 ** count.astype(jnp.float32)


def _lr_schedule(count):
    return 1e-2 * jnp.minimum(1.0, (count.astype(jnp.float32) + 1) / 5)


MASK = {"w": True, "b": False, "s": True}
COVERED = {
    "adam": lambda: adamx.adam(1e-2),
    "adam_eps_root": lambda: adamx.adam(1e-2, eps=0.0, eps_root=1e-8),
    "adamw": lambda **kw: adamx.adamw(1e-2, weight_decay=0.1, **kw),
    "adamw_schedules_mask": lambda: adamx.adamw(
        _lr_schedule, weight_decay=_decay_schedule, mask=MASK
    ),
    "adamw_mask_fn": lambda: adamx.adamw(
        1e-2, weight_decay=0.1, mask=lambda p: {k: v.ndim > 1 for k, v in p.items()}
    ),
    "nadam": lambda **kw: adamx.nadam(1e-2, **kw),
    "nadamw": lambda: adamx.nadamw(_lr_schedule, weight_decay=0.1, mask=MASK),
    "adamax": lambda **kw: adamx.adamax(1e-2, **kw),
    "adamaxw_eps0": lambda: adamx.adamaxw(1e-2, eps=0.0, weight_decay=0.1),
    "lion": lambda mu_dtype=None, nu_dtype=None: adamx.lion(
        1e-3, weight_decay=0.1, mu_dtype=mu_dtype
    ),
    "lion_schedules_mask": lambda: adamx.lion(
        _lr_schedule, weight_decay=_decay_schedule, mask=MASK
    ),
}
STATE_DTYPES = {
    "float32": [(None, None)],
    "bfloat16": [(None, None), (jnp.float32, jnp.float32), (None, jnp.float32)],
}


def _tree(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((40, 33)), dtype),
        "b": jnp.asarray(rng.standard_normal(7), dtype),
        "s": jnp.asarray(rng.standard_normal(()), dtype),
    }


def _gradients(dtype, steps, seed=1):
    """Gradients with exact zeros (a zero step) and a spike, in the params' dtype."""
    rng = np.random.default_rng(seed)
    like = _tree(dtype)
    out = []
    for i in range(steps):
        scale = 0.0 if i == 3 else (50.0 if i == 7 else 1.0)
        out.append(
            jax.tree.map(
                lambda x, c=scale: jnp.asarray(c * rng.standard_normal(x.shape), dtype), like
            )
        )
    return out


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.tobytes() == b.tobytes()


def _with_dtypes(make, mu_dtype, nu_dtype):
    if mu_dtype is None and nu_dtype is None:
        return make()
    # the factories take mu_dtype / nu_dtype: rebuild with them
    return make(mu_dtype=mu_dtype, nu_dtype=nu_dtype)


CASES = [
    (name, dtype, mu, nu)
    for name in COVERED
    for dtype, pairs in STATE_DTYPES.items()
    for mu, nu in pairs
    if (mu, nu) == (None, None) or name in ("adamw", "nadam", "adamax", "lion")
]


@pytest.mark.parametrize(
    "name,dtype,mu_dtype,nu_dtype",
    CASES,
    ids=[
        f"{n}-{d}-{getattr(m, '__name__', m)}-{getattr(v, '__name__', v)}" for n, d, m, v in CASES
    ],
)
def test_kernel_equals_the_jnp_path_bit_for_bit(name, dtype, mu_dtype, nu_dtype):
    """Reference: the eager jnp path; tolerance: 0 (every bit of params and state), 12 steps."""
    tx = _with_dtypes(COVERED[name], mu_dtype, nu_dtype)
    params = _tree(dtype)
    fused_step = jax.jit(lambda g, s, p: adamx.step(tx, g, s, p, fused=True))
    p_k, s_k = params, tx.init(params)
    p_r, s_r = params, tx.init(params)
    for g in _gradients(dtype, 12):
        p_k, s_k = fused_step(g, s_k, p_k)
        with jax.disable_jit():
            p_r, s_r = adamx.step(tx, g, s_r, p_r, fused=False)
    leaves_k, leaves_r = jax.tree.leaves((p_k, s_k)), jax.tree.leaves((p_r, s_r))
    assert jax.tree.structure((p_k, s_k)) == jax.tree.structure((p_r, s_r))
    for a, b in zip(leaves_k, leaves_r, strict=True):
        assert _bits_equal(a, b), (
            name,
            np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))),
        )


def test_jit_contracts_multiply_adds_and_differs_by_rounding_only():
    """Under jit, XLA:CPU fuses ``a*b + c`` into an FMA, so the jitted jnp path is not the IEEE
    op-by-op result. The bound, one AdamW step from the same state at 40 points of a trajectory:
    |p_fused - p_jit| <= 2 ulp(p) + 1e-5 * lr (an FMA skips one rounding of a product; through
    the moments that is <= ~1e-6 of the O(1) direction, times lr) and m within 2.5 ulp of the
    larger of its two terms (half an ulp of the product the FMA does not round, one rounding of
    a sum at most twice the larger term)."""
    a, b, c = (np.random.default_rng(i).standard_normal(1000).astype(np.float32) for i in range(3))
    contracted = np.asarray(jax.jit(lambda a, b, c: a * b + c)(a, b, c))
    assert not np.array_equal(contracted, a * b + c)  # if this fails, XLA stopped contracting
    lr, b1 = 1e-2, 0.9
    tx = adamx.adamw(lr, weight_decay=0.1)
    run = {
        fused: jax.jit(lambda g, s, p, fused=fused: adamx.step(tx, g, s, p, fused=fused))
        for fused in (True, False)
    }
    p, s = _tree(jnp.float32), tx.init(_tree(jnp.float32))
    worst_p = worst_m = 0.0
    for g in _gradients(jnp.float32, 40):
        (p_k, s_k), (p_j, s_j) = run[True](g, s, p), run[False](g, s, p)
        for x_k, x_j in zip(jax.tree.leaves(p_k), jax.tree.leaves(p_j), strict=True):
            x_k, x_j = np.asarray(x_k), np.asarray(x_j)
            bound = 2 * np.spacing(np.abs(x_j)) + 1e-5 * lr
            worst_p = max(worst_p, float(np.max(np.abs(x_k - x_j) / bound)))
        m_old = s[0][0].ema
        for mk, mj, mo, gl in zip(
            *(jax.tree.leaves(t) for t in (s_k[0][0].ema, s_j[0][0].ema, m_old, g)), strict=True
        ):
            terms = np.maximum(np.abs((1 - b1) * np.asarray(gl)), np.abs(b1 * np.asarray(mo)))
            bound = 2.5 * np.spacing(terms.astype(np.float32)) + np.finfo(np.float32).tiny
            worst_m = max(worst_m, float(np.max(np.abs(np.asarray(mk) - np.asarray(mj)) / bound)))
        p, s = p_k, s_k
    print(f"fused vs jitted jnp, fraction of the bound used: p {worst_p:.3f}, m {worst_m:.3f}")
    assert worst_p <= 1 and worst_m <= 1


def test_fallbacks_and_the_explicit_request():
    """``fused=None`` falls back to the jnp path where the kernel cannot apply; ``fused=True``
    says why instead."""
    params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), _tree(jnp.float32))
    grads = jax.tree.map(jnp.ones_like, _tree(jnp.float32))
    tx = adamx.adamw(1e-2)
    state = tx.init(_tree(jnp.float32))
    with pytest.raises(ValueError, match="float32 and bfloat16 leaves"):
        from tests.helpers import x64

        with x64():
            p64 = jax.tree.map(jnp.asarray, params64)
            adamx.step(tx, jax.tree.map(jnp.ones_like, p64), tx.init(p64), p64, fused=True)
    with pytest.raises(ValueError, match="reduces a leaf to an array"):
        opt = adamx.adafactor(1e-2)  # row and column means of a matrix of 128 or more
        matrix = {"w": jnp.ones((256, 128), jnp.float32)}
        adamx.step(opt, matrix, opt.init(matrix), matrix, fused=True)
    with pytest.raises(ValueError, match="extra keyword"):
        adamx.step(tx, grads, state, _tree(jnp.float32), fused=True, something=1)
    # A complex leaf falls back and still computes the jnp path's result.
    z = {"z": jnp.asarray([1 + 1j, 2 - 1j], jnp.complex64)}
    tx = adamx.adam(1e-2)
    got = adamx.step(tx, z, tx.init(z), z)
    want = adamx.step(tx, z, tx.init(z), z, fused=False)
    assert all(
        _bits_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    )


def test_the_step_is_donated_without_param_sized_temporaries():
    """The fused step, jitted with params and state donated: p, m and v are written in place
    (aliased) and the compiled step allocates no param- or state-sized temporary (<= 4 KiB)."""
    n = 1 << 18
    params = {"w": jnp.zeros((n,), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    tx = adamx.adamw(1e-3)
    step = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p), donate_argnums=(0, 1))
    compiled = step.lower(params, tx.init(params), params).compile()
    memory = compiled.memory_analysis()
    assert 'custom_call_target="adamx_derived_step"' in compiled.as_text()
    assert memory.alias_size_in_bytes >= 3 * 4 * n  # p, m and v written in place
    assert memory.temp_size_in_bytes <= 4096, memory.temp_size_in_bytes


def test_train_step_runs_the_fused_step():
    n = 1000
    params = {"w": jnp.zeros((n,), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    tx = adamx.adamw(1e-3)
    loss = lambda p, x: jnp.sum(p["w"] * x) + jnp.sum(p["b"])  # noqa: E731
    step = adamx.make_train_step(loss, tx)
    x = jnp.ones((n,), jnp.float32)
    assert (
        'custom_call_target="adamx_derived_step"'
        in step.lower(params, tx.init(params), x).compile().as_text()
    )
    new_params, new_state, value = step(jax.tree.map(jnp.copy, params), tx.init(params), x)
    assert float(value) == 0.0
    plain = adamx.make_train_step(loss, tx, fused=False, jit=False)
    with jax.disable_jit():
        want, _, _ = plain(params, tx.init(params), x)
    assert all(
        _bits_equal(a, b)
        for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(want), strict=True)
    )
    aux_step = adamx.make_train_step(lambda p, x: (loss(p, x), {"n": x.size}), tx, has_aux=True)
    *_, aux = aux_step(jax.tree.map(jnp.copy, params), tx.init(params), x)
    assert int(aux["n"]) == n


def test_many_leaves_are_grouped_into_few_calls():
    """Leaves go in groups of _GROUP per custom call (not one call per leaf, not one call for all)."""
    leaves = 3 * _derived._GROUP + 5
    params = {f"l{i:03d}": jnp.full((i % 7 + 1,), 0.5, jnp.float32) for i in range(leaves)}
    tx = adamx.adamw(1e-3)
    step = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p, fused=True), donate_argnums=(0, 1))
    text = step.lower(params, tx.init(params), params).compile().as_text()
    assert text.count('custom_call_target="adamx_derived_step"') == 4


def test_the_kernel_can_be_switched_off_and_training_goes_on():
    """ADAMX_NATIVE=0 (as on a machine without a compiler): status says why, step still works."""
    code = (
        "import jax.numpy as jnp, adamx\n"
        "from adamx.kernels import _native\n"
        "ok, why = _native.status(); assert not ok and 'ADAMX_NATIVE=0' in why, why\n"
        "tx = adamx.adamw(0.1); p = jnp.ones(3)\n"
        "p, s = adamx.step(tx, jnp.ones(3), tx.init(p), p)\n"
        "assert abs(float(p[0]) - (1 - 0.1 * (1 + 1e-4))) < 1e-6, p\n"
        "try:\n"
        "    adamx.step(tx, jnp.ones(3), s, p, fused=True)\n"
        "except ValueError as e:\n"
        "    assert 'ADAMX_NATIVE=0' in str(e)\n"
        "else:\n"
        "    raise AssertionError('fused=True must refuse')\n"
    )
    env = dict(os.environ, ADAMX_NATIVE="0", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_nnx_update_takes_the_fused_step():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    twin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    loss = lambda m: jnp.mean((m(jnp.ones((4, 3))) - 1.0) ** 2)  # noqa: E731
    ours = nnx.Optimizer(model, adamx.adamw(1e-2), wrt=nnx.Param)
    theirs = nnx.Optimizer(twin, adamx.adamw(1e-2), wrt=nnx.Param)

    @nnx.jit
    def fused(model, optimizer):
        adamx.nnx_update(optimizer, model, nnx.grad(loss)(model))

    @nnx.jit
    def plain(model, optimizer):
        with jax.disable_jit(False):
            optimizer.update(model, nnx.grad(loss)(model))

    for _ in range(3):
        fused(model, ours)
        plain(twin, theirs)
    assert int(ours.step[...]) == 3
    np.testing.assert_allclose(model.kernel[...], twin.kernel[...], rtol=1e-5, atol=1e-7)


def test_leaf_sizes_sum_and_mix():
    sizes = leaf_sizes(5_000_000, 2000)
    assert sum(sizes) == 5_000_000 and len(sizes) == 2000
    assert max(sizes) > 50 * min(sizes)


def test_benchmark_module_writes_ratios(tmp_path):
    """``python -m adamx.benchmarks`` on tiny configurations: every implementation reports a time,
    the ratios to the limit, to optax and to torch, and the state bytes per parameter."""
    out = tmp_path / "bench.json"
    with relaxed():  # optax needs standard dtype promotion
        benchmark_main(["--configs", "20000x1,20000x40:bfloat16", "--rounds", "1", "--steps",
                        "1", "--json", str(out)])  # fmt: skip
    data = json.loads(out.read_text())
    assert data["environment"]["jax"] == jax.__version__
    first = data["configs"][0]
    names = {row["name"] for row in first["results"]}
    assert {"limit (1-pass kernel)", "adamx fused", "adamx jnp", "optax", "torch fused"} <= names
    fused = next(r for r in first["results"] if r["name"] == "adamx fused")
    assert fused["state_bytes_per_param"] == pytest.approx(8.0, rel=1e-3)  # + the int32 counts
    assert (
        fused["ratio_to_limit"] > 0 and fused["ratio_to_optax"] > 0 and fused["ratio_to_torch"] > 0
    )
    bf16 = data["configs"][1]
    assert bf16["limit_bytes_per_param"] == 14  # bfloat16 p, g, m, v
    # many leaves: the flat step and the one-leaf step of the same size, with the ratio between
    rows = {row["name"]: row for row in bf16["results"]}
    assert {"adamx fused flat", "adamx fused 1 leaf"} <= set(rows)
    assert rows["adamx fused flat"]["ratio_to_1_leaf"] > 0
    assert "ratio_to_1_leaf" not in first["results"][0]  # one leaf: no such row


def test_benchmark_compares_optimizers_against_adamw(tmp_path):
    """``--compare``: each optimizer's step time relative to AdamW on a tree of matrices, and its
    state bytes per parameter (Adafactor's factored state is far below AdamW's 8)."""
    out = tmp_path / "compare.json"
    benchmark_main(["--quick", "--compare", "lion,adafactor", "--rounds", "1", "--steps", "1",
                    "--json", str(out)])  # fmt: skip
    rows = {row["name"]: row for row in json.loads(out.read_text())["optimizers"]["results"]}
    assert rows["adamw"]["ratio_to_adamw"] == 1.0
    assert rows["adamw"]["state_bytes_per_param"] == pytest.approx(8.0, rel=1e-2)
    assert rows["lion"]["state_bytes_per_param"] == pytest.approx(4.0, rel=1e-2)
    assert rows["adafactor"]["state_bytes_per_param"] < 1.0
    with pytest.raises(ValueError, match="adamx does not have"):
        benchmark_main(["--quick", "--compare", "nosuch", "--json", str(out)])
    benchmark_main(["--compare", "lion,clipped_adamw,clipped_adamw@jnp", "--size", "64",
                    "--rounds", "1", "--steps", "1", "--json", str(out)])  # fmt: skip
    record = json.loads(out.read_text())["optimizers"]
    assert record["tree"] == "matrix_tree(size=64)" and record["params"] == 5 * 64 * 64 + 2 * 64
    # `@jnp`: the same optimizer on the jnp path. Clipping's per-byte ratio counts one pass over
    # the gradients (4 of AdamW's 28 bytes a parameter), not the overflow branch's two.
    rows = {row["name"]: row for row in record["results"]}
    assert rows["clipped_adamw"]["path"] == "kernel" and rows["clipped_adamw@jnp"]["path"] == "jnp"
    for name in ("clipped_adamw", "clipped_adamw@jnp"):
        row = rows[name]
        assert row["per_byte_to_adamw"] == pytest.approx(row["ratio_to_adamw"] / (32 / 28), 1e-3)
    with pytest.raises(ValueError, match="ending in `@jnp`"):
        benchmark_main(["--compare", "lion@gpu", "--size", "64", "--json", str(out)])
    with pytest.raises(SystemExit):
        benchmark_main(["--compare", "lion", "--size", "30", "--json", str(out)])


def test_the_task_size_is_named_once_in_the_header():
    """`_derived._CHUNK` (how block programs size a task) is fused_common.h's kChunk."""
    import re
    from pathlib import Path

    header = (Path(_derived.__file__).parent / "_native" / "fused_common.h").read_text()
    shift = re.search(r"constexpr size_t kChunk = 1 << (\d+);", header)
    assert shift is not None and _derived._CHUNK == 1 << int(shift.group(1))


def test_the_benchmark_names_the_extra_that_brings_the_peers(tmp_path, monkeypatch, capsys):
    """Without optax and torch the benchmark still runs, and says how to get them (`.[bench]`)."""
    import sys

    monkeypatch.setitem(sys.modules, "optax", None)  # `import optax` raises ImportError
    monkeypatch.setitem(sys.modules, "torch", None)
    out = tmp_path / "bench.json"
    benchmark_main(["--configs", "2000x1", "--rounds", "1", "--steps", "1", "--json", str(out)])
    notes = json.loads(out.read_text())["configs"][0]["notes"]
    assert '".[bench]"' in notes["optax"] and '".[bench]"' in notes["torch"]
    assert 'pip install -e ".[bench]"' in capsys.readouterr().out


def test_the_benchmark_times_each_storages_step_beside_its_peak(monkeypatch):
    """``--memory`` with rounds: each storage's ``update`` + ``apply_updates`` and `adamx.step`
    timed in the same rounds, as ratios to float32 AdamW's ``update`` + ``apply_updates`` (its
    own ratio 1); two of the cases, tiny, for the test's time."""
    import adamx.benchmarks as bench

    cases = {k: bench.MEMORY_CASES[k] for k in ("adamw float32", "adamw 8-bit")}
    monkeypatch.setattr(bench, "MEMORY_CASES", cases)
    record = bench.step_memory(1 << 14, 2, rounds=2, steps=1)
    rows = {r["name"]: r for r in record["results"]}
    assert set(rows) == set(cases)
    assert rows["adamw float32"]["x_update_apply"] == 1.0
    for row in rows.values():
        assert row["ms_update_apply"] > 0 and row["ms_step"] > 0 and row["x_step"] > 0
    assert "time u+a" in bench._format_memory(record)


def test_the_benchmark_reports_each_storages_step_peak():
    """``--memory``: per optimizer and storage, the state and the compiled step's temporaries
    (memory_analysis, compiled only). float32 AdamW's fused step needs no temporary, and the jnp
    path's bfloat16 moments at least one float32 copy (4 bytes per param) while the kernel's
    none: numbers the compiler gives, not timings."""
    from adamx.benchmarks import step_memory

    rows = {r["name"]: r for r in step_memory(1 << 16, 2)["results"]}
    assert set(rows) >= {"adamw float32", "adamw 8-bit", "adamw 4-bit", "lion 8-bit"}
    f32 = rows["adamw float32"]
    assert f32["state_bytes_per_param"] == pytest.approx(8.0, rel=1e-3)
    assert f32["temp_bytes_per_param_step"] < 0.1 and f32["step_path"] == "kernel"
    bf16 = rows["adamw bfloat16"]
    assert bf16["temp_bytes_per_param_update_apply"] >= 4.0 > bf16["temp_bytes_per_param_step"]
    for row in rows.values():
        assert row["peak_bytes_per_param_step"] == pytest.approx(
            row["state_bytes_per_param"] + row["temp_bytes_per_param_step"]
        )
    # Block-wise moments through the kernel: no dequantised moment is ever whole (issue 24's bound
    # for adamx.step, 0.25 bytes per param), where update + apply_updates holds several.
    for name in ("adamw 8-bit", "adamw 4-bit (both blockwise)", "lion 8-bit", "adopt 8-bit"):
        assert rows[name]["step_path"] == "kernel", name
        assert rows[name]["temp_bytes_per_param_step"] <= 0.25, rows[name]
        assert rows[name]["temp_bytes_per_param_update_apply"] >= 4.0, rows[name]
    # Rank-1 4-bit v: the kernel declines it, the bounded path takes the step (and says so).
    assert rows["adamw 4-bit"]["step_path"] == "bounded"
