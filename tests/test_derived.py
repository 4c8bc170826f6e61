"""The fused step derived from each optimizer's own jaxpr (adamx/kernels/_derived.py).

Reference everywhere: the eager jnp path, ``update`` then `apply_updates` under
``jax.disable_jit()``; tolerance 0: every bit of params and state, except that a NaN equals any
NaN (the same elements are NaN; C++ and XLA may give a NaN another sign or payload, as a norm that
is NaN spreads through a leaf).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.kernels import _derived, _native
from tests.helpers import ELEMENTWISE, OPTIMIZERS, REDUCING, chained_adam

CASES = {case.name: case for case in OPTIMIZERS}


@pytest.fixture(autouse=True, scope="module")
def _kernel():
    available, why = _native.status()
    if not available:
        pytest.fail(f"these tests need adamx's native kernel, unavailable here: {why}")


def _tree(dtype) -> dict:
    """A matrix, a vector, a scalar and a leaf longer than one task of the kernel (kChunk)."""
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.standard_normal((7, 5)), dtype),
        "b": jnp.asarray(rng.standard_normal(6), dtype),
        "s": jnp.asarray(0.5, dtype),
        "long": jnp.asarray(rng.standard_normal(40_000), dtype),
    }


def _gradients(params, steps: int) -> list:
    """Random gradients; the second step holds a zero, a NaN and an infinity in "b"."""
    rng = np.random.default_rng(1)
    out = []
    for t in range(steps):
        g = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        if t == 1:
            g["b"] = g["b"].at[:3].set(jnp.asarray([0.0, np.nan, np.inf], g["b"].dtype))
        out.append(g)
    return out


def _bits(x) -> np.ndarray:
    """The bytes of ``x``, every NaN made the same NaN."""
    x = np.asarray(x).reshape(-1)
    if np.issubdtype(x.dtype, np.floating) or x.dtype == jnp.bfloat16:
        x = np.where(np.isnan(x.astype(np.float32)), np.asarray(np.nan, x.dtype), x)
    return x.view(np.uint8)


def _same(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b) or len(leaves_a) != len(leaves_b):
        return False
    return all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(_bits(x), _bits(y))
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def _check_bit_for_bit(tx, params, steps: int = 3) -> None:
    grads = _gradients(params, steps)
    state = tx.init(params)
    assert _derived.why_not(tx, adamx.apply_updates, grads[0], state, params) is None
    p_k, s_k = params, state
    p_r, s_r = params, state
    for g in grads:
        p_k, s_k = adamx.step(tx, g, s_k, p_k, fused=True)
        with jax.disable_jit():
            p_r, s_r = adamx.step(tx, g, s_r, p_r, fused=False)
        assert _same((p_k, s_k), (p_r, s_r))


def _with_storage(case, storage):
    """The case's optimizer with ``mu_dtype`` and ``nu_dtype`` (those it takes) set to
    ``storage``, or ``None`` if it takes neither."""
    call = case.call(case.learning_rate)
    accepted = inspect.signature(call.factory).parameters
    kwargs = {k: storage for k in ("mu_dtype", "nu_dtype") if k in accepted}
    if not kwargs:
        return None
    return call.factory(*call.args, **{**call.kwargs, **kwargs})


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_every_elementwise_optimizer_is_fused_bit_for_bit(name, dtype):
    """Each elementwise optimizer of the registry runs through the derived kernel (`why_not` is
    None, ``fused=True`` does not raise), float32 and bfloat16 params, and equals the jnp path."""
    case = CASES[name]
    _check_bit_for_bit(case.make(case.learning_rate), _tree(dtype))


def _ulps_apart(a, b) -> float:
    """The largest difference between two trees' float leaves, in units of the last place of each
    leaf's largest magnitude (a step's rounding is relative to the values it adds, not to a sum
    that cancels to near zero); NaN where both are NaN counts 0, NaN against a number inf;
    integers exact."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        if not jnp.issubdtype(x.dtype, jnp.floating):
            worst = max(worst, 0.0 if np.array_equal(np.asarray(x), np.asarray(y)) else np.inf)
            continue
        u, v = np.asarray(x, np.float32).reshape(-1), np.asarray(y, np.float32).reshape(-1)
        nan_u, nan_v = np.isnan(u), np.isnan(v)
        if np.any(nan_u != nan_v):
            return np.inf
        u, v = u[~nan_u], v[~nan_u]
        if u.size == 0 or np.array_equal(u, v):
            continue
        eps = 2.0**-7 if x.dtype == jnp.bfloat16 else 2.0**-23
        largest = float(np.max(np.abs(np.concatenate([u, v]))))
        worst = max(worst, float(np.max(np.abs(u - v))) / (eps * largest))
    return worst


