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
  ``lax.fori_loop`` over chunks of ``CHUNK`` elements, up to 4x that in a large leaf (`_chunk`;
  whole blocks of its quantised moments), which slices its inputs with ``dynamic_slice`` and
  writes its results with ``dynamic_update_slice`` into buffers carried by the loop: the donated
  params and state it replaces, so they stay in place. A leaf's loops run inside a loop of one
  iteration of its own, so XLA begins no leaf before the one it is scheduled after has ended
  (the temporaries do not grow with the number of leaves); a value a chunk encodes is made in a
  buffer of its own (`_kept`), so XLA does not compute it again in every fusion that reads it;
- a leaf with rank-1 moments (`Rank1`: each element scaled by ``min(row max, column max)`` of
  the new value) is cut into whole rows and takes two passes: the first computes the value each
  encode codes (the part of the leaf's program it depends on) and reduces it to its layer's row
  and column maxima, writing nothing else; the second runs the whole program, encoding with
  those scales (the old codes and scales it decodes are still intact). A single chunk runs as a
  loop too, of a count XLA does not know (unrolled, XLA copies the buffers it updates);
- the equations themselves are the jnp path's, bound to the chunk's arrays: a decode or encode is
  the storage's own on the chunk's blocks (or rows), an element's index (stochastic rounding's
  hash) is the chunk's offset plus its own index. So the numbers are the reference's, up to
  XLA's own compilation of a loop body (it may contract ``a * b + c``).

On a mesh whose shardings the trace shows (``Explicit`` axes) each leaf runs once per shard,
inside ``jax.shard_map`` (`_on_shards`), where its quantised moments' codes follow its
parameter; a leaf that cannot runs in one piece, as written.

It runs on every backend (it needs no compiler). `adamx.step` takes it where the kernel does not
run (GPU, TPU, no native library); ``tx.update`` of a `chain` (or of a transformation wrapped
by `adamx.core._chain.with_bounded_update`) takes it, under a trace, when the state holds
low-bit moments (`adamx.core._chain.set_bounded_update`), returning the updates in one float32
buffer per leaf.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core._chain import set_bounded_update
from ..core._trees import is_stored_moment
from ..storage._quantize import (
    Rank1,
    _pack4,
    _unpack4,
    followed_spec,
    layout_specs,
    rank1_codes,
    rank1_scales,
    rank1_values,
)
from . import _derived
from ._mesh import _full_spec, reshard, spec

__all__: list[str] = []  # internal

CHUNK = 1 << 16  # elements a loop iteration updates (whole blocks of 256 and of 128), at least


