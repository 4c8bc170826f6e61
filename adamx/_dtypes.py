"""The dtype policy (docs/design.md, section 5): compute in at least float32, store as initialised."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def compute_dtype(*dtypes: Any) -> np.dtype:
    """The dtype moment math runs in: the widest of ``dtypes`` and float32 (complex stays complex)."""
    result = np.dtype(jnp.float32)
    for dtype in dtypes:
        result = jnp.promote_types(result, dtype)
    return np.dtype(result)


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
