"""``python -m adamx.benchmarks``: see `adamx.benchmarks`.

``python -m adamx.benchmarks --jnp-vs-optax [--leaves N] [--leaf-size K] [--steps S]`` instead
measures the jnp path's weight, `jnp_vs_optax`: what ``nnx.Optimizer`` and linen's ``TrainState``
run (``tx.update`` then ``apply_updates``), adamx's `adamw` against optax's with the same
hyperparameters, side by side in one process.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from typing import Any


def jnp_vs_optax(leaves: int = 2000, leaf_size: int = 2500, steps: int = 20) -> dict[str, Any]:
    """Jaxpr lines, trace+lower seconds, compile seconds and step milliseconds of
    ``adamx.adamw(...).update`` + `adamx.apply_updates` and of ``optax.adamw`` +
    ``optax.apply_updates``, on ``leaves`` float32 leaves of ``leaf_size`` params, with the ratios.

    Each is traced and lowered by a fresh ``jax.jit`` (after a warm-up of both on a small tree, so
    neither pays JAX's first-trace costs) and compiled, twice in the order adamx, optax, optax,
    adamx (the lesser time of each is kept), then timed over ``steps`` steps in interleaved rounds;
    the step time is the median.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import adamx

    hyper: dict[str, Any] = dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4)
    builders = {
        "adamx": (lambda: adamx.adamw(**hyper), adamx.apply_updates),
        "optax": (lambda: optax.adamw(**hyper), optax.apply_updates),
    }

    def tree(n, size, seed):
        rng = np.random.default_rng(seed)
        return {f"p{i:05d}": jnp.asarray(rng.standard_normal(size, np.float32)) for i in range(n)}

    def step_fn(tx, apply):
        def train_step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return apply(params, updates), state

        return train_step

    for make, apply in builders.values():  # warm-up: JAX's one-off costs are nobody's
        tx = make()
        small = tree(4, 8, 0)
        jax.jit(step_fn(tx, apply)).lower(small, tx.init(small), small).compile()

    params, grads = tree(leaves, leaf_size, 1), tree(leaves, leaf_size, 2)
    results: dict[str, dict[str, Any]] = {}
    compiled = {}
    # Trace+lower and compile twice, in the order adamx, optax, optax, adamx, keeping the lesser
    # time of each: a shared machine's slow spell then falls on both, or on neither's minimum.
    for name in (*builders, *reversed(builders)):
        make, apply = builders[name]
        tx = make()
        state = tx.init(params)
        fn = step_fn(tx, apply)
        gc.collect()
        start = time.perf_counter()
        lowered = jax.jit(fn).lower(params, state, grads)
        traced = time.perf_counter() - start
        start = time.perf_counter()
        executable = lowered.compile()
        compile_s = time.perf_counter() - start
        if name not in results:
            lines = len(str(jax.make_jaxpr(fn)(params, state, grads)).splitlines())
            results[name] = {"jaxpr_lines": lines, "trace_lower_s": traced, "compile_s": compile_s}
        else:
            results[name]["trace_lower_s"] = min(results[name]["trace_lower_s"], traced)
            results[name]["compile_s"] = min(results[name]["compile_s"], compile_s)
        compiled[name] = (executable, state)
    times: dict[str, list[float]] = {name: [] for name in builders}
    for round_ in range(5):
        order = list(builders) if round_ % 2 == 0 else list(builders)[::-1]
        for name in order:
            executable, state = compiled[name]
            jax.block_until_ready(executable(params, state, grads))
            for _ in range(steps // 5 or 1):
                start = time.perf_counter()
                jax.block_until_ready(executable(params, state, grads))
                times[name].append(time.perf_counter() - start)
    for name in builders:
        results[name]["step_ms"] = 1e3 * statistics.median(times[name])
    keys = ("jaxpr_lines", "trace_lower_s", "compile_s", "step_ms")
    results["ratio"] = {k: results["adamx"][k] / results["optax"][k] for k in keys}
    print(f"jnp path, adamw: {leaves} leaves x {leaf_size} float32 params, jax {jax.__version__} "
          f"on {jax.default_backend()}")  # fmt: skip
    print(f"{'':8}{'jaxpr lines':>12}{'trace+lower s':>15}{'compile s':>11}{'step ms':>9}")
    for name in ("adamx", "optax", "ratio"):
        row = results[name]
        fmt = (
            "{:>12.2f}{:>15.2f}{:>11.2f}{:>9.2f}"
            if name == "ratio"
            else ("{:>12d}{:>15.2f}{:>11.2f}{:>9.2f}")
        )
        print(f"{name:8}" + fmt.format(*(row[k] for k in keys)))
    return results


if __name__ == "__main__":
    if "--jnp-vs-optax" in sys.argv[1:]:
        parser = argparse.ArgumentParser(prog="python -m adamx.benchmarks --jnp-vs-optax")
        parser.add_argument("--jnp-vs-optax", action="store_true")
        parser.add_argument("--leaves", type=int, default=2000)
        parser.add_argument("--leaf-size", type=int, default=2500)
        parser.add_argument("--steps", type=int, default=20)
        args = parser.parse_args()
        jnp_vs_optax(args.leaves, args.leaf_size, args.steps)
    else:
        from adamx.benchmarks import main

        main()
