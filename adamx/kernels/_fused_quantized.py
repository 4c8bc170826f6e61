"""The fused step for Adam(W) with 8-bit block-quantised moments (``blockwise_8bit``).

``adamx.step`` tries the plain fused kernel first (``adamx/kernels/_fused.py``); an optimizer built with
``mu_dtype=blockwise_8bit(True)`` and ``nu_dtype=blockwise_8bit(False)`` (what
``low_bit_moments(8)`` gives) has no plain rule, but carries a `QuantizedRule` here. Its step runs
the native handler ``AdamxQuantizedStep`` (``adamx/kernels/_native/fused_quantized.cc``) over the quantised
leaves: per block of 256 it dequantises m and v, takes the Adam step, and re-encodes both with the
same code, in one pass and with the jnp path's operations, so the result is bit-identical to
``update`` + ``apply_updates`` eagerly (tests/test_quantize.py). Leaves small enough to stay
float32 go through the plain kernel in the same step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core._base import GradientTransformation
from ..storage._quantize import Blockwise, QuantizedBuffer, code_constants, dynamic_code
from . import _fused, _native

__all__: list[str] = []  # internal: used by the floors above, not public

_MAX_BLOCK = 4096  # fused_quantized.cc: kMaxBlock


@dataclasses.dataclass(frozen=True)
class QuantizedRule:
    """A plain `FusedRule` (hyperparameters, state layout) and the two moments' storages."""

    rule: _fused.FusedRule
    mu: Blockwise
    nu: Blockwise


class QuantizedFusable(GradientTransformation):
    """A `GradientTransformation` that also carries a `QuantizedRule` (as ``quantized_rule``)."""

    quantized_rule: QuantizedRule | None


def _is_8bit_pair(mu: Any, nu: Any) -> bool:
    return (
        isinstance(mu, Blockwise)
        and isinstance(nu, Blockwise)
        and mu.bits == nu.bits == 8
        and mu.signed
        and not nu.signed
        and not mu.linear
        and not nu.linear
        and mu.block_size == nu.block_size <= _MAX_BLOCK
        and mu.min_size == nu.min_size
        and mu.batch_dims == nu.batch_dims
    )


def attach(tx: GradientTransformation, mu_dtype: Any, nu_dtype: Any, **rule_args: Any):
    """``tx`` with a `QuantizedRule` when its moments are an 8-bit pair the kernel takes."""
    if not _is_8bit_pair(mu_dtype, nu_dtype):
        return tx
    # The layout of the state and the scalars are those of the plain rule.
    rule = _fused.adam_rule(mu_dtype=None, nu_dtype=None, **rule_args)
    if rule is None or rule.algorithm not in ("adam", "adam_nesterov"):
        return tx
    fused = QuantizedFusable(tx.init, tx.update)
    fused.quantized_rule = QuantizedRule(rule, mu_dtype, nu_dtype)
    return fused


def rule_of(tx: Any) -> QuantizedRule | None:
    return getattr(tx, "quantized_rule", None)


def _tables() -> jax.Array:
    signed = Blockwise(8, True)._table()
    unsigned = Blockwise(8, False)._table()
    assert len(signed) == len(unsigned) == 256 and np.array_equal(unsigned, dynamic_code(8))
    parts = [signed, unsigned, *code_constants(7), *code_constants(8)]  # 512 + 22 + 25
    return jnp.asarray(np.concatenate([np.asarray(p, np.float32) for p in parts]))


def why_not(tx: Any, grads: Any, state: Any, params: Any) -> str | None:
    """``None`` if the quantised kernel can take this step, else the reason (a phrase)."""
    quantized = rule_of(tx)
    if quantized is None:
        return "this optimizer has no fused rule for its moments' storage"
    available, explanation = _native.status()
    if not available:
        return explanation
    if jax.default_backend() != "cpu":
        return f"the kernel is for CPU; the default backend is {jax.default_backend()}"
    leaves, treedef = _fused._flatten(params)
    try:
        g_leaves = treedef.flatten_up_to(grads)
        mu, nu, _ = quantized.rule.moments(state)
        m_leaves = treedef.flatten_up_to(mu)
        v_leaves = treedef.flatten_up_to(nu)
    except (ValueError, TypeError, AttributeError, IndexError):
        return "the gradients or the state do not match the params' structure"
    for p, g, m, v in zip(leaves, g_leaves, m_leaves, v_leaves, strict=True):
        if jnp.result_type(p) != jnp.float32 or jnp.result_type(g) != jnp.float32:
            return "the quantised kernel takes float32 params and gradients"
        if jnp.shape(g) != jnp.shape(p):
            return "a leaf's gradient has another shape than its parameter"
        if isinstance(m, QuantizedBuffer) != isinstance(v, QuantizedBuffer):
            return "a leaf has one moment quantised and the other not"
        if isinstance(m, QuantizedBuffer):
            if m.shape != jnp.shape(p) or v.shape != jnp.shape(p):
                return "a quantised moment has another shape than its parameter"
        elif jnp.result_type(m) != jnp.float32 or jnp.result_type(v) != jnp.float32:
            return "a leaf kept in full precision is not float32"
    where = _fused.layout([*leaves, *g_leaves])
    if not isinstance(where, _fused._Layout) or where.mesh is not None:
        return "the quantised kernel runs on one device; sharded leaves take the jnp path"
    if _fused._decayed_leaves(quantized.rule, params, treedef) is None:
        return "the weight-decay mask is not a tree of Python booleans"
    return None