@pytest.mark.parametrize("name", REDUCING)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_every_reducing_optimizer_is_fused_within_an_ulp_of_its_sums(name, dtype):
    """Each optimizer whose step reduces a leaf to a scalar first (a mean, a norm: the kernel's
    reduction pass, then its elementwise pass) runs through the derived kernel and takes its
    reductions in C++ (no JAX pass left). Reference: the eager jnp path, one step at a time from
    the same params and state. A max, a min or a count is exact; a float sum is accumulated in
    double, in another order than XLA's float32 sum, so a norm may differ in its last bit and
    with it the step: tolerance 4 ulp of each param and state leaf's largest magnitude (measured:
    at most 1.9, MARS)."""
    case = CASES[name]
    tx, params = case.make(case.learning_rate), _tree(dtype)
    state = tx.init(params)
    plan, _, _ = _derived._prepare(tx, adamx.apply_updates, params, state, params)
    assert plan.reducers and not plan.flat.jax_ops
    assert _derived.why_not(tx, adamx.apply_updates, params, state, params) is None
    worst = 0.0
    for g in _gradients(params, 3):
        fused = adamx.step(tx, g, state, params, fused=True)
        with jax.disable_jit():
            params, state = adamx.step(tx, g, state, params, fused=False)
        worst = max(worst, _ulps_apart(fused, (params, state)))
    assert worst <= 4, worst


STORAGES = {
    "bf16": jnp.bfloat16,
    "sr": adamx.stochastic_bfloat16(),
}


@pytest.mark.parametrize("storage", list(STORAGES), ids=list(STORAGES))
@pytest.mark.parametrize(
    "name",
    [n for n in ELEMENTWISE if _with_storage(CASES[n], jnp.bfloat16) is not None],
)
def test_every_moment_storage_is_fused_bit_for_bit(name, storage):
    """bfloat16 moments rounded to nearest, and stochastically rounded ones (their write counter
    and the hash of each element's index computed inside the program), for every elementwise
    optimizer that takes ``mu_dtype``/``nu_dtype``."""
    tx = _with_storage(CASES[name], STORAGES[storage])
    _check_bit_for_bit(tx, _tree(jnp.float32))


def test_a_chain_a_user_builds_is_the_same_program_as_the_optimizer():
    """AdamW assembled from its blocks lowers to the very program `adamx.adamw` lowers to (one
    compiled loop serves both), whatever the hyperparameters: they arrive as scalars."""
    params = _tree(jnp.float32)

    def keys(tx):
        state = tx.init(params)
        plan, _, _ = _derived._prepare(tx, adamx.apply_updates, params, state, params)
        assert not isinstance(plan, str), plan
        return set(plan.programs)

    built = adamx.chain(
        adamx.ema(0.9),
        adamx.bias_correction(0.9),
        adamx.scale_by_second_moment(0.999, eps=1e-8),
        adamx.add_decayed_weights(1e-2),
        adamx.scale_by_learning_rate(1e-3),
    )
    assert keys(built) == keys(adamx.adamw(1e-3, weight_decay=1e-2))
    assert keys(adamx.adamw(3e-4, b1=0.8, weight_decay=0.1)) == keys(adamx.adamw(1e-3))
    assert keys(chained_adam(1e-3)) == keys(adamx.adam(1e-3))
    _check_bit_for_bit(built, params)


