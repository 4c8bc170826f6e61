"""Checkpoints written by an older adamx restore into today's and continue bit for bit.

``tests/data/golden_checkpoints.npz`` holds every registry optimizer's params and state after 3 and
after 6 eager steps, written at commit 7fa3ba6 (before issue 21 changed signatures and layouts) by
``tests/data/make_golden_checkpoints.py``. Each case restores the 3-step checkpoint into today's
``tx.init`` structure (matched by key path, dtype and shape) and runs the same 3 gradients: the
params and state must equal the stored 6-step ones byte for byte. A case added to the registry later
has no golden entry and is reported as missing here until the files are extended (never rewritten).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.data.make_golden_checkpoints import SPLIT, STEPS, gradients, run
from tests.helpers import OPTIMIZERS, random_tree

DATA = Path(__file__).resolve().parent / "data"
MANIFEST = json.loads((DATA / "golden_checkpoints.json").read_text())
GOLDEN = [case for case in OPTIMIZERS if case.name in MANIFEST["cases"]]


def restore(like, entry: dict, saved, prefix: str):
    """The stored leaves of ``entry`` in the tree structure of ``like``, matched by key path."""
    stored = {path: i for i, path in enumerate(entry["paths"])}
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    here = [jax.tree_util.keystr(path) for path, _ in flat]
    assert sorted(here) == sorted(stored), (
        f"the state's key paths changed: {sorted(set(here) ^ set(stored))}"
    )
    leaves = []
    for (_, leaf), key in zip(flat, here, strict=True):
        i = stored[key]
        meta = entry["leaves"][i]
        assert (meta["dtype"], tuple(meta["shape"])) == (str(leaf.dtype), tuple(leaf.shape)), key
        raw = saved[f"{prefix}/{i}"]
        leaves.append(jnp.asarray(raw.view(leaf.dtype).reshape(leaf.shape)))
    return jax.tree.unflatten(treedef, leaves)


def test_every_registry_optimizer_has_a_golden_checkpoint():
    """Cases of the registry at 7fa3ba6 are all still there (a removed optimizer breaks users)."""
    names = {case.name for case in OPTIMIZERS}
    assert set(MANIFEST["cases"]) <= names, set(MANIFEST["cases"]) - names
    assert (MANIFEST["split"], MANIFEST["steps"]) == (SPLIT, STEPS)


@pytest.mark.parametrize("case", GOLDEN, ids=[case.name for case in GOLDEN])
def test_golden_checkpoint_restores_and_continues_bit_identically(case):
    params = jax.tree.map(jnp.asarray, random_tree(0))
    tx = case.make(case.learning_rate)
    entry = MANIFEST["cases"][case.name]
    like = (params, tx.init(params))
    with np.load(DATA / "golden_checkpoints.npz") as saved:
        middle = restore(like, entry["middle"], saved, f"{case.name}/middle")
        expected = restore(like, entry["end"], saved, f"{case.name}/end")
    got = run(tx, *middle, gradients(params)[SPLIT:])
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(expected), strict=True
    ):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(
            x.reshape(-1).view(np.uint8),
            y.reshape(-1).view(np.uint8),
            err_msg=f"{case.name}: {jax.tree_util.keystr(path)} differs from the golden checkpoint",
        )
