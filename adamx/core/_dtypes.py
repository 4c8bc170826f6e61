"""The dtype policy (docs/design.md, section 5): compute in at least float32, store as initialised."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__: list[str] = []  # internal: used by the floors above, not public


@functools.lru_cache(maxsize=256)
def _compute_dtype(*dtypes: Any) -> np.dtype:
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


def compute_dtype(*dtypes: Any) -> np.dtype:
    """The dtype moment math runs in: the widest of ``dtypes`` and float32 (see `_compute_dtype`).

    Memoised: it runs once per leaf at trace time, so its cost is paid thousands of times.
    """
    try:
        return _compute_dtype(*dtypes)
    except TypeError:  # an unhashable dtype-like
        return _compute_dtype.__wrapped__(*dtypes)


def wider(a: Any, b: Any) -> np.dtype:
    """The wider of two dtypes of the same kind (bfloat16 with float32 gives float32)."""
    a, b = np.dtype(a), np.dtype(b)
    if not (jnp.issubdtype(a, jnp.inexact) and jnp.issubdtype(b, jnp.inexact)):
        return np.dtype(jnp.promote_types(a, b))
    return a if a == b else compute_dtype(a, b) if max(a.itemsize, b.itemsize) >= 4 else a


def real_dtype(dtype: Any) -> np.dtype:
    """The real dtype of the same precision (``complex64 -> float32``); real dtypes map to themselves."""
    return np.dtype(jnp.finfo(dtype).dtype)


@functools.lru_cache(maxsize=64)
def _narrow(dtype: np.dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32)


def upcast(x: jax.Array) -> jax.Array:
    """``x`` in float32 if it is a narrower float (bfloat16, float16); anything else unchanged."""
    if _narrow(x.dtype):
        return x.astype(jnp.float32)
    return x


@functools.lru_cache(maxsize=64)
def is_inexact(dtype: Any) -> bool:
    """``jnp.issubdtype(dtype, jnp.inexact)``, memoised (it runs per leaf at trace time)."""
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def as_hyperparameter(value: Any, dtype: Any) -> jax.Array:
    """A hyperparameter (a Python number, or an array when traced) as an array of the compute dtype."""
    return jnp.asarray(value, dtype=dtype)


def cast(x: jax.Array, dtype: Any) -> jax.Array:
    """``x.astype(dtype)``, skipped in Python when ``x`` already has ``dtype`` (the same array).

    A no-op ``astype`` adds nothing to the jaxpr but costs a trip through ``convert_element_type``
    at trace time, once per leaf and per cast.
    """
    return x if x.dtype == dtype else x.astype(dtype)


class Hyperparameters:
    """``values`` as arrays of a compute dtype, converted once per dtype (not once per leaf).

    Build one per ``update`` call and call it inside the per-leaf function: ``a, b = hp(cdt)``.
    The arrays are those `as_hyperparameter` makes, so the numbers are the same.
    """

    __slots__ = ("_cache", "_values")

    def __init__(self, *values: Any):
        self._values = values
        self._cache: dict[Any, tuple[jax.Array, ...]] = {}

    def __call__(self, dtype: Any) -> tuple[jax.Array, ...]:
        found = self._cache.get(dtype)
        if found is None:
            found = tuple(as_hyperparameter(v, dtype) for v in self._values)
            self._cache[dtype] = found
        return found


def per_dtype(fn: Any) -> Any:
    """``fn(dtype)`` memoised for the life of one ``update`` call: a scalar computed once per
    compute dtype (a bias correction, a weight), not once per leaf."""
    cache: dict[Any, Any] = {}

    def get(dtype: Any) -> Any:
        if dtype not in cache:
            cache[dtype] = fn(dtype)
        return cache[dtype]

    return get


def scalar_dtype(params: Any) -> np.dtype:
    """The real dtype of the scalar bookkeeping: float32, or float64 if any parameter is that wide."""
    leaves = jax.tree.leaves(params)
    return real_dtype(compute_dtype(*(jnp.result_type(p) for p in leaves)))
