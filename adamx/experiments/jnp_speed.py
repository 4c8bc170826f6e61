"""Each storage's AdamW step over float32 AdamW's jnp step, in one run (docs/low_bit.md).

``python -m adamx.experiments.jnp_speed [params] [storages]``: one leaf of ``params`` float32
parameters (default 16.8M); per storage, ``update`` + `apply_updates` under ``jit`` (the bounded
jnp path), the same op by op (`adamx.core._chain.unbounded`), and `adamx.step` (the kernel on
CPU), each jitted with params and state donated; medians of 7 interleaved rounds of 3 steps, as
ratios to float32's ``update`` + ``apply_updates``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import adamx
from adamx.core._chain import unbounded


def _cases() -> dict[str, Any]:
    def adamw(**moments):
        return adamx.adamw(1e-3, weight_decay=0.1, **moments)

    return {
        "float32": adamw(),
        "bfloat16": adamw(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        "stochastic bfloat16": adamw(**adamx.low_bit_moments(16)),
        "8-bit": adamw(**adamx.low_bit_moments(8)),
        "4-bit (rank-1 v)": adamw(**adamx.low_bit_moments(4)),
        "4-bit (both block-wise)": adamw(
            mu_dtype=adamx.blockwise_4bit(True), nu_dtype=adamx.blockwise_4bit(False)
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else argv
    n = int(float(argv[0])) if argv else 1 << 24
    cases = _cases()
    chosen = argv[1].split(",") if len(argv) > 1 else list(cases)
    p0 = {"w": jax.random.normal(jax.random.PRNGKey(0), (n,))}
    g = {"w": 1e-2 * jax.random.normal(jax.random.PRNGKey(1), (n,))}
    steps: dict[str, tuple[Any, Any]] = {}
    for name in chosen:
        tx = cases[name]
        for label in ("jnp", "op by op", "step"):

            def fn(p, s, g, tx=tx, label=label):
                if label == "step":
                    return adamx.step(tx, g, s, p)
                updates, s = tx.update(g, s, p)
                return adamx.apply_updates(p, updates), s

            jitted = jax.jit(fn, donate_argnums=(0, 1))
            params = jax.tree.map(jnp.copy, p0)
            if label == "op by op":
                with unbounded():  # traced (and cached) as written
                    params, state = jitted(params, tx.init(params), g)
            else:
                params, state = jitted(params, tx.init(params), g)
            steps[f"{name}: {label}"] = (jitted, (params, state))
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(7):
        for key, (jitted, (params, state)) in steps.items():
            start = time.perf_counter()
            for _ in range(3):
                params, state = jitted(params, state, g)
            jax.block_until_ready((params, state))
            times[key].append((time.perf_counter() - start) / 3)
            steps[key] = (jitted, (params, state))
    base = float(np.median(times["float32: jnp"]))
    ratios = {k: float(np.median(v)) / base for k, v in times.items()}
    print(f"{n / 1e6:.1f}M params, one leaf; float32 jnp step {base * 1e3:.2f} ms")
    for key, ratio in ratios.items():
        print(f"{key:<36}{np.median(times[key]) * 1e3:>10.2f} ms{ratio:>8.2f}x")
    return ratios


if __name__ == "__main__":
    main()
