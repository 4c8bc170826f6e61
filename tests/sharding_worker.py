"""The 8-device side of tests/test_sharding.py: run in its own process, print one JSON object.

JAX fixes its device count when it starts, so the suite's own process (one CPU device) cannot
host these checks: ``tests/test_sharding.py`` runs ``python -m tests.sharding_worker`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and ``JAX_PLATFORMS=cpu`` and turns the
JSON into per-optimizer assertions. Every number is measured here; nothing is asserted here, so one
failing optimizer never hides the others.

The mesh is ``4 x 2`` (``data`` x ``model``); the params are model-sharded, with an odd-sized leaf
that divides by nothing and a scalar. Every optimizer of the registry (tests/helpers.py) runs:

* ``eager``: leaves of ``tx.init(params)`` that should carry a parameter's sharding and do not;
* ``jit_init``: leaves of `adamx.init_sharded` whose sharding differs from `adamx.state_shardings`,
  and ``jit_init_explicit``: the same for a plain ``jax.jit(tx.init)`` on an ``Explicit`` mesh;
* ``update``: state leaves of split parameters whose sharding a jitted ``adamx.step`` (no
  ``out_shardings``) did not keep (``zero1_update``: every leaf, with ``out_shardings``);
* ``zero1``: the state's bytes per device from ``addressable_shards`` under
  `adamx.zero1_shardings` over ``data``, against the unsharded state's bytes;
* ``max_rel``/``max_rel_zero1``: the params after ``STEPS`` sharded steps against one device.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import adamx  # noqa: E402
from adamx.kernels import _derived  # noqa: E402
from tests.helpers import OPTIMIZERS, max_relative_difference  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

STEPS = 3
# SOAP's first eigenbases come from rank-deficient statistics (one gradient's outer product):
# eigh's basis of the null space jumps under a one-ulp change of the input, so even one device
# moves by ~7% of a leaf when its gradients change by one ulp. Its sharded run is compared with
# that sensitivity, measured here, instead of with 1e-6.
ILL_CONDITIONED = {"soap"}
SPECS = {
    "dense": {"w": P(None, "model"), "b": P("model")},
    "conv": P(None, None, None, "model"),
    "odd": P(),
    "scale": P(),
}


def host_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "w": rng.standard_normal((64, 32)).astype(np.float32),
            "b": rng.standard_normal(32).astype(np.float32),
        },
        "conv": rng.standard_normal((3, 3, 8, 16)).astype(np.float32),
        "odd": rng.standard_normal((7, 5)).astype(np.float32),
        "scale": np.float32(rng.standard_normal()),
    }


def host_gradients(params: dict, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda x: rng.standard_normal(np.shape(x)).astype(np.float32), params)
        for _ in range(STEPS)
    ]


def scaled_difference(x, ref) -> float:
    """``max |x - ref| / max |ref|`` leaf by leaf, the largest over the leaves.

    The parity measure of this file: 1e-6 of each leaf's magnitude. Sums across shards reorder,
    so a result is a few float32 ulps of the operands away from the one-device run; where an
    update cancels a parameter to ~1e-3 of its scale those ulps are large *elementwise*
    (``max_relative_difference``, reported alongside), not against the leaf.
    """
    worst = 0.0
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(ref), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.size:
            scale = max(float(np.max(np.abs(b))), np.finfo(np.float32).tiny)
            worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def place(tree: dict, mesh) -> dict:
    return jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), tree, SPECS)


def sharding_of(tree):
    return jax.tree.map(lambda x: x.sharding, tree)


def differs(leaf, sharding) -> bool:
    return not leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


def mismatches(state, shardings, keep=lambda path, sharding: True) -> list[str]:
    """Key paths of the state leaves whose sharding is not the expected one."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    expected = jax.tree.leaves(shardings)
    return [
        f"{jax.tree_util.keystr(path)}: {leaf.sharding} != {sharding.spec}"
        for (path, leaf), sharding in zip(flat, expected, strict=True)
        if keep(path, sharding) and differs(leaf, sharding)
    ]


def run_steps(tx, params, state, grads, **jit_kwargs):
    one = jax.jit(lambda g, s, p: adamx.step(tx, g, s, p), **jit_kwargs)
    return run_steps_with(one, params, state, grads)


