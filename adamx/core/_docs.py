"""Docstring fragments that many public functions share, filled in when their module is imported."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

__all__: list[str] = []  # internal: used by the floors above, not public

_DESCENT = """\
    Example:
      >>> import jax, jax.numpy as jnp, adamx
      >>> params = {params}
      >>> loss = lambda p: {loss}
      >>> opt = adamx.{call}
      >>> state = opt.init(params)
      >>> for _ in range({steps}):
      ...     grads = jax.grad(loss)(params)
      ...     updates, state = opt.update(grads, state, params)
      ...     params = adamx.apply_updates(params, updates)
      ...     print(f"{{loss(params):.4f}}")
{losses}

"""


def descent_example(
    call: str,
    losses: str,
    params: str = '{"w": jnp.array([1.0, -2.0])}',
    loss: str = 'jnp.sum(p["w"] ** 2)',
) -> Callable[[F], F]:
    """Add the shared ``Example:`` section to an optimizer's docstring, before its references.

    The example (a doctest, run by the test suite) minimises ``loss`` (by default :math:`|w|^2`)
    from ``params`` (by default :math:`w = (1, -2)`) with ``adamx.<call>`` and prints the loss
    after each step: one step per number in ``losses`` (space-separated, four decimals).
    """
    printed = losses.split()
    example = _DESCENT.format(
        call=call,
        params=params,
        loss=loss,
        steps=len(printed),
        losses="\n".join(f"      {x}" for x in printed),
    )

    def add(fn: F) -> F:
        doc = fn.__doc__
        if doc is None:  # python -OO
            return fn
        head, references, tail = doc.partition("    References:\n")
        if references:
            fn.__doc__ = head + example + references + tail
        else:
            fn.__doc__ = doc.rstrip() + "\n\n" + example.rstrip() + "\n    "
        return fn

    return add
