r"""Optimizer diagnostics inside the step: `monitor` records them in the state, `diagnostics` reads.

The statistics are reductions of the step's own arrays (the gradient, the update, the params, and
what adamx's blocks hand over through the probe, `adamx.core._probe`), computed in the same trace
as the step: under ``jit`` they are part of the compiled step, and `adamx.step` accumulates them
inside the fused kernel's pass (docs/design.md, section 8). Nothing goes to the host until a
logger reads `diagnostics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..core._base import GradientTransformation, safe_increment, zero_count
from ..core._probe import kernel_tracing, probe

__all__ = ["MonitorState", "diagnostics", "monitor"]

_F32 = jnp.float32

# Per leaf, what the statistics are made of: sums (and a min and max) over its elements.
_BASIC = ("grad_norm", "update_norm", "param_norm", "update_ratio", "cosine", "nonfinite_grads")
_SECOND = ("eps_fraction", "v_min", "v_max")
_CLIP = ("clip_fraction",)


class MonitorState(NamedTuple):
    """The state of `monitor`: the steps taken (``int32``, saturating), the wrapped
    transformation's state, and the statistics of the last step due (float32 scalars, keyed as
    `diagnostics` returns them; NaN before the first)."""

    count: jax.Array  # type: ignore[assignment]  # the usual field name; shadows tuple.count
    inner: Any
    statistics: dict[str, jax.Array]


def _path(path: tuple) -> str:
    """A key path as ``a/b/c``; a variable's ``.value`` (flax nnx) is not part of the name, so
    the keys are the same whether ``init`` sees nnx variables or their arrays."""
    last = path[-1] if path else None
    if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value":
        path = path[:-1]
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(_F32) if not jnp.iscomplexobj(x) else x


def _square_sum(x: jax.Array) -> jax.Array:
    x = _f32(x)
    return jnp.sum(jnp.real(x * jnp.conj(x)) if jnp.iscomplexobj(x) else x * x)


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    x, y = _f32(x), _f32(y)
    return jnp.sum(jnp.real(x * jnp.conj(y)) if jnp.iscomplexobj(x) else x * y)


def _count(mask: jax.Array) -> jax.Array:
    return jnp.sum(mask.astype(jnp.int32)).astype(_F32)


def _leaves(tree: Any) -> list[tuple[str, jax.Array]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(_path(p), x) for p, x in flat if isinstance(x, jax.Array) and x.size > 0]


def _sums(grads: Any, updates: Any, params: Any, records: list) -> dict[str, dict[str, Any]]:
    """Per leaf (key path), the sums the statistics are made of."""
    sums: dict[str, dict[str, Any]] = {}
    g_leaves = dict(_leaves(grads))
    u_leaves = dict(_leaves(updates))
    for name, p in _leaves(params):
        g, u = g_leaves[name], u_leaves[name]
        sums[name] = {
            "n": float(p.size),
            "gg": _square_sum(g),
            "uu": _square_sum(u),
            "pp": _square_sum(p),
            "ug": _dot(u, g),
            "bad": _count(~jnp.isfinite(g)),
        }
    for kind, values in records:
        if kind == "second_moment":
            eps = jnp.asarray(values["eps"], _F32)
            roots = dict(_leaves(values["roots"]))
            directions = dict(_leaves(values["direction"]))
            for name, v in _leaves(values["v_hat"]):
                into = sums.setdefault(name, {"n": float(v.size)})
                v = jnp.real(_f32(v))
                low, high = jnp.min(v), jnp.max(v)
                into["eps"] = into.get("eps", 0.0) + _count(eps > jnp.real(_f32(roots[name])))
                into["v_min"] = jnp.minimum(into["v_min"], low) if "v_min" in into else low
                into["v_max"] = jnp.maximum(into["v_max"], high) if "v_max" in into else high
                if name in u_leaves and name in directions:
                    d = directions[name]
                    into["ud"] = into.get("ud", 0.0) + _dot(u_leaves[name], d)
                    into["dd"] = into.get("dd", 0.0) + _square_sum(d)
        elif kind == "clip":
            after = dict(_leaves(values["after"]))
            for name, x in _leaves(values["before"]):
                into = sums.setdefault(name, {"n": float(x.size)})
                changed = _count(x != after[name])
                into["clipped"] = into.get("clipped", 0.0) + changed
                into["clip_n"] = into.get("clip_n", 0.0) + float(x.size)
    return sums


def _ratio(a: Any, b: Any) -> jax.Array:
    return jnp.asarray(a, _F32) / jnp.asarray(b, _F32)


def _statistics(sums: dict[str, dict[str, Any]], per_leaf: bool) -> dict[str, jax.Array]:
    """The statistics from the sums (see `monitor`)."""
    out: dict[str, jax.Array] = {}

    def put(prefix: str, s: dict[str, Any]) -> None:
        if "gg" in s:
            out[f"grad_norm{prefix}"] = jnp.sqrt(jnp.asarray(s["gg"], _F32))
            out[f"update_norm{prefix}"] = jnp.sqrt(jnp.asarray(s["uu"], _F32))
            out[f"param_norm{prefix}"] = jnp.sqrt(jnp.asarray(s["pp"], _F32))
            out[f"update_ratio{prefix}"] = jnp.sqrt(_ratio(s["uu"], s["pp"]))
            out[f"cosine{prefix}"] = _ratio(
                s["ug"], out[f"update_norm{prefix}"] * out[f"grad_norm{prefix}"]
            )
            out[f"nonfinite_grads{prefix}"] = jnp.asarray(s["bad"], _F32)
        if "eps" in s:
            out[f"eps_fraction{prefix}"] = _ratio(s["eps"], s["n"])
            out[f"v_min{prefix}"] = jnp.asarray(s["v_min"], _F32)
            out[f"v_max{prefix}"] = jnp.asarray(s["v_max"], _F32)
        if "clipped" in s:
            out[f"clip_fraction{prefix}"] = _ratio(s["clipped"], s["clip_n"])
        if not prefix and "dd" in s:
            out["effective_lr"] = -_ratio(s["ud"], s["dd"])

    total: dict[str, Any] = {}
    for s in sums.values():
        for key, value in s.items():
            if key == "v_min":
                total[key] = jnp.minimum(total[key], value) if key in total else value
            elif key == "v_max":
                total[key] = jnp.maximum(total[key], value) if key in total else value
            else:
                total[key] = total.get(key, 0.0) + value
    if "eps" in total:
        # The fraction over the leaves that have a second moment, not over all params.
        total["n"] = sum(s["n"] for s in sums.values() if "eps" in s)
    put("", total)
    if per_leaf:
        for name, s in sums.items():
            put(f"/{name}", s)
    return {key: jnp.asarray(value, _F32) for key, value in sorted(out.items())}


def _after(tree: Any, statistics: dict[str, jax.Array]) -> Any:
    """``tree``'s arrays as they are, each a select on a predicate computed from ``statistics``
    that no value satisfies (a 32-bit word with more than 32 bits set), which XLA cannot fold:
    what reads them runs after the ``cond`` that made ``statistics``.

    The monitor passes the wrapped transformation's state through it, so the step writes its
    donated moments (and, reading them, the params) after the ``cond`` has read them: else
    XLA:CPU copies every buffer the ``cond`` reads before the step overwrites it in place
    (measured, jaxlib 0.10: three leaf-sized copies per leaf for AdamW, 5x its step at 20M
    params; ``optimization_barrier`` did not spare them). XLA:CPU contracts ``a * b + c`` into
    an FMA or not by the shape of a fusion: with the select on the moments AdamW's jitted step
    is the plain one's bit for bit (tests/test_monitor.py); with it on the gradient it was not.
    """
    bits = jax.lax.bitcast_convert_type(next(iter(statistics.values())), jnp.uint32)
    never = jax.lax.population_count(bits) > 32
    return jax.tree.map(
        lambda x: jnp.where(never, jnp.zeros_like(x), x) if isinstance(x, jax.Array) else x, tree
    )


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def monitor(
    tx: GradientTransformation, *, every: int = 1, per_leaf: bool = True
) -> GradientTransformation:
    r"""Record optimizer statistics in the state, inside the step: read them with `diagnostics`.

    Wraps any transformation (an adamx optimizer, a chain, a foreign one). Its updates and state
    are the wrapped one's, bit for bit; the statistics of a step describe that step's gradient
    :math:`g` (what ``update`` is given), its update :math:`u` (what ``update`` returns: what is
    added to the params) and the params :math:`p` it started from. Sums are over a leaf's
    elements, or over every leaf for the global statistics (on a mesh, over the whole mesh), in
    float32 (the fused kernel accumulates in double):

    .. math::
        \texttt{grad\_norm} = \lVert g\rVert_2, \quad
        \texttt{update\_norm} = \lVert u\rVert_2, \quad
        \texttt{param\_norm} = \lVert p\rVert_2, \quad
        \texttt{update\_ratio} = \frac{\mathrm{RMS}(u)}{\mathrm{RMS}(p)}
          = \frac{\lVert u\rVert_2}{\lVert p\rVert_2},

    .. math::
        \texttt{cosine} = \frac{\langle u, g\rangle}{\lVert u\rVert_2 \lVert g\rVert_2}
        \ (\text{about } -1 \text{ for a descent step}), \quad
        \texttt{nonfinite\_grads} = \#\{i : g_i \notin \mathbb{R}\}.

    Where the wrapped transformation has adamx's second-moment block (`scale_by_second_moment`:
    Adam, AdamW, NAdam, ...), with :math:`\hat v` its corrected estimate, :math:`\epsilon` and
    :math:`\epsilon_{root}` its own, and :math:`d = m / (\sqrt{\hat v + \epsilon_{root}} +
    \epsilon)` its output direction (over the :math:`n` elements that have one):

    .. math::
        \texttt{eps\_fraction} = \tfrac{1}{n}\#\{i : \epsilon > \sqrt{\hat v_i + \epsilon_{root}}\},
        \quad \texttt{v\_min} = \min_i \hat v_i, \quad \texttt{v\_max} = \max_i \hat v_i,
        \quad \texttt{effective\_lr} = -\frac{\langle u, d\rangle}{\langle d, d\rangle}

    (``eps_fraction``: where epsilon is the larger part of the denominator; ``effective_lr``, global
    only: the step size along Adam's direction, the scheduled learning rate for Adam, shifted by
    weight decay for AdamW). Where it has an adamx clip (`clip`, `clip_by_global_norm`,
    `clip_by_block_rms`, `clip_by_block_norm`, `adaptive_grad_clip`), with :math:`x` its input
    and :math:`c(x)` its output:
    :math:`\texttt{clip\_fraction} = \tfrac{1}{n}\#\{i : c(x)_i \ne x_i\}` (a global-norm clip
    changes all or none). For a foreign transformation, or a block inside a ``lax.cond`` or
    ``lax.scan`` of a wrapper (``MultiSteps`` inside the monitor: put the monitor inside it), these
    statistics are absent; the others are there. Which ones are present is decided at ``init``
    (by tracing ``update`` abstractly), never by values.

    Keys: global statistics plain (``grad_norm``), per-leaf ones ``<statistic>/<key path>`` with
    ``/`` between keys (``update_ratio/head/w``), so TensorBoard and similar loggers group them.

    Cost: through `adamx.step` on CPU, the sums the statistics need are accumulated inside the
    fused kernel's one pass over the params, and a step with nothing due (``count % every !=
    0``) runs the pass without them; the statistics are derived from the sums in the taken
    branch of a ``lax.cond`` whose other branch keeps the last ones. On the jnp path
    (``update`` and `apply_updates`, or another backend), with ``every > 1``, the sums are
    taken in that branch too, from the step's inputs (the wrapped ``update`` computed again
    there), so a step with nothing due takes none; with ``every=1`` XLA takes them every step.

    Args:
      tx: the transformation to watch.
      every: record the statistics every ``every`` steps (the first step included).
      per_leaf: also record the per-leaf statistics (else only the global ones).

    Returns:
      A transformation with state `MonitorState`; ``update`` needs ``params``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.monitor(adamx.adam(0.1), per_leaf=False)
      >>> params = {"w": jnp.array([1.0, -1.0])}
      >>> state = opt.init(params)
      >>> params, state = adamx.step(opt, {"w": jnp.array([0.5, -0.5])}, state, params)
      >>> print(f"{float(adamx.diagnostics(state)['update_norm']):.4f}")
      0.1414
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(
            f"`monitor` expected `every` to be a positive int (record every that many steps), "
            f"got {every!r}. Pass, e.g., `every=100`."
        )

    def measure(grads, inner_state, params, **extra_args):
        with probe() as records:
            updates, new_inner = tx.update(grads, inner_state, params, **extra_args)
        return updates, new_inner, _statistics(_sums(grads, updates, params, records), per_leaf)

    def init_fn(params):
        inner = tx.init(params)
        try:
            shapes = jax.eval_shape(
                lambda p, s: measure(p, s, p)[2], _abstract(params), _abstract(inner)
            )
        except Exception:  # an update that cannot be traced abstractly: the basic statistics
            shapes = jax.eval_shape(
                lambda p: _statistics(_sums(p, p, p, []), per_leaf), _abstract(params)
            )
        statistics = {key: jnp.full((), jnp.nan, _F32) for key in shapes}
        return MonitorState(zero_count(), inner, statistics)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "`monitor` needs the params (the update-to-parameter ratio and the parameter "
                "norm): call `update(grads, state, params)`, or `adamx.step`."
            )
        grads, inner_state = updates, state.inner

        def checked(new: dict[str, jax.Array]) -> dict[str, jax.Array]:
            if set(new) != set(state.statistics):
                raise ValueError(
                    f"`monitor` expected the statistics its `init` found "
                    f"({sorted(state.statistics)}), got {sorted(new)}: the state was made for "
                    "another transformation or params. Make the state with this monitor's `init`."
                )
            return new

        due = state.count % every == 0
        kept = lambda: state.statistics  # noqa: E731
        if every > 1 and not kernel_tracing():
            # The jnp path: the statistics from the step's inputs, inside the branch taken when
            # `due` (the update computed again there), so a step with nothing due takes no sum
            # and keeps no array for one; the step then reads its state after the branch.
            taken = lambda: checked(measure(grads, inner_state, params, **extra_args)[2])  # noqa: E731
            statistics = jax.lax.cond(due, taken, kept)
            inner_state = _after(inner_state, statistics)
        with probe() as records:
            new_updates, inner = tx.update(grads, inner_state, params, **extra_args)
        if every == 1:
            statistics = checked(_statistics(_sums(grads, new_updates, params, records), per_leaf))
        elif kernel_tracing():
            # The derived kernel takes the sums in its pass, and skips them (and the equations
            # reading them) where `due` is false (`adamx.kernels._derived._gate`).
            sums = _sums(grads, new_updates, params, records)
            statistics = jax.lax.cond(due, lambda: checked(_statistics(sums, per_leaf)), kept)
        return new_updates, MonitorState(safe_increment(state.count), inner, statistics)

    return GradientTransformation(init_fn, update_fn)


