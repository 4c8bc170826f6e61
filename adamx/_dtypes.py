"""The dtype policy (docs/design.md, section 5): compute in at least float32, store as initialised."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def compute_dtype(*dtypes: Any) -> np.dtype:
    """The dtype moment math runs in: the widest of ``dtypes`` and float32 (complex stays complex).

    Integer dtypes do not count. Computed here rather than by ``jnp.promote_types``, which refuses
    float32 with float64 under ``jax_numpy_dtype_promotion="strict"``: this is a deliberate choice of
    precision, not an implicit promotion.
    """
    bits, is_complex = 32, False
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        if jnp.issubdtype(dtype, jnp.inexact):
            bits = max(bits, jnp.finfo(dtype).bits)
            is_complex = is_complex or jnp.issubdtype(dtype, jnp.complexfloating)
    if is_complex:
        return np.dtype(jnp.complex128 if bits == 64 else jnp.complex64)
    return np.dtype(jnp.float64 if bits == 64 else jnp.float32)


def wider(a: Any, b: Any) -> np.dtype:
    """The wider of two dtypes of the same kind (bfloat16 with float32 gives float32)."""
    a, b = np.dtype(a), np.dtype(b)
    if not (jnp.issubdtype(a, jnp.inexact) and jnp.issubdtype(b, jnp.inexact)):
        return np.dtype(jnp.promote_types(a, b))
    return a if a == b else compute_dtype(a, b) if max(a.itemsize, b.itemsize) >= 4 else a


def real_dtype(dtype: Any) -> np.dtype:
    """The real dtype of the same precision (``complex64 -> float32``); real dtypes map to themselves."""
    return np.dtype(jnp.finfo(dtype).dtype)


def upcast(x: jax.Array) -> jax.Array:
    """``x`` in float32 if it is a narrower float (bfloat16, float16); anything else unchanged."""
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x


def as_hyperparameter(value: Any, dtype: Any) -> jax.Array:
    """A hyperparameter (a Python number, or an array when traced) as an array of the compute dtype."""
    return jnp.asarray(value, dtype=dtype)