def _chunk(size: int, chunk: int) -> int:
    """The chunk of a leaf of ``size`` elements: ``chunk``, up to 4x it in a leaf of 64 such chunks
    or more. Each iteration costs XLA:CPU a few microseconds per fusion (some 30 of them), so
    larger chunks are faster (AdamW, 8-bit moments, one leaf of 16.8M: 64K elements 90 ms, 256K
    82, 512K 73); a chunk's float32 arrays (up to about ten, Adan's) are the step's temporaries,
    so the chunk grows with the leaf only, to a 64th of it at most."""
    return max(chunk, min(4 * chunk, 1 << max(0, (size // 64).bit_length() - 1)))


# 16-bit floats. XLA:CPU widens a `dynamic_update_slice` of one to float32 (the whole buffer
# converted, updated and converted back, per chunk: measured 100x slower than the step), and
# viewing the buffer as uint16 copies it (2 bytes per element, measured). So on CPU a leaf that
# writes a 16-bit float buffer (stochastic-bfloat16 moments, bfloat16 params) runs in one piece,
# as the jnp path runs it: XLA fuses such a step with one float32 temporary, the updates (4 bytes
# per parameter, measured), and `adamx.step` takes the kernel there. Other backends update
# 16-bit buffers in place.
_NARROW = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


def _narrow_in_place() -> bool:
    """Whether a 16-bit float buffer is updated a chunk at a time (`_NARROW`: not on CPU)."""
    return jax.default_backend() != "cpu"


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


def _plan(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> tuple[Any, list, Any]:
    """``(plan or why there is none, flat leaves, their Layout)``."""
    result, flat_args, where = _derived._prepare(tx, apply, grads, state, params)
    if isinstance(result, str):
        return result, flat_args, where
    if not result.leaves:
        return "the step updates no array", flat_args, where
    if where.mesh is None and not where.concrete and jax.device_count() > 1:
        # Under `jit` on an `Auto` mesh (or none) a leaf's sharding is not in its trace, and a
        # chunk sliced from a sharded leaf would gather it: the step stays as written, which XLA
        # partitions. On a mesh whose shardings are visible each leaf runs per shard (`_on_shards`).
        return (
            "several devices and leaves whose sharding is not visible under `jit` (an `Auto` "
            "mesh); place them on a mesh of `Explicit` axes (`jax.make_mesh`'s default)",
            flat_args,
            where,
        )
    for instances in result.leaves.values():
        for x in instances:
            if getattr(x, "reductions", None):  # reduced in the kernel's own pass
                return "a leaf's program reduces it in the same pass", flat_args, where
            for eqn in x.ops:  # a chunk holds part of a leaf: only elementwise equations
                name = eqn.primitive.name
                if eqn.codec is None and (_derived._is_reduction(name) or name not in _ELEMENTWISE):
                    return f"`{name}` in a leaf's program is not elementwise", flat_args, where
    return result, flat_args, where


def why_not(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> str | None:
    """``None`` if the bounded path can take this step, else why not."""
    result, _, _ = _plan(tx, apply, grads, state, params)
    return result if isinstance(result, str) else None


def step(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> tuple[Any, Any] | None:
    """``(apply(params, updates), new state)`` through the bounded path, or ``None``."""
    result, flat_args, where = _plan(tx, apply, grads, state, params)
    if isinstance(result, str):
        return None
    p_def, s_def = result.treedefs
    n = p_def.num_leaves
    # The updates of `update` are written over the gradients, not over a copy of the params:
    # inside a train step the gradients die here, so XLA updates them in place.
    over = dict(zip(result.inputs[:n], result.inputs[n : 2 * n], strict=True))
    written_over = over if apply is _updates else None

    # Differentiated (`jax.grad` of a jitted step, meta-learning), the step is the same equations
    # run whole, op by op: JAX cannot reverse a loop of a count it does not know (`_one`).
    # The plan's constants are arguments too (a learning rate closed over is one, and may be what
    # is differentiated).
    @jax.custom_jvp
    def bounded(args: list, consts: dict) -> list:
        return run(result, args, over=written_over, consts=consts, where=where)

    @bounded.defjvp
    def _(primals: tuple, tangents: tuple) -> tuple:
        whole = functools.partial(run, result, chunk=0)
        return bounded(*primals), jax.jvp(lambda a, c: whole(a, consts=c), primals, tangents)[1]

    outputs = bounded(list(flat_args), dict(result.flat.consts))
    return p_def.unflatten(outputs[:n]), s_def.unflatten(outputs[n:])


def update(tx: Any, grads: Any, state: Any, params: Any) -> tuple[Any, Any] | None:
    """``tx.update(grads, state, params)`` through the bounded path (``tx`` the plain chain)."""
    if params is None or not has_low_bit(state):
        return None
    return step(tx, _updates, grads, state, params)


# ---- running a plan a chunk at a time ------------------------------------------------------------


def run(
    p: Any,
    flat_args: list,
    chunk: int | None = None,
    over: dict | None = None,
    consts: Any = None,
    where: Any = None,
) -> list:
    """The outputs of the planned function: its scalar part and reductions as JAX runs them, each
    leaf's elementwise part in a loop over chunks of ``chunk`` elements (`CHUNK`; `_leaf`; 0: in
    one piece, as written). ``consts``: the plan's constants, if not its own.
    ``over``: an input node -> the input whose buffer its result is written over instead (of the
    same shape and dtype). ``where``: the leaves' `Layout`; on a mesh each leaf runs per shard
    (`_on_shards`), or in one piece where it cannot."""
    chunk = CHUNK if chunk is None else chunk
    env: dict[int, Any] = dict(zip(p.inputs, flat_args, strict=True))
    env.update(p.flat.consts if consts is None else consts)

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
    on_mesh = where is not None and where.mesh is not None
    for instances in p.leaves.values():
        for x in instances:
            if on_mesh and chunk and _on_shards(p.flat, x, env, read, chunk, over or {}, where):
                continue
            # On a mesh a leaf that cannot run per shard runs in one piece: a chunk sliced from a
            # split buffer would gather it.
            _leaf(p.flat, x, env, read, 0 if on_mesh else chunk, over or {})
            if on_mesh:  # its results placed as their operands, as `_on_shards` places them
                for operand, result in x.slots:
                    if operand is not None and result is not None and operand not in (over or {}):
                        if spec(env[result]) != spec(env[operand]):
                            env[result] = reshard(env[result], where, spec(env[operand]))
    return [jnp.asarray(read(ref)) for ref in p.outputs]


def _on_shards(flat: Any, x: Any, env: dict, read: Any, chunk: int, over: dict, where: Any) -> bool:
    """Leaf ``x`` run once per shard of the layout's mesh, inside ``jax.shard_map``: each device
    streams its own shard of the leaf through its chunks (`_leaf` on the shard's shapes), so the
    temporaries are a chunk per device. ``False`` (nothing run) where a shard's program would not
    be the leaf's own:

    - the leaf's parameter-shaped operands run in the partition of the most finely split one (as
      the kernel's do, `_derived._per_shard`: under ZeRO-1 the state's), and each quantised
      moment's codes and scales must already lie as `layout_specs` lays them out for it, covering
      every axis the partition splits (a device's blocks or rows are then its own elements');
    - a block-quantised moment split into shards of whole blocks; a rank-1 moment split over its
      layers or its rows (the column maxima are then the maximum over the devices, ``pmax``);
    - an element's index (stochastic rounding's hash) is its shard's offset plus its own, so a
      shard must be a contiguous range of the leaf (its first axis of more than one element
      split, nothing else);
    - a shard of more than a chunk (a smaller leaf runs in one piece, as the jnp path does).
    """
    made = {o for eqn in x.ops for o in eqn.outs}
    results = [r for _, r in x.slots if r is not None]
    inputs = {r for eqn in x.ops for r in eqn.ins if isinstance(r, int) and r not in made}
    inputs |= {o for o, _ in x.slots if o is not None}
    inputs |= {over[o] for o in list(inputs) if o in over}
    inputs_ = sorted(inputs)
    nodes = inputs | made | set(results)
    plain = [r for r in inputs_ if flat.is_leafwise(r) and r not in flat.blocked]
    shapes = {flat.shapes[r] for r in plain}
    if len(shapes) != 1:
        return False
    shape = shapes.pop()
    if math.prod(shape) != x.size:
        return False
    codecs = [eqn for eqn in x.ops if eqn.codec is not None]
    # The partitions to try, the most finely split first: each parameter-shaped operand's, and
    # the one each quantised moment's codes follow (under ZeRO-1 the state alone is split).
    candidates = [spec(env[r]) for r in plain]
    for eqn in codecs:
        if eqn.codec[0] == "decode":
            codes = eqn.ins[-3] if isinstance(eqn.codec[1], Rank1) else eqn.ins[-2]
            followed = followed_spec(shape, flat.shapes[codes], spec(env[codes]))
            candidates.append(jax.sharding.PartitionSpec(*followed))
    candidates.sort(key=lambda s: -_derived._shards(where, s))
    for partition in candidates:
        layouts = _layouts(flat, codecs, shape, partition, where)
        if layouts is None:
            continue
        expected, columns = layouts
        if all(
            spec(env[n]) == _full_spec(s, len(flat.shapes[n]))
            for n, s in expected.items()
            if n in inputs
        ) and all(_within(spec(env[r]), partition) for r in plain):
            break
    else:
        return False  # no partition the codes already follow (moving them would gather them)
    entries = list(partition)

    def split(entry: Any) -> int:
        return _derived._shards(where, [entry])

    local = dataclasses.replace(flat, shapes=list(flat.shapes), leafwise=set(flat.leafwise))
    for node in nodes:
        if node in expected:
            s = expected[node]
        elif flat.is_leafwise(node):
            if flat.shapes[node] != shape:
                if node in inputs or node in results or math.prod(flat.shapes[node]) != x.size:
                    return False
                # A value the leaf's program reshapes (an element's index, made flat): a chunk
                # sees it flat.
                local.shapes[node] = (x.size // _derived._shards(where, partition),)
                local.leafwise.add(node)
                continue
            s = partition
        else:
            continue
        full = _full_spec(s, len(flat.shapes[node]))
        if any(n % split(e) for n, e in zip(flat.shapes[node], full, strict=True)):
            return False  # (uneven shards)
        local.shapes[node] = _derived._local(where, flat.shapes[node], full)
        local.leafwise.add(node)
    size = math.prod(_derived._local(where, shape, partition))
    piece = dataclasses.replace(x, size=size)
    try:
        layout = _derived._blocks(local, x.ops)
        rank1 = _rank1(local, piece)
        cut = _chunks(local, piece, _chunk(size, chunk), rank1)
    except _derived._Unsupported:
        return False
    if cut is None:
        return False
    blocks_split = any(len(s) == 3 and s[1] is not None for s in expected.values())
    if layout is not None and blocks_split and layout.size != layout.blocks * layout.block:
        return False  # a shard's blocks are not its own elements' (the leaf's last is partial)
    if not _narrow_in_place() and any(local.dtypes[r] in _NARROW for r in results):
        return False  # see `_NARROW`
    first = [k for k, e in enumerate(entries) if e is not None]
    offset_axis = None
    if any(eqn.primitive.name == "iota" for eqn in x.ops) and first:
        if len(first) > 1 or math.prod(shape[: first[0]]) != 1:
            return False
        offset_axis = entries[first[0]]

    replicated = jax.sharding.PartitionSpec()
    in_specs = [expected.get(r, partition) if flat.is_leafwise(r) else replicated for r in inputs_]
    out_specs = [expected.get(r, partition) for r in results]
    operands = []
    for r, s in zip(inputs_, in_specs, strict=True):
        value = jnp.asarray(read(r))
        if flat.is_leafwise(r):
            value = reshard(value, where, _full_spec(s, value.ndim))
        elif where.concrete:
            value = jax.device_put(value, jax.sharding.NamedSharding(where.mesh, replicated))
        operands.append(value)
    names = tuple(sorted(columns))

    def body(*args: Any) -> list:
        mine = dict(zip(inputs_, args, strict=True))

        def own(ref: Any) -> Any:
            return ref.value if isinstance(ref, _derived.Lit) else mine[ref]

        offset = 0 if offset_axis is None else jax.lax.axis_index(offset_axis) * size
        _leaf(local, piece, mine, own, chunk, over, _Shard(offset, names))
        return [mine[r] for r in results]

    outs = jax.shard_map(
        body, mesh=where.mesh, in_specs=tuple(in_specs), out_specs=out_specs, check_vma=False
    )(*operands)
    # Each result back in its operand's partition (under ZeRO-1 the new params gathered, as the
    # kernel's are), but the updates of ``update`` (written over the gradients, `over`): they
    # stay in the partition they were computed in, as XLA leaves them op by op.
    slot = {r: o for o, r in x.slots if r is not None}
    for r, value in zip(results, outs, strict=True):
        operand = slot[r]
        kept = operand is None or operand in over or r in expected
        env[r] = value if kept else reshard(value, where, spec(env[operand]))
    return True


def _axes(specs: Any) -> set:
    """The mesh axes a partition spec (or a list of its entries) splits over."""
    return {a for e in specs if e is not None for a in np.atleast_1d(e)}


def _within(inner: Any, outer: Any) -> bool:
    """Whether partition ``inner`` splits each axis as ``outer`` does or not at all (reaching
    ``outer`` from it is each device's slice, no data moved)."""
    return all(a is None or a == b for a, b in zip(inner, outer, strict=True))


def _layouts(flat: Any, codecs: list, shape: tuple, partition: Any, where: Any) -> Any:
    """For a leaf of ``shape`` run in ``partition``: ``(node -> partition spec of each quantised
    moment's codes and scales, the mesh axes its rank-1 column maxima are reduced over)``, by
    `layout_specs`; ``None`` where a moment's codes or its block scales would be kept whole over
    an axis the partition splits (then a device's codes are not its elements')."""
    entries = list(partition)

    def split(entry: Any) -> int:
        return _derived._shards(where, [entry])

    expected: dict[int, Any] = {}
    columns: set = set()
    for eqn in codecs:
        kind, config = eqn.codec
        pair = isinstance(config, Rank1)
        k = 3 if pair else 2
        group = eqn.ins[-k:] if kind == "decode" else eqn.outs[:k]
        stored = [flat.shapes[n] for n in group]
        scales = (stored[1], stored[2]) if pair else stored[1]
        codes_spec, scales_spec = layout_specs(shape, entries, stored[0], scales, split)
        specs = [codes_spec, *scales_spec] if pair else [codes_spec, scales_spec]
        if _axes(codes_spec) != _axes(entries) or _axes(specs[1]) != _axes(entries):
            return None
        if pair:
            columns |= _axes(entries) - _axes(specs[2])
        for node, s in zip(group, specs, strict=True):
            expected[node] = jax.sharding.PartitionSpec(*s)
    return expected, columns


class _At(NamedTuple):
    """Where a chunk begins (traced): its first element of the leaf, its first block of the
    block-quantised moments, and (a leaf with rank-1 moments) its layer and its first row there."""

    start: Any
    block: Any
    layer: Any = 0
    row: Any = 0


@dataclasses.dataclass(frozen=True)
class _Piece:
    """``iterations`` chunks of ``count`` elements and ``blocks`` blocks, the ``i``-th at
    ``at(i)``; a chunk holds ``layers`` whole layers, or ``rows`` rows of one (rank-1). A piece of
    one chunk runs as a loop of a count XLA does not know (unrolled, XLA copies the buffers it
    writes), its ``at(i)`` depending on ``i`` all the same (``i`` is 0), as every piece's does:
    no slice of it is loop-invariant to XLA. A leaf of block-quantised moments of one chunk or less is
    cut in two (`_chunks`): a slice of a whole buffer is the buffer itself, and XLA then took
    what the loop computes from a buffer it only reads (the params' weight decay, in ``update``)
    out of the loops, whole (256 leaves of 64K elements, 8-bit AdamW: 8.08 bytes per param of
    temporaries, 4.05 cut in two)."""

    iterations: int
    count: int
    blocks: int
    at: Any
    layers: int = 1
    rows: int = 0


@dataclasses.dataclass(frozen=True)
class _Rank1:
    """A leaf's rank-1 moments: ``layers`` layers of ``rows`` x ``cols`` (`Rank1` matrices), their
    codes and (row, column) scales as nodes."""

    layers: int
    rows: int
    cols: int
    codes: frozenset
    row: frozenset
    col: frozenset
    encodes: tuple  # the encodes (each reduces its value to the scales in a pass of its own)

    def scale_index(self, node: int, at: _At) -> Any:
        """Where a chunk's codes or scales begin in the flat buffer of ``node``."""
        if node in self.codes:
            pairs = -(-self.rows * self.cols // 2)
            return at.layer * pairs + at.row * self.cols // 2  # (a chunk's rows: whole pairs)
        if node in self.row:
            return at.layer * self.rows + at.row
        return at.layer * self.cols

    def scale_size(self, node: int, p: _Piece) -> int:
        if node in self.codes:
            return p.layers * -(-p.rows * self.cols // 2)
        return p.layers * (p.rows if node in self.row else self.cols)


def _rank1(flat: Any, x: Any) -> _Rank1 | None:
    """The rank-1 moments of a leaf's program (all of one shape), or ``None``."""
    codecs = [e for e in x.ops if e.codec is not None and isinstance(e.codec[1], Rank1)]
    if not codecs:
        return None
    ends = [e.ins[-3:] if e.codec[0] == "decode" else e.outs for e in codecs]
    (layers, rows), (_, cols) = flat.shapes[ends[0][1]], flat.shapes[ends[0][2]]
    encodes = tuple(e for e in codecs if e.codec[0] == "encode")
    return _Rank1(
        layers,
        rows,
        cols,
        frozenset(c for c, _, _ in ends),
        frozenset(r for _, r, _ in ends),
        frozenset(c for _, _, c in ends),
        encodes,
    )


def _chunks(flat: Any, x: Any, chunk: int, rank1: _Rank1 | None) -> tuple[int, list] | None:
    """How to cut a leaf: ``(block, pieces)``, ``block`` the block of its block-quantised moments
    (0: none). ``None``: in one piece."""
    layout = _derived._blocks(flat, x.ops)
    if rank1 is not None:
        return _rank1_chunks(layout, rank1, chunk)
    if layout is None:
        if x.size <= chunk:
            return None
        full, rest = divmod(x.size, chunk)
        pieces = [_Piece(full, chunk, 0, lambda i: _At(i * chunk, 0))]
        if rest:
            pieces.append(_Piece(1, rest, 0, lambda i: _At(full * chunk + i * rest, 0)))
        return 0, pieces
    L, S, n, B = layout.layers, layout.size, layout.blocks, layout.block
    if L * S <= chunk:  # two chunks or more (see `_Piece`); a leaf of one block in one piece
        if L * n < 2:
            return None
        chunk = max(B, L * S // 2)
    if L > 1 and S % B:  # blocks restart at each layer: a layer an iteration
        return B, [_Piece(L, S, n, lambda i: _At(i * S, i * n))]
    total = L * n  # blocks, the last one partial when S % B (then L == 1)
    k = max(1, chunk // B)
    full, rest = divmod(total, k)
    if S % B and rest == 0:
        full, rest = full - 1, k
    pieces = [_Piece(full, k * B, k, lambda i: _At(i * k * B, i * k))] if full else []
    if rest:
        last = L * S - full * k * B
        pieces.append(_Piece(1, last, rest, lambda i: _At(full * k * B + i * last, (full + i) * k)))
    return B, pieces


def _rank1_chunks(layout: Any, r: _Rank1, chunk: int) -> tuple[int, list] | None:
    """A leaf with rank-1 moments (and perhaps block-quantised ones of the same layers), cut into
    whole layers, or into whole rows of one layer: as many rows as fit in ``chunk`` elements, a
    multiple of the rows that make whole pairs of codes and whole blocks (the last rows of a layer
    excepted). ``None``: in one piece (small, or blocks that do not follow the layers)."""
    L, R, C = r.layers, r.rows, r.cols
    S = R * C
    B = n = 0
    if layout is not None:
        B, n = layout.block, layout.blocks
        if (layout.layers, layout.size) != (L, S):
            return None  # (a storage of other `batch_dims`)
    if L * S <= chunk:
        return None
    if S <= chunk:  # k whole layers an iteration
        k = chunk // S
        full, rest = divmod(L, k)
        pieces = []
        if full:
            pieces.append(
                _Piece(full, k * S, k * n, lambda i: _At(i * k * S, i * k * n, i * k), k, R)
            )
        if rest:
            j = full * k  # the first layer left
            pieces.append(
                _Piece(
                    1, rest * S, rest * n, lambda i: _At((j + i) * S, (j + i) * n, j + i), rest, R
                )
            )
        return B, pieces
    unit = math.lcm(2, B or 1)  # elements a chunk's rows make whole of
    step = unit // math.gcd(C, unit)  # rows
    q = max(step, chunk // C // step * step)
    if q >= R:  # a layer an iteration
        return B, [_Piece(L, S, n, lambda i: _At(i * S, i * n, i), 1, R)]
    full, rest = divmod(R, q)

    def at(layer: Any, row: Any) -> _At:
        return _At(layer * S + row * C, layer * n + (row * C // B if B else 0), layer, row)

    def blocks(rows: int) -> int:
        return -(-rows * C // B) if B else 0

    pieces = [_Piece(L * full, q * C, blocks(q), lambda i: at(i // full, i % full * q), 1, q)]
    if rest:
        pieces.append(_Piece(L, rest * C, blocks(rest), lambda i: at(i, full * q), 1, rest))
    return B, pieces


class _Shard(NamedTuple):
    """A leaf run on one shard of a mesh (`_on_shards`): the shard's first element in the whole
    leaf (a contiguous range of it, where the program reads an element's index), and the mesh
    axes its rank-1 moments' column maxima are taken over (the rows split over devices)."""

    offset: Any = 0
    columns: tuple = ()


def _leaf(
    flat: Any, x: Any, env: dict, read: Any, chunk: int, over: dict, shard: _Shard | None = None
) -> None:
    """One leaf's elementwise equations, chunk by chunk; results into ``env``. A leaf with rank-1
    moments takes two passes over its chunks: the first computes each encoded value and reduces
    it to its layer's row and column maxima (`_scales`), the second runs the whole program,
    encoding with those scales (the codes the first pass read are still the old ones).
    ``shard``: the leaf is one shard's (``flat``'s shapes are the shard's)."""
    shard = shard or _Shard()
    rank1 = _rank1(flat, x)
    cut = _chunks(flat, x, _chunk(x.size, chunk), rank1) if chunk else None
    if cut is not None and not _narrow_in_place():
        written = [flat.dtypes[r] for o, r in x.slots if r is not None]
        if any(dtype in _NARROW for dtype in written):
            cut = None  # see `_NARROW`
    if cut is None:  # small, or see above: as the jnp path runs it
        for eqn in x.ops:
            outs = _derived._bind(eqn, [read(r) for r in eqn.ins])
            for node, value in zip(eqn.outs, outs, strict=True):
                env[node] = value
        return
    block, pieces = cut
    made = {o for eqn in x.ops for o in eqn.outs}
    # A rank-1 moment's scales are written whole, after the loop (its decode reads the old ones).
    scales_out = set() if rank1 is None else {o for e in rank1.encodes for o in e.outs[1:]}
    carried: list[tuple[int | None, int]] = [
        (o, r) for o, r in x.slots if r is not None and r not in scales_out
    ]
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
    rank1_nodes = set() if rank1 is None else rank1.codes | rank1.row | rank1.col

    def flat_buffer(node: int, value: Any) -> Any:
        if node in flat.blocked and node not in rank1_nodes:
            shape = flat.shapes[node]  # codes (layers, blocks, width), scales (layers, blocks)
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

    def index(node: int, at: _At) -> tuple:
        """Where the chunk at ``at`` begins in the flat buffer of ``node``."""
        if rank1 is not None and node in rank1_nodes:
            return (rank1.scale_index(node, at),)
        if node in flat.blocked:
            return (at.block,) + (0,) * (len(flat.shapes[node]) - 2)
        return (at.start,)

    def load(bufs: list, node: int, at: _At, p: _Piece) -> Any:
        buf = bufs[carry_of[node]] if node in carry_of else fixed[node]
        if rank1 is not None and node in rank1_nodes:
            size: tuple = (rank1.scale_size(node, p),)
        elif node in flat.blocked:
            size = (p.blocks, *buf.shape[1:])
        else:
            size = (p.count,)
        return jax.lax.dynamic_slice(buf, index(node, at), size)

    def evaluate(ops: list, bufs: list, at: _At, p: _Piece, ahead: list, scales: Any) -> Any:
        """``ops`` on the chunk at ``at``: the function giving its value of a node. ``ahead``: its slices of the
        buffers the leaf writes, read before (see `_leaf`'s loop); ``scales``: the flat row and
        column scales of its rank-1 moments' encodes (the first pass's)."""
        local: dict[int, Any] = dict(zip(own, ahead, strict=True))

        def get(ref: Any) -> Any:
            if isinstance(ref, int) and ref in local:
                return local[ref]
            if isinstance(ref, int) and ref not in made and flat.is_leafwise(ref):
                local[ref] = load(bufs, ref, at, p)
                return local[ref]
            value = read(ref)
            if np.ndim(value) > 0 and math.prod(np.shape(value)) == 1:
                value = jnp.reshape(value, ())  # a size-1 scalar of the scalar part
            return value

        for eqn in ops:
            args = [get(r) for r in eqn.ins]
            if rank1 is not None and eqn.codec is not None and isinstance(eqn.codec[1], Rank1):
                outs = _rank1_codec(rank1, eqn, args, at, p, scales)
            else:
                outs = _evaluate(flat, eqn, args, at.start + shard.offset, p, block)
            for node, value in zip(eqn.outs, outs, strict=True):
                local[node] = value
        return get

    def piece(bufs: list, at: _At, p: _Piece, ahead: list, scales: Any) -> list:
        """The chunk at ``at`` written into ``bufs``."""
        get = evaluate(x.ops, bufs, at, p, ahead, scales)
        new = list(bufs)
        # The results are kept (`optimization_barrier`): else XLA moves a conversion to
        # bfloat16 through the update of the buffer (the whole buffer converted to float32 and
        # back per chunk, measured).
        values = jax.lax.optimization_barrier([get(r) for _, r in carried])
        for k, ((_, result), value) in enumerate(zip(carried, values, strict=True)):
            if result in flat.blocked:
                value = value.astype(new[k].dtype)
            else:
                value = jnp.broadcast_to(value, (p.count,)).astype(flat.dtypes[result])
            new[k] = jax.lax.dynamic_update_slice(new[k], value, index(result, at))
        return new

    def loops(buffers: list) -> tuple[list, Any]:
        """The leaf's passes over its chunks, from its buffers as they were."""

        def before(ops: list, at: _At, p: _Piece) -> Any:
            """``ops`` on the chunk at ``at`` of the buffers as they were (the first pass)."""
            return evaluate(ops, buffers, at, p, [load(buffers, r, at, p) for r in own], None)

        scales = None if rank1 is None else _scales(rank1, x, pieces, before, shard.columns)
        for p in pieces:
            # The chunk a buffer gives to iteration i is sliced at the end of iteration i - 1
            # and carried: read inside iteration i, XLA fuses the slice into every fusion that
            # reads it, some after the one that writes the buffer, and copies the whole buffer
            # each iteration to keep the old chunk (measured: 4-bit moments, 5x slower).
            def body(i, carry, p=p):
                bufs, ahead = carry
                new = piece(list(bufs), p.at(i), p, list(ahead), scales)
                at = p.at(jnp.minimum(i + 1, p.iterations - 1))
                return tuple(new), tuple(load(new, r, at, p) for r in own)

            # A single chunk (a leaf's last, shorter one) is a loop too, of a count XLA does not
            # know: unrolled, XLA copies the buffers it writes (measured: 4 bytes per parameter
            # more).
            count = p.iterations if p.iterations > 1 else _one()
            ahead0 = tuple(load(buffers, r, p.at(0), p) for r in own)
            buffers = list(jax.lax.fori_loop(0, count, body, (tuple(buffers), ahead0))[0])
        return buffers, scales

    # The whole leaf in a loop of one iteration of its own: else XLA:CPU schedules every leaf's
    # work before its loops (its first chunk's slices) at the start of the step, all live at
    # once, and the temporaries grow with the number of leaves (8-bit AdamW, 16.8M params in 64
    # leaves: 1.54 bytes per param; in 256 leaves of one chunk each, then in one piece: 8.08).
    L = 0 if rank1 is None else rank1.layers
    scales0 = (
        None
        if rank1 is None
        else [  # (the loop's carry; its first pass makes them)
            (jnp.zeros((L * rank1.rows,), jnp.float32), jnp.zeros((L * rank1.cols,), jnp.float32))
            for _ in rank1.encodes
        ]
    )
    out, scales = jax.lax.fori_loop(
        0, _one(), lambda _, carry: tuple(loops(list(carry[0]))), (list(buffers), scales0)
    )
    buffers = list(out)
    for (_, result), buf in zip(carried, buffers, strict=True):
        env[result] = buf.reshape(flat.shapes[result])
    if rank1 is not None and scales is not None:
        for eqn, (row, col) in zip(rank1.encodes, scales, strict=True):
            env[eqn.outs[1]] = row.reshape(flat.shapes[eqn.outs[1]])
            env[eqn.outs[2]] = col.reshape(flat.shapes[eqn.outs[2]])


def _scales(r: _Rank1, x: Any, pieces: list, evaluate: Any, columns: tuple = ()) -> list:
    """The first pass over a leaf with rank-1 moments: per encode, the flat row and column scales
    of its value, the row maxima of each chunk's rows and the column maxima of all its layer's
    rows (a running maximum of the bits, NaN above inf, as `_absmax` takes it: the same values as
    the whole layer's). ``evaluate(ops, at, piece)``: the chunk's values of ``ops``, by node.
    ``columns``: the mesh axes the layer's rows are split over (its column maxima are the
    maximum over those devices)."""
    needed = _derived._needed(x.ops, [e.ins[-1] for e in r.encodes])
    L, R, C = r.layers, r.rows, r.cols
    zero = jnp.zeros((L * C,), jnp.uint32)
    scales = [(jnp.zeros((L * R,), jnp.float32), zero) for _ in r.encodes]

    def reduce(scales: list, at: _At, p: _Piece) -> list:
        values = evaluate(needed, at, p)
        new = []
        for eqn, (row, col) in zip(r.encodes, scales, strict=True):
            v = _kept(values(eqn.ins[-1]))  # (read by both reductions)
            x = jnp.maximum(jnp.reshape(v, (p.layers, p.rows, C)), 0.0)
            rows, cols = rank1_scales(x)
            row = jax.lax.dynamic_update_slice(row, rows.reshape(-1), (at.layer * R + at.row,))
            seen = jax.lax.dynamic_slice(col, (at.layer * C,), (p.layers * C,))
            cols = jnp.maximum(seen, jax.lax.bitcast_convert_type(cols, jnp.uint32).reshape(-1))
            new.append((row, jax.lax.dynamic_update_slice(col, cols, (at.layer * C,))))
        return new

    for p in pieces:
        if p.iterations == 1:
            scales = reduce(scales, p.at(0), p)
        else:
            scales = jax.lax.fori_loop(
                0, p.iterations, lambda i, s, p=p: reduce(s, p.at(i), p), scales
            )
    if columns:
        scales = [(row, jax.lax.pmax(col, columns)) for row, col in scales]
    return [(row, jax.lax.bitcast_convert_type(col, jnp.float32)) for row, col in scales]


def _rank1_codec(r: _Rank1, eqn: Any, args: list, at: _At, p: _Piece, scales: Any) -> list:
    """A rank-1 moment's decode or encode on the chunk at ``at``: its ``p.layers`` x ``p.rows``
    rows of its layer(s), with the scales of the whole layer (the encode's, from ``scales``:
    the first pass's, `_scales`)."""
    k, rows, C = p.layers, p.rows, r.cols
    if eqn.codec[0] == "decode":
        codes, row, col = args[-3:]
        codes = _unpack4(codes.reshape(k, -1))[:, : rows * C].reshape(k, rows, C)
        values = rank1_values(codes, row.reshape(k, rows), col.reshape(k, C))
        # Kept (`optimization_barrier`), as a block decode is (`_evaluate`).
        return [jax.lax.optimization_barrier(values.reshape(-1))]
    row_all, col_all = scales[r.encodes.index(eqn)]
    row = jax.lax.dynamic_slice(row_all, (at.layer * r.rows + at.row,), (k * rows,))
    col = jax.lax.dynamic_slice(col_all, (at.layer * C,), (k * C,))
    x = jnp.maximum(_kept(args[-1]).reshape(k, rows, C), 0.0)
    code = rank1_codes(x, row.reshape(k, rows), col.reshape(k, C)).reshape(k, rows * C)
    code = jnp.pad(code, ((0, 0), (0, (rows * C) % 2)))
    return [_pack4(code).reshape(-1), row, col]


def _one() -> Any:
    """1, as a count XLA does not know (a loop of it is not unrolled), of JAX's default integer
    type (int64 under ``jax_enable_x64``: a chunk's place mixes the count with Python ints)."""
    return jax.lax.optimization_barrier(jnp.asarray(1))


def _kept(x: Any) -> Any:
    """``x``, made in a buffer of its own (a chunk's): the result of a loop of one iteration that
    XLA does not know, so no fusion reading ``x`` computes it again. (An `optimization_barrier`
    orders, but XLA:CPU still fuses ``x``'s computation into each fusion that reads it.)"""
    return jax.lax.fori_loop(0, _one(), lambda _, y: x, jnp.zeros_like(x))


def _evaluate(flat: Any, eqn: Any, args: list, start: Any, p: _Piece, block: int) -> list:
    """``eqn`` on a chunk of ``p.count`` elements from ``start`` (``p.blocks`` blocks of
    ``block``, in ``p.layers`` layers)."""
    name = eqn.primitive.name
    count, nblocks, layers = p.count, p.blocks, p.layers
    if eqn.codec is not None:
        kind, config = eqn.codec
        if layers > 1:  # whole layers, each with its blocks (the last partial)
            config = dataclasses.replace(config, batch_dims=1)
        shape = (layers, count // layers) if layers > 1 else (count,)
        per = nblocks // layers
        # The decoded moment is kept (`optimization_barrier`) and the value to encode made in a
        # buffer (`_kept`), a chunk each: else XLA computes the whole update from the codes again
        # in every fusion that reads it (the block maxima, the codes, the params): measured 3x
        # slower with 4-bit moments with neither, and with the barrier alone on the value to
        # encode 1.4x (8-bit) to 2.1x (4-bit) slower than with `_kept` (16.8M params, one leaf).
        # (`_kept` on the decoded moment as well: no faster.)
        if kind == "decode":
            codes, scales = args[-2:]
            codes = codes.reshape(layers, per, *codes.shape[1:])
            decoded = config._decode(codes, scales.reshape(layers, per), shape)
            return [jax.lax.optimization_barrier(decoded.reshape(-1))]
        width = block // 2 if config.bits == 4 else block
        value = _kept(args[-1]).reshape(shape)
        codes, scales = config._encode(value, shape, (layers, per, width), (layers, per))
        return [codes.reshape(nblocks, width), scales.reshape(nblocks)]
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
