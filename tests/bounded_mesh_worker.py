"""The 4-device side of tests/test_bounded_mesh.py: run in its own process, print one JSON object.

JAX fixes its device count when it starts, so ``tests/test_bounded_mesh.py`` runs
``python -m tests.bounded_mesh_worker`` with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
and ``JAX_PLATFORMS=cpu``, and asserts on the JSON. Nothing is asserted here.

* ``memory``: per case, the temporaries per device of the jitted, donated step in bytes
  (``memory_analysis()``, compiled on ``ShapeDtypeStruct``s, nothing run), ``update`` +
  ``apply_updates`` and `adamx.step` without the kernel, on a mesh of 4 ``Explicit`` devices,
  with the params of a device's shard (``local``);
* ``numbers``: per storage, jitted steps (each leaf per shard where it can be) against the eager
  jnp path (op by op) on the same mesh, from the same inputs each step: the largest difference of
  params, float state and scales in ulp, the share of codes that differ, the leaves run per shard
  (``shard_map``s in the trace), and whether every state leaf kept its sharding (and the params
  theirs). The ZeRO-1 case (``8bit-zero1``): a replicated matrix, its state split by
  `adamx.zero1_shardings`.
"""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import adamx  # noqa: E402
from adamx.kernels import _bounded, _derived  # noqa: E402
from tests.test_derived import _ulps_apart  # noqa: E402

DEVICES = 4
LOCAL = 1 << 22  # params per device in the memory cases (16 MiB of float32)


def _update_apply(tx):
    def fn(p, s, g):
        updates, s = tx.update(g, s, p)
        return adamx.apply_updates(p, updates), s

    return fn


def _step(tx):
    def fn(p, s, g):
        return adamx.step(tx, g, s, p)

    return fn


def _placed(tx, specs: dict, shapes: dict, mesh, zero1: bool = False) -> tuple[dict, object]:
    like = {
        k: jax.ShapeDtypeStruct(shapes[k], jnp.float32, sharding=NamedSharding(mesh, specs[k]))
        for k in shapes
    }
    shardings = (
        adamx.zero1_shardings(tx, like, "model") if zero1 else adamx.state_shardings(tx, like)
    )
    state = jax.tree.map(
        lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h),
        jax.eval_shape(tx.init, like),
        shardings,
    )
    return like, state