def test_masks_schedules_and_injected_hyperparameters_are_fused():
    """A weight-decay mask gives the decayed and the other leaves each their own program; a
    schedule and `inject_hyperparams` put the learning rate in the scalar part."""
    params = _tree(jnp.float32)
    mask = {"w": True, "b": False, "s": False, "long": True}
    masked = adamx.adamw(1e-2, weight_decay=0.1, mask=mask)
    plan, _, _ = _derived._prepare(masked, adamx.apply_updates, params, masked.init(params), params)
    sizes = {key: {leaf.size for leaf in leaves} for key, leaves in plan.leaves.items()}
    # decayed (w, long), not decayed (b), and the scalar leaf (s: its moments' products by the
    # betas are scalars, which JAX computes), each a program of its own
    assert sorted(sizes.values(), key=min) == [{1}, {6}, {35, 40_000}]
    _check_bit_for_bit(masked, params)
    schedule = adamx.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
    _check_bit_for_bit(adamx.lion(schedule, weight_decay=0.1), params)
    _check_bit_for_bit(adamx.inject_hyperparams(adamx.adamw)(learning_rate=1e-2), params)
    _check_bit_for_bit(adamx.chain(adamx.adamw(1e-2), adamx.kahan_summation()), _tree(jnp.bfloat16))


def test_jitted_and_donated_the_state_is_written_in_place():
    """Under ``jit`` with params and state donated, every optimizer writes its params and moments
    into their own buffers (aliased) and allocates no param-sized temporary. MARS and Adan keep
    the previous gradient, an input passed on: the program writes it over the old one in the
    same pass (else XLA copies both, 16 bytes per param)."""
    n = 1 << 16
    params = {"w": jnp.zeros((n,), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    names = (
        "radam",
        "yogi",
        "adopt",
        "ademamix",
        "sgd_nesterov",
        "lion",
        "rmsprop",
        "mars",
        "adan",
    )
    for name in names:
        tx = CASES[name].make(1e-3)
        step = jax.jit(lambda p, s, g, tx=tx: adamx.step(tx, g, s, p), donate_argnums=(0, 1))
        compiled = step.lower(params, tx.init(params), params).compile()
        assert f'custom_call_target="{_native.DERIVED_TARGET}"' in compiled.as_text(), name
        memory = compiled.memory_analysis()
        state_arrays = [x for x in jax.tree.leaves(tx.init(params)) if jnp.size(x) >= n]
        assert memory.alias_size_in_bytes >= 4 * n * (1 + len(state_arrays)), name
        assert memory.temp_size_in_bytes <= 4096, (name, memory.temp_size_in_bytes)


def test_an_empty_leaf_and_many_leaves():
    """A zero-size leaf is updated by JAX (nothing to do), the others by the kernel; leaves of one
    program go 32 to a call."""
    params = {"e": jnp.zeros((0, 3), jnp.float32), **_tree(jnp.float32)}
    _check_bit_for_bit(adamx.yogi(1e-2), params)
    many = {f"l{i:03d}": jnp.full((i % 5 + 1,), 0.5, jnp.float32) for i in range(70)}
    tx = adamx.adopt(1e-3)
    step = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p, fused=True))
    text = step.lower(many, tx.init(many), many).compile().as_text()
    assert text.count(f'custom_call_target="{_native.DERIVED_TARGET}"') == 3


def test_what_is_not_elementwise_is_named():
    """A reduction of a leaf to an array (Adafactor's row and column means, Muon's matrix
    products), or a transcendental on an array (whose C++ and XLA results may differ in the last
    bit), keeps the step on the jnp path; ``fused=True`` says which equation."""
    matrix = {"w": jnp.ones((256, 128), jnp.float32)}  # large enough for both to act per matrix
    for tx, primitive in ((adamx.adafactor(1e-3), "reduce_sum"), (adamx.muon(1e-3), "dot_general")):
        with pytest.raises(ValueError, match=f"`{primitive}` reduces a leaf to an array"):
            adamx.step(tx, matrix, tx.init(matrix), matrix, fused=True)
    params = _tree(jnp.float32)

    def update(updates, state, params=None):
        return jax.tree.map(lambda g: -1e-3 * jnp.exp(g), updates), state

    exp = adamx.GradientTransformation(lambda params: adamx.EmptyState(), update)
    with pytest.raises(ValueError, match="`exp`"):
        adamx.step(exp, params, exp.init(params), params, fused=True)
    got, _ = adamx.step(exp, params, exp.init(params), params)  # falls back: the jnp path
    want = jax.tree.map(lambda p, g: p - 1e-3 * jnp.exp(g), params, params)
    assert _same(got, want)