def _call(hyper, p, g, m, v, decayed, storage: Blockwise, nesterov: bool):
    """The custom call over quantised leaves (lists); returns new ``(p, m, v)`` lists."""
    n = len(p)
    if not n:
        return [], [], []
    layouts = [storage._layout(tuple(x.shape)) for x in p]
    operands = [*p, *g, *(x.codes for x in m), *(x.scales for x in m)]
    operands += [*(x.codes for x in v), *(x.scales for x in v)]
    outs = [*p, *(x.codes for x in m), *(x.scales for x in m)]
    outs += [*(x.codes for x in v), *(x.scales for x in v)]
    # operand 0 is hyper, 1 the tables; p at 2.., m codes at 2 + 2n.., and so on.
    aliases = {2 + i: i for i in range(n)}
    for k in range(4):  # m codes, m scales, v codes, v scales
        aliases.update({2 + (2 + k) * n + i: (1 + k) * n + i for i in range(n)})
    call = jax.ffi.ffi_call(
        _native.QUANTIZED_TARGET,
        [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in outs],
        input_output_aliases=aliases,
        vmap_method="sequential",
    )
    results = call(
        hyper,
        _tables(),
        *operands,
        nesterov=np.int64(int(nesterov)),
        block=np.int64(storage.block_size),
        decayed=np.asarray(decayed, np.int64),
        layers=np.asarray([layers for layers, _, _ in layouts], np.int64),
        sizes=np.asarray([size for _, size, _ in layouts], np.int64),
    )
    new_p = results[:n]
    new_m = [
        QuantizedBuffer(c, s, x.shape)
        for c, s, x in zip(results[n : 2 * n], results[2 * n : 3 * n], m, strict=True)
    ]
    new_v = [
        QuantizedBuffer(c, s, x.shape)
        for c, s, x in zip(results[3 * n : 4 * n], results[4 * n :], v, strict=True)
    ]
    return new_p, new_m, new_v


def fused_step(tx: Any, grads: Any, state: Any, params: Any) -> tuple[Any, Any] | None:
    """One fused step over quantised moments, or ``None`` when the jnp path must take it."""
    if why_not(tx, grads, state, params) is not None:
        return None
    quantized = rule_of(tx)
    assert quantized is not None
    rule = quantized.rule
    new_counts, hyper = _fused.step_scalars(rule, state)
    if hyper is None:
        return None
    leaves, treedef = _fused._flatten(params)
    mu, nu, _ = rule.moments(state)
    decayed = _fused._decayed_leaves(rule, params, treedef)
    assert decayed is not None
    g_leaves = treedef.flatten_up_to(grads)
    m_leaves, v_leaves = treedef.flatten_up_to(mu), treedef.flatten_up_to(nu)
    is_q = [isinstance(m, QuantizedBuffer) for m in m_leaves]
    pick = lambda xs, want: [x for x, q in zip(xs, is_q, strict=True) if q == want]  # noqa: E731
    new_p = list(leaves)
    new_m, new_v = list(m_leaves), list(v_leaves)
    q_at = [i for i, q in enumerate(is_q) if q]
    f_at = [i for i, q in enumerate(is_q) if not q]
    if q_at:
        qp, qm, qv = _call(
            hyper,
            [jnp.asarray(x) for x in pick(leaves, True)],
            pick(g_leaves, True),
            pick(m_leaves, True),
            pick(v_leaves, True),
            pick(decayed, True),
            quantized.mu,
            rule.algorithm == "adam_nesterov",
        )
        for k, i in enumerate(q_at):
            new_p[i], new_m[i], new_v[i] = qp[k], qm[k], qv[k]
    if f_at:
        fp, fm, fv, _ = _fused.kernel_call(
            rule.algorithm,
            hyper,
            [jnp.asarray(x) for x in pick(leaves, False)],
            pick(g_leaves, False),
            pick(m_leaves, False),
            pick(v_leaves, False),
            pick(decayed, False),
        )
        assert fv is not None
        for k, i in enumerate(f_at):
            new_p[i], new_m[i], new_v[i] = fp[k], fm[k], fv[k]
    new_mu, new_nu = treedef.unflatten(new_m), treedef.unflatten(new_v)
    return treedef.unflatten(new_p), _fused.rebuilt_state(rule, state, new_mu, new_nu, new_counts)