def memory() -> dict:
    """Temporaries per device, bytes per param of a device's shard."""
    side = int(math.isqrt(LOCAL * DEVICES))
    rows = {"w": P("model", None)}
    cases = {
        "8bit": (adamx.low_bit_moments(8), rows, {"w": (side, side)}),
        "8bit-16": (
            adamx.low_bit_moments(8),
            {f"w{i:02d}": P("model", None) for i in range(16)},
            {f"w{i:02d}": (side // 4, side) for i in range(16)},
        ),
        "4bit": (
            {"mu_dtype": adamx.blockwise_4bit(True), "nu_dtype": adamx.blockwise_4bit(False)},
            rows,
            {"w": (side, side)},
        ),
        "4bit-rank1": (adamx.low_bit_moments(4), rows, {"w": (side, side)}),
        # ZeRO-1: the params whole on every device, the state split over them (its codes' blocks
        # over the mesh axis): each device updates its slice; the new params are gathered.
        "8bit-zero1": (adamx.low_bit_moments(8), {"w": P()}, {"w": (side, side)}),
    }
    _derived._unavailable = lambda: "the bounded path is measured"
    out: dict = {}
    mesh = jax.make_mesh((DEVICES,), ("model",), axis_types=(AxisType.Explicit,))
    for name, (storage, specs, shapes) in cases.items():
        tx = adamx.adamw(1e-3, weight_decay=0.1, **storage)
        like, state = _placed(tx, specs, shapes, mesh, zero1=name.endswith("zero1"))
        local = sum(math.prod(s) for s in shapes.values()) // DEVICES
        row: dict = {"local": local}
        for path, fn in (("update", _update_apply(tx)), ("step", _step(tx))):
            with jax.set_mesh(mesh):
                compiled = jax.jit(fn, donate_argnums=(0, 1)).lower(like, state, like).compile()
            row[path] = compiled.memory_analysis().temp_size_in_bytes
        out[name] = row
    return out


def _params(mesh) -> tuple[dict, dict]:
    """Leaves of several chunks per shard (chunks of 1024 elements): rows split ("rows", "vec"),
    a stack of layers split by layer ("layers"), a matrix split on its last axis ("cols": the
    codes kept whole, one piece), and one whose shards end inside a block ("partial": 5000
    elements in blocks of 256, 1250 a device, one piece)."""
    rng = np.random.default_rng(0)
    shapes = {
        "rows": ((64, 96), P("model", None)),
        "vec": ((8192,), P("model")),
        "layers": ((4, 24, 256), P("model", None, None)),
        "cols": ((64, 96), P(None, "model")),
        "partial": ((4, 1250), P("model", None)),
    }
    params = {
        k: jax.device_put(
            jnp.asarray(rng.standard_normal(shape), jnp.float32), NamedSharding(mesh, spec)
        )
        for k, (shape, spec) in shapes.items()
    }
    return params, {k: spec for k, (_, spec) in shapes.items()}


def _gradients(params: dict, steps: int) -> list:
    rng = np.random.default_rng(1)
    out = []
    for t in range(steps):
        host = {k: rng.standard_normal(p.shape).astype(np.float32) for k, p in params.items()}
        if t == 1:  # a NaN (its block's, or its row's and column's, scales turn NaN)
            host[min(host)][3, 5] = np.nan  # ("big", or "rows")
        out.append({k: jax.device_put(host[k], p.sharding) for k, p in params.items()})
    return out


def _stacked(leaf) -> int:
    return 1 if jnp.ndim(leaf) == 3 else 0


def _split(tree) -> tuple:
    """``(plain, codes, scales)``: the stored moments' codes (a stochastically rounded moment's
    bfloat16 values, whose rounding draws on each element's index) apart, to count those that
    differ; their scales and the rest, to compare in ulp."""
    stored = (adamx.QuantizedBuffer, adamx.RoundedBuffer)
    is_s = lambda x: isinstance(x, stored)  # noqa: E731
    plain = jax.tree.map(lambda x: None if is_s(x) else x, tree, is_leaf=is_s)
    moments = [x for x in jax.tree.leaves(tree, is_leaf=is_s) if is_s(x)]
    codes = [x.codes if isinstance(x, adamx.QuantizedBuffer) else x.value for x in moments]
    scales = [x.scales if isinstance(x, adamx.QuantizedBuffer) else x.counter for x in moments]
    return plain, codes, scales


def _specs(tree) -> list:
    return [
        tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
        for x in jax.tree.leaves(tree)
    ]


def _compare(fn, params, state, grads) -> dict:
    """``fn`` jitted against ``fn`` eager (op by op), step by step from the same inputs."""
    p, s = params, state
    worst, codes_apart, kept, kept_params = 0.0, 0.0, True, True
    jitted = jax.jit(fn)
    traced = str(jax.make_jaxpr(fn)(p, s, grads[0]))
    for g in grads:
        p_j, s_j = jitted(p, s, g)
        kept_params = kept_params and _specs(p_j) == _specs(p)
        kept = kept and _specs(s_j) == _specs(s)
        with jax.disable_jit():
            p, s = fn(p, s, g)
        plain_j, codes_j, scales_j = _split((p_j, s_j))
        plain_e, codes_e, scales_e = _split((p, s))
        with np.errstate(invalid="ignore"):
            worst = max(worst, _ulps_apart((plain_j, scales_j), (plain_e, scales_e)))
        for x, y in zip(codes_j, codes_e, strict=True):
            apart = np.asarray(x) != np.asarray(y)
            codes_apart = max(codes_apart, float(np.mean(apart)))
    return {
        "ulps": worst,
        "codes_apart": codes_apart,
        "per_shard": traced.count("shard_map"),
        "kept_sharding": kept,
        "kept_params_sharding": kept_params,
    }


def two_axes() -> dict:
    """A 2 x 2 mesh (``data`` x ``model``), `apply_if_finite` around 8-bit AdamW (its step in a
    ``lax.cond``), the same optimizer with `adamx.state_shardings` and then with
    `adamx.zero1_shardings` over ``data`` (a plan is kept per sharding, not per shape): a matrix
    split by rows over ``model`` (per shard), one split on its last axis (in one piece; under
    ZeRO-1 its codes split by rows over ``data``), one split by rows over ``data``; and under
    ZeRO-1 the chain itself, through `adamx.step`."""
    _bounded.CHUNK = 1024
    _bounded._narrow_in_place = lambda: False
    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    specs = {"a": P("model", None), "c": P(None, "model"), "d": P("data", None)}
    rng = np.random.default_rng(5)
    params = {
        k: jax.device_put(
            rng.standard_normal((128, 256)).astype(np.float32), NamedSharding(mesh, v)
        )
        for k, v in specs.items()
    }
    storage = {
        "mu_dtype": adamx.blockwise_8bit(True, min_size=0),
        "nu_dtype": adamx.blockwise_8bit(False, min_size=0),
    }
    plain = adamx.adamw(1e-3, weight_decay=0.1, **storage)
    tx = adamx.apply_if_finite(plain, 3)
    out: dict = {}
    with jax.set_mesh(mesh):
        for layout in ("model", "zero1", "zero1-chain"):
            if layout == "zero1-chain":  # the chain itself: each leaf's params placed as they were
                tx = plain
            if layout != "model":
                shardings = adamx.zero1_shardings(tx, params, "data")
            else:
                shardings = adamx.state_shardings(tx, params)
            state = adamx.init_sharded(tx, params, shardings)
            out[f"2d/{layout}"] = _compare(_step(tx), params, state, _gradients(params, 3))
            out[f"2d/{layout}"]["codes_specs"] = [
                str(x.codes.sharding.spec)
                for x in jax.tree.leaves(
                    state, is_leaf=lambda x: isinstance(x, adamx.QuantizedBuffer)
                )
                if isinstance(x, adamx.QuantizedBuffer)
            ]
    return out


def wrappers() -> dict:
    """`apply_if_finite` and `MultiSteps` (each a ``lax.cond``) around float32 AdamW on a mesh of
    ``Explicit`` axes, jitted: the error, if any, and whether the state kept its sharding."""
    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    host = np.random.default_rng(6).standard_normal((64, 32)).astype(np.float32)
    params = {"w": jax.device_put(host, NamedSharding(mesh, P("model", None)))}
    out: dict = {}
    for name, tx in (
        ("apply_if_finite", adamx.apply_if_finite(adamx.adamw(1e-3), 3)),
        ("MultiSteps", adamx.MultiSteps(adamx.adamw(1e-3), 2)),
    ):
        with jax.set_mesh(mesh):
            state = tx.init(params)
            try:
                p, s = params, state
                for _ in range(2):
                    p, s = jax.jit(_step(tx))(p, s, params)
                out[name] = {"error": None, "kept_sharding": _specs(s) == _specs(state)}
            except Exception as error:  # reported, not raised
                out[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
    return out


def numbers() -> dict:
    """Jitted steps (per shard where a leaf can be) against eager ones, on one mesh."""
    _bounded.CHUNK = 1024
    _derived._unavailable = lambda: "the bounded path is measured"
    mesh = jax.make_mesh((DEVICES,), ("model",), axis_types=(AxisType.Explicit,))
    storages = {
        "8bit": {
            "mu_dtype": adamx.blockwise_8bit(True, min_size=0, batch_dims=_stacked),
            "nu_dtype": adamx.blockwise_8bit(False, min_size=0, batch_dims=_stacked),
        },
        "4bit-rank1": {
            "mu_dtype": adamx.blockwise_4bit(True, min_size=0, batch_dims=_stacked),
            "nu_dtype": adamx.rank1_4bit(min_size=0, batch_dims=_stacked),
        },
        # 16-bit buffers run in one piece on CPU (`_NARROW`); here a chunk at a time, as on GPU,
        # so that the shards' element index (the rounding's hash) is checked.
        "bf16-sr": {
            "mu_dtype": adamx.stochastic_bfloat16(),
            "nu_dtype": adamx.stochastic_bfloat16(),
        },
    }
    # ZeRO-1: a replicated matrix whose 8-bit state is split over the devices by its blocks.
    storages["8bit-zero1"] = storages["8bit"]
    out: dict = {}
    for name, storage in storages.items():
        _bounded._narrow_in_place = lambda name=name: name == "bf16-sr"
        tx = adamx.adamw(1e-3, weight_decay=0.1, **storage)
        if name.endswith("zero1"):
            host = np.random.default_rng(2).standard_normal((512, 1024)).astype(np.float32)
            params = {"big": jax.device_put(host, NamedSharding(mesh, P()))}
        else:
            params, _ = _params(mesh)
        with jax.set_mesh(mesh):
            if name.endswith("zero1"):
                shardings = adamx.zero1_shardings(tx, params, "model")
                state = adamx.init_sharded(tx, params, shardings)
            else:
                state = tx.init(params)
            for path, fn in (("update", _update_apply(tx)), ("step", _step(tx))):
                grads = _gradients(params, 3)
                out[f"{name}/{path}"] = _compare(fn, params, state, grads)
    return out


if __name__ == "__main__":
    report = {"devices": jax.device_count(), "memory": memory(), "numbers": numbers()}
    report["numbers"].update(two_axes())
    report["wrappers"] = wrappers()
    print(json.dumps(report))
