"""The declared version floor is the tested one (`.ci/run` runs a fast subset on `.ci/floor.txt`).

These tests run in both of CI's environments: the newest pins (`.ci/constraints.txt`) and the
oldest (`.ci/floor.txt`, exactly the floors `pyproject.toml` declares).
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from adamx.kernels import _native

ROOT = Path(__file__).resolve().parent.parent
FLOORED = ("jax", "jaxlib", "chex")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _declared() -> dict[str, str]:
    """``{name: floor}`` from pyproject.toml's ``dependencies`` (``name>=floor``)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    return dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', block))


def _pinned() -> dict[str, str]:
    """``{name: version}`` from .ci/floor.txt (``name==version`` lines)."""
    lines = (ROOT / ".ci" / "floor.txt").read_text().splitlines()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([0-9.]+)", "\n".join(lines), re.MULTILINE))


def test_the_floor_ci_tests_is_the_floor_pyproject_declares():
    declared, pinned = _declared(), _pinned()
    for name in FLOORED:
        assert name in declared, f"pyproject.toml declares no floor for {name}"
        assert pinned.get(name) == declared[name], (
            f"pyproject.toml declares {name}>={declared[name]} but .ci/floor.txt tests "
            f"{name}=={pinned.get(name)}: keep them equal"
        )


def test_the_installed_versions_satisfy_the_declared_floor():
    for name, floor in _declared().items():
        installed = metadata.version(name)
        assert _version(installed) >= _version(floor), f"{name} {installed} < declared {floor}"


def test_chex_imports_with_this_jax():
    chex = pytest.importorskip("chex")  # a declared dependency, never imported by adamx itself
    assert chex.__version__


def test_the_kernel_builds_where_a_compiler_is():
    available, why = _native.status()
    if not available and ("compiler" in why or "ADAMX_NATIVE" in why):
        pytest.skip(why)
    assert available, why


def test_a_zero_size_leaf_takes_the_fused_step():
    # jaxlib <= 0.9.0 hands a custom call a null pointer for an empty buffer; the kernel refused it
    # ("a buffer could not be decoded") until the kernel kept such leaves out of the call.
    params = {"w": jnp.arange(3.0), "empty": jnp.zeros((0, 3))}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = adamx.adamw(1e-2, weight_decay=0.1)
    expected, expected_state = adamx.step(tx, grads, tx.init(params), params, fused=False)
    fused = True if _native.status()[0] else None
    step = jax.jit(lambda g, s, p: adamx.step(tx, g, s, p, fused=fused))
    got, state = step(grads, tx.init(params), params)
    ours, theirs = jax.tree.leaves((got, state)), jax.tree.leaves((expected, expected_state))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert got["empty"].shape == (0, 3)
