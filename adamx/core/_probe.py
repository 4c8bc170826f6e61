"""A probe: what a block computed inside a step, handed to `adamx.monitor` without a state change.

`adamx.monitor` opens a probe around the wrapped ``update``; a block that has something worth
watching (the second-moment block its corrected estimate, a clip its input and output) calls
`record`, which does nothing when no probe is open. The values are the step's own arrays, in the
same trace, so the statistics built from them are part of the step (under ``jit``, in the fused
kernel) and cost no transfer. A value traced inside another trace than the monitor's (a
``lax.cond`` or ``lax.scan`` of a wrapper between them, such as ``MultiSteps``) is not recorded:
it could not leave that trace.

`adamx.step`'s planner traces the step inside `kernel_trace`: there the derived kernel
accumulates the statistics' sums in its own pass, and skips them on a step whose ``cond`` reads
none of them (`adamx.kernels._derived._gate`), so `monitor` takes the sums from the step's own
arrays; on any other trace (the jnp path) it takes them inside that ``cond``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
from jax._src import core as _jax_core

__all__: list[str] = []  # internal: used by the blocks and by `adamx.monitor`

_OPEN: contextvars.ContextVar[tuple[Any, list] | None] = contextvars.ContextVar(
    "adamx_probe", default=None
)


_KERNEL_TRACE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "adamx_kernel_trace", default=False
)


@contextlib.contextmanager
def kernel_trace() -> Iterator[None]:
    """Trace a step for the derived kernel, which takes the reductions of its leaves in its pass."""
    token = _KERNEL_TRACE.set(True)
    try:
        yield
    finally:
        _KERNEL_TRACE.reset(token)


def kernel_tracing() -> bool:
    """Whether the step being traced is the derived kernel's (see `kernel_trace`)."""
    return _KERNEL_TRACE.get()


def _current_trace() -> Any:
    return _jax_core.trace_ctx.trace


@contextlib.contextmanager
def probe() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Collect the ``(kind, values)`` that blocks `record` while the context is open."""
    records: list[tuple[str, dict[str, Any]]] = []
    token = _OPEN.set((_current_trace(), records))
    try:
        yield records
    finally:
        _OPEN.reset(token)


def probing() -> bool:
    """Whether a probe is open (a `monitor` is watching the step being traced)."""
    return _OPEN.get() is not None


def _live(x: Any, trace: Any) -> bool:
    return not isinstance(x, jax.core.Tracer) or getattr(x, "_trace", None) is trace


def record(kind: str, **values: Any) -> None:
    """Hand ``values`` (pytrees of arrays, or Python constants) to the open probe, if any."""
    opened = _OPEN.get()
    if opened is None:
        return
    trace, records = opened
    if _current_trace() is not trace:
        return  # inside a cond, scan or inner jit of a wrapper: its values stay there
    if all(_live(x, trace) for x in jax.tree.leaves(values)):
        records.append((kind, values))