def _value(x: Any) -> Any:
    """An array, or the array inside a framework's variable (``nnx.Optimizer``'s state)."""
    if isinstance(x, jax.Array):
        return x
    return jnp.asarray(x[...] if hasattr(x, "get_value") or hasattr(x, "value") else x)


def _monitors(node: Any) -> list[Mapping]:
    """The statistics of every `MonitorState` in ``node``, in tree order; also where a framework
    turned the state into mappings (``nnx.Optimizer`` keeps a mapping per node)."""
    if isinstance(node, MonitorState):
        return [node.statistics]
    if isinstance(node, Mapping):
        if set(node) == set(MonitorState._fields):
            return [node["statistics"]]
        return [m for key in node for m in _monitors(node[key])]
    if isinstance(node, (tuple, list)):
        return [m for child in node for m in _monitors(child)]
    return []


def diagnostics(state: Any) -> dict[str, jax.Array]:
    """The statistics a `monitor` recorded in ``state`` (any state containing a `MonitorState`:
    an optimizer's, a train state's, ``nnx.Optimizer.opt_state``), as a flat dict of float32
    scalars with stable string keys, ready for any logger; ``{}`` if there is none. With
    several monitors, the keys of the ``k``-th (``k >= 1``, in tree order) are prefixed
    ``monitor<k>/``.

    Example:
      >>> import jax.numpy as jnp, adamx
      >>> opt = adamx.monitor(adamx.sgd(0.1))
      >>> params = {"w": jnp.ones(3)}
      >>> state = opt.init(params)
      >>> params, state = adamx.step(opt, {"w": jnp.ones(3)}, state, params)
      >>> sorted(adamx.diagnostics(state))[:3]
      ['cosine', 'cosine/w', 'grad_norm']
    """
    out: dict[str, jax.Array] = {}
    for k, statistics in enumerate(_monitors(state)):
        prefix = f"monitor{k}/" if k else ""
        for key in statistics:
            out[prefix + key] = _value(statistics[key])
    return out
