"""The transformation protocol: `GradientTransformation`, `MomentTransformation`, `EmptyState`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

__all__ = ["EmptyState", "GradientTransformation", "MomentTransformation", "identity"]

Params = Any
Updates = Any
OptState = Any
Schedule = Callable[[jax.Array], jax.typing.ArrayLike]
ScalarOrSchedule = float | jax.typing.ArrayLike | Schedule


class InitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class UpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions ``(init, update)``: optax's protocol.

    ``init(params) -> state`` builds the state; ``update(updates, state, params=None, **extra_args)
    -> (updates, state)`` transforms a tree of updates (gradients on the first transform of a chain).
    Keyword arguments a transform does not use are accepted and ignored. A transformation holds no
    ``jax.Array``, so it can live as a static attribute (flax ``nnx.Optimizer``, linen ``TrainState``).
    """

    init: InitFn
    update: UpdateFn


class MomentTransformation(GradientTransformation):
    """A block of a moment computation (`ema`, `trace`, `bias_correction`, `scale_by_second_moment`).

    Inside `adamx.chain` it receives ``gradient=``, the gradient that entered its run of consecutive
    moment blocks, and its output does not redefine that gradient for the blocks after it. Used on
    its own (or in a foreign chain), its input is taken as the gradient. See ``docs/design.md``.
    """

    __slots__ = ()


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none."""


def identity() -> GradientTransformation:
    """The transformation that returns its updates unchanged and keeps no state."""

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return updates, state

    return GradientTransformation(init_fn, update_fn)


def zero_count() -> jax.Array:
    """A fresh step counter: an ``int32`` scalar zero."""
    return jnp.zeros([], jnp.int32)


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the largest ``int32`` instead of wrapping to a negative step."""
    limit = jnp.iinfo(jnp.int32).max
    return jnp.where(count < limit, count + 1, limit).astype(jnp.int32)