def registry(mesh, explicit_mesh, host, grads_host) -> dict:
    params = place(host, mesh)
    param_shardings = sharding_of(params)
    grads = [place(g, mesh) for g in grads_host]
    explicit_params = place(host, explicit_mesh)
    one_device = jax.tree.map(jnp.asarray, host)
    one_device_grads = [jax.tree.map(jnp.asarray, g) for g in grads_host]
    param_owned = {  # a state leaf with one of these must carry it: the split parameters'
        id(s) for s in jax.tree.leaves(param_shardings) if not s.is_fully_replicated
    }
    results = {}
    for case in OPTIMIZERS:
        start = time.perf_counter()
        entry: dict = {}
        try:
            tx = case.make(case.learning_rate)
            expected = adamx.state_shardings(tx, params)

            def owned(path, sharding):
                return id(sharding) in param_owned

            entry["eager"] = mismatches(tx.init(params), expected, owned)
            state = adamx.init_sharded(tx, params)
            entry["jit_init"] = mismatches(state, expected)
            with jax.set_mesh(explicit_mesh):
                explicit_state = jax.jit(tx.init)(explicit_params)
            entry["jit_init_explicit"] = mismatches(
                explicit_state, adamx.state_shardings(tx, explicit_params)
            )

            sharded_params, free_state = run_steps(tx, params, state, grads)
            entry["update"] = mismatches(free_state, expected, owned)
            reference, _ = run_steps(tx, one_device, tx.init(one_device), one_device_grads)
            if case.name in ILL_CONDITIONED:
                nudged = [jax.tree.map(lambda x: x * np.float32(1 + 2**-23), g) for g in grads_host]
                nudged = [jax.tree.map(jnp.asarray, g) for g in nudged]
                again, _ = run_steps(tx, one_device, tx.init(one_device), nudged)
                entry["one_ulp_sensitivity"] = scaled_difference(again, reference)
            entry["max_rel"] = scaled_difference(sharded_params, reference)
            entry["max_rel_elementwise"] = max_relative_difference(sharded_params, reference)

            zero = adamx.zero1_shardings(tx, params, "data")
            zero_state = adamx.init_sharded(tx, params, zero)
            entry["zero1_init"] = mismatches(zero_state, zero)
            unsharded = sum(leaf.nbytes for leaf in jax.tree.leaves(zero_state))
            per_device = adamx.bytes_per_device(zero_state)
            plain = adamx.bytes_per_device(state)
            entry["zero1"] = {
                "unsharded_bytes": unsharded,
                "max_bytes_per_device": max(per_device.values(), default=0),
                "model_sharded_max_bytes_per_device": max(plain.values(), default=0),
            }
            zero_params, zero_state = run_steps(
                tx, params, zero_state, grads, out_shardings=(param_shardings, zero)
            )
            entry["zero1_update"] = mismatches(zero_state, zero)
            entry["zero1_params"] = [
                f"{a.sharding} != {b}"
                for a, b in zip(
                    jax.tree.leaves(zero_params), jax.tree.leaves(param_shardings), strict=True
                )
                if differs(a, b)
            ]
            entry["max_rel_zero1"] = scaled_difference(zero_params, reference)
        except Exception:  # reported, not raised: the other optimizers still run
            entry["error"] = traceback.format_exc(limit=6)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        results[case.name] = entry
    return results


FUSED = {  # the derived kernel per shard: scalar equations, a sign, a reduction, two storages
    "adamw": lambda: adamx.adamw(1e-2, weight_decay=0.1),
    "nadam": lambda: adamx.nadam(1e-2),
    "lion": lambda: adamx.lion(1e-3, weight_decay=0.1),
    "lamb": lambda: adamx.lamb(1e-2, weight_decay=1e-2),  # its norms reduced by JAX, over the mesh
    "adamw_bf16_moments": lambda: adamx.adamw(
        1e-2, weight_decay=0.1, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
    ),
    # Stochastic rounding hashes each element's index in its whole leaf: the jnp path.
    "adamw_sr": lambda: adamx.adamw(1e-2, weight_decay=0.1, **adamx.low_bit_moments(16)),
    # Its statistics are reduced by JAX over the mesh, the step per shard.
    "monitored_adamw": lambda: adamx.monitor(adamx.adamw(1e-2, weight_decay=0.1)),
}
_WHY_NOT = lambda tx, g, s, p: _derived.why_not(tx, adamx.apply_updates, g, s, p)  # noqa: E731


