"""How moment buffers are stored: the hook every moment-keeping block reads and writes through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ..core._trees import non_float_parameter
from ..core._validate import check_non_negative

__all__ = ["DtypeStorage", "FilledStorage", "MomentStorage"]


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


def is_storage(value: Any) -> bool:
    """Whether ``value`` is a `MomentStorage` (passed where a moment dtype is expected)."""
    return not isinstance(value, type | np.dtype | str) and all(
        callable(getattr(value, name, None)) for name in ("init", "read", "write")
    )


def init_buffers(storage: MomentStorage, params: Any) -> Any:
    """``storage.init`` of every leaf of ``params``, refusing integer and boolean leaves.

    Every moment-keeping block builds its buffers here, so the integer-leaf rule (docs/design.md,
    section 5) lives in one place: a moment of an integer parameter would be written back rounded
    to integers, silently, so the leaf is refused with its key path instead.
    """

    def one(path, param):
        dtype = jnp.result_type(param)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise non_float_parameter(path, dtype)
        return storage.init(param)

    return jax.tree_util.tree_map_with_path(one, params)


def storage_for(dtype: Any) -> DtypeStorage:
    """The storage a ``mu_dtype``/``nu_dtype`` argument asks for (``None``: the parameter's dtype)."""
    return DtypeStorage(None if dtype is None else np.dtype(dtype))


def stored_dtypes(stored: Any) -> list[np.dtype]:
    """The floating dtypes inside a stored buffer (its codes' integer dtypes do not count)."""
    return [
        leaf.dtype for leaf in jax.tree.leaves(stored) if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]


@dataclass(frozen=True)
class FilledStorage:
    """A `MomentStorage` whose buffers start at ``value`` instead of zero (otherwise ``base``'s).

    RMSprop's ``initial_scale`` (TF1 started its accumulator at 1) and AdaGrad's
    ``initial_accumulator_value``: the initial value is written through ``base``, so a quantised
    storage keeps it in its own form.
    """

    base: MomentStorage
    value: Any  # a float; traced only while an injected optimizer is rebuilt in `update`

    def init(self, param: jax.Array) -> Any:
        stored = self.base.init(param)
        return self.base.write(
            jnp.full_like(param, self.value, dtype=jnp.result_type(param)), stored
        )

    def read(self, stored: Any, dtype: Any) -> jax.Array:
        return self.base.read(stored, dtype)

    def write(self, value: jax.Array, stored: Any) -> Any:
        return self.base.write(value, stored)


def filled(storage: MomentStorage, value: Any) -> MomentStorage:
    """``storage`` started at ``value`` (``storage`` itself when ``value`` is a concrete 0).

    ``value`` may be traced (``inject_hyperparams`` rebuilds the optimizer inside ``update``); the
    initial value only matters to ``init``, which always sees it concrete.
    """
    check_non_negative(value, "initial value")
    if isinstance(value, jax.core.Tracer):
        return FilledStorage(storage, value)
    if float(value) == 0.0:
        return storage
    return FilledStorage(storage, float(value))
