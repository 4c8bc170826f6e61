"""SOAP and Sophia: the shared tree of matrices and the gradient draws.

50 float64 steps (the issue's parity length) with a cosine learning rate and weight decay; the
measure is ``max |x - ref| / (|ref| + 1e-6)``, bound 1e-10. The tests are in tests/test_soap.py
and tests/test_sophia.py.
"""

from __future__ import annotations

import jax
import numpy as np

STEPS = 50
LR = 1e-2
WD = 0.1


def stacked(leaf):
    return 1 if np.ndim(leaf) == 3 else 0


def matrix_tree(seed=0, dtype=np.float64):
    """Square and tall matrices, a stacked (layers, rows, cols) leaf, a 4-D kernel, a vector and a
    scalar. Every Shampoo statistic here has full rank (see `soap`: a rank-deficient one has no
    unique eigenbasis), with ``max_precond_dim=6`` leaving the tall matrix's 8-axis unrotated."""
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((6, 6)).astype(dtype),
        "tall": rng.standard_normal((8, 4)).astype(dtype),
        "stack": rng.standard_normal((3, 4, 4)).astype(dtype),
        "conv": rng.standard_normal((3, 3, 2, 4)).astype(dtype),
        "b": rng.standard_normal(6).astype(dtype),
        "s": np.asarray(rng.standard_normal(), dtype),
    }


PARAMS = matrix_tree()


def draw(seed):
    """A tree like PARAMS of N(0, 1) draws."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.standard_normal(np.shape(x)), PARAMS)


GRADS = [draw(100 + i) for i in range(STEPS)]
