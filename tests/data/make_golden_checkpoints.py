"""Write ``golden_checkpoints.npz`` + ``golden_checkpoints.json``: every registry optimizer's state
after 3 steps and after 6, on small params, computed op by op (eager).

The committed files were written on main at commit 7fa3ba6 (2026-12-06), before issue 21 changed any
optimizer's signature or layout. ``tests/test_golden_checkpoints.py`` restores the 3-step state into
today's optimizer and checks that 3 more steps land on the stored 6-step params and state, bit for
bit. Never regenerate the files to make that test pass: a difference is a broken checkpoint.

Run from the repository root: ``python -m tests.data.make_golden_checkpoints``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

import adamx
from tests.helpers import OPTIMIZERS, random_tree

HERE = Path(__file__).resolve().parent
SPLIT, STEPS = 3, 6


def gradients(params, steps: int = STEPS, seed: int = 7) -> list:
    """``steps`` float32 N(0, 1) gradient trees like ``params``."""
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda x: rng.standard_normal(np.shape(x)).astype(np.float32), params)
        for _ in range(steps)
    ]


def run(tx, params, state, grads):
    """``tx`` over ``grads`` from ``(params, state)``, eagerly (one XLA op at a time)."""
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = adamx.apply_updates(params, updates)
    return params, state


def encode(tree) -> tuple[list[str], list[dict], list[np.ndarray]]:
    """Key paths, ``{dtype, shape}`` and the raw bytes (as uint8) of every leaf of ``tree``."""
    paths, meta, raw = [], [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.asarray(leaf)
        paths.append(jax.tree_util.keystr(path))
        meta.append({"dtype": str(array.dtype), "shape": list(array.shape)})
        raw.append(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return paths, meta, raw


def main() -> None:
    params = jax.tree.map(jax.numpy.asarray, random_tree(0))
    grads = gradients(params)
    manifest: dict = {"split": SPLIT, "steps": STEPS, "cases": {}}
    arrays: dict[str, np.ndarray] = {}
    for case in OPTIMIZERS:
        tx = case.make(case.learning_rate)
        middle = run(tx, params, tx.init(params), grads[:SPLIT])
        end = run(tx, *middle, grads[SPLIT:])
        entry = {}
        for tag, tree in (("middle", middle), ("end", end)):
            paths, meta, raw = encode(tree)
            entry[tag] = {"paths": paths, "leaves": meta}
            for i, r in enumerate(raw):
                arrays[f"{case.name}/{tag}/{i}"] = r
        manifest["cases"][case.name] = entry
    np.savez_compressed(HERE / "golden_checkpoints.npz", **arrays)
    (HERE / "golden_checkpoints.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
