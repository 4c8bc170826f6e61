"""`adamx.flatten`: a tree's leaves in a few 1-D buffers (adamx/distributed/_flat.py, docs/design.md 9).

The reference for every trajectory here is the same optimizer on the original tree. An elementwise
optimizer computes the same operations on each element whether it sits in its own leaf or in a
buffer shared with others, so the flat run must equal the tree run **bit for bit** (tolerance 0),
through the fused kernel, the jitted jnp path and the eager jnp path alike.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.distributed import _flat
from adamx.kernels import _native

NATIVE = _native.status()[0]


def _tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def normal(*shape, dtype=jnp.float32):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype)

    return {
        "dense": {"kernel": normal(5, 3), "bias": normal(3)},
        "embed": normal(7, 2),
        "norm": {"scale": normal(2, dtype=jnp.bfloat16)},
        "head": [normal(2, 4), normal(4), normal()],
        "empty": normal(0, 3),
    }


def _is_matrix(p):
    return jax.tree.map(lambda x: x.ndim > 1, p)


def _assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(e, np.float32))


# ---- the layout ----------------------------------------------------------------------------------


def test_unflatten_gives_the_tree_back():
    params = _tree()
    flat = adamx.flatten(params)
    assert sorted(flat.buffers) == ["bfloat16", "float32"]
    assert flat.buffers["float32"].shape == (15 + 3 + 14 + 8 + 4 + 1,)
    assert flat.buffers["bfloat16"].shape == (2,)
    _assert_trees_equal(flat.unflatten(), params)
    _assert_trees_equal(jax.jit(lambda f: f.unflatten())(flat), params)


def test_groups_split_the_buffers_by_label_and_dtype():
    flat = adamx.flatten(_tree(), group=_is_matrix)
    assert flat.layout.keys == ("False/float32", "True/float32", "False/bfloat16")
    assert flat.buffers["True/float32"].shape == (15 + 14 + 8,)
    _assert_trees_equal(flat.unflatten(), _tree())
    # a prefix of the tree labels whole subtrees
    prefix = {"dense": "a", "embed": "b", "norm": "a", "head": "b", "empty": "b"}
    flat = adamx.flatten(_tree(), group=prefix)
    assert set(flat.buffers) == {"a/float32", "a/bfloat16", "b/float32"}
    assert flat.buffers["a/float32"].shape == (18,)


def test_a_flat_tree_is_a_pytree_of_its_buffers():
    flat = adamx.flatten(_tree())
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(flat)[0]]
    assert paths == ["['float32']", "['bfloat16']"]
    doubled = jax.tree.map(lambda x: 2 * x, flat)
    _assert_trees_equal(doubled.unflatten(), jax.tree.map(lambda x: 2 * x, _tree()))
    assert repr(flat) == "FlatParams({float32: (45,), bfloat16: (2,)}, 8 leaves)"


def test_the_gradient_through_unflatten_is_flat_and_equals_the_trees():
    params = _tree()

    def loss(tree):
        return sum(jnp.sum(jnp.sin(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))

    flat_grad = jax.grad(lambda f: loss(f.unflatten()))(adamx.flatten(params))
    assert isinstance(flat_grad, adamx.FlatParams)
    _assert_trees_equal(flat_grad.unflatten(), jax.grad(loss)(params))
    text = jax.jit(jax.grad(lambda f: loss(f.unflatten()))).lower(adamx.flatten(params)).as_text()
    assert "pad" not in text  # the slices' transpose is one concatenation, not a sum of pads


SIZES = [3, 0, 5, 1, 7]  # with an empty piece


@pytest.mark.skipif(not NATIVE, reason=f"native library unavailable: {_native.status()[1]}")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int32", "int8", "complex64"])
def test_the_native_split_equals_lax_split(dtype):
    # Reference: jax.lax.split, the path taken without the native library; tolerance 0 (a copy).
    buffer = jnp.asarray(np.arange(16) * 3 - 20).astype(dtype)
    expected = jax.lax.split(buffer, SIZES)
    for actual in (
        _flat._native_split(buffer, tuple(SIZES)),
        jax.jit(_flat._split, static_argnums=1)(buffer, tuple(SIZES)),
    ):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert a.dtype == e.dtype and a.shape == e.shape
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


@pytest.mark.skipif(not NATIVE, reason=f"native library unavailable: {_native.status()[1]}")
def test_the_native_split_differentiates_and_batches_like_lax_split():
    # Reference: the same function through jax.lax.split, jitted alike; tolerance 0 (the same
    # operations: only the forward split differs, and it copies).
    buffer = jnp.linspace(-2.0, 3.0, 16, dtype=jnp.float32)
    weights = jnp.arange(1.0, 6.0)

    def loss(split, b):
        return sum(
            w * jnp.sum(jnp.sin(p) * p) for w, p in zip(weights, split(b, SIZES), strict=True)
        )

    native = functools.partial(loss, lambda b, s: _flat._native_split(b, tuple(s)))
    reference = functools.partial(loss, jax.lax.split)
    np.testing.assert_array_equal(
        jax.jit(jax.grad(native))(buffer), jax.jit(jax.grad(reference))(buffer)
    )
    tangent = jnp.cos(buffer)
    for a, e in zip(
        jax.jvp(native, (buffer,), (tangent,)),
        jax.jvp(reference, (buffer,), (tangent,)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(jax.hessian(native)(buffer), jax.hessian(reference)(buffer))
    batch = jnp.stack([buffer, 2 * buffer, -buffer])
    actual = jax.vmap(lambda b: _flat._native_split(b, tuple(SIZES)))(batch)
    for a, e in zip(actual, jax.vmap(lambda b: jax.lax.split(b, SIZES))(batch), strict=True):
        assert a.shape == e.shape
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(
        jax.vmap(jax.grad(native))(batch), jax.vmap(jax.grad(reference))(batch)
    )

    # An integer buffer has no tangent: its pieces come out, and nothing flows back through them.
    def through_integers(b):
        pieces = _flat._native_split(jnp.round(b).astype(jnp.int32), tuple(SIZES))
        return sum(jnp.sum(p.astype(jnp.float32)) for p in pieces) + jnp.sum(b)

    np.testing.assert_array_equal(jax.grad(through_integers)(buffer), np.ones(16, np.float32))


@pytest.mark.skipif(not NATIVE, reason=f"native library unavailable: {_native.status()[1]}")
def test_unflatten_on_cpu_is_one_call_and_lax_split_without_the_library(monkeypatch):
    # XLA:CPU compiles jax.lax.split into one kernel per leaf; the native call is one kernel.
    # The rule depends on the device count, so it is patched here: one device, then two.
    flat = adamx.flatten({"a": jnp.ones((4, 3)), "b": jnp.ones(5), "c": jnp.ones((2, 2))})
    assert jax.device_count() == 1  # the suite's own process (conftest.py: collect_ignore)

    def lowered():
        return jax.jit(lambda f: f.unflatten()).lower(flat).as_text()

    monkeypatch.setattr(_flat.jax, "device_count", lambda: 1)
    text = lowered()
    assert text.count(_native.SPLIT_TARGET) == 1 and "slice" not in text
    # More than one device: inside jit the buffer's sharding is unknown, so lax.split keeps the
    # pieces where it lives; a concrete buffer that is whole on its device may take the call.
    monkeypatch.setattr(_flat.jax, "device_count", lambda: 2)
    assert _native.SPLIT_TARGET not in lowered()
    assert _flat._native_split_usable(flat.buffers["float32"])
    # Without the library: lax.split.
    monkeypatch.setattr(_flat.jax, "device_count", lambda: 1)
    monkeypatch.setattr(_flat, "_native_split_usable", lambda buffer: False)
    assert _native.SPLIT_TARGET not in lowered()
    tree = flat.unflatten()
    assert jax.tree.map(jnp.shape, tree) == {"a": (4, 3), "b": (5,), "c": (2, 2)}


def test_a_sharded_buffer_is_split_where_it_lives():
    # The native split has no sharding rule (XLA would gather the buffer for it): with more than
    # one device, a buffer inside jit takes jax.lax.split, and its leaves stay sharded.
    code = """