def test_a_generated_program_is_cached_by_its_source(tmp_path, monkeypatch):
    """The generated C++ names no hyperparameter, is compiled once into the cache folder under a
    hash of its source, and reads each input and writes each output once per element."""
    params = _tree(jnp.float32)
    tx = adamx.adamw(1e-3, weight_decay=0.1)
    plan, _, _ = _derived._prepare(tx, adamx.apply_updates, params, tx.init(params), params)
    (key,) = [k for k, leaves in plan.leaves.items() if 40_000 in {x.size for x in leaves}]
    program = plan.programs[key]
    body = program.body
    assert "0.1" not in body and "0.9" not in body and "1e-08" not in body
    loop = body.split("for (size_t i")[1]
    for k, slot in enumerate(program.slots):
        assert loop.count(f"b{k}[i]") == int(slot.read) + int(slot.written), (k, slot)
    monkeypatch.setenv("ADAMX_CACHE_DIR", str(tmp_path))
    key = f"test-{program.key}"
    assert _native.program(key, program.source) == key
    built = list(tmp_path.rglob("derived-*.so"))
    assert len(built) == 1
    assert _native.program(key, program.source) == key  # registered: nothing rebuilt
    assert list(tmp_path.rglob("derived-*.so")) == built


# float32 bit patterns at the edges of a bfloat16 rounding: NaNs signalling and quiet with payloads
# (low bits only, high bits only), infinities, subnormals, the largest float (rounds to infinity),
# halfway cases (to even: down, up), and a value just above one.
_EDGES = np.asarray(
    [0x7F800001, 0xFF800123, 0x7FC00000, 0x7FC12345, 0x7FBF0000, 0x7F800000, 0xFF800000, 0x00000001,
     0x807FFFFF, 0x7F7FFFFF, 0x3F808000, 0x3F818000, 0x3F800001, 0x80000000],
    np.uint32,
)  # fmt: skip


def test_the_generated_code_rewrites_keep_every_bit():
    """The generator's rewrites, keyed on the equations' shapes (`_derived.lower`): an element's
    index times a literal (stochastic rounding's hash) is a loop variable stepped by the literal,
    a shift by a literal is C++'s shift (and a shift of ``x ^ (x >> 16)`` by 16 that of ``x``),
    and the bfloat16 rounding of a value known to be NaN is the NaN's quieting alone. Gradients
    that hold NaN payloads, infinities, subnormals and halfway values, in both chunks of the
    long leaf, give the jnp path's every bit (a NaN's sign and payload aside, as everywhere here:
    XLA makes each NaN it converts to bfloat16 0x7fc0, where the kernel quiets it)."""
    params = _tree(jnp.float32)
    sr = adamx.stochastic_bfloat16()
    rounded = adamx.adamw(1e-3, weight_decay=0.1, mu_dtype=sr, nu_dtype=sr)
    plan, _, _ = _derived._prepare(
        rounded, adamx.apply_updates, params, rounded.init(params), params
    )
    (key,) = [k for k, leaves in plan.leaves.items() if 40_000 in {x.size for x in leaves}]
    body = plan.programs[key].body
    assert "k0 += 2654435769u" in body and "(uint32_t)begin * 2654435769u" in body
    assert "shr(" not in body and "shl(" not in body and body.count("rb_nan(") == 2
    edges = _EDGES.view(np.float32)
    for dtype, tx in (
        (jnp.float32, rounded),
        (jnp.float32, adamx.adamw(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)),
        (jnp.bfloat16, rounded),
    ):
        p_k = p_r = _tree(dtype)
        s_k = s_r = tx.init(p_k)
        for t, g in enumerate(_gradients(p_k, 2)):
            long = np.array(g["long"].astype(jnp.float32))
            for start in (0, 32_760):  # the first chunk, and across the second's start
                long[start + t : start + t + edges.size] = edges
            g = {**g, "long": jnp.asarray(long).astype(dtype)}
            p_k, s_k = adamx.step(tx, g, s_k, p_k, fused=True)
            with jax.disable_jit():
                p_r, s_r = adamx.step(tx, g, s_r, p_r, fused=False)
            assert _same((p_k, s_k), (p_r, s_r))


