"""How moment buffers are stored: the hook every moment-keeping block reads and writes through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np


class MomentStorage(Protocol):
    """How one moment buffer is kept between steps.

    ``init(param)`` makes the stored form of a zero buffer shaped like ``param``; ``read(stored,
    dtype)`` returns it as an array of the compute ``dtype``; ``write(value, stored)`` returns the
    stored form of ``value``. The stored form may be any pytree (a quantised buffer keeps codes and
    block scales); it must keep its structure and dtypes across steps.
    """

    def init(self, param: jax.Array) -> Any: ...

    def read(self, stored: Any, dtype: Any) -> jax.Array: ...

    def write(self, value: jax.Array, stored: Any) -> Any: ...


@dataclass(frozen=True)
class DtypeStorage:
    """A plain array of ``dtype`` (``None``: the parameter's dtype), written by rounding to nearest."""

    dtype: np.dtype | None = None

    def init(self, param: jax.Array) -> jax.Array:
        return jnp.zeros_like(param, dtype=self.dtype)

    def read(self, stored: jax.Array, dtype: Any) -> jax.Array:
        return stored.astype(dtype)

    def write(self, value: jax.Array, stored: jax.Array) -> jax.Array:
        return value.astype(stored.dtype)


def storage_for(dtype: Any) -> DtypeStorage:
    """The storage a ``mu_dtype``/``nu_dtype`` argument asks for (``None``: the parameter's dtype)."""
    return DtypeStorage(None if dtype is None else np.dtype(dtype))


def stored_dtypes(stored: Any) -> list[np.dtype]:
    """The floating dtypes inside a stored buffer (its codes' integer dtypes do not count)."""
    return [
        leaf.dtype for leaf in jax.tree.leaves(stored) if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
