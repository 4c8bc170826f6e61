"""Move Adam-family optimizer states between optax and adamx, in both directions.

Supported: the states of ``optax.adam``, ``adamw``, ``nadam``, ``nadamw`` (float or scheduled
learning rate, masked or unmasked weight decay, chained after stateless blocks such as clipping),
also inside ``optax.inject_hyperparams``; on the adamx side ``adamx.adam``/``adamw`` (any
``nesterov``, schedules, masks, ``mu_dtype``/``nu_dtype``), also inside
`adamx.inject_hyperparams`. The mapping (docs/design.md, section 4):

====================================  ============================================================
optax                                 adamx
====================================  ============================================================
``ScaleByAdamState.mu``               the ``EmaState`` before ``BiasCorrectionState`` in the Adam
                                      block ``(EmaState, BiasCorrectionState, SecondMomentState)``
``ScaleByAdamState.nu``               ``SecondMomentState.estimator[0]`` (an ``EmaState``; real for
                                      complex parameters: optax's zero imaginary part is dropped)
``ScaleByAdamState.count``            every count: ``BiasCorrectionState``, ``ScaleByScheduleState``,
                                      ``AddDecayedWeightsState``, ``InjectHyperparamsState.count``
every other count (schedules,         must equal ``ScaleByAdamState.count`` (checked), else refused
inject_hyperparams)
``InjectHyperparamsState.hyperparams``  ``InjectHyperparamsState.hyperparams``, name by name (only
                                      when both sides inject; names on one side only are left)
``EmptyState``, ``MaskedState``       nothing
====================================  ============================================================

Anything else holding arrays (another moment, a clipping or lookahead state, ...) is refused with
an error naming it and its path. Hyperparameters that live in closures (``b1``, ``b2``, ``eps``,
``nesterov``) are not in a state: build the target optimizer with the same ones. optax is not
imported: states are read by their NamedTuple type and field names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..blocks._moments import BiasCorrectionState, EmaState
from ..blocks._scale import ScaleByScheduleState
from ..blocks._second_moment import SecondMomentState
from ..blocks._weight_decay import AddDecayedWeightsState
from ..core._base import EmptyState
from ._hyperparams import InjectHyperparamsState

__all__ = ["from_optax_state", "to_optax_state"]

_SUPPORTED = (
    "optax.adam/adamw/nadam/nadamw states (optionally inside optax.inject_hyperparams, after "
    "stateless blocks) and adamx.adam/adamw states (optionally inside adamx.inject_hyperparams)"
)


class _Unsupported(ValueError):
    pass


def _refuse(what: str, path: str) -> _Unsupported:
    return _Unsupported(
        f"Cannot convert {what} at state path '{path or '<root>'}'; the converter supports "
        f"{_SUPPORTED}."
    )


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _has_arrays(node: Any) -> bool:
    return bool(jax.tree.leaves(node))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if isinstance(key, str) else f"{path}[{key!r}]"


def _rebuild(node: Any, children: list[Any]) -> Any:
    if _is_namedtuple(node):
        return type(node)(*children)
    if isinstance(node, dict):
        return dict(zip(node.keys(), children, strict=True))
    return type(node)(children)


def _children(node: Any, path: str) -> list[tuple[Any, str]]:
    if _is_namedtuple(node):
        return [(getattr(node, f), _join(path, f)) for f in node._fields]
    if isinstance(node, dict):
        return [(v, f"{path}[{k!r}]") for k, v in node.items()]
    return [(child, f"{path}[{i}]") for i, child in enumerate(node)]


# ---- optax side -----------------------------------------------------------------------------------


def _is_optax_adam(node: Any) -> bool:
    return _is_namedtuple(node) and node._fields == ("count", "mu", "nu")


def _is_optax_inject(node: Any) -> bool:
    return (
        _is_namedtuple(node)
        and "hyperparams" in node._fields
        and "inner_state" in node._fields
        and isinstance(node.hyperparams, dict)
    )


def _walk_optax(node: Any, path: str, visit: Callable[[str, Any, str], Any]) -> Any:
    """Rebuild an optax state, calling ``visit(kind, node, path)`` on the pieces that matter.

    ``kind`` is ``"adam"`` (a ``ScaleByAdamState``), ``"count"`` (a count array) or
    ``"hyperparams"`` (an inject dict); what ``visit`` returns replaces the piece.
    """
    if _is_optax_adam(node):
        return visit("adam", node, path)
    if _is_optax_inject(node):
        fields = {}
        for field in node._fields:
            value, where = getattr(node, field), _join(path, field)
            if field == "count":
                fields[field] = visit("count", value, where)
            elif field == "hyperparams":
                fields[field] = visit("hyperparams", value, where)
            else:  # inner_state; hyperparams_states holds the schedules' counts
                fields[field] = _walk_optax(value, where, visit)
        return type(node)(**fields)
    if _is_namedtuple(node) and node._fields == ("count",):  # ScaleByScheduleState & co.
        return type(node)(visit("count", node.count, _join(path, "count")))
    if _is_namedtuple(node) and node._fields == ("inner_state",):  # MaskedState
        return type(node)(_walk_optax(node.inner_state, _join(path, "inner_state"), visit))
    if isinstance(node, (tuple, list, dict)) and not _is_namedtuple(node):
        kids = [_walk_optax(child, where, visit) for child, where in _children(node, path)]
        return _rebuild(node, kids)
    if not _has_arrays(node):  # None, MaskedNode, an empty NamedTuple
        return node
    raise _refuse(f"the optax state piece {type(node).__name__}", path)


# ---- adamx side -----------------------------------------------------------------------------------


def _is_adam_block(node: Any) -> bool:
    return (
        isinstance(node, tuple)
        and not _is_namedtuple(node)
        and len(node) == 3
        and isinstance(node[0], EmaState)
        and isinstance(node[1], BiasCorrectionState)
        and isinstance(node[2], SecondMomentState)
        and isinstance(node[2].estimator, tuple)
        and len(node[2].estimator) == 2
        and isinstance(node[2].estimator[0], EmaState)
        and isinstance(node[2].estimator[1], BiasCorrectionState)
    )


_ADAMX_COUNTS = (BiasCorrectionState, ScaleByScheduleState, AddDecayedWeightsState)


def _walk_adamx(node: Any, path: str, visit: Callable[[str, Any, str], Any]) -> Any:
    """As `_walk_optax`, for an adamx state; ``"adam"`` receives the whole Adam block tuple."""
    if _is_adam_block(node):
        return visit("adam", node, path)
    if isinstance(node, InjectHyperparamsState):
        return InjectHyperparamsState(
            visit("count", node.count, _join(path, "count")),
            visit("hyperparams", node.hyperparams, _join(path, "hyperparams")),
            _walk_adamx(node.inner_state, _join(path, "inner_state"), visit),
        )
    if isinstance(node, _ADAMX_COUNTS):
        return type(node)(visit("count", node.count, _join(path, "count")))
    if isinstance(node, EmptyState) or not _has_arrays(node):
        return node
    if isinstance(node, (tuple, list, dict)) and not _is_namedtuple(node):
        kids = [_walk_adamx(child, where, visit) for child, where in _children(node, path)]
        return _rebuild(node, kids)
    raise _refuse(f"the adamx state piece {type(node).__name__}", path)


# ---- reading and writing --------------------------------------------------------------------------


class _Collected:
    def __init__(self, side: str):
        self.side = side
        self.adam: list[tuple[str, Any, Any, Any]] = []  # (path, count, mu, nu)
        self.counts: list[tuple[str, Any]] = []
        self.hyperparams: dict[str, Any] | None = None

    def single(self) -> tuple[Any, Any, Any, dict[str, Any] | None]:
        if len(self.adam) != 1:
            found = [path or "<root>" for path, *_ in self.adam]
            raise ValueError(
                f"Expected exactly one Adam block in the {self.side} state, found "
                f"{len(self.adam)} ({found}); the converter supports {_SUPPORTED}."
            )
        path, count, mu, nu = self.adam[0]
        for where, other in self.counts:
            if not np.array_equal(np.asarray(other), np.asarray(count)):
                raise ValueError(
                    f"The {self.side} state's count at '{where}' is {np.asarray(other)} but its "
                    f"Adam step count ('{path}') is {np.asarray(count)}; a state whose counts "
                    "disagree (e.g. a schedule advanced separately) cannot be converted."
                )
        return count, mu, nu, self.hyperparams


def _read_optax(state: Any) -> _Collected:
    def adam(seen, node, path):
        seen.adam.append((path, node.count, node.mu, node.nu))

    return _collect("optax", _walk_optax, state, adam)


def _read_adamx(state: Any) -> _Collected:
    def adam(seen, node, path):
        first, correction, second = node
        seen.adam.append((path, correction.count, first.ema, second.estimator[0].ema))
        seen.counts.append((_join(path, 2), second.estimator[1].count))

    return _collect("adamx", _walk_adamx, state, adam)


def _collect(side: str, walk: Any, state: Any, adam: Any) -> _Collected:
    """What ``walk`` finds in a ``side`` state: ``adam(seen, node, path)`` records an Adam block;
    step counts and the hyperparameters are recorded alike on both sides."""
    seen = _Collected(side)

    def visit(kind, node, path):
        if kind == "adam":
            adam(seen, node, path)
        elif kind == "count":
            seen.counts.append((path, node))
        else:
            seen.hyperparams = node
        return node

    walk(state, "", visit)
    return seen


def _cast_tree(source: Any, template: Any, name: str, path: str) -> Any:
    """``source`` laid out and typed like ``template`` (complex to real: the real part)."""
    if jax.tree.structure(source) != jax.tree.structure(template):  # type: ignore[operator]
        raise ValueError(
            f"The {name} at '{path}' has structure {jax.tree.structure(source)}, but the target "
            f"expects {jax.tree.structure(template)}; pass the same `params` as the source state."
        )

    def one(x, ref):
        x = jnp.asarray(x)
        if jnp.shape(x) != jnp.shape(ref):
            raise ValueError(
                f"A {name} leaf at '{path}' has shape {jnp.shape(x)}, the target's "
                f"{jnp.shape(ref)}."
            )
        if jnp.iscomplexobj(x) and not jnp.iscomplexobj(ref):
            x = jnp.real(x)
        return x.astype(jnp.result_type(ref))

    return jax.tree.map(one, source, template)


def _merge_hyperparams(source: dict[str, Any] | None, template: dict[str, Any]) -> dict[str, Any]:
    """``template`` with the values ``source`` has for the same names, in ``template``'s dtypes.

    A source value stored narrower than the target (optax's bfloat16 ``b2`` rounded to 1.0, optax
    #1414) is taken only if it differs from the target's own value at the source's precision: a
    value the user changed is carried over, a rounding of the same value is not.
    """
    if source is None:
        return template
    merged = dict(template)
    for name, target in template.items():
        if name not in source:
            continue
        value = jnp.asarray(source[name])
        target_dtype = jnp.result_type(target)
        narrower = (
            jnp.issubdtype(value.dtype, jnp.floating)
            and jnp.issubdtype(target_dtype, jnp.floating)
            and jnp.finfo(value.dtype).bits < jnp.finfo(target_dtype).bits
        )
        if narrower and bool(jnp.asarray(target).astype(value.dtype) == value):
            continue
        merged[name] = value.astype(target_dtype)
    return merged


def from_optax_state(optax_state: Any, adamx_tx: Any, params: Any) -> Any:
    """An adamx state for ``adamx_tx`` that continues an optax Adam-family state.

    Args:
      optax_state: the state of ``optax.adam``, ``adamw``, ``nadam`` or ``nadamw`` (possibly inside
        ``optax.inject_hyperparams`` or after stateless blocks).
      adamx_tx: the adamx optimizer to continue with, built with the same hyperparameters (e.g.
        ``adamx.adamw(lr, weight_decay=wd)``, ``adamx.adam(lr, nesterov=True)`` for NAdam, or
        ``adamx.inject_hyperparams(adamx.adamw)(...)``).
      params: the parameters (only their structure, shapes and dtypes are used).

    Returns:
      ``adamx_tx.init(params)`` with the step count, ``mu`` and ``nu`` (and injected
      hyperparameters) of ``optax_state`` placed as the module's table says, in the target's
      dtypes. Raises ``ValueError`` for what the table does not cover.

    Example:
      >>> import jax.numpy as jnp, optax, adamx
      >>> from adamx import from_optax_state
      >>> params = jnp.zeros(3)
      >>> state = from_optax_state(optax.adam(0.1).init(params), adamx.adam(0.1), params)
    """
    count, mu, nu, hyperparams = _read_optax(optax_state).single()
    template = adamx_tx.init(params)
    _read_adamx(template).single()  # one Adam block, nothing unsupported

    def visit(kind, node, path):
        if kind == "adam":
            first, correction, second = node
            return (
                EmaState(_cast_tree(mu, first.ema, "mu", path)),
                BiasCorrectionState(jnp.asarray(count).astype(correction.count.dtype)),
                SecondMomentState(
                    (
                        EmaState(_cast_tree(nu, second.estimator[0].ema, "nu", path)),
                        BiasCorrectionState(
                            jnp.asarray(count).astype(second.estimator[1].count.dtype)
                        ),
                    )
                ),
            )
        if kind == "count":
            return jnp.asarray(count).astype(node.dtype)
        return _merge_hyperparams(hyperparams, node)

    return _walk_adamx(template, "", visit)


def to_optax_state(adamx_state: Any, optax_tx: Any, params: Any) -> Any:
    """An optax state for ``optax_tx`` that continues an adamx Adam-family state.

    The reverse of `from_optax_state`, with the same table: ``optax_tx.init(params)`` (e.g.
    ``optax.adamw(lr, weight_decay=wd)``, possibly inside ``optax.inject_hyperparams``) receives
    the count, ``mu`` and ``nu`` (and the injected hyperparameters when both sides inject), in its
    own dtypes (a real ``nu`` becomes complex for complex parameters). Call it where optax can run
    (optax needs standard dtype promotion).
    """
    count, mu, nu, hyperparams = _read_adamx(adamx_state).single()
    template = optax_tx.init(params)
    _read_optax(template).single()

    def visit(kind, node, path):
        if kind == "adam":
            return type(node)(
                count=jnp.asarray(count).astype(jnp.result_type(node.count)),
                mu=_cast_tree(mu, node.mu, "mu", path),
                nu=_cast_tree(nu, node.nu, "nu", path),
            )
        if kind == "count":
            return jnp.asarray(count).astype(jnp.result_type(node))
        return _merge_hyperparams(hyperparams, node)

    return _walk_optax(template, "", visit)
