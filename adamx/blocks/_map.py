"""The moment map: one elementwise moment update over a tree (optax's ``tree.update_moment``).

Every block that keeps a moment repeats the same plumbing around its equation: the dtype the math
runs in, the read and write of the stored moment through its `MomentStorage` (a low-bit buffer
included), the hyperparameters as arrays of that dtype, the cast back to each update's dtype, and
the split of a tree of ``(output, moment)`` pairs into two trees. `update_moment` owns all of it, so
a block's body is its equation: ``lambda u, m, b, c: b * m + c * u`` is `adamx.ema`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..core._dtypes import Hyperparameters, cast, compute_dtype, real_dtype
from ..core._trees import map_like
from ..storage._storage import DtypeStorage, MomentStorage, stored_dtypes

__all__: list[str] = []  # internal: used by the floors above, not public


def update_moment(
    body: Callable[..., Any],
    updates: Any,
    moments: Any,
    storage: MomentStorage,
    *others: Any,
    hyperparameters: Sequence[Any] = (),
    real: bool = False,
    keep_compute_dtype: bool = False,
) -> tuple[Any, Any]:
    r"""``body(u, m, *others, *hyperparameters)`` on every leaf: a moment's update over a tree.

    Per leaf, the compute dtype is the widest of the update's, the ``others``' and the stored
    moment's (and float32, `compute_dtype`): ``u`` arrives cast to it, ``m`` read from its
    ``storage`` in it (in its real dtype with ``real``: a moment of :math:`|g|^2` is real for a
    complex gradient), the ``hyperparameters`` as arrays of ``m``'s dtype (converted once per dtype
    and per call, not once per leaf) and the ``others`` (the gradient, ...) as they are.

    ``body`` returns the new moment, which is also the output (`adamx.ema`), or a pair ``(output,
    moment)``. The output is cast back to ``u``'s dtype (kept in the compute dtype with
    ``keep_compute_dtype``, `yogi_moment`'s output) and the moment written through ``storage``.

    Returns:
      ``(outputs, moments)``, two trees laid out like ``updates``; ``moments`` is the stored form.
    """
    hp = Hyperparameters(*hyperparameters)

    def one(u, stored, *rest):
        cdt = compute_dtype(u.dtype, *(x.dtype for x in rest), *_floats(stored))
        mdt = real_dtype(cdt) if real else cdt
        result = body(cast(u, cdt), _read(storage, stored, mdt), *rest, *hp(mdt))
        out, moment = result if isinstance(result, tuple) else (result, result)
        return (out if keep_compute_dtype else cast(out, u.dtype)), _write(storage, moment, stored)

    outputs, new_moments = unzip(
        updates, map_like(one, updates, moments, "optimizer state", *others)
    )
    return outputs, new_moments


def unzip(updates: Any, results: Any, count: int = 2) -> tuple[Any, ...]:
    """Split a tree of ``count``-tuples laid out like ``updates`` into ``count`` trees."""

    def column(i: int) -> Any:
        return jax.tree.map(lambda _, result: result[i], updates, results)

    return tuple(column(i) for i in range(count))


def _floats(stored: Any) -> Any:
    """`stored_dtypes`, with a fast path for a plain array (the common storage)."""
    if isinstance(stored, jax.Array):
        return (stored.dtype,) if jnp.issubdtype(stored.dtype, jnp.inexact) else ()
    return stored_dtypes(stored)


def _read(storage: MomentStorage, stored: Any, dtype: Any) -> jax.Array:
    """``storage.read(stored, dtype)``; a plain array already in ``dtype`` is returned as is."""
    if type(storage) is DtypeStorage:
        return cast(stored, dtype)
    return storage.read(stored, dtype)


def _write(storage: MomentStorage, value: jax.Array, stored: Any) -> Any:
    """``storage.write(value, stored)``; a plain array of the stored dtype is returned as is."""
    if type(storage) is DtypeStorage:
        return cast(value, stored.dtype)
    return storage.write(value, stored)
