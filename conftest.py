"""Suite-wide settings: adamx's code must run under strict dtype and rank promotion.

Tests that call a reference library which is not strict-clean (optax, flax) relax it locally with
``tests.helpers.relaxed()`` around that call only.
"""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


# `--doctest-modules` would import tests/sharding_worker.py and tests/bounded_mesh_worker.py,
# which set XLA_FLAGS for 8 and 4 virtual devices at import (each runs as its own process):
# imported here, before JAX starts its backend, they gave the whole suite several CPU devices. The
# suite runs on one, as users do.
collect_ignore = ["tests/sharding_worker.py", "tests/bounded_mesh_worker.py"]

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    XLA:CPU maps every compiled program's code into memory, and eager (op-by-op) tests compile
    thousands. A pytest-xdist worker that ran half the suite held 22,000 mappings and one crashed
    with a segmentation fault inside `backend_compile`: the kernel's limit is `vm.max_map_count`
    (65,530 here). `jax.clear_caches()` unmaps them (measured: 1,500 eager ops took 660 mappings,
    and clearing gave back 590).
    """
    yield
    jax.clear_caches()
    gc.collect()