import jax, jax.numpy as jnp, numpy as np, adamx
from jax.sharding import NamedSharding, PartitionSpec as P
tree = {"a": jnp.arange(64.0).reshape(8, 8), "b": jnp.arange(16.0)}
mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
flat = jax.device_put(adamx.flatten(tree), NamedSharding(mesh, P("d")))
with jax.set_mesh(mesh):
    out = jax.jit(lambda f: f.unflatten())(flat)
    text = jax.jit(lambda f: f.unflatten()).lower(flat).as_text()
assert "adamx_split" not in text, text
assert out["a"].sharding.spec == P("d", None) and out["b"].sharding.spec == P("d"), out
for k in tree:
    np.testing.assert_array_equal(out[k], tree[k])
replicated = jax.device_put(adamx.flatten(tree), NamedSharding(mesh, P()))
np.testing.assert_array_equal(replicated.unflatten()["a"], tree["a"])  # eager: the native call
"""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="already flat"):
        adamx.flatten(adamx.flatten(_tree()))
    with pytest.raises(TypeError, match=r"got a list at \['a'\].*|convert it"):
        adamx.flatten({"a": [1.0]} | {"b": object()})
    with pytest.raises(ValueError, match="structure of the params"):
        adamx.flatten({"a": jnp.ones(2)}, group={"b": True})
    with pytest.raises(TypeError, match="must be static"):
        adamx.flatten({"a": jnp.ones(2)}, group={"a": 1.5})


# ---- optimizers on flat params -------------------------------------------------------------------

ELEMENTWISE = {
    "adam": lambda: adamx.adam(1e-2),
    "adamw_mask": lambda: adamx.adamw(1e-2, weight_decay=0.1, mask=_is_matrix),
    "nadamw_mask_tree": lambda: adamx.nadamw(
        1e-2,
        weight_decay=0.1,
        mask={
            "dense": {"kernel": True, "bias": False},
            "embed": True,
            "norm": {"scale": False},
            "head": [True, False, False],
            "empty": True,
        },
    ),
    "adamax": lambda: adamx.adamax(1e-2),
    "lion": lambda: adamx.lion(1e-3, weight_decay=0.1, mask=_is_matrix),
    "radam": lambda: adamx.radam(1e-2),
    "adabelief": lambda: adamx.adabelief(1e-2),
    "amsgrad": lambda: adamx.amsgrad(1e-2),
}


def _grads(seed, params):
    rng = np.random.default_rng(100 + seed)
    return jax.tree.map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape, dtype=np.float32), x.dtype), params
    )


def _run(tx, params, steps, *, fused, jit, flat):
    state = tx.init(adamx.flatten(params, group=_is_matrix) if flat else params)
    current = adamx.flatten(params, group=_is_matrix) if flat else params

    def one(p, s, g):
        return adamx.step(tx, g, s, p, fused=fused)

    step = jax.jit(one) if jit else one
    for t in range(steps):
        g = _grads(t, params)
        current, state = step(current, state, adamx.flatten(g, group=_is_matrix) if flat else g)
    return (current.unflatten() if flat else current), state


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
@pytest.mark.parametrize("mode", ["fused", "jit", "eager"])
def test_a_flat_trajectory_equals_the_tree_trajectory_bit_for_bit(name, mode):
    """Reference: the same optimizer on the tree, the same path; tolerance 0."""
    if mode == "fused" and not NATIVE:
        pytest.skip(f"native kernel unavailable: {_native.status()[1]}")
    tx = ELEMENTWISE[name]()
    fused = {"fused": None, "jit": False, "eager": False}[mode]
    params = _tree()
    flat_params, flat_state = _run(tx, params, 4, fused=fused, jit=mode != "eager", flat=True)
    tree_params, _ = _run(tx, params, 4, fused=fused, jit=mode != "eager", flat=False)
    _assert_trees_equal(flat_params, tree_params)
    assert all(isinstance(x, adamx.FlatParams) or jnp.ndim(x) == 0 for x in _moments(flat_state))


def _moments(state):
    return jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, adamx.FlatParams))


@pytest.mark.skipif(not NATIVE, reason="the fused kernel is not available")
def test_the_fused_kernel_takes_the_flat_step():
    tx = adamx.adamw(1e-2, mask=_is_matrix)
    flat = adamx.flatten(_tree(), group=_is_matrix)
    assert (
        adamx.kernels._derived.why_not(tx, adamx.apply_updates, flat, tx.init(flat), flat) is None
    )
    text = jax.jit(lambda p, s, g: adamx.step(tx, g, s, p, fused=True)).lower(
        flat, tx.init(flat), flat
    )
    # One call per program of the derived kernel: the decayed float32 buffer, the undecayed one and
    # the bfloat16 one each have their own (adamx/kernels/_derived.py).
    plan, _, _ = adamx.kernels._derived._prepare(tx, adamx.apply_updates, flat, tx.init(flat), flat)
    assert len(plan.programs) == 3
    assert text.as_text().count("custom_call") == len(plan.programs)


def test_a_mask_that_splits_a_buffer_is_an_error_naming_the_fix():
    tx = adamx.adamw(1e-2, mask=_is_matrix)
    flat = adamx.flatten(_tree())  # matrices and vectors share the float32 buffer
    state = tx.init(flat)
    with pytest.raises(ValueError, match=r"'float32'.*adamx.flatten\(params, group=mask\)"):
        adamx.step(tx, flat, state, flat)
    with pytest.raises(ValueError, match="group=mask"):
        tx.update(flat, state, flat)


def test_a_mask_may_be_given_per_buffer():
    flat = adamx.flatten(_tree(), group=_is_matrix)
    per_buffer = jax.tree.map(lambda _: True, flat)
    per_buffer.buffers["False/float32"] = False
    per_buffer.buffers["False/bfloat16"] = False
    by_tree = adamx.adamw(1e-2, weight_decay=0.5, mask=_is_matrix)
    by_buffer = adamx.adamw(1e-2, weight_decay=0.5, mask=per_buffer)
    a, _ = adamx.step(by_tree, flat, by_tree.init(flat), flat, fused=False)
    b, _ = adamx.step(by_buffer, flat, by_buffer.init(flat), flat, fused=False)
    _assert_trees_equal(a.unflatten(), b.unflatten())


def test_partition_labels_resolve_per_buffer():
    labels = lambda p: jax.tree.map(lambda x: "matrix" if x.ndim > 1 else "other", p)  # noqa: E731
    tx = adamx.partition({"matrix": adamx.adam(1e-2), "other": adamx.sgd(1e-1)}, labels)
    params = _tree()
    flat = adamx.flatten(params, group=labels)
    g = _grads(0, params)
    new_flat, _ = adamx.step(tx, adamx.flatten(g, group=labels), tx.init(flat), flat)
    new_tree, _ = adamx.step(tx, g, tx.init(params), params)
    _assert_trees_equal(new_flat.unflatten(), new_tree)


def test_make_train_step_on_flat_params_equals_the_tree_and_keeps_few_arrays():
    params = _tree()
    x = jnp.linspace(-1.0, 1.0, 5)

    def loss_tree(p, x):
        h = jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"])
        return jnp.sum(h * p["norm"]["scale"][0].astype(jnp.float32)) + jnp.sum(p["embed"] ** 2)

    tx = adamx.adamw(1e-2, mask=_is_matrix)
    tree_step = adamx.make_train_step(loss_tree, tx)
    flat_step = adamx.make_train_step(lambda f, x: loss_tree(f.unflatten(), x), tx)
    p, s = jax.tree.map(jnp.array, params), tx.init(params)
    f = adamx.flatten(params, group=_is_matrix)
    fs = tx.init(f)
    # Reference: the same train step on the tree. The optimizer's arithmetic is the same (tested
    # bit for bit above), but XLA compiles the model's reductions over slices of a buffer with
    # another summation order: measured 1 ulp of the loss. Tolerance: 4 float32 ulps (rtol 5e-7).
    for _ in range(3):
        p, s, tree_loss = tree_step(p, s, x)
        f, fs, flat_loss = flat_step(f, fs, x)
        np.testing.assert_allclose(float(flat_loss), float(tree_loss), rtol=5e-7)
    for a, e in zip(jax.tree.leaves(f.unflatten()), jax.tree.leaves(p), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), rtol=5e-7)
    assert len(jax.tree.leaves(fs)) < len(jax.tree.leaves(s))


@pytest.mark.filterwarnings("ignore")  # Orbax's own deprecation and async notices
def test_orbax_saves_and_restores_flat_params_and_state(tmp_path):
    """Reference: the values saved; tolerance 0."""
    ocp = pytest.importorskip("orbax.checkpoint")
    tx = adamx.adamw(1e-2, mask=_is_matrix)
    flat = adamx.flatten(_tree(), group=_is_matrix)
    flat, state = adamx.step(tx, flat, tx.init(flat), flat)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", (flat, state))
    checkpointer.wait_until_finished()
    target = jax.eval_shape(lambda: (flat, state))
    restored = checkpointer.restore(tmp_path / "ckpt", target)
    checkpointer.close()
    restored = jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(restored))
    assert isinstance(restored[0], adamx.FlatParams)
    _assert_trees_equal(restored, (flat, state))
