"""Exact resume: N steps straight equal k steps, a checkpoint round trip, and N - k steps, bit for bit.

For every optimizer of the registry: through a plain NumPy round trip (``np.savez`` of the leaves,
the tree structure reused), and through Orbax, restored in a *new process* against
``jax.eval_shape(tx.init, params)``. Step counters saturate at the largest ``int32`` instead of
wrapping to a negative step.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adamx
from tests.helpers import OPTIMIZER_IDS, OPTIMIZERS, parabola, random_tree

ROOT = Path(__file__).resolve().parent.parent
PARAMS = jax.tree.map(jnp.asarray, random_tree(0))
STEPS, SPLIT = 6, 3


def make_step(tx):
    return jax.jit(lambda params, state: adamx.step(tx, jax.grad(parabola)(params), state, params))


def train(step, params, state, steps):
    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def assert_bit_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_numpy_round_trip_resumes_bit_identically(case, tmp_path):
    tx = case.make(case.learning_rate)
    step = make_step(tx)
    straight = train(step, PARAMS, tx.init(PARAMS), STEPS)
    params, state = train(step, PARAMS, tx.init(PARAMS), SPLIT)
    leaves, treedef = jax.tree.flatten((params, state))
    np.savez(tmp_path / "checkpoint.npz", *[np.asarray(leaf) for leaf in leaves])
    with np.load(tmp_path / "checkpoint.npz") as saved:
        # numpy keeps bfloat16 (an ml_dtypes type) as raw 2-byte records: view them back.
        loaded = [jnp.asarray(saved[f"arr_{i}"].view(x.dtype)) for i, x in enumerate(leaves)]
    params, state = jax.tree.unflatten(treedef, loaded)
    assert_bit_identical(train(step, params, state, STEPS - SPLIT), straight)


# The restoring process: for each optimizer, restore (params, state) against the abstract tree
# `eval_shape` gives, train the remaining steps, and write every leaf to an npz.
RESTORE = textwrap.dedent(
    """
    import sys
    import warnings
    warnings.simplefilter("ignore")
    import jax, jax.numpy as jnp, numpy as np
    import orbax.checkpoint as ocp
    import adamx
    from tests.helpers import OPTIMIZERS, parabola, random_tree

    directory, steps = sys.argv[1], int(sys.argv[2])
    params = jax.tree.map(jnp.asarray, random_tree(0))
    checkpointer = ocp.StandardCheckpointer()
    for case in OPTIMIZERS:
        tx = case.make(case.learning_rate)
        target = (jax.eval_shape(lambda: params), jax.eval_shape(tx.init, params))
        restored = checkpointer.restore(f"{directory}/{case.name}", target)
        p, s = jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(restored))
        step = jax.jit(lambda p, s: adamx.step(tx, jax.grad(parabola)(p), s, p))
        for _ in range(steps):
            p, s = step(p, s)
        np.savez(f"{directory}/{case.name}.npz", *[np.asarray(x) for x in jax.tree.leaves((p, s))])
    """
)


@pytest.mark.filterwarnings("ignore")  # Orbax's own deprecation and async notices
def test_orbax_checkpoint_resumes_bit_identically_in_a_new_process(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    checkpointer = ocp.StandardCheckpointer()
    expected = {}
    for case in OPTIMIZERS:
        tx = case.make(case.learning_rate)
        step = make_step(tx)
        expected[case.name] = train(step, PARAMS, tx.init(PARAMS), STEPS)
        checkpointer.save(tmp_path / case.name, train(step, PARAMS, tx.init(PARAMS), SPLIT))
    checkpointer.wait_until_finished()
    checkpointer.close()
    done = subprocess.run(
        [sys.executable, "-c", RESTORE, str(tmp_path), str(STEPS - SPLIT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name, straight in expected.items():
        leaves, treedef = jax.tree.flatten(straight)
        with np.load(tmp_path / f"{name}.npz") as saved:
            resumed = treedef.unflatten(
                [saved[f"arr_{i}"].view(x.dtype) for i, x in enumerate(leaves)]
            )
        assert_bit_identical(resumed, straight)


NEAR_LIMIT = 2**31 - 2


def counts_near_the_limit(state):
    """Every int32 scalar of ``state`` (the step counts) set to ``2**31 - 2``."""

    def one(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.integer) and leaf.ndim == 0:
            return jnp.asarray(NEAR_LIMIT, leaf.dtype)
        return leaf

    return jax.tree.map(one, state)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=OPTIMIZER_IDS)
def test_step_counts_saturate_near_two_to_the_31(case):
    """Bias corrections and schedules keep giving finite updates past 2**31 - 1 steps."""
    tx = case.make(case.learning_rate)
    step = make_step(tx)
    state = counts_near_the_limit(tx.init(PARAMS))
    params = PARAMS
    for _ in range(3):
        params, state = step(params, state)
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params)), case.name
    scalars = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.integer)]
    scalars = [x for x in scalars if x.ndim == 0]  # not a quantised moment's uint8 codes
    counts = [int(x) for x in scalars if x.dtype == jnp.int32]
    assert counts == [2**31 - 1] * len(counts)
    # Stochastic rounding's uint32 write counter is the seed of its random bits, not a step: it
    # must keep changing (a saturated seed would repeat the same rounding forever), so it wraps.
    seeds = [int(x) for x in scalars if x.dtype == jnp.uint32]
    assert seeds == [NEAR_LIMIT + 3] * len(seeds)
    assert len(counts) + len(seeds) == len(scalars)


def test_wrapper_counters_saturate():
    tx = adamx.apply_if_finite(adamx.multi_steps(adamx.adam(1e-2), 2), max_consecutive_errors=1)
    step = make_step(tx)
    state = counts_near_the_limit(tx.init(PARAMS))
    state = state._replace(inner_state=state.inner_state._replace(mini_step=jnp.int32(0)))
    params = PARAMS
    for _ in range(4):
        params, state = step(params, state)
    assert int(state.inner_state.gradient_step) == 2**31 - 1
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
    assert int(state.total_notfinite) == 2**31 - 2  # untouched: every step was finite
