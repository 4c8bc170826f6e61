"""Hyperparameters in the state (`inject_hyperparams`), and reading or editing a state anywhere.

`inject_hyperparams(adamx.adamw)(learning_rate=1e-3, ...)` keeps every numeric hyperparameter in the
optimizer state as a float32 array (whatever the parameters' dtype: ``b2 = 0.999`` never rounds to
1 in bfloat16, optax #1414) and rebuilds the inner transformation from those values inside each
``update``. So a learning rate changed between jitted steps (`set_hyperparam`) changes the next step
without recompiling (optax #577, #197).

`get_state` / `map_state` find a piece of state anywhere in a nested state (through chains, tuples,
dicts, NamedTuples), by type (``adamx.EmaState``) or by field name (``"count"``); `get_hyperparam` /
`set_hyperparam` do the same for injected hyperparameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core._base import GradientTransformation, safe_increment, zero_count
from ..core._dtypes import compute_dtype

__all__ = [
    "InjectHyperparamsState",
    "get_hyperparam",
    "get_state",
    "inject_hyperparams",
    "map_state",
    "set_hyperparam",
]


class InjectHyperparamsState(NamedTuple):
    """The state of a transformation made by `inject_hyperparams`.

    Attributes:
      count: how many updates were made (``int32``); schedules are evaluated at it.
      hyperparams: ``{name: value}``, each a scalar array (floats in ``hyperparam_dtype``); a
        schedule's entry holds the value it gave for the last update (its value at 0 after init).
      inner_state: the state of the inner transformation.
    """

    count: jax.Array  # type: ignore[assignment]  # optax's field name; shadows tuple.count
    hyperparams: dict[str, jax.Array]
    inner_state: Any


def _is_dtype_like(value: Any) -> bool:
    """``jnp.float32``, ``np.dtype('bfloat16')``, ``float``: dtype arguments, never schedules."""
    return isinstance(value, (type, np.dtype))


def _is_numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float, jax.Array, jax.core.Tracer)):
        return True
    return isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "iuf"


def _as_stored(value: Any, dtype: Any, name: str) -> jax.Array:
    """A numeric hyperparameter as a scalar array: floats in ``dtype``, integer arrays as they are."""
    array = jnp.asarray(value)
    if jnp.ndim(array) != 0:
        raise ValueError(
            f"Hyperparameter `{name}` must be a scalar, got shape {jnp.shape(array)}; "
            "pass one number (or a schedule returning one)."
        )
    if isinstance(value, (int, float)) or jnp.issubdtype(array.dtype, jnp.floating):
        return jnp.asarray(value, dtype=dtype)
    return array


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = jnp.float32,
) -> Callable[..., GradientTransformation]:
    """Wrap an optimizer factory so that its numeric hyperparameters live in the state.

    Usage is optax's: ``adamx.inject_hyperparams(adamx.adamw)(learning_rate=1e-3, b2=0.999)``.
    The arguments of the call are sorted by value:

    * numbers (Python or scalar arrays) go into ``state.hyperparams`` as scalar arrays: floats in
      ``hyperparam_dtype`` (float32 by default, whatever the parameters' dtype, unlike optax which
      takes bfloat16 from bfloat16 params), integer arrays in their own dtype;
    * callables (schedules) are evaluated at ``state.count`` on every update and their value stored
      in ``state.hyperparams``;
    * everything else (``None``, bools, dtypes, masks given as pytrees, storages), and every name in
      ``static_args``, is passed to the factory unchanged. A callable that is not a schedule (a
      ``mask`` function) must be listed in ``static_args``.

    Each ``update`` calls ``inner_factory`` with the current values (traced under ``jit``) and runs
    the result's ``update``: values changed in the state between steps (`set_hyperparam`) take
    effect at the next step with no recompilation. The factory must accept traced hyperparameters
    and build a state whose structure does not depend on their values (adamx's factories do).
    Concrete arguments are validated once, here; values written into the state later are the
    caller's responsibility (docs/design.md, section 6).

    Args:
      inner_factory: a function returning a transformation, e.g. ``adamx.adamw``.
      static_args: names passed through unchanged (a string or an iterable of strings).
      hyperparam_dtype: dtype of the stored float hyperparameters; ``None`` uses the widest of
        float32 and the parameters' float dtypes (float64 parameters keep float64 values).

    Returns:
      A function with ``inner_factory``'s signature returning a `GradientTransformation` whose
      state is `InjectHyperparamsState`.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> from adamx import get_hyperparam, inject_hyperparams, set_hyperparam
      >>> opt = inject_hyperparams(adamx.adam)(learning_rate=0.1)
      >>> state = opt.init(jnp.zeros(2, jnp.bfloat16))
      >>> state = set_hyperparam(state, "learning_rate", 0.01)
      >>> print(get_hyperparam(state, "learning_rate"), state.hyperparams["b2"].dtype)
      0.01 float32
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    unknown = static - set(signature.parameters)
    if unknown:
        raise ValueError(
            f"`static_args` names {sorted(unknown)}, which `{inner_factory.__name__}` does not "
            f"take; its arguments are {list(signature.parameters)}."
        )

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        inner_factory(*bound.args, **bound.kwargs)  # validates the concrete values once
        fixed: dict[str, Any] = {}
        numeric: dict[str, Any] = {}
        schedules: dict[str, Callable[[jax.Array], Any]] = {}
        for name, value in bound.arguments.items():
            if name in static or value is None or _is_dtype_like(value):
                fixed[name] = value
            elif _is_numeric(value):
                # No jax.Array in a transformation object: concrete arrays are kept as NumPy.
                is_traced = isinstance(value, jax.core.Tracer)
                numeric[name] = value if is_traced else np.asarray(value)
                bound.arguments[name] = numeric[name]
            elif callable(value):
                schedules[name] = value
            else:
                fixed[name] = value

        def build(values: dict[str, Any]) -> GradientTransformation:
            arguments = bound.arguments.copy()
            arguments.update(values)
            rebound = inspect.BoundArguments(signature, arguments)  # type: ignore[arg-type]
            return inner_factory(*rebound.args, **rebound.kwargs)

        def dtype_for(params: Any) -> Any:
            if hyperparam_dtype is not None:
                return hyperparam_dtype
            return compute_dtype(*(jnp.result_type(p) for p in jax.tree.leaves(params)))

        def evaluate(count: jax.Array, dtype: Any) -> dict[str, jax.Array]:
            values = {}
            for name, schedule in schedules.items():
                value = schedule(count)
                leaves = jax.tree.leaves(value)
                if (
                    len(leaves) != 1
                    or jnp.ndim(leaves[0]) != 0
                    or not _is_numeric(leaves[0])
                    or jnp.result_type(leaves[0]) == jnp.bool_
                ):
                    raise ValueError(
                        f"The callable given for `{name}` was taken for a schedule, but for a "
                        f"step count it returned {value!r}, not one number. If `{name}` is not "
                        f"a schedule, pass `static_args=({name!r},)` to `inject_hyperparams`."
                    )
                values[name] = _as_stored(value, dtype, name)
            return values

        def init_fn(params):
            dtype = dtype_for(params)
            count = zero_count()
            values = {name: _as_stored(v, dtype, name) for name, v in numeric.items()}
            values.update(evaluate(count, dtype))
            hyperparams = {name: values[name] for name in bound.arguments if name in values}
            return InjectHyperparamsState(count, hyperparams, build(hyperparams).init(params))

        def update_fn(updates, state, params=None, **extra_args):
            hyperparams = dict(state.hyperparams)
            for name, value in evaluate(state.count, None).items():
                hyperparams[name] = jnp.asarray(value, state.hyperparams[name].dtype)
            updates, inner_state = build(hyperparams).update(
                updates, state.inner_state, params, **extra_args
            )
            return updates, InjectHyperparamsState(
                safe_increment(state.count), hyperparams, inner_state
            )

        return GradientTransformation(init_fn, update_fn)

    wrapped.__name__ = getattr(inner_factory, "__name__", "transformation")
    wrapped.__doc__ = inner_factory.__doc__
    wrapped.__signature__ = signature  # type: ignore[attr-defined]
    return wrapped


# ---- finding and editing pieces of a state --------------------------------------------------------


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _matcher(kind: type | str) -> Callable[[Any], bool]:
    if isinstance(kind, str):
        return lambda node: _is_namedtuple(node) and kind in node._fields
    if isinstance(kind, type):
        return lambda node: isinstance(node, kind)
    raise TypeError(
        f"Expected a state type (e.g. `adamx.EmaState`) or a field name (e.g. 'count'), got "
        f"{kind!r}."
    )


def _inventory(state: Any) -> str:
    """The state types and field names inside ``state``, for error messages."""
    types: dict[str, None] = {}
    fields: dict[str, None] = {}

    def visit(node):
        if _is_namedtuple(node):
            types[type(node).__name__] = None
            fields.update(dict.fromkeys(node._fields))
        return False

    jax.tree_util.tree_flatten(state, is_leaf=visit)
    return f"state types {list(types) or 'none'}; field names {list(fields) or 'none'}"


def _name(kind: type | str) -> str:
    return repr(kind) if isinstance(kind, str) else kind.__name__


def _matches(state: Any, kind: type | str) -> list[tuple[str, Any]]:
    match = _matcher(kind)
    flat, _ = jax.tree_util.tree_flatten_with_path(state, is_leaf=match)
    return [(jax.tree_util.keystr(path), node) for path, node in flat if match(node)]


def get_state(state: Any, kind: type | str) -> dict[str, Any]:
    """Every piece of ``state`` of type ``kind``, or every value of the field named ``kind``.

    Args:
      state: an optimizer state (any nesting of tuples, lists, dicts and NamedTuples).
      kind: a state type, e.g. ``adamx.EmaState`` or ``adamx.InjectHyperparamsState``, or a field
        name, e.g. ``"count"`` or ``"ema"``.

    Returns:
      ``{path: piece}`` in the order of ``jax.tree.leaves``; ``path`` is the piece's
      ``jax.tree_util.keystr`` (a field's path ends in ``.name``). Raises ``KeyError``, listing the
      types and fields the state has, when there is none.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> from adamx import get_state
      >>> state = adamx.adam(0.1).init(jnp.zeros(2))
      >>> list(get_state(state, adamx.EmaState))
      ['[0][0]', '[0][2].estimator[0]']
    """
    found = _matches(state, kind)
    if not found:
        raise KeyError(f"This state holds no {_name(kind)}; it has {_inventory(state)}.")
    if isinstance(kind, str):
        return {f"{path}.{kind}": getattr(node, kind) for path, node in found}
    return dict(found)


def map_state(
    fn: Callable[[Any], Any],
    state: Any,
    kind: type | str,
    *,
    where: Callable[[str], bool] | None = None,
) -> Any:
    """``state`` with every piece selected as in `get_state` replaced by ``fn(piece)``.

    Args:
      fn: maps a piece (a state of type ``kind``, or the value of field ``kind``) to its
        replacement, which should keep its structure and dtypes.
      state: an optimizer state.
      kind: a state type or a field name, as in `get_state`.
      where: keep only the pieces whose path (as `get_state` reports it) satisfies ``where``; for
        example ``lambda path: path.startswith("[1]")`` for the second group of a chain.

    Returns:
      The new state. Raises ``KeyError`` if nothing is selected.

    Example (reset the moments of a whole optimizer):
      >>> import jax, jax.numpy as jnp, adamx
      >>> from adamx import map_state
      >>> state = adamx.adam(0.1).init(jnp.ones(2))
      >>> state = map_state(lambda s: jax.tree.map(jnp.zeros_like, s), state, adamx.EmaState)
    """
    selected = get_state(state, kind)
    if where is not None:
        selected = {path: value for path, value in selected.items() if where(path)}
    if not selected:
        raise KeyError(
            f"`where` selected none of the {_name(kind)} paths "
            f"{list(get_state(state, kind))}; it is called with these paths."
        )
    match = _matcher(kind)

    def replace(path, node):
        if not match(node):
            return node
        key = jax.tree_util.keystr(path)
        if isinstance(kind, str):
            if f"{key}.{kind}" not in selected:
                return node
            return node._replace(**{kind: fn(getattr(node, kind))})
        return fn(node) if key in selected else node

    return jax.tree_util.tree_map_with_path(replace, state, is_leaf=match)


def _hyperparam_paths(state: Any, name: str, where: Callable[[str], bool] | None) -> list[str]:
    holders = _matches(state, "hyperparams")
    holders = [(path, node) for path, node in holders if isinstance(node.hyperparams, dict)]
    if not holders:
        raise KeyError(
            f"This state holds no hyperparameters (looking for {name!r}); they live in the state "
            f"only under `adamx.inject_hyperparams` (or optax's). It has {_inventory(state)}."
        )
    paths = [
        f"{path}.hyperparams" for path, node in holders if name in node.hyperparams
    ]  # get_state's path of the dict
    if where is not None:
        paths = [path for path in paths if where(path)]
    if not paths:
        names = sorted({n for _, node in holders for n in node.hyperparams})
        raise KeyError(
            f"No hyperparameter named {name!r}"
            + (" at a path `where` selects" if where is not None else "")
            + f"; the hyperparameters in this state are {names}."
        )
    return paths


def get_hyperparam(
    state: Any, name: str, *, where: Callable[[str], bool] | None = None
) -> jax.Array:
    """The value of the injected hyperparameter ``name``, found anywhere in ``state``.

    Args:
      state: an optimizer state containing an `InjectHyperparamsState` (optax's works too).
      name: e.g. ``"learning_rate"``.
      where: when several injected optimizers have ``name`` (one per parameter group), choose one
        by its path (``lambda path: path.startswith("[1]")``).

    Returns:
      The stored scalar array. Raises ``KeyError`` listing the names present when ``name`` is
      missing, and ``ValueError`` listing the paths when it is ambiguous.
    """
    paths = _hyperparam_paths(state, name, where)
    if len(paths) > 1:
        raise ValueError(
            f"Hyperparameter {name!r} is in {len(paths)} places: {paths}; choose one with "
            "`where=lambda path: ...`."
        )
    return get_state(state, "hyperparams")[paths[0]][name]


def set_hyperparam(
    state: Any, name: str, value: Any, *, where: Callable[[str], bool] | None = None
) -> Any:
    """``state`` with the injected hyperparameter ``name`` set to ``value`` (jit-friendly).

    The value is cast to the stored dtype and shape (a scalar), so a jitted step taking the new
    state does not recompile. A hyperparameter driven by a schedule is overwritten at the next
    update. Several occurrences (one per group) raise ``ValueError`` unless ``where`` selects them:
    ``where=lambda path: True`` sets them all.

    Returns:
      The new state. Raises ``KeyError`` listing the names present when ``name`` is missing.
    """
    paths = _hyperparam_paths(state, name, where)
    if len(paths) > 1 and where is None:
        raise ValueError(
            f"Hyperparameter {name!r} is in {len(paths)} places: {paths}; choose with "
            "`where=lambda path: ...` (`where=lambda path: True` sets all of them)."
        )

    def assign(hyperparams):
        old = hyperparams[name]
        new = jnp.asarray(value, dtype=old.dtype)
        if new.shape != old.shape:
            raise ValueError(
                f"Hyperparameter {name!r} has shape {old.shape}, got a value of shape "
                f"{new.shape}; pass one number."
            )
        return {**hyperparams, name: new}

    return map_state(assign, state, "hyperparams", where=lambda path: path in paths)