def fused(host, grads_host) -> dict:
    """The fused kernel on 8 devices.

    On an ``Explicit`` mesh (model-sharded and ZeRO-1 state) it runs per shard inside
    ``shard_map``: jitted steps and one eager step against the jitted jnp path.
    On an ``Auto`` mesh (adamw) ``why_not`` refuses traced leaves and the jnp path takes the step.
    """
    from adamx.kernels import _native

    out: dict = {"native": list(_native.status())}
    for kind, types in (("explicit", (AxisType.Explicit,) * 2), ("auto", (AxisType.Auto,) * 2)):
        mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=types)
        params = place(host, mesh)
        grads = [place(g, mesh) for g in grads_host]
        for name, make in FUSED.items():
            if kind == "auto" and name != "adamw":
                continue
            # (The jnp path's ZeRO-1 step leaves the params split like the state.)
            layouts = ("model",) if name == "adamw_sr" else ("model", "zero1")
            for layout in layouts:
                entry: dict = {}
                try:
                    tx = make()
                    shardings = (
                        adamx.zero1_shardings(tx, params, "data")
                        if layout == "zero1"
                        else adamx.state_shardings(tx, params)
                    )
                    state = adamx.init_sharded(tx, params, shardings)
                    reasons: list = []

                    def step(g, s, p, tx=tx, reasons=reasons):
                        reasons.append(_WHY_NOT(tx, g, s, p))
                        return adamx.step(tx, g, s, p)

                    # On an Auto mesh the params' shardings are the jit's to keep (ZeRO-1 would
                    # leave them split like the state); an Explicit mesh keeps them by type.
                    outs = (
                        {}
                        if kind == "explicit"
                        else {"out_shardings": (sharding_of(params), shardings)}
                    )
                    fused_p, fused_s = run_steps_with(jax.jit(step, **outs), params, state, grads)
                    jnp_one = jax.jit(lambda g, s, p, tx=tx: adamx.step(tx, g, s, p, fused=False))
                    jnp_p, jnp_s = run_steps_with(jnp_one, params, state, grads)
                    entry["why_not_traced"] = reasons[0]
                    entry["state"] = mismatches(fused_s, shardings)
                    entry["params"] = [
                        f"{a.sharding} != {b.sharding}"
                        for a, b in zip(
                            jax.tree.leaves(fused_p), jax.tree.leaves(params), strict=True
                        )
                        if differs(a, b.sharding)
                    ]
                    entry["max_rel"] = scaled_difference((fused_p, fused_s), (jnp_p, jnp_s))
                    if name == "monitored_adamw":  # the whole mesh's, as on one device
                        one = jax.tree.map(jnp.asarray, host)
                        _, one_s = run_steps_unfused(
                            tx,
                            one,
                            tx.init(one),
                            [jax.tree.map(jnp.asarray, g) for g in grads_host],
                        )
                        entry["statistics_max_rel"] = max(
                            abs(float(a) - float(b)) / max(abs(float(b)), 1e-30)
                            for a, b in zip(
                                adamx.diagnostics(fused_s).values(),
                                adamx.diagnostics(one_s).values(),
                                strict=True,
                            )
                        )
                    if kind == "explicit":
                        entry["why_not_eager"] = _WHY_NOT(tx, grads[0], state, params)
                        fused = entry["why_not_eager"] is None
                        eager_p, eager_s = adamx.step(tx, grads[0], state, params, fused=fused)
                        entry["eager_state"] = mismatches(eager_s, shardings)
                        ref = jnp_one(grads[0], state, params)
                        entry["eager_max_rel"] = scaled_difference((eager_p, eager_s), ref)
                    else:
                        try:
                            jax.jit(lambda g, s, p, tx=tx: adamx.step(tx, g, s, p, fused=True))(
                                grads[0], state, params
                            )
                            entry["fused_true"] = "ran"
                        except ValueError as error:
                            entry["fused_true"] = str(error)
                except Exception:
                    entry["error"] = traceback.format_exc(limit=6)
                out[f"{kind}/{name}/{layout}"] = entry
    return out


def run_steps_with(one, params, state, grads):
    for g in grads:
        params, state = one(g, state, params)
    return params, state


def run_steps_unfused(tx, params, state, grads):
    one = jax.jit(lambda g, s, p: adamx.step(tx, g, s, p, fused=False))
    return run_steps_with(one, params, state, grads)


# ---- reductions inside shard_map: `axis_name` against the unsharded result ---------------------

