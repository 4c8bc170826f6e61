"""Applying updates: `apply_updates`, and `step`, the one call a fused kernel will take over."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._base import GradientTransformation, OptState, Params, Updates
from ._dtypes import wider


def apply_updates(params: Params, updates: Updates) -> Params:
    """``params + updates``, leaf by leaf, each result in its parameter's dtype; ``None`` kept.

    The sum is taken in the wider of the two dtypes, then cast to the parameter's dtype, so a
    bfloat16 parameter with a float32 update is rounded once.
    """

    def one(p, u):
        if p is None:
            return None
        p = jnp.asarray(p)
        wide = wider(p.dtype, jnp.asarray(u).dtype)
        return (p.astype(wide) + jnp.asarray(u).astype(wide)).astype(p.dtype)

    return jax.tree.map(one, params, updates, is_leaf=lambda x: x is None)


def step(
    tx: GradientTransformation,
    grads: Updates,
    state: OptState,
    params: Params,
    **extra_args: Any,
) -> tuple[Params, OptState]:
    """One optimizer step: ``(new_params, new_state)`` from gradients, state and params.

    Equal to ``tx.update`` followed by `apply_updates`, which is the reference implementation. It is
    the entry point a fused kernel (updating params and state in one pass over donated buffers)
    plugs into; call it inside ``jax.jit`` with ``donate_argnums`` for the params and state.

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> opt = adamx.adam(0.1)
      >>> params = jnp.array([1.0, -1.0])
      >>> state = opt.init(params)
      >>> params, state = adamx.step(opt, jnp.array([0.5, -0.5]), state, params)
      >>> print(params)
      [ 0.9 -0.9]
    """
    updates, state = tx.update(grads, state, params, **extra_args)
    return apply_updates(params, updates), state
