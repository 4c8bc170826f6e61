"""Training-step helpers built on `adamx.step`: a jitted, donated step, and Flax NNX's update."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from ..core._base import GradientTransformation
from ._update import step

__all__ = ["make_train_step", "nnx_update"]


def make_train_step(
    loss_fn: Callable[..., Any],
    tx: GradientTransformation,
    *,
    has_aux: bool = False,
    jit: bool = True,
    fused: bool | None = None,
) -> Callable[..., Any]:
    """A training step ``(params, state, *batch) -> (params, state, loss)``, jitted and donated.

    The gradient of ``loss_fn(params, *batch)`` goes through `adamx.step`, so on CPU an
    elementwise optimizer updates params and state in one kernel pass, writing into the donated
    buffers: no
    parameter- or state-sized temporary is allocated (see ``memory_analysis()`` of
    ``step.lower(...).compile()``). The donated ``params`` and ``state`` must not be used after
    the call; use the returned ones.

    Args:
      loss_fn: ``loss_fn(params, *batch, **kwargs)``, a scalar (or ``(scalar, aux)`` with
        ``has_aux``).
      tx: the optimizer.
      has_aux: ``loss_fn`` returns ``(loss, aux)``; the step then returns
        ``(params, state, loss, aux)``.
      jit: compile with ``jax.jit(..., donate_argnums=(0, 1))``; ``False`` returns the plain
        function, to wrap in your own ``jit`` or ``pmap``.
      fused: passed to `adamx.step`.

    Returns:
      The training step.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> loss = lambda p, x: jnp.sum((p * x - 1.0) ** 2)
      >>> opt = adamx.adam(0.1)
      >>> train_step = adamx.make_train_step(loss, opt)
      >>> params = jnp.zeros(2)
      >>> state = opt.init(params)
      >>> for _ in range(3):
      ...     params, state, value = train_step(params, state, jnp.array([1.0, 2.0]))
      ...     print(f"{value:.4f}")
      2.0000
      1.4500
      1.0035
    """

    def train_step(params, state, *batch, **kwargs):
        value, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(params, *batch, **kwargs)
        params, state = step(tx, grads, state, params, fused=fused)
        if has_aux:
            loss, aux = value
            return params, state, loss, aux
        return params, state, value

    return jax.jit(train_step, donate_argnums=(0, 1)) if jit else train_step


def nnx_update(optimizer: Any, model: Any, grads: Any, *, fused: bool | None = None) -> None:
    """``optimizer.update(model, grads)`` for a ``flax.nnx.Optimizer``, through `adamx.step`.

    ``nnx.Optimizer.update`` calls ``tx.update`` then ``optax.apply_updates``; this does the same
    through `adamx.step`, so an elementwise optimizer takes its one-pass kernel on CPU, and
    updates the model, the optimizer state and ``optimizer.step`` in place as ``update`` does.
    Call it inside ``nnx.jit`` like ``optimizer.update`` (flax >= 0.11).

    It also carries state that ``nnx.Optimizer.update`` cannot: nnx stores every pytree node of
    the state as an ``nnx.State`` mapping of its children, which drops a node's static data, such
    as a `QuantizedBuffer`'s shape (8- and 4-bit moments). This rebuilds the state the optimizer's
    ``init`` lays out, leaf by leaf, by key path.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> from flax import nnx
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> optimizer = nnx.Optimizer(model, adamx.adamw(1e-2), wrt=nnx.Param)
      >>> loss = lambda m: jnp.mean((m(jnp.ones((4, 2))) - 1.0) ** 2)
      >>> @nnx.jit
      ... def train_step(model, optimizer):
      ...     value, grads = nnx.value_and_grad(loss)(model)
      ...     adamx.nnx_update(optimizer, model, grads)
      ...     return value
      >>> first = train_step(model, optimizer)
      >>> bool(train_step(model, optimizer) < first)
      True
    """
    from flax import nnx

    graph = getattr(optimizer, "graph", None)
    options = {} if graph is None else {"graph": graph}
    pure = getattr(nnx, "as_pure", lambda tree: tree)
    params = pure(nnx.state(model, optimizer.wrt, **options))
    grad_arrays = pure(nnx.state(grads, optimizer.wrt, **options))
    opt_state = _rebuilt(jax.eval_shape(optimizer.tx.init, params), pure(optimizer.opt_state))
    new_params, new_state = step(optimizer.tx, grad_arrays, opt_state, params, fused=fused)
    nnx.update(model, new_params)
    nnx.update(optimizer.opt_state, nnx.state(new_state, **options))
    optimizer.step[...] += 1


def _child(node: Any, key: Any) -> Any:
    """``node``'s child at one jax key, whether ``node`` is still the original node or the
    mapping nnx made of it (keyed by name, dict key or position)."""
    name = getattr(key, "name", None)
    if name is not None and not isinstance(node, Mapping):
        return getattr(node, name)
    for attribute in ("name", "key", "idx"):
        if hasattr(key, attribute):
            return node[getattr(key, attribute)]
    raise TypeError(f"Cannot follow the key {key!r} into a {type(node).__name__}.")


def _rebuilt(template: Any, state: Any) -> Any:
    """``state`` laid out as ``template`` (``jax.eval_shape`` of ``init``), leaf by key path."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, _ in paths:
        node = state
        for key in path:
            node = _child(node, key)
        leaves.append(node)
    return jax.tree.unflatten(treedef, leaves)
