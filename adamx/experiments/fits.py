"""The largest model whose AdamW train step fits under a memory cap, per moment storage.

``python -m adamx.experiments.fits --cap 1.5e9`` runs, in a subprocess of its own per (storage,
width), a jitted and donated train step of an MLP of ``--layers`` square ``width x width`` float32
layers (forward, gradient, ``tx.update``, `apply_updates`; ``--path step``: `adamx.step`) for
three steps, and reads the subprocess's peak resident memory (``VmHWM``). For each storage it
doubles, then bisects, the width to the largest whose peak stays under the cap, and prints the
params and peak RSS side by side (docs/low_bit.md). The peak includes JAX's own runtime (about
0.3 GB here: ``--layers 1 --width 8`` measures it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

STORAGES = ("float32", "8bit", "4bit")


def _child(storage: str, width: int, layers: int, path: str) -> None:
    import jax
    import jax.numpy as jnp

    import adamx

    moments: dict[str, Any] = {}
    if storage == "8bit":
        moments = adamx.low_bit_moments(8)
    elif storage == "4bit":
        moments = adamx.low_bit_moments(4)
    tx = adamx.adamw(1e-3, weight_decay=0.1, **moments)
    keys = jax.random.split(jax.random.PRNGKey(0), layers)
    params = {
        f"layer{i:02d}": jax.random.normal(keys[i], (width, width), jnp.float32) / width**0.5
        for i in range(layers)
    }
    x = jax.random.normal(jax.random.PRNGKey(1), (8, width), jnp.float32)

    def loss(p, x):
        for i in range(layers):
            x = jnp.tanh(x @ p[f"layer{i:02d}"])
        return jnp.mean(x**2)

    def train_step(p, s, x):
        g = jax.grad(loss)(p, x)
        if path == "step":
            return adamx.step(tx, g, s, p)
        updates, s = tx.update(g, s, p)
        return adamx.apply_updates(p, updates), s

    state = tx.init(params)
    step = jax.jit(train_step, donate_argnums=(0, 1))
    for _ in range(3):
        params, state = step(params, state, x)
    jax.block_until_ready((params, state))
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
    print(json.dumps({"params": layers * width * width, "peak_rss": peak}))


def measure(storage: str, width: int, layers: int, path: str) -> dict[str, Any]:
    """One subprocess's params and peak resident bytes."""
    code = (
        "from adamx.experiments.fits import _child; "
        f"_child({storage!r}, {width}, {layers}, {path!r})"
    )
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest(storage: str, cap: float, layers: int, path: str, start: int = 256) -> dict:
    """The largest width (a multiple of 64) whose step peaks under ``cap`` bytes."""
    fits, width = None, start
    while True:  # double until it does not fit
        result = measure(storage, width, layers, path)
        if result["peak_rss"] > cap:
            break
        fits, width = {**result, "width": width}, width * 2
    low, high = (fits["width"] if fits else 0), width
    while high - low > 64:
        mid = (low + high) // 2 // 64 * 64
        result = measure(storage, mid, layers, path)
        if result["peak_rss"] <= cap:
            fits, low = {**result, "width": mid}, mid
        else:
            high = mid
    return fits or {"params": 0, "peak_rss": 0, "width": 0}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=1.5e9, help="peak RSS cap in bytes")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--path", choices=("update", "step"), default="update")
    parser.add_argument("--storages", default=",".join(STORAGES))
    args = parser.parse_args(argv)
    rows = []
    print(f"cap {args.cap / 1e9:.2f} GB, {args.layers} layers, path {args.path}")
    print(f"{'moments':<10}{'width':>7}{'params':>12}{'peak RSS GB':>13}{'params vs float32':>19}")
    base = None
    for storage in args.storages.split(","):
        row = {"storage": storage, **largest(storage, args.cap, args.layers, args.path)}
        base = base or row["params"]
        rows.append(row)
        print(
            f"{storage:<10}{row['width']:>7}{row['params'] / 1e6:>11.1f}M"
            f"{row['peak_rss'] / 1e9:>13.3f}{row['params'] / base:>19.2f}",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