SHARD_MAP = {
    # SGD, not Adam, after the clip: Adam's step hardly depends on the gradient's scale, so a
    # wrong clip factor would barely show.
    "clip_by_global_norm": lambda axis: adamx.chain(
        adamx.clip_by_global_norm(1.0, axis_name=axis), adamx.sgd(0.1, momentum=0.9)
    ),
    "lamb": lambda axis: adamx.lamb(1e-2, weight_decay=1e-2, axis_name=axis),
    "lars": lambda axis: adamx.lars(1e-1, weight_decay=1e-3, axis_name=axis),
    "adafactor": lambda axis: adamx.adafactor(1e-2, min_dim_size_to_factor=1, axis_name=axis),
    "adafactor_last_dims": lambda axis: adamx.adafactor(
        1e-2, factored_dims="last", min_dim_size_to_factor=1, momentum=0.9, axis_name=axis
    ),
    "muon": lambda axis: adamx.muon(1e-2, axis_name=axis),
}


def shard_map_parity() -> dict:
    """Each leaf split along its first axis over ``data`` (8) inside ``jax.shard_map``."""
    mesh = jax.make_mesh((8,), ("data",))
    rng = np.random.default_rng(2)
    host = {  # every leaf splits along axis 0 (8 | 64, 16, 24, 8); a tall and a wide matrix
        "tall": rng.standard_normal((64, 16)).astype(np.float32),
        "wide": rng.standard_normal((16, 48)).astype(np.float32),
        "stack": rng.standard_normal((24, 8, 4)).astype(np.float32),
        "bias": rng.standard_normal(8).astype(np.float32),
    }
    grads_host = [
        jax.tree.map(lambda x: (3 * rng.standard_normal(np.shape(x))).astype(np.float32), host)
        for _ in range(STEPS)
    ]
    split = jax.tree.map(lambda x: NamedSharding(mesh, P("data")), host)
    out: dict = {}
    for name, make in SHARD_MAP.items():
        try:
            plain = make(None)
            reference, ref_state = run_steps_unfused(
                plain,
                jax.tree.map(jnp.asarray, host),
                plain.init(jax.tree.map(jnp.asarray, host)),
                [jax.tree.map(jnp.asarray, g) for g in grads_host],
            )
            sharded_tx = make("data")
            params = jax.tree.map(jax.device_put, host, split)
            shardings = adamx.state_shardings(sharded_tx, params)
            state = adamx.init_sharded(sharded_tx, params, shardings)
            param_specs = jax.tree.map(lambda s: s.spec, split)
            state_specs = jax.tree.map(lambda s: s.spec, shardings)

            def body(g, s, p, tx=sharded_tx):
                updates, s = tx.update(g, s, p)
                return adamx.apply_updates(p, updates), s

            one = jax.jit(
                jax.shard_map(
                    body,
                    mesh=mesh,
                    in_specs=(param_specs, state_specs, param_specs),
                    out_specs=(param_specs, state_specs),
                )
            )
            for g in grads_host:
                params, state = one(jax.tree.map(jax.device_put, g, split), state, params)
            out[name] = {
                "max_rel": scaled_difference(params, reference),
                "max_rel_elementwise": max_relative_difference(params, reference),
                "state_max_rel": scaled_difference(
                    [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)],
                    [
                        x
                        for x in jax.tree.leaves(ref_state)
                        if jnp.issubdtype(x.dtype, jnp.floating)
                    ],
                ),
            }
            # Without axis_name each shard is taken for a whole leaf: the results must differ.
            wrong_tx = make(None)
            wrong = jax.jit(
                jax.shard_map(
                    lambda g, s, p, tx=wrong_tx: tx.update(g, s, p)[0],
                    mesh=mesh,
                    in_specs=(param_specs, state_specs, param_specs),
                    out_specs=param_specs,
                )
            )
            state0 = adamx.init_sharded(sharded_tx, jax.tree.map(jax.device_put, host, split))
            g0 = jax.tree.map(jax.device_put, grads_host[0], split)
            p0 = jax.tree.map(jax.device_put, host, split)
            right_u, _ = plain.update(
                jax.tree.map(jnp.asarray, grads_host[0]),
                plain.init(jax.tree.map(jnp.asarray, host)),
                jax.tree.map(jnp.asarray, host),
            )
            try:
                out[name]["without_axis_name_max_rel"] = scaled_difference(
                    wrong(g0, state0, p0), right_u
                )
            except (TypeError, ValueError) as error:  # shards taken for leaves: shapes clash
                out[name]["without_axis_name_max_rel"] = f"{type(error).__name__}: {error}"
        except Exception:
            out[name] = {"error": traceback.format_exc(limit=6)}
    return out


