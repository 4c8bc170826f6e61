"""The bounded jnp step: the derived kernel's plan run by XLA, a chunk of each leaf at a time.

A step with low-bit moments, written op by op, dequantises every moment of every leaf to float32
before it quantises any back: XLA:CPU keeps those float32 arrays live at once, so the step's
temporaries grow with the model (16 bytes per parameter for AdamW with 8-bit moments), and the
step peaks above float32 Adam's. This module runs the same equations with temporaries bounded by
a chunk (docs/design.md, section 8, "The bounded jnp path"):

- the step is planned as the derived kernel plans it (`_derived.plan`): scalar equations, the
  reductions of leaves to scalars, and per leaf the connected group of elementwise equations,
  with each block codec (`Blockwise.read`/`write`) kept whole;
- the scalar equations and reductions run as they are; each leaf's group runs in a
  ``lax.fori_loop`` over chunks of ``CHUNK`` elements (whole blocks of its quantised moments),
  which slices its inputs with ``dynamic_slice`` and writes its results with
  ``dynamic_update_slice`` into buffers carried by the loop: the donated params and state it
  replaces, so they stay in place;
- the equations themselves are the jnp path's, bound to the chunk's arrays: a decode or encode is
  the storage's own on the chunk's blocks, an element's index (stochastic rounding's hash) is the
  chunk's offset plus its own index. So the numbers are the reference's, up to XLA's own
  compilation of a loop body (it may contract ``a * b + c``).

It runs on every backend (it needs no compiler). `adamx.step` takes it where the kernel does not
run (GPU, TPU, no native library); ``tx.update`` of a `chain` takes it, under a trace, when the
state holds low-bit moments (`adamx.core._chain.set_bounded_update`), returning the updates in one
float32 buffer per leaf.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core._chain import set_bounded_update
from ..core._trees import is_stored_moment
from . import _derived

__all__: list[str] = []  # internal

CHUNK = 1 << 16  # elements a loop iteration updates (whole blocks of 256 and of 128)


# 16-bit floats. XLA:CPU widens a `dynamic_update_slice` of one to float32 (the whole buffer
# converted, updated and converted back, per chunk: measured 100x slower than the step), and
# viewing the buffer as uint16 copies it (2 bytes per element, measured). So on CPU a leaf that
# writes a 16-bit float buffer (stochastic-bfloat16 moments, bfloat16 params) runs in one piece,
# as the jnp path runs it: XLA fuses such a step with one float32 temporary, the updates (4 bytes
# per parameter, measured), and `adamx.step` takes the kernel there. Other backends update
# 16-bit buffers in place.
_NARROW = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


# The primitives a chunk computes as its leaf would (`_evaluate`); the derived kernel's
# (`_derived._expression`).
_ELEMENTWISE = {
    *_derived._BINARY, *_derived._COMPARE, *_derived._BITWISE, *_derived._IDENTITY,
    "max", "min", "not", "shift_left", "shift_right_logical", "neg", "abs", "sign", "sqrt",
    "square", "integer_pow", "is_finite", "select_n", "convert_element_type",
    "bitcast_convert_type", "iota", "div",
}  # fmt: skip


def _updates(params: Any, updates: Any) -> Any:
    """The "apply" of a planned ``update``: the updates themselves (one float32 buffer a leaf)."""
    del params
    return updates


def has_low_bit(state: Any) -> bool:
    """Whether ``state`` holds a stored moment (`RoundedBuffer`, `QuantizedBuffer`) or a 16-bit
    float array: what the jnp path widens to a float32 temporary per leaf."""
    leaves = jax.tree.leaves(state, is_leaf=is_stored_moment)
    return any(
        is_stored_moment(x) or (np.ndim(x) > 0 and np.dtype(x.dtype) in _NARROW) for x in leaves
    )


def _plan(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> tuple[Any, list]:
    result, flat_args, where = _derived._prepare(tx, apply, grads, state, params)
    if isinstance(result, str):
        return result, flat_args
    if not result.leaves:
        return "the step updates no array", flat_args
    if where.mesh is not None:
        return "the leaves are sharded over a mesh", flat_args
    if jax.device_count() > 1:
        # Under `jit` a leaf's sharding is not in its trace (an `Auto` mesh), and a chunk sliced
        # from a sharded leaf would gather it: with several devices the step stays as written,
        # which XLA partitions (and the numbers equal on every mesh, tests/test_sharding.py).
        return "more than one device: the leaves may be sharded", flat_args
    for instances in result.leaves.values():
        for x in instances:
            if getattr(x, "reductions", None):  # reduced in the kernel's own pass
                return "a leaf's program reduces it in the same pass", flat_args
            for eqn in x.ops:  # a chunk holds part of a leaf: only elementwise equations
                name = eqn.primitive.name
                if eqn.codec is None and (_derived._is_reduction(name) or name not in _ELEMENTWISE):
                    return f"`{name}` in a leaf's program is not elementwise", flat_args
    return result, flat_args


def why_not(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> str | None:
    """``None`` if the bounded path can take this step, else why not."""
    result, _ = _plan(tx, apply, grads, state, params)
    return result if isinstance(result, str) else None


def step(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> tuple[Any, Any] | None:
    """``(apply(params, updates), new state)`` through the bounded path, or ``None``."""
    result, flat_args = _plan(tx, apply, grads, state, params)
    if isinstance(result, str):
        return None
    p_def, s_def = result.treedefs
    n = p_def.num_leaves
    # The updates of `update` are written over the gradients, not over a copy of the params:
    # inside a train step the gradients die here, so XLA updates them in place.
    over = dict(zip(result.inputs[:n], result.inputs[n : 2 * n], strict=True))
    outputs = run(result, flat_args, over=over if apply is _updates else None)
    return p_def.unflatten(outputs[:n]), s_def.unflatten(outputs[n:])


def update(tx: Any, grads: Any, state: Any, params: Any) -> tuple[Any, Any] | None:
    """``tx.update(grads, state, params)`` through the bounded path (``tx`` the plain chain)."""
    if params is None or not has_low_bit(state):
        return None
    return step(tx, _updates, grads, state, params)


# ---- running a plan a chunk at a time ------------------------------------------------------------


def run(p: Any, flat_args: list, chunk: int | None = None, over: dict | None = None) -> list:
    """The outputs of the planned function: its scalar part and reductions as JAX runs them, each
    leaf's elementwise part in a loop over chunks of ``chunk`` elements (`CHUNK`; `_leaf`).
    ``over``: an input node -> the input whose buffer its result is written over instead (of the
    same shape and dtype)."""
    chunk = CHUNK if chunk is None else chunk
    env: dict[int, Any] = dict(zip(p.inputs, flat_args, strict=True))
    env.update(p.flat.consts)

    def read(ref):
        return ref.value if isinstance(ref, _derived.Lit) else env[ref]

    events = list(p.flat.binds + p.flat.jax_ops)
    events += [e for _, x in p.reducers for e in x.ops]
    seen: set[int] = set()
    for eqn in sorted(events, key=lambda e: e.index):
        if id(eqn) in seen:
            continue
        seen.add(id(eqn))
        for node, value in zip(
            eqn.outs, _derived._bind(eqn, [read(r) for r in eqn.ins]), strict=True
        ):
            env[node] = value
    for instances in p.leaves.values():
        for x in instances:
            _leaf(p.flat, x, env, read, chunk, over or {})
    return [jnp.asarray(read(ref)) for ref in p.outputs]


def _chunks(flat: Any, x: Any, chunk: int) -> tuple[int, list, int] | None:
    """How to cut a leaf: ``(block, [(count, elements, blocks, first)], layer)``: ``count`` loop
    iterations of ``elements`` elements (``blocks`` blocks of the quantised moments) from
    ``first``; ``block`` is 0 for a leaf without quantised moments. ``None``: in one piece."""
    layout = _derived._blocks(flat, x.ops)
    if layout is None:
        if x.size <= chunk:
            return None
        full, rest = divmod(x.size, chunk)
        pieces = [(full, chunk, 0, 0)] + ([(1, rest, 0, full * chunk)] if rest else [])
        return 0, pieces, 0
    L, S, n, B = layout.layers, layout.size, layout.blocks, layout.block
    if L * S <= chunk:
        return None
    if L > 1 and S % B:  # blocks restart at each layer: a layer an iteration
        return B, [(L, S, n, 0)], n
    total = L * n  # blocks, the last one partial when S % B (then L == 1)
    k = max(1, chunk // B)
    full, rest = divmod(total, k)
    if S % B and rest == 0:
        full, rest = full - 1, k
    pieces = [(full, k * B, k, 0)] if full else []
    if rest:
        pieces.append((1, L * S - full * k * B, rest, full * k * B))
    return B, pieces, 0


def _leaf(flat: Any, x: Any, env: dict, read: Any, chunk: int, over: dict) -> None:
    """One leaf's elementwise equations, chunk by chunk; results into ``env``."""
    cut = _chunks(flat, x, chunk)
    if cut is not None and jax.default_backend() == "cpu":
        written = [flat.dtypes[r] for o, r in x.slots if r is not None]
        if any(dtype in _NARROW for dtype in written):
            cut = None  # see `_NARROW`
    if cut is None:  # small, or see above: as the jnp path runs it
        for eqn in x.ops:
            outs = _derived._bind(eqn, [read(r) for r in eqn.ins])
            for node, value in zip(eqn.outs, outs, strict=True):
                env[node] = value
        return
    block, pieces, _ = cut
    made = {o for eqn in x.ops for o in eqn.outs}
    carried: list[tuple[int | None, int]] = [(o, r) for o, r in x.slots if r is not None]
    for k, (operand, result) in enumerate(carried):
        other = over.get(operand)
        if (
            other is not None
            and other not in {o for o, _ in carried}
            and flat.shapes[other] == flat.shapes[result]
            and flat.dtypes[other] == flat.dtypes[result]
        ):
            carried[k] = (other, result)  # read from this buffer until a chunk is written
    carry_of = {o: k for k, (o, _) in enumerate(carried) if o is not None}

    def flat_buffer(node: int, value: Any) -> Any:
        if node in flat.blocked:  # codes (layers, blocks, width), scales (layers, blocks)
            shape = flat.shapes[node]
            return value.reshape((shape[0] * shape[1], *shape[2:]))
        return value.reshape(-1)

    buffers = []
    for operand, result in carried:
        if operand is not None:
            buffers.append(flat_buffer(result, env[operand]))
        else:
            shape, dtype = flat.shapes[result], flat.dtypes[result]
            buffers.append(flat_buffer(result, jnp.zeros(shape, dtype)))
    fixed = {
        r: flat_buffer(r, env[r])
        for eqn in x.ops
        for r in eqn.ins
        if isinstance(r, int) and r not in made and flat.is_leafwise(r) and r not in carry_of
    }

    reads = sorted(
        {
            r
            for eqn in x.ops
            for r in eqn.ins
            if isinstance(r, int) and r not in made and flat.is_leafwise(r)
        }
        | {r for _, r in carried if r not in made}
    )
    own = [r for r in reads if r in carry_of]  # read from a buffer the leaf writes

    def load(bufs: list, node: int, start: Any, g0: Any, count: int, nblocks: int) -> Any:
        buf = bufs[carry_of[node]] if node in carry_of else fixed[node]
        if node in flat.blocked:
            sizes = (nblocks, *buf.shape[1:])
            return jax.lax.dynamic_slice(buf, (g0,) + (0,) * (buf.ndim - 1), sizes)
        return jax.lax.dynamic_slice(buf, (start,), (count,))

    def piece(bufs: list, start: Any, g0: Any, count: int, nblocks: int, ahead: list) -> list:
        """The chunk from ``start`` (block ``g0``) written into ``bufs``; ``ahead``: its slices of
        the buffers it writes, read before (see `_leaf`'s loop)."""
        local: dict[int, Any] = dict(zip(own, ahead, strict=True))

        def get(ref: Any) -> Any:
            if isinstance(ref, int) and ref in local:
                return local[ref]
            if isinstance(ref, int) and ref not in made and flat.is_leafwise(ref):
                local[ref] = load(bufs, ref, start, g0, count, nblocks)
                return local[ref]
            value = read(ref)
            if np.ndim(value) > 0 and math.prod(np.shape(value)) == 1:
                value = jnp.reshape(value, ())  # a size-1 scalar of the scalar part
            return value

        for eqn in x.ops:
            outs = _evaluate(flat, eqn, [get(r) for r in eqn.ins], start, count, block, nblocks)
            for node, value in zip(eqn.outs, outs, strict=True):
                local[node] = value
        new = list(bufs)
        # The results are kept (`optimization_barrier`): else XLA moves a conversion to
        # bfloat16 through the update of the buffer (the whole buffer converted to float32 and
        # back per chunk, measured).
        values = jax.lax.optimization_barrier([get(r) for _, r in carried])
        for k, ((_, result), value) in enumerate(zip(carried, values, strict=True)):
            if result in flat.blocked:
                index = (g0,) + (0,) * (new[k].ndim - 1)
                new[k] = jax.lax.dynamic_update_slice(new[k], value.astype(new[k].dtype), index)
            else:
                value = jnp.broadcast_to(value, (count,)).astype(flat.dtypes[result])
                new[k] = jax.lax.dynamic_update_slice(new[k], value, (start,))
        return new

    for iterations, count, nblocks, first in pieces:
        g_first = first // block if block else 0
        if iterations == 1:
            ahead = [load(buffers, r, first, g_first, count, nblocks) for r in own]
            buffers = piece(buffers, first, g_first, count, nblocks, ahead)
            continue

        # The chunk a buffer gives to iteration i is sliced at the end of iteration i - 1 and
        # carried: read inside iteration i, XLA fuses the slice into every fusion that reads it,
        # some after the one that writes the buffer, and copies the whole buffer each iteration
        # to keep the old chunk (measured: 4-bit moments, 5x slower).
        def at(i, count=count, nblocks=nblocks, first=first, g_first=g_first):
            return first + i * count, (g_first + i * nblocks if block else 0)

        def body(i, carry, count=count, nblocks=nblocks, at=at, iterations=iterations):
            bufs, ahead = carry
            start, g0 = at(i)
            new = piece(list(bufs), start, g0, count, nblocks, list(ahead))
            start, g0 = at(jnp.minimum(i + 1, iterations - 1))
            return tuple(new), tuple(load(new, r, start, g0, count, nblocks) for r in own)

        start0, g00 = at(0)
        ahead0 = tuple(load(buffers, r, start0, g00, count, nblocks) for r in own)
        buffers = list(jax.lax.fori_loop(0, iterations, body, (tuple(buffers), ahead0))[0])
    for (_, result), buf in zip(carried, buffers, strict=True):
        env[result] = buf.reshape(flat.shapes[result])