def test_the_rewrites_are_keyed_on_shapes_not_on_an_optimizer():
    """The same rewrites in a transformation of a user's: an int32 index times a literal (wrapping),
    a left shift of ``u ^ (u << 20)`` by 13, a shift by 40 (0, as XLA shifts), a shift that the
    rule must leave alone (``a + b < 32``), and the NaN case of a `where` on ``v == v``."""

    def update(updates, state, params=None):
        def one(g):
            index = jnp.arange(g.size, dtype=jnp.int32).reshape(g.shape) * jnp.int32(-1640531527)
            u = jax.lax.bitcast_convert_type(index, jnp.uint32)
            bits = ((u ^ (u << 20)) << 13) ^ (u >> 40) ^ ((u ^ (u >> 7)) >> 3)
            v = g + bits.astype(jnp.float32) * 1e-12
            rounded = jnp.where(v == v, (2 * v).astype(jnp.bfloat16), v.astype(jnp.bfloat16))
            return -1e-3 * rounded.astype(jnp.float32)

        return jax.tree.map(one, updates), state

    tx = adamx.GradientTransformation(lambda params: adamx.EmptyState(), update)
    params = _tree(jnp.float32)
    plan, _, _ = _derived._prepare(tx, adamx.apply_updates, params, tx.init(params), params)
    (key,) = [k for k, leaves in plan.leaves.items() if 40_000 in {x.size for x in leaves}]
    body = plan.programs[key].body
    assert "k0 += 2654435769u" in body and "(int32_t)k0" in body and "rb_nan(" in body
    assert "shl(" not in body and "shr(" not in body and " = 0u;" in body
    _check_bit_for_bit(tx, params)


def test_a_reduction_that_reads_another_takes_a_pass_after_it():
    """A user's transformation whose sum reads a max of the same leaf directly: two reduction
    passes, the max's first (else the sum would read a scalar nothing has computed). Reference:
    the eager jnp path; tolerance 4 ulp of the leaf's magnitude (the sum's order)."""

    def update(grads, state, params=None):
        def one(x):
            largest = jnp.max(jnp.abs(x))
            total = jnp.sum(jnp.abs(x) * largest)
            return -1e-3 * x / (total + 1.0)

        return jax.tree.map(one, grads), state

    tx = adamx.GradientTransformation(lambda params: (), update)
    params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal(50_000), jnp.float32)}
    plan, _, _ = _derived._prepare(tx, adamx.apply_updates, params, (), params)
    assert len(plan.reducers) == 2 and not plan.flat.jax_ops
    got = adamx.step(tx, params, (), params, fused=True)
    with jax.disable_jit():
        want = adamx.step(tx, params, (), params, fused=False)
    assert _ulps_apart(got, want) <= 4


_KINDS = {  # each reduction the kernel compiles (`_derived._REDUCERS`), and numpy's
    "sum": (jnp.sum, lambda x: x.astype(np.float64).sum()),
    "max": (jnp.max, np.max),
    "min": (jnp.min, np.min),
    "and": (lambda x: jnp.all(x > -3.0), lambda x: np.all(x > -3.0)),
    "or": (lambda x: jnp.any(x > 3.0), lambda x: np.any(x > 3.0)),
}