QUANTISED_SPECS = {  # row-split (the codes can follow), stacked layers, column-split (they cannot)
    "rows": P("model", None),
    "stack": P("model", None, None),
    "cols": P(None, "model"),
}


def quantised_layout(auto, explicit) -> dict:
    """8- and 4-bit moments on row-split, layer-split and column-split params: where their codes
    and scales are placed (`adamx.state_shardings`, eager and jitted `init` on an `Explicit`
    mesh), the bytes each device holds, and sharded steps against one device."""
    rng = np.random.default_rng(3)
    host = {
        "rows": rng.standard_normal((64, 512)).astype(np.float32),
        "stack": rng.standard_normal((4, 16, 512)).astype(np.float32),
        "cols": rng.standard_normal((64, 512)).astype(np.float32),
    }
    grads_host = [
        {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in host.items()}
        for _ in range(STEPS)
    ]

    def placed(tree, mesh):
        return {
            k: jax.device_put(v, NamedSharding(mesh, QUANTISED_SPECS[k])) for k, v in tree.items()
        }

    def layers(p):
        return 1 if p.ndim == 3 else 0

    results = {}
    for bits in (8, 4):
        entry: dict = {}
        try:
            tx = adamx.adamw(1e-2, **adamx.low_bit_moments(bits, batch_dims=layers))
            params = placed(host, auto)
            expected = adamx.state_shardings(tx, params)
            entry["specs"] = {
                jax.tree_util.keystr(path): [None if e is None else str(e) for e in s.spec]
                for path, s in jax.tree_util.tree_flatten_with_path(expected)[0]
            }
            state = adamx.init_sharded(tx, params)
            entry["jit_init"] = mismatches(state, expected)
            entry["bytes_per_device"] = max(adamx.bytes_per_device(state).values())
            entry["unsharded_bytes"] = sum(x.nbytes for x in jax.tree.leaves(state))
            param_shardings = sharding_of(params)
            grads = [placed(g, auto) for g in grads_host]
            sharded, state = run_steps(
                tx, params, state, grads, out_shardings=(param_shardings, expected)
            )
            entry["update"] = mismatches(state, expected)
            # Reference: the same sharded steps with every code and scale replicated (the
            # placement before the codes followed their params); tolerance 0, since placement
            # must not change a number. (Against one device, 8-bit runs differ by the code flips
            # that one-ulp differences of XLA's fusions cause, placement or not.)
            replicated = jax.tree.map(lambda s: NamedSharding(auto, P()), expected)
            base = jax.jit(tx.init, out_shardings=replicated)(params)
            reference, _ = run_steps(
                tx, params, base, grads, out_shardings=(param_shardings, replicated)
            )
            entry["max_abs_vs_replicated"] = max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(reference), strict=True)
            )
            explicit_params = placed(host, explicit)
            explicit_expected = adamx.state_shardings(tx, explicit_params)
            with jax.set_mesh(explicit):
                explicit_state = jax.jit(tx.init)(explicit_params)
                entry["explicit_jit_init"] = mismatches(explicit_state, explicit_expected)
                entry["explicit_eager_init"] = mismatches(
                    tx.init(explicit_params), explicit_expected
                )
                # A plain jit on the Explicit mesh: the shardings are in the types, and the
                # quantised storages reshape to their layout's (tests/test_sharding.py).
                explicit_out, explicit_state = run_steps(
                    tx, explicit_params, explicit_state, [placed(g, explicit) for g in grads_host]
                )
            entry["explicit_update"] = mismatches(explicit_state, explicit_expected)
            entry["explicit_params"] = [
                k for k in host if differs(explicit_out[k], explicit_params[k].sharding)
            ]
            entry["explicit_vs_auto"] = max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(
                    jax.tree.leaves(explicit_out), jax.tree.leaves(sharded), strict=True
                )
            )
        except Exception:
            entry["error"] = traceback.format_exc(limit=6)
        results[f"{bits}bit"] = entry
    return results


def main() -> None:
    start = time.perf_counter()
    host = host_params()
    grads_host = host_gradients(host)
    auto = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    explicit = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    only = set(sys.argv[1:])
    report: dict = {"devices": jax.device_count()}
    if not only or "registry" in only:
        report["registry"] = registry(auto, explicit, host, grads_host)
    if not only or "fused" in only:
        report["fused"] = fused(host, grads_host)
    if not only or "shard_map" in only:
        report["shard_map"] = shard_map_parity()
    if not only or "quantised_layout" in only:
        report["quantised_layout"] = quantised_layout(auto, explicit)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
