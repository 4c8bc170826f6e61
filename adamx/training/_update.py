"""Applying updates: `apply_updates`, and `step`, the one call the fused kernels take over."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..core._base import GradientTransformation, OptState, Params, Updates
from ..core._chain import jit_traced
from ..core._dtypes import cast, is_inexact, wider
from ..core._trees import (
    _is_structure_error,
    _rounds_to_integers,
    check_like,
    non_float_gradient,
    non_float_parameter,
    structure_mismatch,
    wrong_shape,
)
from ..kernels import _bounded, _derived

__all__ = ["apply_updates", "step"]


def apply_updates(params: Params, updates: Updates) -> Params:
    """``params + updates``, leaf by leaf, each result in its parameter's dtype; ``None`` kept.

    The sum is taken in the wider of the two dtypes, then cast to the parameter's dtype, so a
    bfloat16 parameter with a float32 update is rounded once. An integer or boolean parameter
    given a floating-point update is refused with its key path (docs/design.md, section 5).
    """

    def one(path, p, u):
        if p is None:
            return None
        p = p if isinstance(p, jax.Array) else jnp.asarray(p)
        u = u if isinstance(u, jax.Array) else jnp.asarray(u)
        if p.shape != u.shape:  # would broadcast, or fail with no key path
            raise wrong_shape(path, u.shape, p.shape, "update")
        if p.dtype == u.dtype:
            return p + u
        if not is_inexact(p.dtype) and is_inexact(u.dtype):
            raise non_float_parameter(path, p.dtype)  # the update would be truncated silently
        if _rounds_to_integers(u.dtype, p.dtype):
            raise non_float_gradient(path, u.dtype, p.dtype, "update")
        wide = wider(p.dtype, u.dtype)
        return cast(cast(p, wide) + cast(u, wide), p.dtype)

    try:
        return jax.tree_util.tree_map_with_path(one, params, updates, is_leaf=lambda x: x is None)
    except ValueError as error:
        if not _is_structure_error(error):
            raise
        raise structure_mismatch(updates, params, "params", "updates") from None


def step(
    tx: GradientTransformation,
    grads: Updates,
    state: OptState,
    params: Params,
    *,
    fused: bool | None = None,
    **extra_args: Any,
) -> tuple[Params, OptState]:
    """One optimizer step: ``(new_params, new_state)`` from gradients, state and params.

    Equal to ``tx.update`` followed by `apply_updates`, which is the reference implementation. On
    CPU, one compiled pass updates every parameter and moment in place instead, for any
    optimizer or chain whose per-element step lowers to C++ (adamx/kernels/_derived.py: Adam and
    its variants, SGD, RMSprop, AdaGrad, Lion, ..., with float32, bfloat16 and stochastically
    rounded bfloat16 moments, masks, schedules, injected hyperparameters, Kahan summation; a
    per-tensor scalar such as LAMB's trust ratio is reduced in a pass of its own first). The
    kernel is derived
    from the optimizer's own jaxpr, so the numbers are the same bit for bit (docs/design.md,
    section 8), block-wise 8- and 4-bit moments included. On a mesh it runs per shard
    (stochastically rounded moments excepted: they hash each element's index in its whole leaf).
    Call it inside ``jax.jit`` with ``donate_argnums`` for the
    params and state (or use `make_train_step`), so the kernel writes into the donated buffers.

    Args:
      tx: the optimizer.
      grads, state, params: as for ``tx.update``.
      fused: ``None`` (default): the kernel where it applies, else the jnp path. ``False``: always
        the jnp path. ``True``: the kernel, or an error saying why it cannot be used.
      **extra_args: passed to ``tx.update`` (the jnp path then runs).

    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> opt = adamx.adam(0.1)
      >>> params = jnp.array([1.0, -1.0])
      >>> state = opt.init(params)
      >>> params, state = adamx.step(opt, jnp.array([0.5, -0.5]), state, params)
      >>> print(params)
      [ 0.9 -0.9]
    """
    check_like(grads, params)  # trace-time: names a leaf of the wrong shape, dtype or key path
    if fused is not False and not extra_args:
        # The kernel derived from the optimizer's own jaxpr (adamx/kernels/_derived.py), per
        # shard on a mesh.
        result = _derived.step(tx, apply_updates, grads, state, params)
        reason = lambda: _derived.why_not(tx, apply_updates, grads, state, params) or ""  # noqa: E731
        if result is not None:
            return result
        if fused is True:
            raise ValueError(
                f"`step(..., fused=True)` cannot fuse this step: {reason()}. "
                "Pass `fused=None` (the default) to fall back to the jnp path."
            )
        if _bounded.has_low_bit(state) and jit_traced(grads):
            # Low-bit moments where the kernel does not run (GPU, TPU, no compiler): the same
            # plan run by XLA, a chunk of each leaf at a time (adamx/kernels/_bounded.py).
            result = _bounded.step(tx, apply_updates, grads, state, params)
            if result is not None:
                return result
    elif fused is True:
        raise ValueError(
            "`step(..., fused=True)` cannot pass extra keyword arguments to the kernel; "
            "pass `fused=None` (the default)."
        )
    updates, state = tx.update(grads, state, params, **extra_args)
    return apply_updates(params, updates), state
