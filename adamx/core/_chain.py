"""`chain`: compose transformations, passing each moment block the gradient of its run."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator
from typing import Any, overload

import jax

from ._base import GradientTransformation, MomentTransformation
from ._dtypes import cast, upcast
from ._probe import probing
from ._trees import check_like

__all__ = ["chain"]

# The bounded step (adamx/kernels/_bounded.py), which the floor above registers: an outermost
# chain's `update` (any `with_bounded_update`'s), traced with low-bit moments in its state, runs
# through it (docs/design.md, section 8). Off while a plan traces the chain itself.
_BOUNDED: list[Callable[..., Any]] = []
_OFF: contextvars.ContextVar[bool] = contextvars.ContextVar("adamx_unbounded", default=False)


def set_bounded_update(fn: Callable[..., Any]) -> None:
    """Register ``fn(plain_chain, updates, state, params) -> (updates, state) or None``."""
    _BOUNDED[:] = [fn]


@contextlib.contextmanager
def unbounded() -> Iterator[None]:
    """Chains' ``update`` as written, op by op, inside this context (the reference)."""
    token = _OFF.set(True)
    try:
        yield
    finally:
        _OFF.reset(token)


def jit_traced(tree: Any) -> bool:
    """Whether ``tree``'s leaves are being traced into a jaxpr (``jit``, ``make_jaxpr``), not
    concrete (the eager path stays op by op) nor batched or differentiated."""
    return any(type(x).__name__ == "DynamicJaxprTracer" for x in jax.tree.leaves(tree))


def _keyword_filter(update: Callable[..., Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Which extra keyword arguments ``update`` can take: all if it has ``**kwargs``, else its own."""
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return lambda extra: extra
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return lambda extra: extra
    names = {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return lambda extra: {k: v for k, v in extra.items() if k in names}


def _type_names(states: tuple[Any, ...]) -> str:
    return ", ".join(type(entry).__name__ for entry in states)


def _explain_state(
    error: Exception, member: Any, received: Any, position: int, params: Any, updates: Any
) -> None:
    """After ``member.update`` failed: if its state is of another type than its ``init`` makes,
    raise a sentence saying so (the state of a different optimizer); otherwise return.

    Run only on failure, so a correct state costs nothing.
    """
    try:
        expected = type(jax.eval_shape(member.init, updates if params is None else params))
    except Exception:  # noqa: BLE001 - no diagnosis; the original error stands
        return
    if isinstance(received, expected):
        return
    raise _wrong_state(expected, received, position) from error


def _is_named(state: Any) -> bool:
    """Whether ``state`` is a NamedTuple (the state of a block, not a chain's plain tuple)."""
    return isinstance(state, tuple) and hasattr(state, "_fields")


def _wrong_state(expected: type, received: Any, position: int) -> TypeError:
    return TypeError(
        f"Entry {position} of this chain's state should be a `{expected.__name__}` (the state of "
        f"transformation {position}) but is a `{type(received).__name__}`: the state of a "
        "different optimizer. Pass the state returned by this optimizer's `init` (to move a "
        "state between optimizers, map its pieces with `adamx.map_state`)."
    )


@overload
def chain(*transforms: MomentTransformation) -> MomentTransformation: ...


@overload
def chain(*transforms: GradientTransformation) -> GradientTransformation: ...


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in sequence, like ``optax.chain``.

    Each member receives the previous member's output. Moment blocks (`MomentTransformation`) also
    receive ``gradient=``: the updates that entered their run of consecutive moment blocks, so
    ``chain(clip, ema(b1), bias_correction(b1), scale_by_second_moment(b2))`` lets the second moment
    see the clipped gradient while the first moment flows. Low-precision updates (bfloat16, float16)
    are computed in float32 inside the chain and returned in their own dtype. Extra keyword arguments
    reach every member that accepts them.

    Args:
      *transforms: transformations (adamx's, optax's, or anything with ``init`` and ``update``).

    Returns:
      A transformation whose state is the tuple of the members' states.
    """
    members = tuple(transforms)
    for position, member in enumerate(members):
        if not (
            callable(getattr(member, "init", None)) and callable(getattr(member, "update", None))
        ):
            raise TypeError(
                f"`chain` expected transformations with `init` and `update`, got {member!r} at "
                f"position {position}; build one with e.g. `adamx.scale_by_adam()`."
            )
    filters = tuple(_keyword_filter(member.update) for member in members)
    is_moment = tuple(isinstance(member, MomentTransformation) for member in members)

    def init_fn(params):
        return tuple(member.init(params) for member in members)

    def update_fn(updates, state, params=None, *, gradient=None, **extra_args):
        if not isinstance(state, tuple) or len(state) != len(members):
            received = (
                f"{len(state)} entries ({_type_names(state)})"
                if isinstance(state, tuple)
                else f"the type {type(state).__name__}"
            )
            raise ValueError(
                f"This chain has {len(members)} transformations but its state has {received}; "
                f"expected a tuple of {len(members)} entries, one per transformation: the state of "
                "another optimizer? Pass the state returned by this optimizer's `init` (a "
                "checkpoint restored without a target comes back as lists and dicts: restore it "
                "against `jax.eval_shape(opt.init, params)`)."
            )
        if gradient is None and params is not None:  # the outermost chain: check the input
            check_like(updates, params)  # trace-time: a wrong shape, dtype or key path, named
        dtypes = jax.tree.map(lambda u: u.dtype, updates)
        updates = jax.tree.map(upcast, updates)
        gradient = updates if gradient is None else jax.tree.map(upcast, gradient)
        new_state = []
        for position, (member, keep, moment, member_state) in enumerate(
            zip(members, filters, is_moment, state, strict=True)
        ):
            try:
                updates, new_member_state = member.update(
                    updates, member_state, params, **keep({**extra_args, "gradient": gradient})
                )
            except Exception as error:
                _explain_state(error, member, member_state, position, params, updates)
                raise
            if _is_named(member_state) and type(new_member_state) is not type(member_state):
                # Blocks return the state type their `init` makes: the input was another's.
                raise _wrong_state(type(new_member_state), member_state, position)
            new_state.append(new_member_state)
            if not moment:
                gradient = updates
        updates = jax.tree.map(cast, updates, dtypes)  # no-op casts skipped at trace time
        return updates, tuple(new_state)

    kind = MomentTransformation if members and all(is_moment) else GradientTransformation
    return with_bounded_update(kind(init_fn, update_fn))


def with_bounded_update(tx: Any) -> Any:
    """``tx`` (of its own type), its ``update`` run through the bounded step when outermost.

    Under `jit`, where the state holds low-bit moments, the step runs a chunk of each leaf at a
    time (else, or where the step does not plan, as written: ``tx.update``). Every `chain` is
    wrapped so; a transformation that is not a chain and keeps state per parameter around an
    inner chain (`schedule_free`'s ``z``) wraps itself, so that its own updates join the inner
    chain's in the loop instead of being computed whole after it. An inner transformation runs
    as written inside the plan (`unbounded`). Not under a `monitor`: its blocks hand their values
    to the monitor's probe as they run, which a replayed plan would not.
    """

    def bounded_fn(updates, state, params=None, **extra_args):
        outermost = all(k == "gradient" and v is None for k, v in extra_args.items())
        if outermost and params is not None and _BOUNDED:
            if not _OFF.get() and not probing() and jit_traced(updates):
                with unbounded():
                    result = _BOUNDED[0](tx, updates, state, params)
                if result is not None:
                    return result
        return tx.update(updates, state, params, **extra_args)

    return type(tx)(tx.init, bounded_fn)