def _evaluate(
    flat: Any, eqn: Any, args: list, start: Any, count: int, block: int, nblocks: int
) -> list:
    """``eqn`` on a chunk of ``count`` elements from ``start`` (``nblocks`` blocks of ``block``)."""
    name = eqn.primitive.name
    if eqn.codec is not None:
        kind, config = eqn.codec
        # The decoded moment and the value to encode are kept (`optimization_barrier`, a chunk
        # each): else XLA recomputes the whole update from the codes in every fusion that reads
        # it (the block maxima, the codes, the params), measured 3x slower with 4-bit moments.
        if kind == "decode":
            codes, scales = args[-2:]
            decoded = config._decode(codes[None], scales[None], (count,))
            return [jax.lax.optimization_barrier(decoded)]
        width = block // 2 if config.bits == 4 else block
        value = jax.lax.optimization_barrier(args[-1])
        codes, scales = config._encode(value, (count,), (1, nblocks, width), (1, nblocks))
        return [codes[0], scales[0]]
    out = eqn.outs[0]
    if name == "iota":
        dtype = flat.dtypes[out]
        index = jax.lax.iota(dtype, count)
        return [index + jnp.asarray(start).astype(dtype)]
    if name == "broadcast_in_dim" and not flat.is_leafwise(eqn.ins[0]):
        return [jnp.broadcast_to(jnp.reshape(args[0], ()), (count,))]
    if name in _derived._IDENTITY and flat.is_leafwise(eqn.ins[0]):
        return [args[0]]
    return _derived._bind(eqn, args)


set_bounded_update(update)
