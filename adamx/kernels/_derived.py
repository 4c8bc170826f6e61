"""The fused step derived from the optimizer itself: its elementwise part, lowered to one C++ loop.

No optimizer says anything about kernels. `adamx.step(tx, grads, state, params)` traces
``tx.update`` followed by `apply_updates` to a jaxpr (once per optimizer and tree of shapes) and
splits the equations in two (docs/design.md, section 8):

- **the scalar part**, every equation whose results are scalars (step counts, bias corrections,
  schedules, a stochastic moment's seed): JAX runs these as they are, equation by equation, as
  the jnp path runs them; so does it a reduction of a leaf to a scalar (a norm, a per-tensor mean)
  with the equations it needs, in a pass of its own;
- **the elementwise part**, the equations over a leaf's elements, which fall apart into one
  *program* per leaf (the equations connected through the leaf's arrays). Each must be a
  primitive whose C++ form rounds exactly as XLA does (`_expression`): IEEE ``+ - * /`` and
  ``sqrt``, comparisons, selects, bit operations, conversions; bfloat16 results are rounded after
  every operation, as XLA:CPU rounds them.

A program becomes a C++ loop over the leaf's elements that reads each input once and writes each
output once, in place (the outputs are aliased to the params and state they replace). Its text
names no hyperparameter: every float scalar it reads (``b1``, ``-lr``, a bias correction) arrives
in a small buffer, so one compiled program serves every learning rate, every leaf of the same
update rule and every optimizer that shares it, whatever chain built it. The source is compiled
with the machine's compiler on first use and cached by its hash (`_native.program`), with
``-ffp-contract=off``, so that the results are the jnp path's bit for bit (eager), by
construction and by test (tests/test_derived.py).

A moment stored block-quantised (`Blockwise`: 8- or 4-bit codes and a scale per block) is read
and written through two named calls of the storage (`adamx.storage._quantize.CODECS`), which the
planner keeps whole (`_codec`) as block operations of the leaf's program: its loop then runs over
blocks, decoding each moment's block before the elements and encoding it after them, with the
code of adamx/kernels/_native/blockwise.h (`lower`).

A step with anything else on a leaf (a reduction to an array such as a row mean or a matrix
product, a transcendental such as ``exp`` whose C++ and XLA results may differ in the last bit,
a gather) is not fused: `why_not` names the equation, and the jnp path takes the step.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import math
from typing import Any, cast

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from ..core._chain import unbounded
from ..core._probe import kernel_trace
from ..storage._quantize import Blockwise, Rank1, code_constants
from . import _native
from ._mesh import Layout, layout, reshard, spec

__all__: list[str] = []  # internal: used by the floors above, not public

_CHUNK = 1 << 15  # elements per task of derived.cc (fused_common.h: kChunk)
_GROUP = 32  # leaves per custom call (XLA's aliasing analysis grows super-linearly with more)
_CALLS = {"pjit", "jit", "closed_call", "core_call"}  # inlined where they compute arrays
_CUSTOM = {"custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr"}
_SELECT_N = jax.make_jaxpr(lambda i, a, b: jax.lax.select_n(i, a, b))(0, 0.0, 0.0).eqns[0].primitive

# ---- the element types ------------------------------------------------------------------------

# numpy dtype -> (C type of a value, C type of a buffer element).
_TYPES = {
    np.dtype(np.float32): ("float", "float"),
    np.dtype(jnp.bfloat16): ("float", "uint16_t"),  # carried as float, rounded after each operation
    np.dtype(np.int32): ("int32_t", "int32_t"),
    np.dtype(np.uint32): ("uint32_t", "uint32_t"),
    np.dtype(np.bool_): ("bool", "uint8_t"),
}
_BF16 = np.dtype(jnp.bfloat16)
_FLOATS = (np.dtype(np.float32), _BF16)
_INTS = ("i32", "u32")  # the integer kinds (`_kind`), 32-bit, wrapping


def _kind(dtype: Any) -> str:
    return {
        np.dtype(np.float32): "f32",
        _BF16: "bf16",
        np.dtype(np.int32): "i32",
        np.dtype(np.uint32): "u32",
        np.dtype(np.bool_): "bool",
    }[np.dtype(dtype)]


# ---- the flattened trace ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lit:
    """A literal scalar of the jaxpr (a Python hyperparameter, a constant)."""

    value: Any  # a numpy scalar of its dtype


class _Unsupported(Exception):
    """The step has an equation the kernel cannot take; the message says which."""


@dataclasses.dataclass
class _Eqn:
    primitive: Any
    params: dict
    ins: list  # node ids (int) or Lit
    outs: list  # node ids
    index: int = 0  # its place in the jaxpr, inlined: JAX runs its equations in this order
    codec: Any = None  # a block codec's ("decode" or "encode", `Blockwise`), kept as one equation


@dataclasses.dataclass
class _Flat:
    """A jaxpr with its calls inlined where they compute arrays: scalar equations (`binds`, run by
    JAX as they are) and array equations (`ops`, lowered to C++), over numbered nodes."""

    shapes: list = dataclasses.field(default_factory=list)
    dtypes: list = dataclasses.field(default_factory=list)
    consts: dict = dataclasses.field(default_factory=dict)  # node -> value
    binds: list = dataclasses.field(default_factory=list)
    ops: list = dataclasses.field(default_factory=list)
    leafwise: set = dataclasses.field(default_factory=set)
    jax_ops: list = dataclasses.field(default_factory=list)  # array equations JAX runs (below)
    blocked: set = dataclasses.field(default_factory=set)  # a codec's codes and scales (`_codec`)
    # id of a select of an inlined `cond` -> the selects of that cond (`run` takes them lazily)
    lazy: dict = dataclasses.field(default_factory=dict)

    def new(self, aval: Any) -> int:
        self.shapes.append(tuple(aval.shape))
        self.dtypes.append(np.dtype(aval.dtype))
        return len(self.shapes) - 1

    def const(self, value: Any) -> Any:
        if np.ndim(value) == 0 and not isinstance(value, jax.core.Tracer):
            return Lit(np.asarray(value)[()])
        node = self.new(_aval(value))
        self.consts[node] = value
        return node

    def is_array(self, ref: Any) -> bool:
        """More than one element (a size-1 array not computed from a leaf is a scalar here)."""
        return isinstance(ref, int) and math.prod(self.shapes[ref]) > 1

    def is_leafwise(self, ref: Any) -> bool:
        """Whether ``ref`` is part of a leaf's elementwise computation: a parameter or gradient
        (of any shape: a scalar parameter is a leaf too), a moment, an array of more than one
        element, or computed from one (a reduction's result excepted: a scalar to the kernel)."""
        return isinstance(ref, int) and (ref in self.leafwise or self.is_array(ref))

    def inline(self, jaxpr: Any, consts: list, ins: list) -> list:
        env: dict = {}
        for var, ref in zip(jaxpr.constvars, consts, strict=True):
            env[var] = ref
        for var, ref in zip(jaxpr.invars, ins, strict=True):
            env[var] = ref

        def read(var):
            if isinstance(var, jex.Literal):
                return Lit(np.asarray(var.val, dtype=var.aval.dtype)[()])
            return env[var]

        for eqn in jaxpr.eqns:
            args = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            computes_arrays = any(
                int(np.prod(getattr(v.aval, "shape", ()))) > 1 for v in eqn.outvars
            )
            computes_arrays = computes_arrays or any(self.is_leafwise(a) for a in args)
            sub = None
            codec = _codec(eqn)
            if codec is not None:
                # A moment's decode or encode (adamx/storage/_quantize.py, `CODECS`): one equation,
                # over its codes and scales (its constants, the code's tables, passed as literals).
                count = eqn.params["num_consts"]
                consts = [Lit(self.consts[a]) if a in self.consts else a for a in args[:count]]
                if not all(isinstance(a, Lit) for a in consts):
                    raise _Unsupported("a block codec whose constants are computed")
                outs = [self.new(v.aval) for v in eqn.outvars]
                self.leafwise.update(outs)
                self.blocked.update(args[count:] if codec[0] == "decode" else outs)
                index = len(self.binds) + len(self.ops)
                self.ops.append(_Eqn(eqn.primitive, eqn.params, consts + args[count:], outs, index))
                self.ops[-1].codec = codec
                for var, ref in zip(eqn.outvars, outs, strict=True):
                    env[var] = ref
                continue
            if computes_arrays and name in _CALLS:
                sub = eqn.params["jaxpr"]
            elif computes_arrays and name in _CUSTOM:
                sub = eqn.params[_CUSTOM[name]]
            elif (
                computes_arrays
                and name == "cond"
                and not any(int(np.prod(getattr(v.aval, "shape", ()))) > 1 for v in eqn.outvars)
            ):
                # A choice of scalars computed from the leaves (`global_norm`: the plain sum of
                # squares, or where it overflowed, the sum rescaled by the largest magnitude):
                # both branches inlined and a select of their scalars per output. `run` takes
                # the selects of one cond together as a `lax.switch` whose branches run their
                # own reduction passes (`lazy`), so a branch not taken costs nothing.
                index, *operands = args
                cases = [
                    self.inline(b.jaxpr, [self.const(c) for c in b.consts], operands)
                    for b in eqn.params["branches"]
                ]
                outs, selects = [], []
                for var, values in zip(eqn.outvars, zip(*cases, strict=True), strict=True):
                    (out,) = [self.new(var.aval)]
                    position = len(self.binds) + len(self.ops)
                    selects.append(_Eqn(_SELECT_N, {}, [index, *values], [out], position))
                    outs.append(out)
                self.binds.extend(selects)
                for select in selects:
                    self.lazy[id(select)] = selects
                for var, ref in zip(eqn.outvars, outs, strict=True):
                    env[var] = ref
                continue
            if sub is not None:
                closed = sub if hasattr(sub, "consts") else jex.ClosedJaxpr(sub, ())
                outs = self.inline(closed.jaxpr, [self.const(c) for c in closed.consts], args)
            else:
                outs = [self.new(v.aval) for v in eqn.outvars]
                # A leaf reduced to a scalar (a norm, a count) is a scalar to the kernel.
                if computes_arrays and not (_is_reduction(name) and not self.is_array(outs[0])):
                    self.leafwise.update(outs)
                index = len(self.binds) + len(self.ops)
                (self.ops if computes_arrays else self.binds).append(
                    _Eqn(eqn.primitive, eqn.params, args, outs, index)
                )
            for var, ref in zip(eqn.outvars, outs, strict=True):
                env[var] = ref
        return [read(v) for v in jaxpr.outvars]


# The reductions of a leaf to a scalar the kernel accumulates (in double: a float sum's order is not
# XLA's, so the sum may differ from the jnp path's in its last bits; max, min, and, or are exact).
_REDUCERS = {
    "reduce_sum": "sum",
    "reduce_max": "max",
    "reduce_min": "min",
    "reduce_and": "and",
    "reduce_or": "or",
}
_LANES = 8  # a reduction's accumulators per chunk
# The type a reduction keeps a block of values in, and its vector of _LANES (typedefs of the
# generated source), by the values' dtype; other dtypes are kept as double.
_STAGES = {
    np.dtype(np.float32): ("float", "floats"),
    np.dtype(np.int32): ("int32_t", "ints"),
    np.dtype(np.uint32): ("uint32_t", "uints"),
}
_BLOCK = 256  # elements whose values a reduction program keeps before accumulating them
_SIMD_BLOCK = 2048  # elements per partial result of a reduction in the pass (`_simd_reductions`)
_REDUCED = {
    np.dtype(np.float32): 0,
    np.dtype(np.int32): 1,
    np.dtype(np.uint32): 2,
    np.dtype(np.bool_): 3,
}


def _codec(eqn: Any) -> tuple[str, Any] | None:
    """A block-quantised moment's decode or encode (`adamx.storage._quantize.CODECS`), by the
    name of its call: ``(kind, Blockwise)``, or ``None``."""
    if eqn.primitive.name != "custom_jvp_call":
        return None
    from ..storage._quantize import CODECS

    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    name = str(getattr(info, "func_src_info", None) or "").split(" ")[0]
    return CODECS.get(name)


def _is_reduction(name: str) -> bool:
    return name.startswith(("reduce_", "arg", "cum")) or name in ("dot_general", "reduce")


# ---- one leaf's program: C++ from its equations -------------------------------------------------


def _name(prefix: str, k: int) -> str:
    return f"{prefix}{k}"


def _round(dtype: Any, expression: str) -> str:
    """``expression`` (a float) rounded to ``dtype`` as XLA rounds it (bfloat16: to nearest even)."""
    return f"rb({expression})" if np.dtype(dtype) == _BF16 else expression


def _integer_pow(x: str, y: int, dtype: Any) -> str:
    """jax's ``integer_pow`` as XLA computes it: square-and-multiply, each product rounded."""
    if y == 0:
        return "1.0f"
    acc = None
    base = x
    n = abs(y)
    while n > 0:
        if n & 1:
            acc = base if acc is None else _round(dtype, f"({acc} * {base})")
        n >>= 1
        if n > 0:
            base = _round(dtype, f"({base} * {base})")
    assert acc is not None
    return _round(dtype, f"(1.0f / {acc})") if y < 0 else acc


_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_COMPARE = {"gt": ">", "lt": "<", "ge": ">=", "le": "<=", "eq": "==", "ne": "!="}
_BITWISE = {"and": "&", "or": "|", "xor": "^"}
_IDENTITY = {"reshape", "squeeze", "expand_dims", "copy", "copy_p", "broadcast_in_dim"}


def _expression(
    eqn: _Eqn,
    args: list[str],
    in_dtypes: list,
    out_dtype: Any,
    by_scalar: bool = False,
    exact: bool = False,
) -> str:
    """The C++ expression of one elementwise equation, or `_Unsupported`.

    ``by_scalar``: a division of an array by a scalar operand, which XLA computes as a
    multiplication by the scalar's reciprocal (its algebraic simplifier rewrites
    ``a / broadcast(b)`` to ``a * broadcast(1 / b)``, measured: not the IEEE quotient).
    ``exact``: the first operand is known to be a bfloat16 value already (rounding it again would
    change nothing, so it is not rounded).
    """
    name = eqn.primitive.name
    kind = _kind(out_dtype)
    floating = out_dtype in _FLOATS
    if name == "div" and by_scalar and floating and _divides_by_reciprocal():
        if out_dtype == _BF16:
            raise _Unsupported("a bfloat16 division by a scalar (XLA's rounding not verified)")
        return f"({args[0]} * (1.0f / {args[1]}))"
    if name in _BINARY:
        a, b = args
        if floating:
            return _round(out_dtype, f"({a} {_BINARY[name]} {b})")
        if name == "div":
            raise _Unsupported("an integer division")
        if kind == "i32":  # wrapping, as XLA's int32 arithmetic
            return f"(int32_t)((uint32_t){a} {_BINARY[name]} (uint32_t){b})"
        return f"({a} {_BINARY[name]} {b})"
    if name in ("max", "min"):
        if floating:
            return f"nan_{name}({args[0]}, {args[1]})"
        return f"std::{name}({args[0]}, {args[1]})"
    if name in _COMPARE:
        return f"({args[0]} {_COMPARE[name]} {args[1]})"
    if name in _BITWISE:
        return f"({args[0]} {_BITWISE[name]} {args[1]})"
    if name == "not":
        return f"(!{args[0]})" if kind == "bool" else f"(~{args[0]})"
    if name in ("shift_left", "shift_right_logical"):
        if kind != "u32":
            raise _Unsupported(f"`{name}` on {out_dtype}")
        amount = _int_literal(eqn.ins[1]) if len(eqn.ins) == 2 else None
        if amount is not None:  # a literal amount: C++'s shift where it is defined, else XLA's 0
            return (
                f"({args[0]} {'<<' if name == 'shift_left' else '>>'} {amount}u)"
                if amount < 32
                else "0u"
            )
        return f"{'shl' if name == 'shift_left' else 'shr'}({args[0]}, {args[1]})"
    if name == "neg":
        return f"(-{args[0]})" if floating else f"(int32_t)(0u - (uint32_t){args[0]})"
    if floating and name == "abs":
        return f"std::fabs({args[0]})"
    if floating and name == "sign":
        return f"sign_of({args[0]})"
    if floating and name == "sqrt":
        return _round(out_dtype, f"std::sqrt({args[0]})")
    if floating and name == "square":
        return _round(out_dtype, f"({args[0]} * {args[0]})")
    if floating and name == "integer_pow":
        return _integer_pow(args[0], int(eqn.params["y"]), out_dtype)
    if name == "is_finite":
        return f"std::isfinite({args[0]})"
    if name == "select_n":
        if len(args) != 3 or np.dtype(in_dtypes[0]) != np.bool_:
            raise _Unsupported("a `select_n` of more than two cases")
        return f"({args[0]} ? {args[2]} : {args[1]})"
    if name in _IDENTITY:
        return args[0]
    if name == "convert_element_type":
        if exact and np.dtype(out_dtype) == _BF16:
            return args[0]
        return _convert(args[0], np.dtype(in_dtypes[0]), np.dtype(out_dtype))
    if name == "bitcast_convert_type":
        source, target = _kind(in_dtypes[0]), kind
        if {source, target} <= {"i32", "u32"}:
            return f"({_TYPES[np.dtype(out_dtype)][0]}){args[0]}"
        if source == "f32" and target in ("u32", "i32"):
            return f"({_TYPES[np.dtype(out_dtype)][0]})bits_of({args[0]})"
        if target == "f32" and source in ("u32", "i32"):
            return f"f32_of((uint32_t){args[0]})"
        raise _Unsupported(f"a bitcast from {in_dtypes[0]} to {out_dtype}")
    if name == "iota":
        if len(eqn.params["shape"]) != 1 or kind not in ("i32", "u32"):
            raise _Unsupported("an `iota` other than a leaf's flat integer index")
        return f"({_TYPES[np.dtype(out_dtype)][0]})i"
    if name.startswith(("reduce_", "arg", "cum")) or name in ("dot_general", "reduce"):
        raise _Unsupported(f"`{name}` reduces a leaf (a norm, a mean, a count): not elementwise")
    raise _Unsupported(
        f"`{name}` (on {out_dtype}) has no C++ form here that rounds exactly as XLA does"
    )


@functools.cache
def _divides_by_reciprocal() -> bool:
    """Whether this XLA computes an array divided by a scalar as the array times the scalar's
    reciprocal (jaxlib 0.10's does; 0.6's divides), measured on values where the two differ."""
    x = np.linspace(-3.0, 3.0, 97, dtype=np.float32)
    d = np.float32(0.09999999)
    with jax.ensure_compile_time_eval():  # run now, also while a step is being traced
        got = np.asarray(jax.lax.div(jnp.asarray(x), jnp.asarray(d)))
    return bool(np.array_equal(got, x * (np.float32(1) / d)) and not np.array_equal(got, x / d))


def _int_literal(ref: Any) -> int | None:
    """The value of an integer literal operand (a shift's amount, a hash's multiplier) as a uint32,
    else None."""
    if isinstance(ref, Lit) and np.dtype(ref.value.dtype) in (
        np.dtype(np.int32),
        np.dtype(np.uint32),
    ):
        return int(ref.value) & 0xFFFFFFFF
    return None


def _literal(value: Any) -> str:
    """An integer or boolean literal as C++."""
    kind = _kind(value.dtype)
    if kind == "bool":
        return "true" if bool(value) else "false"
    if kind == "u32":
        return f"{int(value)}u"
    return f"(int32_t){int(value)}"


def _convert(x: str, source: np.dtype, target: np.dtype) -> str:
    s, t = _kind(source), _kind(target)
    if s == t:
        return x
    if t == "bf16" and s in ("f32", "bool"):
        return f"rb({x} ? 1.0f : 0.0f)" if s == "bool" else f"rb({x})"
    if t == "f32" and s == "bf16":
        return x
    if t == "f32" and s == "bool":
        return f"({x} ? 1.0f : 0.0f)"  # (GCC 12 vectorises no loop with `(float)` of a bool)
    if t == "f32" and s in ("i32", "u32"):
        return f"(float){x}"
    if t == "bool":
        return f"({x} != 0)"
    if s == "bool" and t in _INTS:
        return f"({x} ? 1 : 0)" if t == "i32" else f"({x} ? 1u : 0u)"  # (as for f32, below)
    if {s, t} <= {"i32", "u32", "bool"}:
        return f"({_TYPES[target][0]}){x}"
    raise _Unsupported(f"a conversion from {source} to {target}")


@dataclasses.dataclass(frozen=True)
class Slot:
    """A buffer of a program: read (an input), written (an output), or both (in place)."""

    dtype: np.dtype
    read: bool
    written: bool
    operand: bool  # passed as an operand (read, or written in place into the donated input)
    block: bool = False  # a quantised moment's codes or scales, laid out by block (`_Blocks`)


@dataclasses.dataclass
class Program:
    """One leaf's elementwise equations, as C++: ``source`` is a function of ``key`` alone."""

    slots: tuple[Slot, ...]
    scalars: tuple[np.dtype, ...]
    body: str
    block: int = 0  # elements per block of a program over quantised moments (0: over elements)
    constants: str = ""  # its codes' tables (and the header of their code), before the function

    @functools.cached_property
    def source(self) -> str:
        return _SOURCE.format(body=self.body, constants=self.constants, **_LANE_SOURCE)

    @functools.cached_property
    def key(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    @property
    def flags(self) -> np.ndarray:
        """Each slot's flags for derived.cc: 1 read, 2 written, 4 an operand."""
        return np.asarray(
            [1 * s.read + 2 * s.written + 4 * s.operand + 8 * s.block for s in self.slots],
            np.int64,
        )


def _scalar_key(ref: Any) -> Any:
    """What makes two scalar operands one: the node, or a literal's dtype and bits."""
    return ("lit", ref.value.dtype.str, ref.value.tobytes()) if isinstance(ref, Lit) else ref


def _scalar_load(k: int, dtype: np.dtype) -> str:
    ctype = _TYPES[dtype][0]
    value = f"f32_of(s[{k}])" if dtype in _FLOATS else f"({ctype})s[{k}]"
    return f"  const {ctype} {_name('s', k)} = {value};"


@dataclasses.dataclass(frozen=True)
class _Blocks:
    """The layout of a leaf's quantised moments: ``layers`` x ``size`` elements, each layer cut
    into ``blocks`` blocks of ``block`` elements, stored ``width`` bytes a block."""

    layers: int
    size: int
    blocks: int
    block: int
    width: int


def _blocks(flat: _Flat, ops: list[_Eqn]) -> _Blocks | None:
    """The block layout shared by the block codecs of ``ops`` (``None``: none), or
    `_Unsupported`."""
    found = set()
    for eqn in ops:
        if eqn.codec is None:
            if any(r in flat.blocked for r in eqn.ins if isinstance(r, int)):
                raise _Unsupported(f"`{eqn.primitive.name}` on a quantised moment's codes")
            continue
        kind, config = eqn.codec
        if not isinstance(config, Blockwise):
            continue  # a rank-1 matrix's: its rows, not blocks (`_own_codec`)
        codes = eqn.ins[-2] if kind == "decode" else eqn.outs[0]
        value = eqn.outs[0] if kind == "decode" else eqn.ins[-1]
        layers, blocks, width = flat.shapes[codes]
        size = math.prod(flat.shapes[value]) // max(layers, 1)
        found.add(_Blocks(layers, size, blocks, config.block_size, width))
    if not found:
        return None
    if len(found) != 1:
        raise _Unsupported("a leaf's quantised moments have different block layouts")
    layout = found.pop()
    if layout.layers * layout.size >= 2**32 or layout.block > 4096:
        raise _Unsupported("a quantised leaf of 2**32 elements or more, or a block over 4096")
    return layout


def _own_codec(ops: list[_Eqn]) -> str | None:
    """Why the kernel cannot take a codec of ``ops`` (``None``: it can): a rank-1 matrix's encode
    reduces the whole layer to its row and column scales before it codes any element, and a
    linear code (rank-1 storage's vectors) is not blockwise.h's. The bounded jnp path runs them
    (adamx/kernels/_bounded.py)."""
    for eqn in ops:
        if eqn.codec is None:
            continue
        config = eqn.codec[1]
        if isinstance(config, Rank1):
            return "a rank-1 4-bit moment (`rank1_4bit`'s row and column scales of a whole layer)"
        if config.linear:
            return "a linear 4-bit code (`rank1_4bit`'s vectors)"
    return None


def _table(values: Any) -> str:
    """float32 constants as a C++ initialiser (hexadecimal: exact)."""
    return "{" + ", ".join(f"{float(v).hex()}f" for v in np.asarray(values, np.float32)) + "}"


def lower(
    flat: _Flat,
    ops: list[_Eqn],
    reads: list[int],
    writes: list[tuple[int, int | None]],
    reductions: tuple[_Eqn, ...] = (),
    gate: Any = None,
) -> tuple[Program, list, list]:
    """The program of one leaf: ``ops`` in order, reading the array nodes ``reads`` and writing
    ``writes``, ``[(node, the input node it overwrites in place, or None)]``; or, given
    ``reductions`` (equations reducing a leaf to a scalar, see `_REDUCERS`), a reduction pass that
    accumulates each over the elements, in double precision, into ``acc`` (one value per
    reduction, for its chunk of the leaf).

    Returns the program, its scalar operands (nodes or `Lit`) in the order it reads them, and per
    slot ``(operand node or None, result node or None)``.
    """
    reason = _own_codec(ops)
    if reason is not None:
        raise _Unsupported(reason)
    layout = _blocks(flat, ops)
    slots: list[Slot] = []
    nodes: list[tuple[int | None, int | None]] = []
    slot_of: dict[int, int] = {}  # a read node -> its slot
    overwritten = {source: node for node, source in writes if source is not None}
    for node in reads:
        slot_of[node] = len(slots)
        blocked = node in flat.blocked
        slots.append(Slot(flat.dtypes[node], True, node in overwritten, True, blocked))
        nodes.append((node, overwritten.get(node)))
    out_slots = []
    for node, source in writes:
        if source is not None and source in slot_of:
            out_slots.append((node, slot_of[source]))
            continue
        out_slots.append((node, len(slots)))
        blocked = node in flat.blocked
        slots.append(Slot(flat.dtypes[node], False, True, source is not None, blocked))
        nodes.append((source, node))
    slot_at = dict(out_slots)  # a written node -> its slot
    scalars: list = []
    scalar_index: dict = {}
    names: dict[int, str] = {}
    lines = []
    before: list[str] = []  # per block, before its elements (decodes), and after them (encodes)
    after: list[str] = []
    constants: list[str] = []  # the codes' tables, at namespace scope
    prelude: list[str] = []  # the encoders' constants, once per call
    for k, node in enumerate(reads):
        if node in flat.blocked:
            continue  # a moment's codes or scales: read by its decode, a block at a time
        dtype = flat.dtypes[node]
        if dtype not in _TYPES:
            raise _Unsupported(
                f"a leaf of {dtype}: the kernel takes float32 and bfloat16 leaves (and int32, "
                "uint32 and bool state)"
            )
        ctype, btype = _TYPES[dtype]
        load = f"load(b{slot_of[node]}, i)" if dtype == _BF16 else f"b{slot_of[node]}[i]"
        if dtype == np.bool_:
            load = f"(b{slot_of[node]}[i] != 0)"
        names[node] = _name("x", k)
        lines.append(f"    const {ctype} {names[node]} = {load};")

    def arg(ref):
        if isinstance(ref, int) and ref in names:
            return names[ref]
        if isinstance(ref, Lit) and ref.value.dtype not in _FLOATS:
            return _literal(ref.value)  # a constant of the code (a hash's, a mask): written in
        key = _scalar_key(ref)
        if flat.is_leafwise(ref):
            raise _Unsupported("an array the program does not read")  # not expected
        if key not in scalar_index:
            scalar_index[key] = len(scalars)
            scalars.append(ref)
        return _name("s", scalar_index[key])

    def dtype_of(ref):
        return ref.value.dtype if isinstance(ref, Lit) else flat.dtypes[ref]

    def kind_of(ref):
        return _kind(dtype_of(ref))

    exact = {node for node in reads if flat.dtypes[node] == _BF16}
    cleared: set[int] = set()
    producer: dict[int, _Eqn] = {}  # a computed node -> its equation (the patterns below read it)
    index: set[int] = set()  # nodes whose value is the element's flat index (an `iota`)
    induction: dict[int, str] = {}  # a multiplier m -> the loop variable equal to index * m

    def produced(ref, *primitives):
        """The equation computing ``ref`` in this program, if it is one of ``primitives``."""
        eqn = producer.get(ref) if isinstance(ref, int) else None
        return eqn if eqn is not None and eqn.primitive.name in primitives else None

    def peephole(eqn: _Eqn, args: list[str]) -> str | None:
        """Rewrites keyed on the equations' shapes, each giving the bits of the general form:
        ``index * m`` as a loop variable (stepped by ``m``: the integers wrap alike), a shift of an
        ``x ^ shift(x, a)`` by ``b`` with ``a + b >= 32`` as the shift of ``x`` (the bits that the
        xor changes are shifted out), and the bfloat16 rounding of ``x`` where ``x`` is known NaN
        (``where(x != x, bfloat16(x), ...)``) as the NaN's quieting alone. Edits ``args`` in place,
        or returns the whole expression."""
        name, ins = eqn.primitive.name, eqn.ins
        kind = _kind(flat.dtypes[eqn.outs[0]])
        if name == "mul" and kind in _INTS:
            for x, m in ((ins[0], _int_literal(ins[1])), (ins[1], _int_literal(ins[0]))):
                if isinstance(x, int) and x in index and m is not None:
                    variable = induction.setdefault(m, _name("k", len(induction)))
                    return variable if kind == "u32" else f"(int32_t){variable}"
        if name in ("shift_left", "shift_right_logical") and kind == "u32":
            b = _int_literal(ins[1])
            inner = produced(ins[0], "xor")
            if b is not None and b < 32 and inner is not None:
                for x, y in (inner.ins, inner.ins[::-1]):
                    shifted = produced(y, name)
                    a = None if shifted is None else _int_literal(shifted.ins[1])
                    if isinstance(x, int) and shifted is not None and shifted.ins[0] == x:
                        if a is not None and a + b >= 32:
                            args[0] = arg(x)
                            break
        if name == "select_n" and len(ins) == 3:
            test = produced(ins[0], "ne", "eq")
            if test is not None and isinstance(test.ins[0], int) and test.ins[0] == test.ins[1]:
                x = test.ins[0]
                case = 2 if test.primitive.name == "ne" else 1  # the case taken where x is NaN
                rounded = produced(ins[case], "convert_element_type")
                if (
                    rounded is not None
                    and rounded.ins[0] == x
                    and flat.dtypes[x] == np.float32
                    and flat.dtypes[rounded.outs[0]] == _BF16
                    and x not in exact  # (else the conversion is no rounding: see `exact`)
                ):
                    args[case] = f"rb_nan({arg(x)})"
        return None

    temps = 0
    for eqn in ops:
        if eqn.codec is not None:
            assert layout is not None
            kind, config = eqn.codec
            k = len(constants)
            B, W = layout.block, layout.width
            if kind == "decode":
                codes, scales = eqn.ins[-2:]
                if codes not in slot_of or scales not in slot_of:
                    raise _Unsupported("a decode of codes computed in the step")
                if flat.dtypes[eqn.outs[0]] != np.float32:
                    raise _Unsupported("a decode to another dtype than float32")
                constants.append(f"const float kTable{k}[] = {_table(config._table())};")
                before.append(f"    alignas(64) float d{k}[{B}];")
                signed = "true" if config.signed else "false"
                prelude.append(f"  static const blockwise::Planes p{k}(kTable{k}, {signed});")
                before.append(
                    f"    blockwise::decode_block<{config.bits}, {signed}, {B}>(p{k}, kTable{k}, "
                    f"b{slot_of[codes]} + u * {W}, b{slot_of[scales]}[u], d{k}, count);"
                )
                names[eqn.outs[0]] = f"d{k}[j]"
            else:
                codes, scales = eqn.outs
                if codes not in slot_at or scales not in slot_at:
                    raise _Unsupported("an encode whose codes the step does not return")
                if dtype_of(eqn.ins[-1]) != np.float32:
                    raise _Unsupported("an encode of another dtype than float32")
                magnitude = config._magnitude_bits
                parts = np.concatenate(code_constants(magnitude))
                constants.append(f"const float kCode{k}[] = {_table(parts)};")
                before.append(f"    alignas(64) float e{k}[{B}];")
                before.append(f"    uint32_t top{k} = 0;")
                lines.append(f"    e{k}[j] = {arg(eqn.ins[-1])};")
                lines.append(
                    f"    top{k} = std::max(top{k}, blockwise::magnitude_bits({arg(eqn.ins[-1])}));"
                )
                signed = "true" if config.signed else "false"
                prelude.append(f"  const Code<{magnitude}> c{k}(kCode{k});")
                zero_free = "false" if config.signed else "true"
                prelude.append(
                    f"  static const blockwise::Fast f{k}(kCode{k}, {magnitude}, {zero_free});"
                )
                after.append(
                    f"    blockwise::encode_block<{config.bits}, {magnitude}, {signed}, {B}>(f{k}, e{k}, "
                    f"count, top{k}, c{k}, b{slot_at[codes]} + u * {W}, b{slot_at[scales]} + u);"
                )
            continue
        if eqn.primitive.name == "broadcast_in_dim" and not flat.is_leafwise(eqn.ins[0]):
            pass  # a scalar spread over the leaf: the scalar itself
        elif eqn.primitive.name in _IDENTITY and flat.is_leafwise(eqn.ins[0]):
            if int(np.prod(flat.shapes[eqn.ins[0]])) != int(np.prod(flat.shapes[eqn.outs[0]])):
                raise _Unsupported(f"a `{eqn.primitive.name}` that changes the number of elements")
        for dtype in [*map(dtype_of, eqn.ins), *(flat.dtypes[o] for o in eqn.outs)]:
            if np.dtype(dtype) not in _TYPES:
                raise _Unsupported(f"`{eqn.primitive.name}` on {np.dtype(dtype)}")
        if len(eqn.outs) != 1:
            raise _Unsupported(f"`{eqn.primitive.name}`, which has several results")
        out = eqn.outs[0]
        by_scalar = eqn.primitive.name == "div" and len(flat.shapes[out]) > 0
        by_scalar = by_scalar and not flat.is_leafwise(eqn.ins[1])
        name = eqn.primitive.name
        first_exact = bool(eqn.ins) and eqn.ins[0] in exact
        args = [arg(r) for r in eqn.ins]
        expression = peephole(eqn, args) or _expression(
            eqn, args, [dtype_of(r) for r in eqn.ins], flat.dtypes[out], by_scalar, first_exact
        )
        producer[out] = eqn
        if name == "iota" or (eqn.ins and eqn.ins[0] in index and name in _IDENTITY):
            index.add(out)
        elif name == "convert_element_type" and eqn.ins[0] in index and kind_of(out) in _INTS:
            index.add(out)  # (an int32 index and a uint32 one: the same 32 bits)
        # Values known to be bfloat16 already: every bfloat16 result (each is rounded), and what a
        # conversion or a reshape makes of one.
        source = dtype_of(eqn.ins[0]) if eqn.ins else None
        if flat.dtypes[out] == _BF16 or (first_exact and name in _IDENTITY):
            exact.add(out)
        elif first_exact and name == "convert_element_type" and source in _FLOATS:
            exact.add(out)
        elif name == "bitcast_convert_type" and eqn.ins[0] in cleared:
            exact.add(out)  # a float whose low 16 bits are zero is a bfloat16 value
        # uint32 bits whose low 16 are cleared (stochastic rounding's truncation)
        if name == "and" and any(
            isinstance(r, Lit) and r.value.dtype == np.uint32 and int(r.value) & 0xFFFF == 0
            for r in eqn.ins
        ):
            cleared.add(out)
        names[out] = _name("t", temps)
        temps += 1
        lines.append(f"    const {_TYPES[flat.dtypes[out]][0]} {names[out]} = {expression};")
    # A reduction: each block of _LANES * 32 elements' values go to a small array, kept in their
    # own type (the element loop stays vectorised), then into _LANES double accumulators per
    # reduction, lane l taking v[j + l] (a fixed order, the same whatever the threads), summed
    # pairwise at the end of the chunk. The accumulators are one vector (GCC's vector
    # extension): the same operations in the same order as a loop over the lanes, which GCC left
    # scalar (10 sums cost 4x AdamW's pass, 1.5x this way).
    # A scalar that, when 0, says the reductions' results will not be read (`_gate`).
    gate_name = arg(gate) if gate is not None and reductions and writes else None
    staged = []  # per reduction: an element's value into the block's array
    fold = []  # per reduction: the values v{r}[j .. j + _LANES) into the lanes
    tail = []  # the same, one lane l at a time (a block's last values)
    finals = []
    inits = []
    for r, eqn in enumerate(reductions):
        kind = _REDUCERS[eqn.primitive.name]
        # (The conversion to double is exact, so it may wait until the values are folded.)
        stage, vector = _STAGES.get(np.dtype(dtype_of(eqn.ins[0])), ("double", "lanes"))
        staged.append(f"    v{r}[i - base] = ({stage}){arg(eqn.ins[0])};")
        inits.append(f"  alignas(64) {stage} v{r}[{_BLOCK}];")
        if kind in ("max", "min") and stage != "double":
            # Exact in the values' own type: compared there, 8 to a vector with no conversion
            # (a max of float32 in double lanes cost as much as the rest of LAMB's max pass).
            limit = "lowest" if kind == "max" else "max"
            inits.append(f"  {vector} a{r}; ints nan{r} = {{}};")
            inits.append(
                f"  for (int l = 0; l < {_LANES}; ++l) "
                f"a{r}[l] = std::numeric_limits<{stage}>::{limit}();"
            )
            if stage == "float":  # -inf and inf, as in double
                inits[-1] = inits[-1].replace(f"std::numeric_limits<{stage}>::{limit}()", "")
                inits[-1] = inits[-1].rstrip(";") + ("-INFINITY;" if kind == "max" else "INFINITY;")
            better = ">" if kind == "max" else "<"
            fold.append(
                f"{vector} x{r}; std::memcpy(&x{r}, v{r} + j, sizeof x{r}); "
                f"a{r} = x{r} {better} a{r} ? x{r} : a{r}; nan{r} |= x{r} != x{r};"
            )
            v = f"v{r}[j + l]"
            tail.append(
                f"a{r}[l] = {v} {better} a{r}[l] ? {v} : a{r}[l]; nan{r}[l] |= {v} != {v} ? -1 : 0;"
            )
            finals.append(
                f"  acc[{r}] = fold_{kind}(__builtin_convertvector(a{r}, lanes), "
                f"__builtin_convertvector(nan{r}, lane_mask));"
            )
            continue
        start_value = {"sum": "0.0", "max": "-INFINITY", "min": "INFINITY", "and": "1.0"}
        inits.append(f"  lanes a{r}; lane_mask nan{r} = {{}};")
        inits.append(
            f"  for (int l = 0; l < {_LANES}; ++l) a{r}[l] = {start_value.get(kind, '0.0')};"
        )
        v = f"x{r}"
        fold.append(
            f"{vector} {v}_; std::memcpy(&{v}_, v{r} + j, sizeof {v}_); "
            f"const lanes {v} = __builtin_convertvector({v}_, lanes); "
            + {
                "sum": f"a{r} = a{r} + {v};",
                "max": f"a{r} = {v} > a{r} ? {v} : a{r}; nan{r} |= {v} != {v};",
                "min": f"a{r} = {v} < a{r} ? {v} : a{r}; nan{r} |= {v} != {v};",
                "and": f"a{r} = (a{r} != 0.0 & {v} != 0.0) ? one : zero;",
                "or": f"a{r} = (a{r} != 0.0 | {v} != 0.0) ? one : zero;",
            }[kind]
        )
        v = f"(double)v{r}[j + l]"
        tail.append(
            {
                "sum": f"a{r}[l] = a{r}[l] + {v};",
                "max": f"a{r}[l] = {v} > a{r}[l] ? {v} : a{r}[l]; nan{r}[l] |= {v} != {v} ? -1 : 0;",
                "min": f"a{r}[l] = {v} < a{r}[l] ? {v} : a{r}[l]; nan{r}[l] |= {v} != {v} ? -1 : 0;",
                "and": f"a{r}[l] = (a{r}[l] != 0.0 && {v} != 0.0) ? 1.0 : 0.0;",
                "or": f"a{r}[l] = (a{r}[l] != 0.0 || {v} != 0.0) ? 1.0 : 0.0;",
            }[kind]
        )
        finals.append(f"  acc[{r}] = fold_{kind}(a{r}, nan{r});")
    for node, slot in out_slots:
        if node in flat.blocked:
            continue  # a moment's codes or scales: written by its encode
        dtype = flat.dtypes[node]
        value = names.get(node)
        if value is None:
            value = arg(node)
        if dtype == _BF16:  # a bfloat16 value already (see `exact`): its top 16 bits
            lines.append(f"    store_exact(b{slot}, i, {value});")
        else:
            lines.append(f"    b{slot}[i] = ({_TYPES[dtype][1]}){value};")
    if layout is not None:  # the leaf's layout, per leaf: the last two scalars
        scalars += [Lit(np.uint32(layout.size)), Lit(np.uint32(layout.blocks))]
    scalar_dtypes = tuple(np.dtype(dtype_of(r)) for r in scalars)
    head = [_scalar_load(k, d) for k, d in enumerate(scalar_dtypes)]
    for k, buffer in enumerate(slots):
        btype = "uint8_t" if buffer.block and buffer.dtype == np.uint8 else _TYPES[buffer.dtype][1]
        const = "" if buffer.written else "const "
        head.append(f"  {const}{btype}* __restrict b{k} = static_cast<{const}{btype}*>(buf[{k}]);")
    for m, variable in induction.items():
        head.append(f"  uint32_t {variable} = (uint32_t)begin * {m}u;")
    head += inits
    steps = "".join(f", {variable} += {m}u" for m, variable in induction.items())
    simd = writes and not induction and _in_register(reductions, dtype_of)
    if layout is None and simd:
        head = [h for h in head if h not in inits]
        (declarations, passes), finals = _simd_reductions(
            reductions,
            [arg(e.ins[0]) for e in reductions],
            [np.dtype(dtype_of(e.ins[0])) for e in reductions],
            lines,
            gate_name,
        )
        head += declarations
    elif layout is None and reductions:
        passes = [
            f"  for (size_t base = begin; base < end; base += {_BLOCK}) {{",
            f"    const size_t stop = std::min(end, base + {_BLOCK});",
            "  #pragma GCC ivdep",
            f"  for (size_t i = base; i < stop; ++i{steps}) {{",
            *lines,
            *staged,
            "  }",
            "    const size_t n = stop - base;",
            "    size_t j = 0;",
            f"    for (; j + {_LANES} <= n; j += {_LANES}) {{ {' '.join(fold)} }}",
            "    for (int l = 0; j + l < n; ++l) { " + " ".join(tail) + " }",
            "  }",
        ]
    if layout is None and reductions:
        return (
            Program(tuple(slots), scalar_dtypes, "\n".join([*head, *passes, *finals])),
            scalars,
            nodes,
        )
    if layout is None:
        # No element reads what another writes (each buffer at i alone): said to GCC, which
        # otherwise checks every pair of buffers for overlap at run time and, past 10 pairs
        # (Adan's 6 buffers), does not vectorise the loop at all.
        loop = [
            "#pragma GCC ivdep",
            f"  for (size_t i = begin; i < end; ++i{steps}) {{",
            *lines,
            "  }",
        ]
        return Program(tuple(slots), scalar_dtypes, "\n".join([*head, *loop])), scalars, nodes
    if induction or reductions:
        raise _Unsupported("an element's index or a reduction beside block-quantised moments")
    # Over blocks: u is a block of a layer; its elements are [base, base + count) of the leaf.
    n, blocks = len(scalar_dtypes) - 2, len(scalar_dtypes) - 1
    loop = [
        *prelude,
        f"  const size_t size = s{n}, blocks = s{blocks};",
        "  for (size_t u = begin; u < end; ++u) {",
        f"    const size_t start = (u % blocks) * {layout.block};",
        f"    const size_t count = std::min<size_t>({layout.block}, size - start);",
        "    const size_t base = (u / blocks) * size + start;",
        *before,
        "    for (size_t j = 0; j < count; ++j) {",
        "      const size_t i = base + j;",
        *("  " + line for line in lines),
        "    }",
        *after,
        "  }",
    ]
    program = Program(
        tuple(slots),
        scalar_dtypes,
        "\n".join([*head, *loop]),
        layout.block,
        "\n".join(['#include "blockwise.h"', "", "namespace {", *constants, "}  // namespace"]),
    )
    return program, scalars, nodes


def _slot_nodes(reads: list[int], writes: list[tuple[int, int | None]]) -> list:
    """Per slot ``(operand node or None, result node or None)``, as `lower` lays out a program
    reading ``reads`` and writing ``writes`` (a leaf the kernel does not run: `_own_codec`)."""
    overwritten = {source: node for node, source in writes if source is not None}
    nodes: list[tuple[int | None, int | None]] = [(r, overwritten.get(r)) for r in reads]
    nodes += [(source, node) for node, source in writes if source is None or source not in reads]
    return nodes


def _in_register(reductions: tuple[_Eqn, ...], dtype_of: Any) -> bool:
    """Whether `_simd_reductions` can take ``reductions``: sums, maxima and minima of float32 or
    int32 values."""
    return bool(reductions) and all(
        _REDUCERS[e.primitive.name] in ("sum", "max", "min")
        and np.dtype(dtype_of(e.ins[0])) in (np.dtype(np.float32), np.dtype(np.int32))
        for e in reductions
    )


def _simd_reductions(
    reductions: tuple[_Eqn, ...],
    values: list[str],
    dtypes: list[np.dtype],
    lines: list[str],
    gate: str | None = None,
) -> tuple[tuple[list[str], list[str]], list[str]]:
    """Reductions inside an elementwise pass (the statistics of `adamx.monitor`): per block of
    _SIMD_BLOCK elements, each is accumulated in its values' type in the element loop itself,
    which GCC vectorises with one partial result per vector lane (``omp simd reduction``:
    nothing is stored per element, and the loop's own arithmetic is unchanged), then added into
    a double. A float sum is thus taken in float32 over _SIMD_BLOCK / (vector width) values per
    lane (128 with AVX-512), then in double: not XLA's order (measured within 1e-6 of the sum);
    max, min and int32 sums are exact; a max or min is NaN if a value was (XLA's). Measured
    against AdamW's loop on one core: 10 reductions cost 1.15x with blocks of 2048, 12x with
    blocks of 256 (GCC combines the lanes after each block), 3.3x kept per element in arrays
    and folded in double (the reduction passes' way, `lower`). Given ``gate`` (a scalar's
    name), the loop without the reductions runs where it is 0 (their results then unread).

    Returns ``((declarations, loop), finals)``."""
    before, inside, after, finals, declare = [], [], [], [], []
    clauses: dict[str, list[str]] = collections.defaultdict(list)
    for r, (eqn, x, dtype) in enumerate(zip(reductions, values, dtypes, strict=True)):
        kind = _REDUCERS[eqn.primitive.name]
        ctype = "float" if dtype == np.float32 else "int32_t"
        start = {
            ("sum", "float"): "0.0f",
            ("sum", "int32_t"): "0",
            ("max", "float"): "-INFINITY",
            ("min", "float"): "INFINITY",
            ("max", "int32_t"): "INT32_MIN",
            ("min", "int32_t"): "INT32_MAX",
        }[kind, ctype]
        declare.append(f"  double d{r} = {'0.0' if kind == 'sum' else start};")
        before.append(f"    {ctype} r{r} = {start};")
        if kind == "sum":
            inside.append(f"    r{r} += {x};")
            after.append(f"    d{r} += (double)r{r};")
            clauses["+"].append(f"r{r}")
            finals.append(f"  acc[{r}] = d{r};")
            continue
        op = ">" if kind == "max" else "<"
        inside.append(f"    r{r} = {x} {op} r{r} ? {x} : r{r};")
        after.append(f"    d{r} = (double)r{r} {op} d{r} ? (double)r{r} : d{r};")
        clauses[kind].append(f"r{r}")
        if ctype == "float":
            declare.append(f"  int64_t n{r} = 0;")
            before.append(f"    int32_t q{r} = 0;")
            inside.append(f"    q{r} += {x} != {x} ? 1 : 0;")
            after.append(f"    n{r} += q{r};")
            clauses["+"].append(f"q{r}")
            finals.append(f"  acc[{r}] = n{r} ? NAN : d{r};")
        else:
            finals.append(f"  acc[{r}] = d{r};")
    pragma = " ".join(f"reduction({op}:{','.join(names)})" for op, names in clauses.items())
    loop = [
        f"  for (size_t base = begin; base < end; base += {_SIMD_BLOCK}) {{",
        f"    const size_t stop = std::min(end, base + {_SIMD_BLOCK});",
        *before,
        f"  #pragma omp simd {pragma}",
        "  for (size_t i = base; i < stop; ++i) {",
        *lines,
        *inside,
        "  }",
        *after,
        "  }",
    ]
    if gate is not None:
        plain = ["#pragma GCC ivdep", "  for (size_t i = begin; i < end; ++i) {", *lines, "  }"]
        loop = [f"  if ({gate} != 0) {{", *loop, "  } else {", *plain, "  }"]
    return (declare, loop), finals


def _pairwise(first: int, count: int) -> str:
    """``a[first] + ... + a[first + count - 1]``, summed pairwise (C)."""
    if count == 1:
        return f"a[{first}]"
    half = count // 2
    return f"({_pairwise(first, half)} + {_pairwise(first + half, count - half)})"


_LANE_SOURCE = {
    "lanes": _LANES,
    "lane_bytes": 8 * _LANES,
    "stage_bytes": 4 * _LANES,
    "ones": ", ".join(["1"] * _LANES),
    "pairwise": _pairwise(0, _LANES),
}

_SOURCE = """// Generated by adamx/kernels/_derived.py from an optimizer's jaxpr: one leaf's elementwise step,
// run by adamx/kernels/_native/derived.cc over the elements [begin, end) of one leaf.
#include <limits>
#include "elements.h"
{constants}

namespace {{
inline float f32_of(uint32_t u) {{ float f; std::memcpy(&f, &u, 4); return f; }}
inline uint32_t bits_of(float f) {{ uint32_t u; std::memcpy(&u, &f, 4); return u; }}
// What a bfloat16 store then load gives (`store`: to nearest even, a NaN quieted), on the float's
// bits, without the 16-bit round trip: one select (the NaN test a float comparison) and one mask.
inline float rb(float f) {{
  uint32_t b = bits_of(f);
  return f32_of((f != f ? b | 0x00400000u : b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u);
}}
// `rb` of a NaN (a select's case taken only where its operand is NaN): the quieting alone.
inline float rb_nan(float f) {{ return f32_of((bits_of(f) | 0x00400000u) & 0xffff0000u); }}
inline void store_exact(uint16_t* x, size_t i, float f) {{
  uint32_t bits; std::memcpy(&bits, &f, 4); x[i] = static_cast<uint16_t>(bits >> 16);
}}
inline float sign_of(float a) {{ return a > 0.0f ? 1.0f : (a < 0.0f ? -1.0f : a); }}
// A reduction's {lanes} lanes, one vector (a lane's NaN flag: all bits set), and their fold: sums
// pairwise; a max or min is NaN if a lane saw a NaN (XLA's).
typedef double lanes __attribute__((vector_size({lane_bytes})));
typedef long long lane_mask __attribute__((vector_size({lane_bytes})));
typedef float floats __attribute__((vector_size({stage_bytes})));
typedef int32_t ints __attribute__((vector_size({stage_bytes})));
typedef uint32_t uints __attribute__((vector_size({stage_bytes})));
const lanes one = {{{ones}}}, zero = {{}};
inline double fold_sum(const lanes& a, const lane_mask&) {{
  return {pairwise};
}}
inline double fold_max(const lanes& a, const lane_mask& nan) {{
  double m = a[0]; bool any = nan[0] != 0;
  for (int l = 1; l < {lanes}; ++l) {{ m = a[l] > m ? a[l] : m; any = any || nan[l] != 0; }}
  return any ? NAN : m;
}}
inline double fold_min(const lanes& a, const lane_mask& nan) {{
  double m = a[0]; bool any = nan[0] != 0;
  for (int l = 1; l < {lanes}; ++l) {{ m = a[l] < m ? a[l] : m; any = any || nan[l] != 0; }}
  return any ? NAN : m;
}}
inline double fold_and(const lanes& a, const lane_mask&) {{
  bool all = true; for (int l = 0; l < {lanes}; ++l) all = all && a[l] != 0.0; return all ? 1.0 : 0.0;
}}
inline double fold_or(const lanes& a, const lane_mask&) {{
  bool any = false; for (int l = 0; l < {lanes}; ++l) any = any || a[l] != 0.0; return any ? 1.0 : 0.0;
}}
// XLA's shifts: 0 for a shift of 32 or more. Branch-free, so that the loop vectorises.
inline uint32_t shl(uint32_t a, uint32_t b) {{ return (a << (b & 31u)) & (b < 32u ? ~0u : 0u); }}
inline uint32_t shr(uint32_t a, uint32_t b) {{ return (a >> (b & 31u)) & (b < 32u ? ~0u : 0u); }}
}}  // namespace

extern "C" void adamx_leaf(const uint32_t* __restrict s, void* const* buf, size_t begin, size_t end,
                           double* acc) {{
{body}
}}
"""


# ---- the plan of a step -----------------------------------------------------------------------


@dataclasses.dataclass
class _Leaf:
    """One program's instance: its operands, results and scalars, as nodes of the trace."""

    ops: list
    slots: list[tuple[int | None, int | None]]  # per slot: (operand node, result node)
    scalars: list
    size: int
    units: int = 0  # blocks of all layers (a program over quantised moments), the tasks' unit
    reductions: list = dataclasses.field(default_factory=list)  # terminal, in the pass (`plan`)
    types: tuple[int, ...] = ()  # each reduction's result dtype code (`_REDUCED`)
    kinds: tuple[int, ...] = ()  # each reduction's kind (index in `_REDUCERS`)


@dataclasses.dataclass
class _Reducer:
    """One reduction program's instance: a leaf's reductions of one depth (a reduction whose
    input reads another's result comes a pass later), with the equations JAX would run instead."""

    ops: list  # the reductions and the leafwise equations they need, in order
    slots: list[tuple[int | None, int | None]]  # per slot: (operand node, None)
    scalars: list
    size: int
    outs: list[int]  # each reduction's result node
    types: tuple[int, ...]  # each result's dtype code (`_REDUCED`)
    kinds: tuple[int, ...]  # each reduction's kind (index in `_REDUCERS`)


@dataclasses.dataclass
class Plan:
    flat: _Flat
    inputs: list[int]
    outputs: list
    programs: dict[str, Program]
    leaves: dict[str, list[_Leaf]]  # program key -> its instances
    treedefs: tuple
    reducers: list[tuple[str, _Reducer]] = dataclasses.field(default_factory=list)
    gate: _Eqn | None = None  # the cond the in-pass reductions' results flow into (`_gate`)
    # Why the kernel cannot run a leaf's program that the bounded jnp path can (`_own_codec`): its
    # leaves are kept under keys of no program.
    declined: str | None = None


def _components(flat: _Flat, ops: list[_Eqn] | None = None) -> list[list[_Eqn]]:
    """The array equations (``ops``, by default the kernel's), grouped by the arrays that connect
    them (one group per leaf)."""
    ops = flat.ops if ops is None else ops
    parent: dict[int, int] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for eqn in ops:
        nodes = [r for r in [*eqn.ins, *eqn.outs] if flat.is_leafwise(r)]
        for other in nodes[1:]:
            parent[find(other)] = find(nodes[0])
    groups: dict[int, list[_Eqn]] = collections.defaultdict(list)
    for eqn in ops:
        leafwise = [r for r in [*eqn.outs, *eqn.ins] if flat.is_leafwise(r)]
        groups[find(leafwise[0] if leafwise else eqn.outs[0])].append(eqn)
    return list(groups.values())


def _needed(ops: list[_Eqn], nodes: list) -> list[_Eqn]:
    """The equations of ``ops`` that ``nodes`` depend on, in their order."""
    producer = {out: eqn for eqn in ops for out in eqn.outs}
    chosen: dict[int, _Eqn] = {}
    stack = [n for n in nodes if isinstance(n, int)]
    while stack:
        eqn = producer.get(stack.pop())
        if eqn is None or id(eqn) in chosen:
            continue
        chosen[id(eqn)] = eqn
        stack.extend(r for r in eqn.ins if isinstance(r, int))
    return sorted(chosen.values(), key=lambda e: e.index)


def _reduction_passes(flat: _Flat, reductions: list[_Eqn]) -> tuple[dict, list, list]:
    """The reductions of leaves to scalars as programs: ``(programs, [(key, _Reducer)], the
    equations JAX still runs)``. Per leaf, the reductions of one depth form one program (LAMB's
    scaled norm, a max then a sum of squares over the max, takes two); a group with anything
    the kernel cannot compute (a bfloat16 sum, whose accumulation XLA does its own way) stays
    JAX's."""
    depth: dict[int, int] = {}
    needed = {id(e): _needed(flat.jax_ops, e.ins) for e in reductions}
    for eqn in sorted(flat.binds + reductions, key=lambda e: e.index):
        reads = eqn.ins
        if id(eqn) in needed:  # what its pass reads: a reduction it needs counts by its result
            reads = [r for x in needed[id(eqn)] for r in (x.outs if id(x) in needed else x.ins)]
        level = max((depth.get(r, 0) for r in reads if isinstance(r, int)), default=0)
        for out in eqn.outs:
            depth[out] = level + (1 if id(eqn) in needed else 0)
    programs: dict[str, Program] = {}
    instances: list[tuple[str, _Reducer]] = []
    left: list[_Eqn] = []
    for component in _components(flat, flat.jax_ops):
        by_depth: dict[int, list[_Eqn]] = collections.defaultdict(list)
        for eqn in component:
            if id(eqn) in needed:
                by_depth[depth[eqn.outs[0]]].append(eqn)
        for group in by_depth.values():
            ops = _needed(
                [e for e in component if id(e) not in needed], [r for e in group for r in e.ins]
            )
            try:
                for eqn in group:
                    x, out = eqn.ins[0], eqn.outs[0]
                    kind = _REDUCERS.get(eqn.primitive.name)
                    if kind is None or flat.dtypes[out] not in _REDUCED:
                        raise _Unsupported(f"`{eqn.primitive.name}` of {flat.dtypes[out]}")
                    if (
                        kind == "sum"
                        and flat.dtypes[x] != np.float32
                        and flat.dtypes[x] != np.int32
                    ):
                        raise _Unsupported(f"a sum of {flat.dtypes[x]}")
                made = {o for e in ops for o in e.outs}
                reads = sorted(
                    {
                        r
                        for e in [*ops, *group]
                        for r in e.ins
                        if flat.is_leafwise(r) and r not in made
                    }
                )
                sizes = {math.prod(flat.shapes[r]) for r in reads}
                if len(sizes) != 1:
                    raise _Unsupported("a reduction of arrays of different sizes")
                program, scalars, slots = lower(flat, ops, reads, [], tuple(group))
            except _Unsupported:
                left += ops + group
                continue
            programs[program.key] = program
            reducer = _Reducer(
                sorted([*ops, *group], key=lambda e: e.index),
                slots,
                scalars,
                sizes.pop(),
                [e.outs[0] for e in group],
                tuple(_REDUCED[flat.dtypes[e.outs[0]]] for e in group),
                tuple(list(_REDUCERS.values()).index(_REDUCERS[e.primitive.name]) for e in group),
            )
            instances.append((program.key, reducer))
    unique = {id(e): e for e in left}
    return programs, instances, sorted(unique.values(), key=lambda e: e.index)


def _terminal(flat: _Flat, reductions: list[_Eqn], outputs: list) -> list[_Eqn]:
    """The reductions whose results feed nothing elementwise and no other reduction (statistics:
    they flow to scalar outputs only), and whose inputs need no reduction's result: each can be
    accumulated inside its leaf's elementwise pass rather than in a pass of its own."""
    producer = {out: eqn for eqn in [*flat.binds, *flat.ops] for out in eqn.outs}
    is_reduction = {id(e) for e in reductions}

    def reached(nodes: list) -> set[int]:
        """The reductions the scalar operands of ``nodes``' computation depend on."""
        found: set[int] = set()
        seen: set[int] = set()
        stack = [n for n in nodes if isinstance(n, int)]
        while stack:
            eqn = producer.get(stack.pop())
            if eqn is None or id(eqn) in seen:
                continue
            seen.add(id(eqn))
            if id(eqn) in is_reduction:
                found.add(id(eqn))
            stack.extend(r for r in eqn.ins if isinstance(r, int))
        return found

    elementwise = _needed(
        [e for e in flat.ops if id(e) not in is_reduction],
        [r for r in outputs if isinstance(r, int)],
    )
    kept = reached([r for e in elementwise for r in e.ins if not flat.is_leafwise(r)])
    changed = True
    while changed:
        changed = False
        for eqn in reductions:
            needs = reached(eqn.ins) - {id(eqn)}
            if needs and not needs <= kept:
                kept |= needs
                changed = True
            if needs and id(eqn) not in kept:
                kept.add(id(eqn))
                changed = True
    return [e for e in reductions if id(e) not in kept]


def _gate(flat: _Flat, terminal: list[_Eqn], outputs: list) -> _Eqn | None:
    """The one ``cond`` all ``terminal`` reductions' results flow into, if its first branch
    (taken at index 0: ``lax.cond``'s false branch) reads none of them and nothing else does
    (`monitor`'s ``every``: a step with nothing due keeps the last statistics): where its index
    is 0, the pass may skip the reductions, and `run` skips the scalar equations that read
    them. ``None`` otherwise."""
    if not terminal:
        return None
    derived = {e.outs[0] for e in terminal}
    conds = []
    for eqn in sorted(flat.binds, key=lambda e: e.index):
        if not any(isinstance(r, int) and r in derived for r in eqn.ins):
            continue
        if eqn.primitive.name == "cond":
            conds.append(eqn)
        else:
            derived.update(eqn.outs)
    if len(conds) != 1 or any(isinstance(r, int) and r in derived for r in outputs):
        return None
    (cond,) = conds
    index, *operands = cond.ins
    if isinstance(index, int) and index in derived:
        return None
    skipped = cond.params["branches"][0].jaxpr
    used = {id(v) for e in skipped.eqns for v in e.invars} | {id(v) for v in skipped.outvars}
    for var, ref in zip(skipped.invars, operands, strict=True):
        if isinstance(ref, int) and ref in derived and id(var) in used:
            return None
    return cond


def plan(fn: Any, flat_args: list, treedefs: tuple, in_pass: bool = True) -> Plan:
    """Trace ``fn`` (flat leaves in, ``(new params leaves, new state leaves)`` out) and lower it,
    or raise `_Unsupported` saying what cannot be lowered. With ``in_pass``, the terminal
    reductions (`_terminal`) are accumulated in their leaf's elementwise pass."""
    closed = jax.make_jaxpr(fn)(*flat_args)
    flat = _Flat()
    inputs = [flat.new(v.aval) for v in closed.jaxpr.invars]
    n_params = treedefs[0].num_leaves
    flat.leafwise.update(inputs[: 2 * n_params])  # params and gradients
    flat.leafwise.update(i for i in inputs[2 * n_params :] if flat.shapes[i])  # moments
    outputs = flat.inline(closed.jaxpr, [flat.const(c) for c in closed.consts], inputs)
    for eqn in flat.binds:
        assert not any(flat.is_leafwise(r) for r in eqn.ins)
    # A leaf reduced to a scalar (cautious's mean, LAMB's norms): JAX computes the scalar, in a
    # pass of its own, with the equations it depends on; the kernel reads it as a scalar.
    reductions = [e for e in flat.ops if _is_reduction(e.primitive.name)]
    for eqn in reductions:
        if eqn.primitive.name == "dot_general" or any(flat.is_array(o) for o in eqn.outs):
            raise _Unsupported(
                f"`{eqn.primitive.name}` reduces a leaf to an array (per row, per block, a "
                "matrix product): not elementwise"
            )
    terminal = _terminal(flat, reductions, outputs) if in_pass else []
    gate = _gate(flat, terminal, outputs)
    passes = [e for e in reductions if all(e is not t for t in terminal)]
    flat.jax_ops = sorted(
        _needed(flat.ops, [r for e in passes for r in e.ins]) + passes,
        key=lambda e: e.index,
    )
    reducer_programs, reducers, flat.jax_ops = _reduction_passes(flat, passes)
    flat.ops = _needed(
        [e for e in flat.ops if not _is_reduction(e.primitive.name)],
        [r for r in outputs if isinstance(r, int)] + [r for e in terminal for r in e.ins],
    )
    # The input each output overwrites: new params <- params, new state <- state (grads are not).
    source_of = {o: (o if o < n_params else o + n_params) for o in range(len(outputs))}
    programs: dict[str, Program] = {}
    leaves: dict[str, list[_Leaf]] = collections.defaultdict(list)
    produced: dict[int, int] = {}
    declined: str | None = None
    components = _components(flat)
    for c, ops in enumerate(components):
        for eqn in ops:
            for out in eqn.outs:
                produced[out] = c
    users: dict[int, set[int]] = collections.defaultdict(set)
    for c, ops in enumerate(components):
        for eqn in ops:
            for r in eqn.ins:
                if flat.is_leafwise(r):
                    users[r].add(c)
    # Each terminal reduction joins the pass of the leaf whose arrays it reads.
    in_pass_of: dict[int, list[_Eqn]] = collections.defaultdict(list)
    for eqn in terminal:
        (x,) = eqn.ins
        homes = {produced[x]} if x in produced else users.get(x, set())
        if len(homes) != 1:
            raise _Unsupported("a reduction of an array no single leaf's pass reads")
        in_pass_of[homes.pop()].append(eqn)
    outputs_of: dict[int, list] = collections.defaultdict(list)  # component -> its outputs
    passed: dict[int, set] = collections.defaultdict(set)  # component -> inputs it passes on
    for o, ref in enumerate(outputs):
        if isinstance(ref, int) and ref in produced:
            outputs_of[produced[ref]].append((o, ref))
        elif isinstance(ref, int) and ref in inputs and flat.is_leafwise(ref):
            # An input returned as it is (MARS's and Adan's previous gradient): written by the
            # program that reads the state it replaces, in the same pass, not copied by XLA.
            source = inputs[source_of[o]] if source_of[o] < len(inputs) else None
            readers = users.get(source, set()) if source is not None else set()
            if source != ref and len(readers) == 1 and ref not in flat.blocked:
                (c,) = readers
                outputs_of[c].append((o, ref))
                passed[c].add(ref)
    for c, ops in enumerate(components):
        nodes = {r for eqn in ops for r in [*eqn.ins, *eqn.outs] if flat.is_leafwise(r)}
        nodes |= passed.get(c, set())
        sizes = {math.prod(flat.shapes[r]) for r in nodes if r not in flat.blocked}
        if len(sizes) != 1:
            raise _Unsupported("an equation mixes arrays of different sizes (not elementwise)")
        made = {o for eqn in ops for o in eqn.outs}
        reads = sorted(r for r in nodes if r not in made)
        writes = []
        for o, ref in outputs_of.get(c, []):
            source = inputs[source_of[o]] if source_of[o] < len(inputs) else None
            ok = source is not None and (
                flat.shapes[source] == flat.shapes[ref] and flat.dtypes[source] == flat.dtypes[ref]
            )
            ok = ok and source is not None and users.get(source, {c}) <= {c}
            writes.append((ref, source if ok else None))
        taken = [s for _, s in writes if s is not None]
        if len(taken) != len(set(taken)):
            writes = [(n, None) for n, _ in writes]
        group = tuple(in_pass_of.get(c, []))
        if not writes and group:
            raise _Unsupported("a reduction in the pass of a leaf the step does not update")
        if not writes:
            continue  # computes nothing the step returns
        for eqn in group:
            kind = _REDUCERS.get(eqn.primitive.name)
            x, out = eqn.ins[0], eqn.outs[0]
            if kind is None or flat.dtypes[out] not in _REDUCED:
                raise _Unsupported(f"`{eqn.primitive.name}` of {flat.dtypes[out]}")
            if kind == "sum" and flat.dtypes[x] not in (np.float32, np.int32):
                raise _Unsupported(f"a sum of {flat.dtypes[x]}")
        reason = _own_codec(ops)
        if reason is not None and not group:
            declined = declined or reason
            key, slot_nodes = f"jnp{c}", _slot_nodes(reads, writes)
            scalars: list = []
        else:
            index = gate.ins[0] if gate is not None else None
            program, scalars, slot_nodes = lower(flat, ops, reads, writes, group, index)
            key = program.key
            programs[key] = program
        blocks = _blocks(flat, ops)
        units = 0 if blocks is None else blocks.layers * blocks.blocks
        leaves[key].append(
            _Leaf(
                ops,
                slot_nodes,
                scalars,
                sizes.pop(),
                units,
                list(group),
                tuple(_REDUCED[flat.dtypes[e.outs[0]]] for e in group),
                tuple(list(_REDUCERS.values()).index(_REDUCERS[e.primitive.name]) for e in group),
            )
        )
    programs.update(reducer_programs)
    gated = gate if any(x.reductions for xs in leaves.values() for x in xs) else None
    return Plan(flat, inputs, outputs, programs, dict(leaves), treedefs, reducers, gated, declined)


# ---- running a plan ---------------------------------------------------------------------------


def _bind(eqn: _Eqn, args: list) -> list:
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: Any = ()
    if isinstance(params, tuple):  # jax < 0.7: (subfunctions, params)
        subfuns, params = params
    result = eqn.primitive.bind(*subfuns, *args, **params)
    return list(result) if eqn.primitive.multiple_results else [result]


def _bits(value: Any) -> jax.Array:
    """A scalar as the kernel reads it: its 32 bits (a float widened to float32 first)."""
    value = jnp.reshape(jnp.asarray(value), ())  # a size-1 array is a scalar here
    if value.dtype in _FLOATS:
        return jax.lax.bitcast_convert_type(value.astype(jnp.float32), jnp.uint32)
    return value.astype(jnp.uint32)


def run(p: Plan, flat_args: list, where: Layout | None = None) -> list:
    """The outputs of the traced function, its elementwise part run by the compiled programs
    (on a mesh, ``where``, each program once per shard)."""
    env: dict[int, Any] = dict(zip(p.inputs, flat_args, strict=True))
    env.update(p.flat.consts)

    def read(ref):
        return ref.value if isinstance(ref, Lit) else env[ref]

    # The reduction programs run when their scalars are known and a scalar equation needs their
    # results. On a mesh JAX reduces instead (over the whole mesh), as it does an empty leaf.
    pending = list(p.reducers)
    on_mesh = where is not None and where.mesh is not None
    events = list(p.flat.binds + p.flat.jax_ops)
    if on_mesh or not _native.status()[0]:
        events += [e for _, x in pending for e in x.ops]
        pending = []
    else:
        events += [e for _, x in pending if x.size == 0 for e in x.ops]
        pending = [(k, x) for k, x in pending if x.size > 0]
    # Demand-driven, in the jaxpr's order otherwise: a scalar equation that needs a reduction's
    # result first runs the program computing it (with every other one whose scalars are known).
    late, events, producer, reducer_of, eager = _schedule(p, events, pending)
    raw: list = []  # with a gate, the in-pass reductions' result vectors, unpacked in `_gated`
    done: set[int] = set()
    state = {"pending": [(k, x) for k, x in pending if any(o in eager for o in x.outs)]}

    def ensure(ref):
        if not isinstance(ref, int) or ref in env:
            return
        if ref in reducer_of:
            key, x = reducer_of[ref]
            for r in x.scalars:
                ensure(r)
            if all(x is not y for _, y in state["pending"]):  # needed by a branch alone
                state["pending"] = [*state["pending"], (key, x)]
            state["pending"] = _reduce_ready(p, state["pending"], env, read)
        else:
            execute(producer[ref])

    def branch(values: list, dtypes: list) -> Any:
        def taken():
            saved = dict(env), set(done), state["pending"]
            needed = _reached(p, producer, reducer_of, values, lazy=True)
            state["pending"] = [
                (k, x)
                for k, x in pending
                if any(o in needed for o in x.outs) and x.outs[0] not in env  # not yet run
            ]
            for r in values:
                ensure(r)
            result = [jnp.asarray(read(r), d) for r, d in zip(values, dtypes, strict=True)]
            env.clear()
            env.update(saved[0])
            done.clear()
            done.update(saved[1])
            state["pending"] = saved[2]
            return result

        return taken

    def execute(eqn):
        if id(eqn) in done:
            return
        selects = p.flat.lazy.get(id(eqn))
        if selects is not None:
            ensure(eqn.ins[0])
            outs = [e.outs[0] for e in selects]
            dtypes = [p.flat.dtypes[o] for o in outs]
            cases = list(zip(*[e.ins[1:] for e in selects], strict=True))
            values = jax.lax.switch(read(eqn.ins[0]), [branch(list(c), dtypes) for c in cases])
            for select, node, value in zip(selects, outs, values, strict=True):
                env[node] = jnp.reshape(value, p.flat.shapes[node])
                done.add(id(select))
            return
        for r in eqn.ins:
            ensure(r)
        for node, value in zip(eqn.outs, _bind(eqn, [read(r) for r in eqn.ins]), strict=True):
            env[node] = value
        done.add(id(eqn))

    for eqn in sorted(events, key=lambda e: e.index):
        if any(o in eager for o in eqn.outs):
            execute(eqn)
    for _, reducer in list(state["pending"]):
        for r in reducer.scalars:
            ensure(r)
    while state["pending"]:
        state["pending"] = _reduce_ready(p, state["pending"], env, read)
    for key, instances in p.leaves.items():
        program = p.programs[key]
        compiled = [x for x in instances if x.size > 0]
        for x in instances:
            if x.size == 0:  # nothing to update (and jaxlib <= 0.9 hands a kernel no pointer)
                for eqn in sorted([*x.ops, *x.reductions], key=lambda e: e.index):
                    outs = _bind(eqn, [read(r) for r in eqn.ins])
                    for node, value in zip(eqn.outs, outs, strict=True):
                        env[node] = value
        _native.program(key, program.source)
        for start in range(0, len(compiled), _GROUP):
            group = compiled[start : start + _GROUP]
            _call(p.flat, key, program, group, env, read, where, raw if p.gate else None)
    if p.gate is not None:
        _gated(p, [e for e in late if e.index < p.gate.index], raw, env, read)
        late = [e for e in late if e.index > p.gate.index]
    for eqn in late:
        if any(isinstance(r, int) and r not in env for r in eqn.ins):
            continue  # reads a value of the gate's taken branch alone: reaches no output (`_gate`)
        for node, value in zip(eqn.outs, _bind(eqn, [read(r) for r in eqn.ins]), strict=True):
            env[node] = value
    return [read(ref) for ref in p.outputs]


def _late(p: Plan, events: list) -> list:
    """The equations of ``events`` that read a reduction accumulated in an elementwise pass (or
    such an equation's result): they run after the passes."""
    late_nodes = {e.outs[0] for xs in p.leaves.values() for x in xs for e in x.reductions}
    late = []
    for eqn in sorted(events, key=lambda e: e.index):
        if any(isinstance(r, int) and r in late_nodes for r in eqn.ins):
            late.append(eqn)
            late_nodes.update(eqn.outs)
    return late


def _roots(p: Plan, late: list) -> list:
    """What a step reads in the end: its outputs, the ``late`` equations' operands, and each
    leaf program's scalars and operands."""
    roots = [*p.outputs, *(r for e in late for r in e.ins)]
    for instances in p.leaves.values():
        for x in instances:
            roots += [*x.scalars, *(r for e in [*x.ops, *x.reductions] for r in e.ins)]
    return roots


def _schedule(p: Plan, events: list, pending: list) -> tuple:
    """How `run` orders a step: ``(late, events, producer, reducer_of, eager)``: the equations
    reading a reduction accumulated in an elementwise pass (they run after the passes), the
    other ``events``, the equation and the reduction pass (of ``pending``) computing each node,
    and the nodes the step needs whichever branch its inlined conds take: what a branch alone
    needs (`_Flat.lazy`), its reduction passes included, runs inside its branch of a
    ``lax.switch``, so only the branch taken runs."""
    late = _late(p, events)
    events = [e for e in events if all(e is not x for x in late)]
    producer = {out: eqn for eqn in events for out in eqn.outs}
    reducer_of = {out: (k, x) for k, x in pending for out in x.outs}
    eager = _reached(p, producer, reducer_of, _roots(p, late), lazy=False)
    return late, events, producer, reducer_of, eager


def eager_passes(p: Plan) -> list[_Reducer]:
    """The reduction passes a step runs whichever branch its inlined conds take (with the native
    library, on one device): not those a branch alone needs (`run`)."""
    *_, eager = _schedule(p, [*p.flat.binds, *p.flat.jax_ops], p.reducers)
    return [x for _, x in p.reducers if any(o in eager for o in x.outs)]


def _reached(p: Plan, producer: dict, reducer_of: dict, roots: list, lazy: bool) -> set[int]:
    """The nodes ``roots`` need, through the equations of ``producer`` and the reduction passes of
    ``reducer_of``. Not ``lazy``: a select of an inlined ``cond`` (`_Flat.lazy`) needs only its
    index (its branches run in `run`'s switch)."""
    seen: set[int] = set()
    stack = [r for r in roots if isinstance(r, int)]
    while stack:
        ref = stack.pop()
        if ref in seen:
            continue
        seen.add(ref)
        if ref in reducer_of:
            stack += [r for r in reducer_of[ref][1].scalars if isinstance(r, int)]
        elif ref in producer:
            eqn = producer[ref]
            ins = eqn.ins[:1] if not lazy and id(eqn) in p.flat.lazy else eqn.ins
            stack += [r for r in ins if isinstance(r, int)]
    return seen


def _gated(p: Plan, before: list[_Eqn], raw: list, env: dict, read) -> None:
    """The gate's ``cond`` (`_gate`), its outputs into ``env``, with everything that reads the
    in-pass reductions' results inside its taken branches: the kernel's result vectors
    (``raw``, ``(reductions, out)`` per leaf) are unpacked there, and the scalar equations
    ``before`` it that read them run there, so a step that skips the reductions skips them
    too (a monitor's per-leaf statistics: some 80 scalar operations XLA would run every step)."""
    cond = p.gate
    assert cond is not None
    index, *operands = cond.ins
    branches = cond.params["branches"]

    def taken(k: int):
        def branch(vectors: list) -> list:
            local = dict(env)
            for (reductions, _), out in zip(raw, vectors, strict=True):
                _reduced(p.flat, reductions, out, local)
            for eqn in before:
                values = _bind(eqn, [r.value if isinstance(r, Lit) else local[r] for r in eqn.ins])
                local.update(zip(eqn.outs, values, strict=True))
            args = [r.value if isinstance(r, Lit) else local[r] for r in operands]
            return jex.jaxpr_as_fun(branches[k])(*args)

        return branch

    def skipped(vectors: list) -> list:
        # Branch 0 reads none of the reductions' results: zeros stand in for them.
        args = [
            read(r)
            if not isinstance(r, int) or r in env
            else jnp.zeros(p.flat.shapes[r], p.flat.dtypes[r])
            for r in operands
        ]
        return jex.jaxpr_as_fun(branches[0])(*args)

    vectors = [out for _, out in raw]
    branch_fns = [skipped, *(taken(k) for k in range(1, len(branches)))]
    outs = jax.lax.switch(read(index), branch_fns, vectors)
    env.update(zip(cond.outs, outs, strict=True))


def _scalar_buffer(group: list, read) -> jax.Array:
    """The scalars of a call over ``group`` (each leaf's, in order), as the uint32 buffer the
    kernel reads; each distinct scalar converted once (leaves mostly share theirs)."""
    refs = [r for x in group for r in x.scalars]
    bits: dict = {}
    for r in refs:
        if _scalar_key(r) not in bits:
            bits[_scalar_key(r)] = _bits(read(r))
    if not refs:
        return jnp.zeros((0,), jnp.uint32)
    return jnp.stack([bits[_scalar_key(r)] for r in refs])


def _reduce_ready(p: Plan, pending: list, env: dict, read) -> list:
    """Run the pending reduction programs whose scalars are all known; returns the others."""
    ready = [
        (k, x) for k, x in pending if all(not isinstance(r, int) or r in env for r in x.scalars)
    ]
    assert ready, "a reduction waits for a scalar no equation computes"
    by_key: dict[str, list[_Reducer]] = collections.defaultdict(list)
    for key, x in ready:
        by_key[key].append(x)
    for key, group in by_key.items():
        program = p.programs[key]
        _native.program(key, program.source)
        for start in range(0, len(group), _GROUP):
            _reduce_call(key, program, group[start : start + _GROUP], env, read, p.flat)
    return [(k, x) for k, x in pending if all(x is not y for _, y in ready)]


def _reduce_call(key: str, program: Program, group: list[_Reducer], env, read, flat) -> None:
    """One custom call: the reduction ``program`` over the leaves of ``group``; each reduction's
    result (its 32 bits, from derived.cc) into ``env`` as a scalar of its dtype."""
    scalars = _scalar_buffer(group, read)
    operands = [env[operand] for x in group for operand, _ in x.slots]
    width = len(group[0].outs)
    results = [jax.ShapeDtypeStruct((width,), jnp.uint32) for _ in group]
    call = jax.ffi.ffi_call(_native.REDUCE_TARGET, results, vmap_method="sequential")
    outs = call(
        scalars,
        *operands,
        program=key,
        slots=program.flags,
        scalars=np.int64(len(program.scalars)),
        kinds=np.asarray(group[0].kinds, np.int64),
        types=np.asarray(group[0].types, np.int64),
    )
    for x, out in zip(group, outs, strict=True):
        _reduced(flat, [x.outs], out, env)


def _reduced(flat: _Flat, reductions: list, out: jax.Array, env: dict) -> None:
    """Each reduction's result (its 32 bits in ``out``, from derived.cc) into ``env`` as a scalar
    of its dtype; ``reductions``: the equations, or ``[their result nodes]``."""
    nodes = (
        reductions[0]
        if reductions and isinstance(reductions[0], list)
        else [e.outs[0] for e in reductions]
    )
    for r, node in enumerate(nodes):
        dtype = flat.dtypes[node]
        value = out[r]
        if dtype == np.bool_:
            value = value != 0
        else:
            value = jax.lax.bitcast_convert_type(value, dtype)
        env[node] = jnp.reshape(value, flat.shapes[node])


def _shards(where: Layout, partition: Any) -> int:
    """How many pieces ``partition`` cuts an array into on the layout's mesh."""
    sizes = dict(zip(where.mesh.axis_names, where.mesh.axis_sizes, strict=True))
    axes = [a for entry in partition if entry is not None for a in np.atleast_1d(entry)]
    return math.prod(sizes[a] for a in axes)


def _call(
    flat: _Flat,
    key: str,
    program: Program,
    group: list[_Leaf],
    env: dict,
    read,
    where: Layout | None = None,
    raw: list | None = None,
) -> None:
    """One custom call: ``program`` over the leaves of ``group``, results into ``env`` (its
    in-pass reductions' result vectors, given ``raw``, into it instead, with their equations).

    On a mesh the call runs once per shard, inside ``jax.shard_map``: each leaf's operands and
    results in the partition of its most finely split operand (under ZeRO-1, the state's: each
    device updates its slice of the replicated params, which are then put back as they were)."""
    scalars = _scalar_buffer(group, read)
    count = len(program.scalars)
    operands: list = []
    results: list = []
    aliases: dict[int, int] = {}
    targets: list[int] = []
    for x in group:
        for operand, result in x.slots:
            if operand is not None:
                operands.append(env[operand])
            if result is not None:
                if operand is not None:
                    aliases[len(operands)] = len(results)  # operand 0 is the scalars
                results.append(jax.ShapeDtypeStruct(flat.shapes[result], flat.dtypes[result]))
                targets.append(result)
    width = len(group[0].reductions)  # reductions in the pass: one result per leaf, at the end
    results += [jax.ShapeDtypeStruct((width,), jnp.uint32) for _ in group if width]
    # A program over quantised moments runs over blocks, whole blocks a task (derived.cc).
    units = np.asarray([x.units for x in group] if program.block else [], np.int64)
    chunk = np.int64(max(1, _CHUNK // program.block) if program.block else 0)

    def call(scalars, *operands, results=results):
        run = jax.ffi.ffi_call(
            _native.DERIVED_TARGET, results, input_output_aliases=aliases, vmap_method="sequential"
        )
        return run(
            scalars,
            *operands,
            program=key,
            slots=program.flags,
            scalars=np.int64(count),
            units=units,
            chunk=chunk,
            kinds=np.asarray(group[0].kinds, np.int64),
            types=np.asarray(group[0].types, np.int64),
        )

    if where is None or where.mesh is None:
        outs = call(scalars, *operands)
    else:
        assert not width, "a reduction in the pass of a shard would be the shard's alone"
        outs = _per_shard(where, group, call, results, scalars, operands, env)
    for node, value in zip(targets, outs[: len(targets)], strict=True):
        env[node] = value
    for x, out in zip(group if width else [], outs[len(targets) :], strict=True):
        if raw is not None:
            raw.append((x.reductions, out))
        else:
            _reduced(flat, x.reductions, out, env)


def _local(where: Layout, shape: tuple, partition: Any) -> tuple:
    """The shape of one shard of an array of ``shape`` split by ``partition``."""
    entries = list(partition) + [None] * (len(shape) - len(partition))
    return tuple(n // _shards(where, [entry]) for n, entry in zip(shape, entries, strict=True))


def _per_shard(where: Layout, group: list[_Leaf], call, results, scalars, operands, env) -> list:
    """``call`` inside ``jax.shard_map`` over the layout's mesh: see `_call`."""
    in_specs, out_specs, back = [], [], []
    for x in group:
        present = [env[o] for o, _ in x.slots if o is not None]
        replicated = jax.sharding.PartitionSpec()
        partition = max(map(spec, present), key=lambda s: _shards(where, s), default=replicated)
        for operand, result in x.slots:
            if operand is not None:
                in_specs.append(partition)
            if result is not None:
                out_specs.append(partition)
                back.append(spec(env[operand]) if operand is not None else partition)
    operands = [reshard(x, where, s) for x, s in zip(operands, in_specs, strict=True)]
    replicated = jax.sharding.PartitionSpec()
    if where.concrete:
        scalars = jax.device_put(scalars, jax.sharding.NamedSharding(where.mesh, replicated))
    shards = [
        jax.ShapeDtypeStruct(_local(where, r.shape, s), r.dtype)
        for r, s in zip(results, out_specs, strict=True)
    ]
    outs = jax.shard_map(
        lambda s, *xs: call(s, *xs, results=shards),
        mesh=where.mesh,
        in_specs=(replicated, *in_specs),
        out_specs=out_specs,
        check_vma=False,  # an FFI call carries no varying-axes rule; the specs say it all
    )(scalars, *operands)
    return [reshard(x, where, s) for x, s in zip(outs, back, strict=True)]


# ---- the entry points -------------------------------------------------------------------------

_PLANS: collections.OrderedDict = collections.OrderedDict()
_PLAN_CACHE = 64


def _aval(x: Any) -> Any:
    typeof = getattr(jax, "typeof", None)  # jax.core.get_aval before jax 0.6.1
    return typeof(x) if typeof is not None else getattr(jax.core, "get_aval")(x)  # noqa: B009


def _signature(x: Any) -> tuple:
    """What a plan depends on of a leaf: its shape, dtype and weak type, and on a mesh its
    sharding (on an ``Explicit`` mesh the traced equations carry shardings, such as a storage's
    resharding of a moment: a plan traced for one partition is not another's)."""
    aval = _aval(x)
    sharding = getattr(aval, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    placed = None
    if sharding is not None and mesh is not None and not getattr(mesh, "empty", True):
        types = tuple(str(t) for t in getattr(mesh, "axis_types", ()))
        placed = (str(sharding.spec), tuple(mesh.axis_names), tuple(mesh.axis_sizes), types)
    return (tuple(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False)), placed)


def _flat_step(tx: Any, apply: Any, treedefs: tuple) -> Any:
    """``tx.update`` then ``apply``, over flat leaves: ``(params, grads, state)`` leaves in,
    ``(new params, new state)`` leaves out."""
    p_def, s_def = treedefs
    n = p_def.num_leaves

    def fn(*leaves):
        params = p_def.unflatten(leaves[:n])
        grads = p_def.unflatten(leaves[n : 2 * n])
        state = s_def.unflatten(leaves[2 * n :])
        # The chain as written (not its bounded form); a monitor's sums where the kernel takes them.
        with unbounded(), kernel_trace():
            updates, new_state = tx.update(grads, state, params)
        new_leaves, new_def = jax.tree.flatten(new_state)
        if new_def != s_def:
            raise _Unsupported("the new state has another structure than the state")
        return [*p_def.flatten_up_to(apply(params, updates)), *new_leaves]

    return fn


def _prepare(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> tuple[Any, list, Any]:
    """``(plan or the reason there is none, flat leaves, their Layout)``; plans are cached per
    optimizer and tree of shapes and dtypes (a plan closing over traced values is not kept)."""
    p_leaves, p_def = jax.tree.flatten(params)
    s_leaves, s_def = jax.tree.flatten(state)
    p_def = cast(Any, p_def)  # (typeshed's PyTreeDef lacks flatten_up_to)
    try:
        g_leaves = p_def.flatten_up_to(grads)
    except (ValueError, TypeError):
        return "the gradients do not match the params' structure", [], None
    flat_args = [*p_leaves, *g_leaves, *s_leaves]
    if not all(isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in flat_args):
        return "a leaf of the params, gradients or state is not an array", flat_args, None
    where = layout(flat_args)
    if isinstance(where, str):
        return where, flat_args, None
    in_pass = where.mesh is None  # on a mesh a norm is the whole mesh's: JAX reduces
    key = (tx.init, tx.update, apply, p_def, s_def, tuple(map(_signature, flat_args)), in_pass)
    cached = _PLANS.get(key)
    if cached is not None:
        _PLANS.move_to_end(key)
        return cached, flat_args, where
    fn = _flat_step(tx, apply, (p_def, s_def))
    try:
        try:
            result: Any = plan(fn, flat_args, (p_def, s_def), in_pass)
        except _Unsupported:
            if not in_pass:
                raise
            result = plan(fn, flat_args, (p_def, s_def), False)  # each reduction in its pass
    except _Unsupported as error:
        result = str(error)
    except Exception as error:  # the update could not be traced abstractly: the jnp path runs it
        result = f"the update could not be traced ({type(error).__name__}: {error})"
    if isinstance(result, str) or not any(
        isinstance(v, jax.core.Tracer) for v in result.flat.consts.values()
    ):
        _PLANS[key] = result
        if len(_PLANS) > _PLAN_CACHE:
            _PLANS.popitem(last=False)
    return result, flat_args, where


def _per_shard_reason(p: Plan) -> str | None:
    """Why ``p`` cannot run per shard of a mesh (``None`` if it can)."""
    for x_key, instances in p.leaves.items():
        for x in instances:
            if any(e.primitive.name == "iota" for e in x.ops):
                return (
                    "the step uses each element's index in its whole leaf (stochastic rounding "
                    "hashes it), which a shard's kernel does not see; on a mesh the jnp path "
                    "takes this step"
                )
            if p.programs[x_key].block:
                return "block-quantised moments are laid out by blocks, not like their shards"
            shapes = {p.flat.shapes[n] for slot in x.slots for n in slot if n is not None}
            if len(shapes) > 1:
                return "a leaf's operands have different shapes, which shard differently"
    return None


def _lowered(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> tuple[Any, list, Any]:
    """``(plan, flat leaves, Layout)``, or ``(the reason there is none, ...)`` (see
    `unsupported`)."""
    result, flat_args, where = _prepare(tx, apply, grads, state, params)
    if not isinstance(result, str) and result.declined is not None:
        result = result.declined
    if not isinstance(result, str) and not result.programs:
        result = "the step updates no array"
    if not isinstance(result, str) and where.mesh is not None:
        result = _per_shard_reason(result) or result
    return result, flat_args, where


def _unavailable() -> str | None:
    available, explanation = _native.status()
    if not available:
        return explanation
    if jax.default_backend() != "cpu":
        return f"the kernel is for CPU; the default backend is {jax.default_backend()}"
    return None


def unsupported(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> str | None:
    """``None`` if the step lowers to programs (whether or not this machine can compile them),
    else what in it does not."""
    result, _, _ = _lowered(tx, apply, grads, state, params)
    return result if isinstance(result, str) else None


def why_not(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> str | None:
    """``None`` if the derived kernel can take this step, else the reason it cannot."""
    return _unavailable() or unsupported(tx, apply, grads, state, params)


def step(tx: Any, apply: Any, grads: Any, state: Any, params: Any) -> tuple[Any, Any] | None:
    """``(new params, new state)`` through the derived kernel, or ``None`` (see `why_not`)."""
    if _unavailable() is not None:
        return None
    result, flat_args, where = _lowered(tx, apply, grads, state, params)
    if isinstance(result, str):
        return None
    p_def, s_def = result.treedefs
    outputs = run(result, flat_args, where)
    n = p_def.num_leaves
    outputs = [jnp.asarray(x) if not isinstance(x, jax.Array) else x for x in outputs]
    return p_def.unflatten(outputs[:n]), s_def.unflatten(outputs[n:])
