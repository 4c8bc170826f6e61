"""One AdamW step of adamx against optax, on ~50M float32 parameters, in one process.

Both steps are jitted with the params and optimizer state donated, as a training loop runs them:

    adamx: jax.jit(lambda p, s, g: adamx.step(tx, g, s, p), donate_argnums=(0, 1))
    optax: jax.jit(lambda p, s, g: (optax.apply_updates(p, u), s') ..., donate_argnums=(0, 1))

with ``adamw(1e-3, weight_decay=1e-4)`` from each library. Two configurations: the parameters as one
flat array, and the same count split into ~500 leaves of mixed sizes (matrices and small vectors).

Each step is compiled ahead of time (the compile time is reported), warmed up with two steps, then
timed in interleaved rounds: in each round ``--steps`` steps of adamx, then as many of optax (the
order alternates between rounds), and a memory-bandwidth reference. Every step is timed on its own,
ending with ``block_until_ready``; the table reports medians over all rounds and the ratio
adamx/optax, both of the medians and as the median of the per-round ratios.

The bandwidth reference is a jitted, donated triad ``p + a * g`` on the same number of float32s,
counted as 12 bytes per element (read p, read g, write p). A triad under-reports what the memory
system can do (one output stream, no prefetch tuning, write-allocate traffic not counted), so the
"B/param at triad BW" column (step time times triad bandwidth, per parameter) is an upper bound
on the bytes a step moves at that bandwidth, to set against AdamW's minimum of 28 B/param in
float32 (read p, g, m, v; write p, m, v).

Usage (from the repository root, with optax installed)::

    python benchmarks/adamw_vs_optax.py [--params 50000000] [--rounds 7] [--steps 5] [--json out.json]

Read the ratios, not the absolute times: see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adamx

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4
TRIAD_BYTES_PER_ELEMENT = 12  # read p, read g, write p (float32)
ADAMW_MIN_BYTES_PER_PARAM = 28  # read p, g, m, v; write p, m, v (float32)


# ---- parameter trees ----------------------------------------------------------------------------


def flat_shapes(n: int) -> list[tuple[int, ...]]:
    """The whole count as one vector."""
    return [(n,)]


def mixed_shapes(n: int, leaves: int, seed: int = 0) -> list[tuple[int, ...]]:
    """About ``leaves`` leaves totalling exactly ``n`` elements: half matrices, half small vectors.

    Matrices have 128 to 1024 columns and log-normally distributed sizes (a few large, many small,
    as in a network's weights); vectors have 64 to 4096 elements (biases, norm scales). The last
    leaf is a vector taking the remainder, so the total is exact.
    """
    rng = np.random.default_rng(seed)
    n_vectors = leaves // 2
    n_matrices = leaves - n_vectors - 1
    vectors = [int(v) for v in rng.integers(64, 4097, size=n_vectors)]
    budget = n - sum(vectors)
    if n_matrices < 1 or budget < 1024 * n_matrices:
        raise ValueError(f"--params {n} is too small for {leaves} leaves")
    cols = rng.choice([128, 256, 512, 1024], size=n_matrices)
    weights = rng.lognormal(0.0, 1.0, size=n_matrices)
    rows = np.maximum(1, np.floor(weights / weights.sum() * budget * 0.999 / cols)).astype(int)
    matrices = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
    remainder = n - sum(vectors) - sum(r * c for r, c in matrices)
    assert remainder > 0
    shapes: list[tuple[int, ...]] = []
    for i in range(max(len(matrices), len(vectors))):  # interleave, as layers would
        if i < len(matrices):
            shapes.append(matrices[i])
        if i < len(vectors):
            shapes.append((vectors[i],))
    shapes.append((remainder,))
    assert sum(int(np.prod(s)) for s in shapes) == n
    return shapes


def make_tree(shapes: list[tuple[int, ...]], seed: int, scale: float) -> dict[str, jax.Array]:
    """A dict of float32 normal leaves of the given shapes, in fresh device buffers.

    Drawn with numpy and copied by one jitted function, so that 500 shapes cost one compile, not
    500, and no leaf aliases host memory (which donation could not reuse).
    """
    n = sum(int(np.prod(s)) for s in shapes)
    flat = np.random.default_rng(seed).standard_normal(n, dtype=np.float32) * np.float32(scale)
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    host = {
        f"leaf{i:04d}": flat[offsets[i] : offsets[i + 1]].reshape(s) for i, s in enumerate(shapes)
    }
    return copy_tree(host)


@jax.jit
def copy_tree(tree: Any) -> Any:
    """A copy with fresh buffers (donation consumes the original)."""
    return jax.tree.map(jnp.copy, tree)


@jax.jit
def max_abs_diff(a: Any, b: Any) -> jax.Array:
    diffs = jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b)
    return jnp.max(jnp.stack(jax.tree.leaves(diffs)))


def tree_bytes(tree: Any) -> int:
    return sum(int(x.nbytes) for x in jax.tree.leaves(tree))


def block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


# ---- the timed functions ------------------------------------------------------------------------


def adamx_step_fn(tx: adamx.GradientTransformation) -> Callable:
    return jax.jit(lambda p, s, g: adamx.step(tx, g, s, p), donate_argnums=(0, 1))


def optax_step_fn(tx: optax.GradientTransformation) -> Callable:
    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    return jax.jit(step, donate_argnums=(0, 1))


def triad_fn() -> Callable:
    return jax.jit(lambda p, g: p + np.float32(1e-3) * g, donate_argnums=(0,))


class Runner:
    """A compiled, donated step and the buffers it threads through: ``run()`` times one call."""

    def __init__(self, name: str, jitted: Callable, carry: tuple, const: tuple):
        self.name = name
        t0 = time.perf_counter()
        lowered = jitted.lower(*carry, *const)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        self.trace_s = t1 - t0
        self.compile_s = t2 - t1
        self.carry = carry
        self.const = const
        self.times: list[float] = []
        self.round_means: list[float] = []

    def run(self) -> float:
        t0 = time.perf_counter()
        out = self.compiled(*self.carry, *self.const)
        block(out)
        dt = time.perf_counter() - t0
        self.carry = out if isinstance(out, tuple) else (out,)
        return dt

    def warm_up(self, steps: int = 2) -> None:
        for _ in range(steps):
            self.run()

    def timed_round(self, steps: int) -> None:
        times = [self.run() for _ in range(steps)]
        self.times.extend(times)
        self.round_means.append(statistics.fmean(times))

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


# ---- one configuration --------------------------------------------------------------------------


def bench_config(name: str, shapes: list[tuple[int, ...]], args: argparse.Namespace) -> dict:
    n = sum(int(np.prod(s)) for s in shapes)
    print(f"\n[{name}] {n:,} float32 params in {len(shapes)} leaves", flush=True)
    params = make_tree(shapes, args.seed, 1.0)
    grads = make_tree(shapes, args.seed + 1, 1e-2)
    block((params, grads))

    ax_tx = adamx.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    ox_tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    ax_params, ox_params = copy_tree(params), copy_tree(params)
    del params
    ax_state, ox_state = jax.jit(ax_tx.init)(ax_params), jax.jit(ox_tx.init)(ox_params)
    state_bytes = {"adamx": tree_bytes(ax_state), "optax": tree_bytes(ox_state)}

    runners = {
        "adamx": Runner("adamx", adamx_step_fn(ax_tx), (ax_params, ax_state), (grads,)),
        "optax": Runner("optax", optax_step_fn(ox_tx), (ox_params, ox_state), (grads,)),
    }
    del ax_params, ax_state, ox_params, ox_state
    triad_p = make_tree([(n,)], args.seed + 2, 1.0)["leaf0000"]
    triad_g = make_tree([(n,)], args.seed + 3, 1.0)["leaf0000"]
    triad = Runner("triad", triad_fn(), (triad_p,), (triad_g,))
    del triad_p
    for r in runners.values():
        print(f"  {r.name}: trace {r.trace_s:.2f} s, compile {r.compile_s:.2f} s", flush=True)
        r.warm_up()
    triad.warm_up()

    paired_ratios = []
    for i in range(args.rounds):
        order = ["adamx", "optax"] if i % 2 == 0 else ["optax", "adamx"]
        for key in order:
            runners[key].timed_round(args.steps)
        triad.timed_round(args.steps)
        paired_ratios.append(runners["adamx"].round_means[-1] / runners["optax"].round_means[-1])
        print(
            f"  round {i + 1}/{args.rounds}: adamx {runners['adamx'].round_means[-1] * 1e3:.1f} ms,"
            f" optax {runners['optax'].round_means[-1] * 1e3:.1f} ms,"
            f" triad {triad.round_means[-1] * 1e3:.1f} ms",
            flush=True,
        )

    # Same grads, same number of steps: the two libraries must agree (a check, not a timing).
    param_diff = float(max_abs_diff(runners["adamx"].carry[0], runners["optax"].carry[0]))

    triad_s = triad.median_s
    triad_gbs = TRIAD_BYTES_PER_ELEMENT * n / triad_s / 1e9
    result: dict[str, Any] = {
        "config": name,
        "params": n,
        "leaves": len(shapes),
        "steps_timed": args.rounds * args.steps,
        "triad": {
            "median_ms": triad_s * 1e3,
            "gb_per_s_at_12_bytes_per_elem": triad_gbs,
            "note": "p + a*g, donated; a triad under-reports the true bandwidth limit",
        },
        "ratio_of_medians_adamx_over_optax": runners["adamx"].median_s / runners["optax"].median_s,
        "median_of_paired_round_ratios_adamx_over_optax": statistics.median(paired_ratios),
        "max_abs_param_diff_adamx_vs_optax": param_diff,
    }
    for key, r in runners.items():
        result[key] = {
            "median_ms": r.median_s * 1e3,
            "min_ms": min(r.times) * 1e3,
            "max_ms": max(r.times) * 1e3,
            "trace_s": r.trace_s,
            "compile_s": r.compile_s,
            "state_bytes": state_bytes[key],
            "state_bytes_per_param": state_bytes[key] / n,
            "bytes_per_param_at_triad_bw": r.median_s * triad_gbs * 1e9 / n,
            "times_ms": [t * 1e3 for t in r.times],
        }
    return result


# ---- report -------------------------------------------------------------------------------------


def print_table(results: list[dict]) -> None:
    header = (
        f"{'config':<14}{'lib':<7}{'median ms':>10}{'min ms':>9}{'ratio':>7}{'compile s':>11}"
        f"{'state B/p':>11}{'B/p @triad':>12}"
    )
    print("\n" + header)
    print("-" * len(header))
    for res in results:
        cfg = f"{res['config']} ({res['leaves']})"
        for key in ("adamx", "optax"):
            r = res[key]
            ratio = f"{res['ratio_of_medians_adamx_over_optax']:.3f}" if key == "adamx" else "1"
            print(
                f"{cfg if key == 'adamx' else '':<14}{key:<7}{r['median_ms']:>10.1f}"
                f"{r['min_ms']:>9.1f}{ratio:>7}{r['trace_s'] + r['compile_s']:>11.2f}"
                f"{r['state_bytes_per_param']:>11.2f}{r['bytes_per_param_at_triad_bw']:>12.1f}"
            )
        t = res["triad"]
        print(
            f"{'':<14}{'triad':<7}{t['median_ms']:>10.1f}{'':>9}{'':>7}{'':>11}{'':>11}"
            f"{TRIAD_BYTES_PER_ELEMENT:>12.1f}   = {t['gb_per_s_at_12_bytes_per_elem']:.2f} GB/s"
        )
        print(
            f"{'':<14}paired-round ratio adamx/optax (median): "
            f"{res['median_of_paired_round_ratios_adamx_over_optax']:.3f};"
            f" max |p_adamx - p_optax| = {res['max_abs_param_diff_adamx_vs_optax']:.2e}"
        )
    print(
        "\nratio: adamx median / optax median. compile s: trace + lower + XLA compile. state B/p:"
        " optimizer-state bytes per parameter.\nB/p @triad: step time x triad bandwidth / params,"
        f" bytes per parameter the step would move at the triad's rate (AdamW's float32 minimum is"
        f" {ADAMW_MIN_BYTES_PER_PARAM}).\nThe triad (p + a*g, 12 B/elem) under-reports the true"
        " bandwidth limit, so B/p @triad over-states the traffic; compare the libraries, not the"
        " absolute numbers."
    )


def environment() -> dict:
    return {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "optax": optax.__version__,
        "adamx": adamx.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=50_000_000, help="float32 parameter count")
    parser.add_argument("--leaves", type=int, default=500, help="leaves of the mixed configuration")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per library per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.params < 1 or args.rounds < 1 or args.steps < 1 or args.leaves < 3:
        parser.error("--params, --rounds, --steps must be >= 1 and --leaves >= 3")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    env = environment()
    print(
        f"adamx {env['adamx']} vs optax {env['optax']}, jax {env['jax']} on {env['backend']}"
        f" ({env['device_kind']}, {env['affinity']} usable CPUs);"
        f" adamw(lr={LEARNING_RATE:g}, weight_decay={WEIGHT_DECAY:g});"
        f" {args.rounds} rounds x {args.steps} steps"
    )
    results = [
        bench_config("flat", flat_shapes(args.params), args),
        bench_config("mixed", mixed_shapes(args.params, args.leaves, args.seed), args),
    ]
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "args": vars(args), "results": results}, f, indent=1)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
