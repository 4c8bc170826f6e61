"""The rule-keyed fused step: the hand-written kernel, now for sharded leaves (docs/design.md, 8).

`adamx.step` first tries the kernel derived from the optimizer's own jaxpr (`_derived`), which
takes every elementwise step on one device. This module is what takes a step it declines on a
mesh, per shard inside ``jax.shard_map``: an optimizer built by `adam`, `adamw`, `nadam`,
`nadamw` (optax's form), `adamax`, `adamaxw` or `lion` carries a `FusedRule`, the numbers that
define it and where its moments sit in its state, and the compiled kernel
(``adamx/kernels/_native/fused_step.cc``) runs it when the leaves qualify (CPU, float32 or
bfloat16 params, gradients and moments, the moments possibly `stochastic_bfloat16`). Both compute
the jnp path's operations in its order, so their results are bit-identical
(``tests/test_fused.py``, ``tests/test_fused_low_bit.py``). The rules restate what the chains
say; moving the mesh case to the derived kernel retires them (issue 23's remainder).

``adamx.chain(optimizer, kahan_summation())`` keeps the optimizer's rule with ``kahan=True``
(`with_kahan`): the kernel then also updates the compensation, in the same pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ..blocks._moments import _correction
from ..core._base import GradientTransformation, ScalarOrSchedule, safe_increment
from ..core._trees import resolve
from ..storage._quantize import RoundedBuffer, StochasticBfloat16
from ..storage._storage import is_storage
from . import _native
from ._mesh import Layout, layout, reshard, spec

__all__: list[str] = []  # internal: used by the floors above, not public

# The kernel's names, in the order of its C++ enums (fused_common.h: `Algorithm`, `Hyper`);
# tests/test_fused.py reads the header and checks that the two agree.
ALGORITHMS = {"adam": 0, "adam_nesterov": 1, "adamax": 2, "lion": 3, "stream": 4}
HYPER = (
    "a1",  # 1 - b1
    "b1",
    "c1",  # 1 / (1 - b1^t)
    "a2",  # 1 - b2
    "b2",
    "c2",  # 1 / (1 - b2^t) (Adam); unused by AdaMax
    "eps_root",
    "eps",
    "decay",  # the weight decay lambda
    "neg_lr",  # -learning rate
    "c1_next",  # 1 / (1 - b1^(t+1)) (Nesterov)
    "g_weight",  # (1 - b1) / (1 - b1^t) (Nesterov)
)
_HYPER = len(HYPER)  # the length of the kernel's scalar buffer
_KERNEL_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16))


@dataclasses.dataclass(frozen=True)
class FusedRule:
    """What the fused kernel needs to know about an optimizer.

    ``moments(state) -> (mu, nu, counts)`` reads the moment trees and the int32 step counts of the
    bias corrections; ``rebuild(state, mu, nu, counts) -> state`` writes them back (every other
    state entry is a learning-rate or weight-decay schedule count, advanced here too).

    ``kahan``: the optimizer is ``chain(this one, kahan_summation())``, whose state is
    ``(this one's state, KahanState)``; the functions above read and write the first entry.
    """

    algorithm: str
    b1: float
    b2: float
    eps: float
    eps_root: float
    learning_rate: ScalarOrSchedule
    weight_decay: ScalarOrSchedule | None
    mask: Any
    moments: Callable[[Any], tuple[Any, Any, tuple[Any, ...]]]
    rebuild: Callable[[Any, Any, Any, tuple[Any, ...]], Any]
    schedule_slots: tuple[int, ...]  # positions of the outer state entries holding a count
    kahan: bool = False


class FusableTransformation(GradientTransformation):
    """A `GradientTransformation` that also carries its `FusedRule` (as ``fused_rule``)."""

    fused_rule: FusedRule | None


def fusable(tx: GradientTransformation, rule: FusedRule | None) -> GradientTransformation:
    """``tx`` with ``rule`` attached; ``None`` (hyperparameters the kernel cannot take) leaves it."""
    if rule is None:
        return tx
    fused = FusableTransformation(tx.init, tx.update)
    fused.fused_rule = rule
    return fused


def rule_of(tx: Any) -> FusedRule | None:
    return getattr(tx, "fused_rule", None)


def with_kahan(rule: FusedRule | None) -> FusedRule | None:
    """The rule of ``chain(<the optimizer of rule>, kahan_summation())`` (``None`` stays ``None``)."""
    if rule is None or rule.kahan:
        return None
    return dataclasses.replace(rule, kahan=True)


def _split(rule: FusedRule, state: Any) -> tuple[Any, Any]:
    """``(the optimizer's state, the KahanState or None)``."""
    return (state[0], state[1]) if rule.kahan else (state, None)


def _python_number(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


# ---- the state layouts of the optimizers that carry a rule -------------------------------------------


def _kernel_dtype(dtype: Any) -> bool:
    """Whether the kernel keeps a moment of ``dtype``: float32, bfloat16, or the storage
    `stochastic_bfloat16` (exactly that class: a subclass may write differently)."""
    if dtype is None:
        return True
    if is_storage(dtype):
        return type(dtype) is StochasticBfloat16
    return np.dtype(dtype) in _KERNEL_DTYPES


def lion_rule(
    *,
    b1: Any,
    b2: Any,
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    mask: Any,
    mu_dtype: Any,
) -> FusedRule | None:
    """The rule of ``chain(scale_by_lion, add_decayed_weights, scale_by_learning_rate)``."""
    if not _python_number(b1, b2):
        return None
    if not _kernel_dtype(mu_dtype):
        return None

    def moments(state):  # (ScaleByLionState(count, mu), decay state, learning-rate state)
        return state[0].mu, None, (state[0].count,)

    def rebuild(state, mu, nu, counts):
        del nu
        return (state[0]._replace(count=counts[0], mu=mu), *state[1:])

    return FusedRule(
        "lion", b1, b2, 0.0, 0.0, learning_rate, weight_decay, mask, moments, rebuild, (1, 2)
    )


def adam_rule(
    *,
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    nesterov: bool,
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule | None,
    mask: Any,
    mu_dtype: Any,
    nu_dtype: Any,
    algorithm: str = "adam",
) -> FusedRule | None:
    """The rule of ``chain(scale_by_adam | scale_by_adamax, [add_decayed_weights], lr)``."""
    if not _python_number(b1, b2, eps, eps_root):
        return None
    if not (_kernel_dtype(mu_dtype) and _kernel_dtype(nu_dtype)):
        return None
    name = "adam_nesterov" if (algorithm == "adam" and nesterov) else algorithm

    if algorithm == "adam":
        # ((EmaState(mu), BiasCorrectionState(c1), SecondMomentState((EmaState(nu), BC(c2)))), ...)
        def moments(state):
            ema1, bc1, second = state[0]
            ema2, bc2 = second.estimator
            return ema1.ema, ema2.ema, (bc1.count, bc2.count)

        def rebuild(state, mu, nu, counts):
            ema1, bc1, second = state[0]
            ema2, bc2 = second.estimator
            inner = (
                ema1._replace(ema=mu),
                bc1._replace(count=counts[0]),
                second._replace(estimator=(ema2._replace(ema=nu), bc2._replace(count=counts[1]))),
            )
            return (inner, *state[1:])

    else:  # adamax: (EmaState(mu), BiasCorrectionState(c1), InfinityNormState(norm))

        def moments(state):
            ema1, bc1, norm = state[0]
            return ema1.ema, norm.norm, (bc1.count,)

        def rebuild(state, mu, nu, counts):
            ema1, bc1, norm = state[0]
            inner = (ema1._replace(ema=mu), bc1._replace(count=counts[0]), norm._replace(norm=nu))
            return (inner, *state[1:])

    slots = (1, 2) if weight_decay is not None else (1,)
    return FusedRule(
        name, b1, b2, eps, eps_root, learning_rate, weight_decay, mask, moments, rebuild, slots
    )


# ---- the step -----------------------------------------------------------------------------------


def _has_count(entry: Any) -> bool:
    """A schedule's state (``ScaleByScheduleState``, ``AddDecayedWeightsState``), not `EmptyState`."""
    return "count" in getattr(type(entry), "_fields", ())


def _scalar(value: Any) -> jax.Array:
    return jnp.asarray(value, jnp.float32)


def _schedule_value(schedule: Any, count: Any, sign: int) -> jax.Array | None:
    value = sign * schedule(count) if callable(schedule) else sign * schedule
    if jnp.ndim(value) != 0:
        return None  # the jnp path raises the proper error
    return _scalar(value)


def _hyper(rule: FusedRule, counts: tuple[jax.Array, ...], schedule_counts: dict[int, Any]):
    """The kernel's scalar buffer, each entry computed exactly as the jnp path computes it."""
    f32 = jnp.float32
    zero = jnp.zeros((), f32)
    lr_slot = rule.schedule_slots[-1]
    neg_lr = _schedule_value(rule.learning_rate, schedule_counts.get(lr_slot), -1)
    decay: jax.Array | None = zero
    if rule.weight_decay is not None:
        decay = _schedule_value(rule.weight_decay, schedule_counts.get(rule.schedule_slots[0]), 1)
    if neg_lr is None or decay is None:
        return None
    if rule.algorithm == "lion":
        c1 = c2 = c1_next = g_weight = zero
    else:
        correction = _correction(rule.b1, counts[0], f32)
        c1 = 1 / correction
        c2 = 1 / _correction(rule.b2, counts[-1], f32) if rule.algorithm != "adamax" else zero
        c1_next = 1 / _correction(rule.b1, safe_increment(counts[0]), f32)
        g_weight = _scalar(1 - rule.b1) / correction
    entries = {
        "a1": _scalar(1 - rule.b1),
        "b1": _scalar(rule.b1),
        "c1": c1,
        "a2": _scalar(1 - rule.b2),
        "b2": _scalar(rule.b2),
        "c2": c2,
        "eps_root": _scalar(rule.eps_root),
        "eps": _scalar(rule.eps),
        "decay": decay,
        "neg_lr": neg_lr,
        "c1_next": c1_next,
        "g_weight": g_weight,
    }
    return jnp.stack([entries[name] for name in HYPER])


def _decayed_leaves(rule: FusedRule, params: Any, treedef: Any) -> list[int] | None:
    if rule.weight_decay is None:
        return [0] * treedef.num_leaves
    chosen = resolve(rule.mask, params)
    if chosen is None:
        return [1] * treedef.num_leaves
    try:
        flags = treedef.flatten_up_to(chosen)
    except (ValueError, TypeError):
        return None
    if not all(isinstance(f, (bool, np.bool_)) for f in flags):
        return None  # a traced mask: the jnp path handles it
    return [int(f) for f in flags]


_GROUP = 32  # leaves per custom call: XLA's aliasing analysis grows faster than linearly with more


def kernel_call(algorithm: str, hyper, p, g, m, v, decayed: list[int], *, c=None):
    """The custom calls: lists of leaves in, ``(p, m, v, c)`` lists out, each written in place.

    A moment leaf is an array, or the `RoundedBuffer` of a `stochastic_bfloat16` moment: the
    kernel rounds its value stochastically and advances its counter (both in place), and it comes
    back a `RoundedBuffer`. ``c``: the Kahan compensations (one per leaf, in the params' dtypes),
    or ``None`` (no Kahan; ``None`` comes back).

    Leaves go in groups of `_GROUP` per call: one call over thousands of aliased buffers makes XLA's
    compile time grow super-linearly (measured: 2000 leaves in one call took 670 s to compile;
    in groups of 25, 4 s), while the per-call cost of the kernel is a few microseconds.
    """
    if any(_empty(x) for x in p):
        return _without_empty_leaves(algorithm, hyper, p, g, m, v, decayed, c=c)
    has_v, has_c = v is not None, c is not None
    p_out: list[Any] = []
    m_out: list[Any] = []
    v_out: list[Any] = []
    c_out: list[Any] = []
    for start in range(0, len(p), _GROUP):
        part = slice(start, start + _GROUP)
        pp, gg, mm = p[part], g[part], m[part]
        vv = v[part] if has_v else []
        cc = c[part] if has_c else []
        n = len(pp)
        m_rounded = [isinstance(x, RoundedBuffer) for x in mm]
        v_rounded = [isinstance(x, RoundedBuffer) for x in vv]
        counters = [x.counter for x in mm if isinstance(x, RoundedBuffer)]
        counters += [x.counter for x in vv if isinstance(x, RoundedBuffer)]
        arrays = [*pp, *gg, *map(_value, mm), *map(_value, vv), *cc, *counters]
        outs = [*pp, *map(_value, mm), *map(_value, vv), *cc, *counters]
        # Operand 0 is hyper, then p, g, m, v, c, counters; the results are p, m, v, c, counters:
        # every operand but g is aliased to its result.
        aliases = {1 + i: i for i in range(n)}
        aliases.update({1 + 2 * n + i: n + i for i in range(len(outs) - n)})
        call = jax.ffi.ffi_call(
            _native.TARGET,
            [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in outs],
            input_output_aliases=aliases,
            vmap_method="sequential",  # under vmap (e.g. over learning rates): one call per member
        )
        results = call(
            hyper,
            *arrays,
            algorithm=np.int64(ALGORITHMS[algorithm]),
            decayed=np.asarray(decayed[part], np.int64),
            stochastic=np.asarray(
                [
                    int(a) + 2 * int(b)
                    for a, b in zip(m_rounded, v_rounded or [False] * n, strict=True)
                ],
                np.int64,
            ),
            kahan=np.int64(has_c),
        )
        results = list(results)
        new_p, new_m = results[:n], results[n : 2 * n]
        new_v = results[2 * n : 2 * n + len(vv)]
        new_c = results[2 * n + len(vv) : 2 * n + len(vv) + len(cc)]
        new_counters = iter(results[2 * n + len(vv) + len(cc) :])  # m's first, then v's
        new_m = _rewrap(new_m, m_rounded, new_counters)
        new_v = _rewrap(new_v, v_rounded, new_counters)
        p_out += new_p
        m_out += new_m
        v_out += new_v
        c_out += new_c
    return p_out, m_out, (v_out if has_v else None), (c_out if has_c else None)


def _empty(x: Any) -> bool:
    return 0 in jnp.shape(x)


def _without_empty_leaves(algorithm: str, hyper, p, g, m, v, decayed: list[int], *, c=None):
    """`kernel_call` on the leaves with elements; a zero-size leaf comes back as it went in.

    jaxlib 0.9.0 and older hand a custom call a null pointer for a zero-size buffer, which the
    kernel refuses ("a buffer could not be decoded": a model with one empty leaf failed on 0.5.0 to
    0.9.0; 0.9.2 passes). Such a leaf has nothing to update; a `stochastic_bfloat16` moment's
    counter still advances by one, as the kernel and the jnp path advance it.
    """
    keep = [i for i, x in enumerate(p) if not _empty(x)]
    pick = lambda t: None if t is None else [t[i] for i in keep]  # noqa: E731
    kept = kernel_call(
        algorithm, hyper, pick(p), pick(g), pick(m), pick(v), [decayed[i] for i in keep], c=pick(c)
    )
    bump = lambda x: (  # noqa: E731
        RoundedBuffer(x.value, x.counter + jnp.uint32(1)) if isinstance(x, RoundedBuffer) else x
    )
    results: list[list[Any] | None] = []
    for given, out, update in zip((p, m, v, c), kept, (False, True, True, False), strict=True):
        if given is None:
            results.append(None)
            continue
        rest = iter(out)
        results.append(
            [next(rest) if i in keep else (bump(x) if update else x) for i, x in enumerate(given)]
        )
    return tuple(results)


def _rewrap(values: list[Any], rounded: list[bool], counters: Any) -> list[Any]:
    """``values`` with each rounded one a `RoundedBuffer` again, its counter the next of
    ``counters`` (an iterator)."""
    return [
        RoundedBuffer(x, next(counters)) if r else x for x, r in zip(values, rounded, strict=True)
    ]


def _value(leaf: Any) -> Any:
    """A moment leaf's array: a `RoundedBuffer`'s bfloat16 value, or the leaf itself."""
    return leaf.value if isinstance(leaf, RoundedBuffer) else leaf


def _flatten(tree: Any) -> tuple[list[Any], Any]:
    leaves, treedef = jax.tree.flatten(tree)
    return leaves, treedef


# ---- sharded leaves: the kernel runs once per shard, inside `jax.shard_map` ---------------------

_Layout = Layout
_spec = spec
_reshard = reshard


def sharded_kernel_call(
    where: _Layout, algorithm: str, hyper, p, g, m, v, decayed: list[int], *, c=None
):
    """`kernel_call` once per shard: each leaf's update runs in its first moment's sharding.

    The kernel is elementwise, so a shard of ``(p, g, m, v, c)`` is updated from the same shards
    alone. The moment's sharding decides where: under ZeRO-1 (params replicated, state split) each
    device updates its slice of the params, which are then gathered back to their own sharding.
    (Stochastic rounding hashes an element's index in its whole leaf: `why_not` keeps it off a mesh.)
    """
    if where.mesh is None:
        return kernel_call(algorithm, hyper, p, g, m, v, decayed, c=c)
    assert not any(isinstance(x, RoundedBuffer) for x in [*m, *(v or [])])
    specs = [_spec(x) for x in m]
    p_specs = [_spec(x) for x in p]
    v_specs = [_spec(x) for x in v] if v is not None else []
    c_specs = [_spec(x) for x in c] if c is not None else []
    pp, gg, mm = ([_reshard(x, where, s) for x, s in zip(t, specs, strict=True)] for t in (p, g, m))
    vv = [_reshard(x, where, s) for x, s in zip(v, specs, strict=True)] if v is not None else []
    cc = [_reshard(x, where, s) for x, s in zip(c, specs, strict=True)] if c is not None else []
    replicated = P()
    if where.concrete:
        hyper = jax.device_put(hyper, NamedSharding(where.mesh, replicated))

    def body(hyper, p, g, m, v, c):
        new_p, new_m, new_v, new_c = kernel_call(
            algorithm, hyper, p, g, m, v or None, decayed, c=c or None
        )
        return new_p, new_m, new_v or [], new_c or []

    some = lambda t, s: s if t is not None else []  # noqa: E731
    new_p, new_m, new_v, new_c = jax.shard_map(
        body,
        mesh=where.mesh,
        in_specs=(replicated, specs, specs, specs, some(v, specs), some(c, specs)),
        out_specs=(specs, specs, some(v, specs), some(c, specs)),
        check_vma=False,  # an FFI call carries no varying-axes rule; the specs say it all
    )(hyper, pp, gg, mm, vv, cc)
    new_p = [_reshard(x, where, s) for x, s in zip(new_p, p_specs, strict=True)]
    new_v = [_reshard(x, where, s) for x, s in zip(new_v, v_specs, strict=True)]
    new_c = [_reshard(x, where, s) for x, s in zip(new_c, c_specs, strict=True)]
    return (
        new_p,
        new_m,
        (new_v if v is not None else None),
        (new_c if c is not None else None),
    )


def _leaves(rule: FusedRule, grads: Any, state: Any, params: Any):
    """``(treedef, p, g, m, v, c)``: the flat leaves of a step (``v``, ``c`` may be ``None``);
    ``m`` and ``v`` as stored (`RoundedBuffer` for `stochastic_bfloat16`). Raises on a mismatch."""
    leaves, treedef = _flatten(params)
    inner, kahan = _split(rule, state)
    mu, nu, _ = rule.moments(inner)
    g_leaves = treedef.flatten_up_to(grads)
    m_leaves = treedef.flatten_up_to(mu)
    v_leaves = treedef.flatten_up_to(nu) if nu is not None else None
    c_leaves = treedef.flatten_up_to(kahan.compensation) if kahan is not None else None
    return treedef, leaves, g_leaves, m_leaves, v_leaves, c_leaves


def why_not(tx: Any, grads: Any, state: Any, params: Any) -> str | None:
    """``None`` if the fused kernel can take this step, else the reason it cannot."""
    rule = rule_of(tx)
    if rule is None:
        return (
            "this optimizer has no fused rule (adam, adamw, nadam, nadamw, adamax, adamaxw, lion, "
            "each alone or as `adamx.chain(optimizer, adamx.kahan_summation())`, with float32, "
            "bfloat16 or `stochastic_bfloat16()` moments)"
        )
    available, explanation = _native.status()
    if not available:
        return explanation
    if jax.default_backend() != "cpu":
        return f"the kernel is for CPU; the default backend is {jax.default_backend()}"
    try:
        treedef, leaves, g_leaves, m_leaves, v_leaves, c_leaves = _leaves(
            rule, grads, state, params
        )
    except (ValueError, TypeError, AttributeError, IndexError):
        return "the gradients or the state do not match the params' structure"
    moments = [*m_leaves, *(v_leaves or [])]
    rounded = [x for x in moments if isinstance(x, RoundedBuffer)]
    for x in rounded:
        counter = x.counter
        if jnp.result_type(x.value) != jnp.bfloat16 or jnp.result_type(counter) != jnp.uint32:
            return "a `stochastic_bfloat16` moment is not a bfloat16 buffer with a uint32 counter"
        if jnp.shape(counter) != ():
            return "a `stochastic_bfloat16` moment's counter is not a scalar"
    for i, p in enumerate(leaves):
        g = g_leaves[i]
        m = _value(m_leaves[i])
        shapes = [jnp.shape(p), jnp.shape(g), jnp.shape(m)]
        dtypes = [np.dtype(jnp.result_type(p)), np.dtype(jnp.result_type(g))]
        state_dtypes = [np.dtype(jnp.result_type(m))]
        if v_leaves is not None:
            shapes.append(jnp.shape(_value(v_leaves[i])))
            state_dtypes.append(np.dtype(jnp.result_type(_value(v_leaves[i]))))
        if len(set(shapes)) != 1 or dtypes[0] != dtypes[1]:
            return "a leaf's gradient or moment has another shape or dtype than its parameter"
        if any(d not in _KERNEL_DTYPES for d in dtypes + state_dtypes):
            return f"the kernel takes float32 and bfloat16 leaves; a leaf is {dtypes[0]}"
        if c_leaves is not None and (
            jnp.shape(c_leaves[i]) != shapes[0] or jnp.result_type(c_leaves[i]) != dtypes[0]
        ):
            return "a Kahan compensation has another shape or dtype than its parameter"
    if _decayed_leaves(rule, params, treedef) is None:
        return "the weight-decay mask is not a tree of Python booleans"
    arrays = [*leaves, *g_leaves, *map(_value, moments), *(c_leaves or [])]
    where = layout(arrays + [x.counter for x in rounded])
    if isinstance(where, str):
        return where
    if rounded and where.mesh is not None:
        return (
            "`stochastic_bfloat16` moments hash each element's index in its whole leaf, which the "
            "kernel does not see on sharded leaves; the jnp path takes this step"
        )
    return None


def step_scalars(rule: FusedRule, state: Any) -> tuple[tuple[Any, ...], Any]:
    """The advanced bias-correction counts and the kernel's scalar buffer (``None``: no kernel)."""
    inner, _ = _split(rule, state)
    _, _, counts = rule.moments(inner)
    new_counts = tuple(safe_increment(c) for c in counts)
    schedule_counts = {
        slot: inner[slot].count for slot in rule.schedule_slots if _has_count(inner[slot])
    }
    return new_counts, _hyper(rule, new_counts, schedule_counts)


def rebuilt_state(
    rule: FusedRule, state: Any, mu: Any, nu: Any, new_counts: tuple, compensation: Any = None
) -> Any:
    """``state`` with the new moments and counts, its schedule counts advanced as ``update`` does
    (and with ``rule.kahan``, the new ``compensation``)."""
    inner, kahan = _split(rule, state)
    new_state = rule.rebuild(inner, mu, nu, new_counts)
    new_state = tuple(
        entry._replace(count=safe_increment(entry.count))
        if i in rule.schedule_slots and _has_count(entry)
        else entry
        for i, entry in enumerate(new_state)
    )
    if kahan is None:
        return new_state
    return (new_state, kahan._replace(compensation=compensation))


def fused_step(tx: Any, grads: Any, state: Any, params: Any) -> tuple[Any, Any] | None:
    """One fused step, or ``None`` when the jnp path must take it (see `why_not`)."""
    if why_not(tx, grads, state, params) is not None:
        return None
    rule = rule_of(tx)
    assert rule is not None
    new_counts, hyper = step_scalars(rule, state)
    if hyper is None:
        return None
    treedef, leaves, g_leaves, m_leaves, v_leaves, c_leaves = _leaves(rule, grads, state, params)
    decayed = _decayed_leaves(rule, params, treedef)
    assert decayed is not None
    moments = [_value(x) for x in [*m_leaves, *(v_leaves or [])]]
    where = layout([*leaves, *g_leaves, *moments, *(c_leaves or [])])
    assert isinstance(where, _Layout)
    p, m, v, c = sharded_kernel_call(
        where,
        rule.algorithm,
        hyper,
        [jnp.asarray(x) for x in leaves],
        g_leaves,
        m_leaves,
        v_leaves,
        decayed,
        c=c_leaves,
    )
    new_mu = treedef.unflatten(m)
    new_nu = treedef.unflatten(v) if v is not None else None
    new_c = treedef.unflatten(c) if c is not None else None
    return treedef.unflatten(p), rebuilt_state(rule, state, new_mu, new_nu, new_counts, new_c)
