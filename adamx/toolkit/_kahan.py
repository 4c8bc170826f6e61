"""Kahan-compensated updates for low-precision (bfloat16) parameters."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..blocks._map import unzip
from ..core._base import GradientTransformation
from ..core._dtypes import wider
from ..core._trees import map_like

__all__ = ["KahanState", "kahan_summation"]


class KahanState(NamedTuple):
    """The state of `kahan_summation`: per parameter, the rounding error still owed to it."""

    compensation: Any


def kahan_summation() -> GradientTransformation:
    r"""Apply the updates to the parameters with Kahan compensation; put it last in a chain.

    A bfloat16 parameter keeps 8 significant bits: an update smaller than half its spacing is
    rounded away, so with small learning rates bfloat16 weights stop moving. This keeps, per
    parameter, the rounding error of the last step :math:`c` (in the parameter's dtype, as
    optimi does) and adds it back to the next update:

    .. math::
        y = u - c, \qquad \theta' = \mathrm{round}(\theta + y), \qquad c' = (\theta' - \theta) - y.

    It returns the updates :math:`\theta' - \theta` that `adamx.apply_updates` (or
    ``optax.apply_updates``) turns into exactly :math:`\theta'`. It needs ``params``. Float32
    parameters gain little from it (their rounding error is 2**-24 relative).

    Example: ``adamx.chain(adamx.adamw(1e-4), adamx.kahan_summation())`` for bfloat16 params.
    `adamx.step` runs such a chain, like any elementwise chain, in one compiled pass on CPU, which
    updates the compensation with the parameters, with the same roundings (docs/design.md,
    section 8).

    Returns:
      A transformation with state `KahanState`.
    """

    def init_fn(params):
        return KahanState(jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "`kahan_summation` needs the params (it computes the rounded new parameters), got "
                "`params=None`; call `update(grads, state, params)` or `adamx.step`."
            )

        def one(u, c, p):
            wide = wider(wider(p.dtype, u.dtype), jnp.float32)
            y = u.astype(wide) - c.astype(wide)
            target = (p.astype(wide) + y).astype(p.dtype)
            step = (target.astype(wide) - p.astype(wide)).astype(u.dtype)
            # What apply_updates will make of `step` (the same sum, rounded once).
            applied = (p.astype(wide) + step.astype(wide)).astype(p.dtype)
            owed = (applied.astype(wide) - p.astype(wide)) - y
            return step, owed.astype(c.dtype)

        pairs = map_like(one, updates, state.compensation, "optimizer state", params)
        steps, compensation = unzip(updates, pairs)
        return steps, KahanState(compensation)

    return GradientTransformation(init_fn, update_fn)