@pytest.mark.parametrize("where", [None, 0, 4_099, 39_999], ids=["none", "first", "in", "last"])
def test_every_reduction_kind_matches_numpy_and_keeps_a_nan(where):
    """Each reduction kind over a leaf longer than a task, with no NaN, or one NaN first, inside a
    block or last: the step adds the reduced scalar to zero params, so the new params are the
    scalar itself. Reference: numpy on the same float32 values; a max, min, and, or exact (a NaN
    anywhere makes a max or min NaN, XLA's semantics); a sum within 1 ulp of the float64 sum
    (the kernel accumulates in double)."""

    def update(grads, state, params=None):
        out = {
            k: jnp.broadcast_to(_KINDS[k][0](g).astype(g.dtype), g.shape) for k, g in grads.items()
        }
        return out, state

    tx = adamx.GradientTransformation(lambda params: (), update)
    x = np.random.default_rng(2).standard_normal(40_000).astype(np.float32)
    if where is not None:
        x[where] = np.nan
    grads = {k: jnp.asarray(x) for k in _KINDS}
    params = {k: jnp.zeros_like(x) for k in _KINDS}
    plan, _, _ = _derived._prepare(tx, adamx.apply_updates, grads, (), params)
    assert not plan.flat.jax_ops
    assert sorted(k for _, r in plan.reducers for k in r.kinds) == list(range(len(_KINDS)))
    got, _ = adamx.step(tx, grads, (), params, fused=True)
    for kind, (_, reference) in _KINDS.items():
        values, want = np.asarray(got[kind]), np.float32(reference(x))
        assert np.all(values == values[0]) or np.all(np.isnan(values)), kind
        if np.isnan(want) or kind != "sum":
            np.testing.assert_array_equal(values[0], want, err_msg=kind)
        else:
            assert abs(values[0] - reference(x)) <= np.spacing(abs(want)), (kind, values[0], want)


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_integer_max_and_min_are_exact_at_the_extremes(dtype):
    """A max and a min of integers over a leaf longer than a task, compared in the integers' own
    type (no conversion), with the type's lowest and highest values inside: the step adds each
    result, as float32, to zero params. Reference: numpy's max and min of the same integers,
    exact."""
    info = np.iinfo(dtype)
    ints = np.random.default_rng(3).integers(info.min // 4, info.max // 4, 40_000).astype(dtype)
    ints[17_000], ints[39_999] = info.min, info.max

    def update(grads, state, params=None):
        i = jax.lax.bitcast_convert_type(grads["max"], dtype)
        out = {"max": jnp.max(i), "min": jnp.min(i)}
        return {
            k: jnp.broadcast_to(v.astype(jnp.float32), (40_000,)) for k, v in out.items()
        }, state

    tx = adamx.GradientTransformation(lambda params: (), update)
    x = jax.lax.bitcast_convert_type(jnp.asarray(ints), jnp.float32)
    grads = {"max": x, "min": x}
    params = {k: jnp.zeros(40_000, jnp.float32) for k in grads}
    plan, _, _ = _derived._prepare(tx, adamx.apply_updates, grads, (), params)
    assert not plan.flat.jax_ops and plan.reducers
    got, _ = adamx.step(tx, grads, (), params, fused=True)
    assert np.all(np.asarray(got["max"]) == np.float32(ints.max()))
    assert np.all(np.asarray(got["min"]) == np.float32(ints.min()))


@pytest.mark.parametrize("scale", [1.0, 1e30, np.inf], ids=["plain", "overflowing", "inf"])
def test_global_norm_clipping_is_fused_with_its_overflow_branch(scale):
    """`clip_by_global_norm` before AdamW: `global_norm` chooses, in a ``lax.cond``, between the
    plain sum of squares and, where it overflowed, the sum rescaled by the largest magnitude; the
    kernel takes the plain sum (and the maximum, in the same pass) before the step and the
    rescaled sum's pass inside a ``lax.switch``, run only where the squares overflowed. With
    gradients of 1e30 (squares overflow: the rescaled branch) and with an infinite element.
    Reference: the eager jnp path; tolerance 4 ulp of each leaf's magnitude (the sums' order),
    the same elements NaN."""
    tx = adamx.chain(adamx.clip_by_global_norm(1.0), adamx.adamw(1e-2, weight_decay=0.1))
    params = _tree(jnp.float32)
    state = tx.init(params)
    grads = jax.tree.map(lambda x: x * np.float32(min(scale, 1e30)), _gradients(params, 1)[0])
    if np.isinf(scale):
        grads["long"] = grads["long"].at[7].set(np.inf)
    plan, _, _ = _derived._prepare(tx, adamx.apply_updates, grads, state, params)
    assert _derived.why_not(tx, adamx.apply_updates, grads, state, params) is None
    assert plan.reducers and not plan.flat.jax_ops
    fused = adamx.step(tx, grads, state, params, fused=True)
    with jax.disable_jit():
        want = adamx.step(tx, grads, state, params, fused=False)
    assert _ulps_apart(fused, want) <= 4
    # The rescaled sum's pass is inside the switch (a region, indented deeper than the step's
    # own operations), the plain sum's outside it.
    text = jax.jit(lambda g, s, p: adamx.step(tx, g, s, p, fused=True)).lower(grads, state, params)
    before, switch = text.as_text().split('"stablehlo.case"', 1)
    calls = [line for line in switch.splitlines() if "adamx_derived_reduce" in line]
    assert "adamx_derived_reduce" in before and calls
    assert all(line.startswith("      %") for line in calls), calls
