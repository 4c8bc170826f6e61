"""Low-bit moment storage: bfloat16 with stochastic rounding, 8-bit and 4-bit quantised moments.

Each class here is a `MomentStorage` (``adamx/storage/_storage.py``): a moment block reads its buffer
through ``read`` into float32, does its float32 math, and writes it back through ``write``. So any
optimizer that takes ``mu_dtype`` / ``nu_dtype`` takes one of these instead of a dtype, with no
copy of itself (docs/design.md, section 7).

The 8- and 4-bit codes are *dynamic-exponent* codes in the style of bitsandbytes (Dettmers et al.
2022): a magnitude code ``k`` of ``b`` bits has its leading one at bit ``i`` (the decade) and the
``i`` bits below it as a linear fraction ``j``:

.. math::
    |x|(k) = 10^{\\,i - b + 1} \\left(0.1 + 0.9\\, \\frac{j + 1}{2^i}\\right),
    \\qquad k = 2^i + j,\\quad 0 \\le j < 2^i, \\qquad |x|(0) = 0,

so the codes cover ``b`` decades below 1, each decade with twice the points of the one below, and
the largest code is exactly 1 (a block's absmax element is stored exactly). Inside decade ``i``,
together with the top of decade ``i - 1``, the points are evenly spaced, so the nearest code is an
affine function of the value, rounded: the decade by comparisons with its edges, then one multiply,
one add and one ``round``, not a search of a table.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core._layers import BatchDims, batch_count, check_batch_dims
from ..core._trees import is_explicit

__all__ = [
    "Blockwise",
    "QuantizedBuffer",
    "Rank1",
    "RoundedBuffer",
    "StochasticBfloat16",
    "blockwise_4bit",
    "blockwise_8bit",
    "low_bit_moments",
    "rank1_4bit",
    "stochastic_bfloat16",
]

# ---- the dynamic-exponent code ------------------------------------------------------------------


def dynamic_code(bits: int) -> np.ndarray:
    """The ``2**bits`` magnitudes of the dynamic-exponent code, indexed by code (ascending)."""
    values = [0.0]
    for i in range(bits):
        for j in range(2**i):
            values.append(10.0 ** (i - bits + 1) * (0.1 + 0.9 * (j + 1) / 2**i))
    return np.asarray(values, np.float64)


def code_constants(bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The float32 constants of the ``bits``-bit magnitude code's encoder.

    ``bounds[k] = 10**(k - bits)`` for ``k = 0 .. bits`` (the decades' edges; the last is 1), and
    for each decade ``i < bits`` the affine map from ``y`` to the code's grid,
    ``code = slope[i] * y + offset[i]`` rounded: decade ``i``'s points are
    ``y = 10**(i - bits + 1) (0.1 + 0.9 (j + 1) / 2**i)`` at codes ``2**i + j``, so
    ``slope[i] = 10**(bits - 1 - i) 2**i / 0.9`` and ``offset[i] = 2**i - 1 - 2**i / 9``. The fused
    kernel (``adamx/kernels/_native/blockwise.h``, through ``adamx/kernels/_derived.py``) gets
    these same numbers, so both paths compute the same codes.
    """
    bounds = np.asarray([10.0 ** (k - bits) for k in range(bits + 1)], np.float32)
    slope = np.asarray([10.0 ** (bits - 1 - i) * 2.0**i / 0.9 for i in range(bits)], np.float32)
    offset = np.asarray([2.0**i - 1.0 - 2.0**i / 9.0 for i in range(bits)], np.float32)
    return bounds, slope, offset


def _lookup(table: np.ndarray, index: jax.Array) -> jax.Array:
    """``table[index]`` (float32). On an ``Explicit`` mesh the table is put whole on the index's
    mesh and each device looks up its own indices (JAX cannot infer that sharding itself)."""
    values = jnp.asarray(table, jnp.float32)
    split = _explicit_sharding(index)
    if split is None:
        return values[index]
    values = jax.sharding.reshard(values, jax.sharding.PartitionSpec(None))
    return values.at[index].get(out_sharding=split.spec)


def _pick(table: np.ndarray, y: jax.Array, bounds: np.ndarray) -> jax.Array:
    """``table[decade]`` for each ``y`` (``decade``: how many of ``bounds[1:-1]`` it reaches), as
    a chain of selects, the same values as a lookup: XLA:CPU vectorises a select, not a gather
    (with two gathers, 1M elements took 3.1 ms to encode in 8 bits and 13.3 ms in 4, with the
    selects 1.9 and 1.6)."""
    out = jnp.full(y.shape, table[0], jnp.float32)
    for k in range(1, len(table)):
        out = jnp.where(y >= bounds[k], table[k], out)
    return out


def _decode_table(table: np.ndarray, codes: jax.Array) -> jax.Array:
    """``table[codes]`` (float32); a table of 16 as selects, which XLA:CPU vectorises where it
    does not a gather (the same values)."""
    if len(table) > 16 or not _one_device(codes):
        return _lookup(table, codes.astype(jnp.int32))
    values = np.asarray(table, np.float32)
    out = jnp.full(codes.shape, values[0], jnp.float32)
    for k in range(1, len(values)):
        out = jnp.where(codes == k, values[k], out)
    return out


def encode_magnitude(y: jax.Array, bits: int, *, zero_free: bool = False) -> jax.Array:
    """The code of the nearest magnitude to each ``y`` in ``[0, 1]`` (``int32``), analytically.

    A negative ``y`` gets code 0, one above 1 the top code.

    The decade is found by ``bits - 1`` comparisons with its edges and the point inside it by one
    ``round``: no search of the code's table, no logarithm, no division (the kernel's operations,
    one for one). ``zero_free``: a positive ``y`` never gets code 0 (the second moment: a zero
    ``v`` under a nonzero ``m`` would blow the step up).
    """
    bounds, slope, offset = code_constants(bits)
    # Above 1 (an ulp, from |x| * (1 / absmax)) the clamp below gives the top code, as 1 would.
    y = y.astype(jnp.float32)
    decade = sum((y >= bounds[k]).astype(jnp.int32) for k in range(1, bits))
    points = jnp.left_shift(1, decade)  # 2**i points in the decade, codes 2**i .. 2**(i+1) - 1
    # The nearest point of the decade's grid, extended down by one to the previous decade's top
    # (code 2**i - 1): one multiply, one add and a round.
    u = y * _pick(slope, y, bounds) + _pick(offset, y, bounds)
    code = jnp.clip(jnp.round(u).astype(jnp.int32), points - 1, 2 * points - 1)
    tiny = bounds[1]  # the single point of decade 0
    below = (y > 0) if zero_free else (y >= np.float32(0.5) * tiny)
    return jnp.where(y < tiny, below.astype(jnp.int32), code)


# ---- stochastic rounding to bfloat16 ------------------------------------------------------------


def _hash32(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser (Wellons' lowbias32): counter in, well-mixed bits out."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def stochastic_round_bfloat16(value: jax.Array, counter: jax.Array) -> jax.Array:
    """``value`` rounded to bfloat16 up or down with probability proportional to its distance.

    The random bits are a hash of (element index, ``counter``): no PRNG key, no extra array. The
    expectation of the result is ``value`` (unbiased), unlike round-to-nearest, which drops every
    increment smaller than half a bfloat16 ulp (an EMA with ``1 - b2 = 1e-3`` stalls).
    """
    x = value.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    index = jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape)
    noise = _hash32(index * jnp.uint32(0x9E3779B9) + _hash32(counter.astype(jnp.uint32))) >> 16
    rounded = (bits + noise) & jnp.uint32(0xFFFF0000)
    out = jax.lax.bitcast_convert_type(rounded, jnp.float32).astype(jnp.bfloat16)
    # NaN keeps its payload's NaN-ness; the sum above could turn a low-bit payload into inf.
    return jnp.where(jnp.isnan(x), x.astype(jnp.bfloat16), out)


class RoundedBuffer(NamedTuple):
    """The stored form of `StochasticBfloat16`: the bfloat16 buffer and its write counter."""

    value: jax.Array
    counter: jax.Array  # uint32 scalar: writes so far, the hash's seed (wraps: not a step count)


# One parameter's moment (`_trees.is_stored_moment`): error messages and sharding rules treat it as
# a whole. Set outside the class body, where a NamedTuple would take it for a field.
RoundedBuffer.stored_moment = True  # type: ignore[attr-defined]


@dataclass(frozen=True)
class StochasticBfloat16:
    """A bfloat16 moment written with stochastic rounding: 2 bytes per element, unbiased.

    Built by `stochastic_bfloat16`.
    """

    def init(self, param: jax.Array) -> RoundedBuffer:
        return RoundedBuffer(jnp.zeros_like(param, jnp.bfloat16), jnp.zeros((), jnp.uint32))

    def read(self, stored: RoundedBuffer, dtype: Any) -> jax.Array:
        return stored.value.astype(dtype)

    def write(self, value: jax.Array, stored: RoundedBuffer) -> RoundedBuffer:
        counter = stored.counter + jnp.uint32(1)
        if jnp.iscomplexobj(value):
            raise TypeError(
                "`stochastic_bfloat16` stores real moments, got a complex one; keep complex "
                "parameters' first moment in a float dtype (`mu_dtype=None`)."
            )
        return RoundedBuffer(stochastic_round_bfloat16(value, counter), counter)


def stochastic_bfloat16() -> StochasticBfloat16:
    """bfloat16 moment storage with stochastic rounding (half of float32's bytes).

    Pass it as ``mu_dtype`` or ``nu_dtype`` of any optimizer that has them, e.g.
    ``adamx.adamw(1e-3, mu_dtype=adamx.stochastic_bfloat16(), nu_dtype=adamx.stochastic_bfloat16())``.
    """
    return StochasticBfloat16()


# ---- block-wise quantisation --------------------------------------------------------------------
#
# Non-finite moments. A NaN anywhere in a block (a row or column of a rank-1 layer) makes its scale
# NaN, and a NaN scale reads back as NaN for every element it scales, code 0 included: the NaN
# stays visible in the state and spreads over its block, never silently dropped (bitsandbytes'
# block absmax does the same). An infinite scale (an Inf moment, or a v = g**2 that overflowed)
# keeps its element at +-inf (the top code) and reads code 0 as 0, not 0 * inf = NaN.


def _absmax(x: jax.Array, axis: int) -> jax.Array:
    """``max(|x|)`` over ``axis``, NaN when any element is NaN: the maximum of the magnitudes'
    bit patterns (a NaN's is above inf's, and for the other non-negative floats the order of the
    patterns is the order of the values), as the fused kernel takes it. A float max reduction
    will not do: XLA:CPU's keeps or drops a NaN depending on where it falls."""
    bits = jax.lax.bitcast_convert_type(jnp.abs(x), jnp.uint32)
    if axis in (-1, x.ndim - 1) and _one_device(x):
        # Halves folded elementwise first (the same maximum): XLA:CPU's integer reduction of a
        # row of 256 is not vectorised (1M elements: 1.07 ms this way, 0.20 ms folded to 64).
        while bits.shape[-1] > 64 and bits.shape[-1] % 2 == 0:
            half = bits.shape[-1] // 2
            bits = jnp.maximum(bits[..., :half], bits[..., half:])
        axis = -1
    return jax.lax.bitcast_convert_type(jnp.max(bits, axis=axis), jnp.float32)


def _layers(batch_dims: BatchDims, shape: tuple[int, ...]) -> int:
    """How many leading axes of a leaf of ``shape`` index stacked layers (validated)."""
    return batch_count(batch_dims, jax.ShapeDtypeStruct(shape, jnp.float32))


def _spec_of(x: jax.Array) -> tuple[Any, ...] | None:
    """``x``'s partition spec, one entry per axis, on an ``Explicit`` mesh that splits it."""
    sharding = _explicit_sharding(x)
    if sharding is None:
        return None
    return tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))


def _reshape(x: jax.Array, shape: tuple[int, ...], spec: Any) -> jax.Array:
    """``x.reshape(shape)``; on an ``Explicit`` mesh, to ``spec`` (one entry per new axis)."""
    if _explicit_sharding(x) is None:
        return x.reshape(shape)
    return jnp.reshape(x, shape, out_sharding=jax.sharding.PartitionSpec(*spec))


def _reshard(x: jax.Array, spec: Any) -> jax.Array:
    """``x`` moved to ``spec`` on an ``Explicit`` mesh (what it cannot keep gathered)."""
    if _explicit_sharding(x) is None:
        return x
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec(*spec))


# Off a mesh, a pair of 4-bit codes is packed and unpacked through the 16 bits of the pair
# (`bitcast_convert_type` between a uint16 and its two bytes, low byte first), the same bytes as
# stacking the halves: XLA:CPU compiles a stack's trailing axis of 2 into loops that run 10x
# slower inside a `fori_loop` (measured: the bounded step's 4-bit decode of a chunk).


def _pack4(codes: jax.Array) -> jax.Array:
    """Two 4-bit codes per byte along the last axis (even length)."""
    if _one_device(codes):
        pairs = codes.astype(jnp.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
        word = jax.lax.bitcast_convert_type(pairs, jnp.uint16)
        return ((word & jnp.uint16(15)) | ((word >> 8) << 4)).astype(jnp.uint8)
    spec = _spec_of(codes)
    shape = (*codes.shape[:-1], codes.shape[-1] // 2, 2)
    pairs = _reshape(codes.astype(jnp.uint8), shape, None if spec is None else (*spec, None))
    return pairs[..., 0] | (pairs[..., 1] << 4)


def _unpack4(packed: jax.Array) -> jax.Array:
    if _one_device(packed):
        low, high = packed & jnp.uint8(15), packed >> 4
        word = low.astype(jnp.uint16) | (high.astype(jnp.uint16) << 8)
        pairs = jax.lax.bitcast_convert_type(word, jnp.uint8)
        return pairs.reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    spec = _spec_of(packed)
    low, high = packed & jnp.uint8(15), packed >> 4
    return _reshape(jnp.stack([low, high], axis=-1), (*packed.shape[:-1], -1), spec)


@jax.tree_util.register_pytree_with_keys_class
class QuantizedBuffer:
    """The stored form of a quantised moment: integer codes and float32 scales.

    ``codes`` are ``uint8`` (two 4-bit codes per byte when ``bits == 4``), ``scales`` the float32
    block scales (block-wise) or ``(rows, cols)`` factors (rank-1). ``shape`` is the moment's shape
    (static, part of the tree structure).
    """

    stored_moment = True  # one parameter's moment: error messages name the parameter, not its parts

    def __init__(self, codes: Any, scales: Any, shape: tuple[int, ...]):
        self.codes = codes
        self.scales = scales
        self.shape = tuple(shape)

    def tree_flatten_with_keys(self):
        keys = (jax.tree_util.GetAttrKey("codes"), jax.tree_util.GetAttrKey("scales"))
        return tuple(zip(keys, (self.codes, self.scales), strict=True)), self.shape

    @classmethod
    def tree_unflatten(cls, shape, children):
        return cls(*children, shape)

    def __eq__(self, other: object) -> Any:
        """Field by field, as a NamedTuple compares (so trees of dtypes or shapes compare)."""
        if not isinstance(other, QuantizedBuffer):
            return NotImplemented
        return (
            self.shape == other.shape and self.codes == other.codes and self.scales == other.scales
        )

    __hash__ = None  # type: ignore[assignment]  # mutable fields, as a list

    def __repr__(self) -> str:
        return f"QuantizedBuffer(shape={self.shape}, codes={self.codes!r}, scales={self.scales!r})"


# ---- where the codes and scales live on a mesh -----------------------------------------------------


def _entries(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def layout_specs(
    shape: tuple[int, ...], entries: list[Any], codes: tuple[int, ...], scales: Any, axis_size: Any
) -> tuple[tuple[Any, ...], Any]:
    """The partition specs (entry tuples) of a quantised moment's codes and scales on a mesh.

    ``shape`` is the parameter's shape and ``entries`` its partition spec, one entry per axis;
    ``codes`` and ``scales`` are the stored arrays' shapes (a pair of shapes for rank-1 scales);
    ``axis_size(entry)`` the number of devices an entry splits over. Codes and scales are laid
    out by layer, then by the layer's elements in row-major order, so they follow the parameter
    where that order keeps each device's elements together:

    * the layer axis follows the parameter's first stacked-layer axis, when no other layer axis
      is split;
    * the blocks follow the parameter's first axis after the layers, when no later axis is split
      and every device's rows hold whole blocks (8-bit and 4-bit block-wise: blocks divide evenly
      and no block is padded; rank-1 4-bit: an even number of codes, and the row scales);
    * rank-1's column scales follow the parameter's last axis when only that one is split.

    Anything else is replicated over the axes it cannot follow: a parameter split on its last axis
    (``P(None, "model")``) keeps whole copies of its codes on each device of ``"model"``.
    """
    nb = _layer_count(shape, codes[0])
    outer, inner = entries[:nb], entries[nb:]
    size = math.prod(shape[nb:])
    layer = outer[0] if outer and all(e is None for e in outer[1:]) else None
    first = inner[0] if inner and all(e is None for e in inner[1:]) else None
    last = inner[-1] if len(inner) > 1 and all(e is None for e in inner[:-1]) else None
    if isinstance(
        scales[0], tuple
    ):  # rank-1: codes (layers, pairs); (layers, rows), (layers, cols)
        even = first is not None and (size // axis_size(first)) % 2 == 0
        return (layer, first if even else None), ((layer, first), (layer, last))
    blocks, width = scales[1], codes[2]
    # No block is padded: each holds `size // blocks` elements, a block (8 bits: `width`
    # elements; 4 bits: two a byte). (`size % blocks == 0` alone let 5000 elements in 20 blocks
    # of 256 pass, the last one partial: a device's blocks were then not its elements'.)
    whole = size % blocks == 0 and size // blocks in (width, 2 * width)
    aligned = first is not None and whole and blocks % axis_size(first) == 0
    block = first if aligned else None
    return (layer, block, None), (layer, block)


def followed_spec(shape: tuple[int, ...], codes: tuple[int, ...], codes_spec: Any) -> list[Any]:
    """The partition (entries, one per axis) of a parameter of ``shape`` that a quantised moment's
    codes (of shape ``codes``: layers, then blocks or pairs) laid out as ``codes_spec`` follow:
    `layout_specs` read backwards, its first layer axis and its first axis after the layers split
    as the codes' first two axes are."""
    entries: list[Any] = [None] * len(shape)
    nb = _layer_count(shape, codes[0])
    if nb:
        entries[0] = codes_spec[0]
    if nb < len(shape):
        entries[nb] = codes_spec[1]
    return entries


def _placed_zeros(shape: tuple[int, ...], dtype: Any, spec: tuple[Any, ...], like: Any) -> Any:
    """Zeros of ``shape``, on the mesh of ``like`` (a parameter) with ``spec`` when ``like`` has a
    known mesh: a placed array's (eager), or a traced one's on an ``Explicit`` mesh."""
    sharding = _named_sharding(like)
    if sharding is None:
        return jnp.zeros(shape, dtype)
    target = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    if isinstance(like, jax.core.Tracer):
        return jnp.zeros(shape, dtype, out_sharding=target)
    return jnp.zeros(shape, dtype, device=target)


def _named_sharding(param: Any) -> Any:
    """A placed array's ``NamedSharding``, or a traced one's on an ``Explicit`` mesh."""
    if isinstance(param, jax.core.Tracer):
        return _explicit_sharding(param)
    sharding = getattr(param, "sharding", None)
    return sharding if isinstance(sharding, jax.sharding.NamedSharding) else None


def _stored_zeros(param: Any, codes: tuple[int, ...], scales: Any) -> tuple[Any, Any]:
    """The zero codes (uint8) and scales (float32) of a quantised moment of ``param``, placed
    by `layout_specs` where ``param``'s mesh is known."""
    pair = isinstance(scales[0], tuple)
    layout = _layout_spec(_named_sharding(param), tuple(jnp.shape(param)), codes, scales)
    if layout is None:
        code_spec: tuple[Any, ...] = (None,) * len(codes)
        scale_spec: Any = tuple((None,) * len(s) for s in scales) if pair else (None,) * 2
    else:
        code_spec, scale_spec = layout
    zeros_codes = _placed_zeros(codes, jnp.uint8, code_spec, param)
    if pair:
        zeros_scales: Any = tuple(
            _placed_zeros(s, jnp.float32, sp, param)
            for s, sp in zip(scales, scale_spec, strict=True)
        )
    else:
        zeros_scales = _placed_zeros(scales, jnp.float32, scale_spec, param)
    return zeros_codes, zeros_scales


def _explicit_sharding(x: Any) -> Any:
    """``x``'s sharding when it is part of its type (an ``Explicit`` mesh) and splits something."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    if not is_explicit(sharding):
        return None
    return sharding if any(e is not None for e in getattr(sharding, "spec", ())) else None


def _one_device(x: Any) -> bool:
    """Whether ``x`` is on one device, so the codecs may take their faster forms (selects for a
    small table, a row's maximum folded by halves, 4-bit pairs through 16 bits: the same values).
    With several devices they keep one form on every mesh, ``Auto`` (where a trace does not say
    how ``x`` is split) and ``Explicit`` alike, so the fusions XLA makes, and with them where it
    contracts ``a * b + c``, do not depend on the mesh (tests/test_sharding.py: the same bits)."""
    return _explicit_sharding(x) is None and jax.device_count() == 1


def _layer_count(shape: tuple[int, ...], layers: int) -> int:
    """How many leading axes of ``shape`` make ``layers`` (as `layout_specs` reads them)."""
    return next(k for k in range(len(shape) + 1) if math.prod(shape[:k]) == layers)


def _kept(
    shape: tuple[int, ...], layers: int, layer: Any, inner: Any, last: Any = None
) -> tuple[Any, ...]:
    """The spec of a parameter-shaped array that keeps only the layout's entries: the first
    layer axis's, the first axis after the layers' and (rank-1's columns) the last axis's. The
    storages reshard a moment to it before cutting it into rows or blocks (what the layout cannot
    follow is gathered first), and read a moment back with it."""
    nb = _layer_count(shape, layers)
    keep: list[Any] = [None] * len(shape)
    if nb:
        keep[0] = layer
    if nb < len(shape):
        keep[nb] = inner
    if last is not None:
        keep[-1] = last
    return tuple(keep)


def _to_param(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``(layers, ...)`` values back to the parameter's ``shape``, keeping ``x``'s split axes."""
    spec = _spec_of(x)
    return _reshape(x, shape, None if spec is None else _kept(shape, x.shape[0], *spec))


def _layout_spec(sharding: Any, shape: tuple[int, ...], codes: tuple[int, ...], scales: Any) -> Any:
    """`layout_specs` for a parameter of ``shape`` with ``sharding`` (``None``: not split)."""
    if sharding is None:
        return None
    entries = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))

    def size(entry: Any) -> int:
        return math.prod(sharding.mesh.shape[name] for name in _entries(entry))

    return layout_specs(shape, entries, codes, scales, size)


def _check_real(value: Any, who: str) -> None:
    if jnp.iscomplexobj(value):
        raise TypeError(
            f"`{who}` quantises real moments, got a complex one; keep complex parameters' first "
            "moment in a float dtype (`mu_dtype=None`), or exclude them with `adamx.partition`."
        )


@dataclass(frozen=True)
class Blockwise:
    """Block-wise quantised moment storage: one absmax per block of ``block_size`` elements.

    Built by `blockwise_8bit` and `blockwise_4bit`; the fields are theirs.
    """

    bits: int = 8
    signed: bool = True
    block_size: int = 256
    min_size: int = 4096
    batch_dims: BatchDims = 0
    linear: bool = False  # the zero-free linear code of `Rank1` (a 4-bit unsigned vector)

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"`bits` must be 8 or 4, got {self.bits!r}.")
        if not isinstance(self.block_size, int) or self.block_size < 2 or self.block_size % 2:
            raise ValueError(
                f"`block_size` must be an even int >= 2, got {self.block_size!r}; bitsandbytes "
                "uses 256 (8-bit), Li et al. 128 (4-bit)."
            )
        if not isinstance(self.min_size, int) or self.min_size < 0:
            raise ValueError(f"`min_size` must be an int >= 0, got {self.min_size!r}.")
        check_batch_dims(self.batch_dims)

    @property
    def _magnitude_bits(self) -> int:
        return self.bits - 1 if self.signed else self.bits

    def _layout(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(layers, elements per layer, blocks per layer)."""
        nb = _layers(self.batch_dims, shape)
        layers, size = math.prod(shape[:nb]), math.prod(shape[nb:])
        return layers, size, -(-size // self.block_size)

    def init(self, param: jax.Array) -> Any:
        shape = tuple(jnp.shape(param))
        # Small tensors stay float32 (bitsandbytes' rule), and a zero-size one has nothing to code.
        if math.prod(shape) < max(self.min_size, 1):
            return jnp.zeros_like(param, dtype=jnp.float32)  # where the param lives
        _check_real(param, "blockwise storage")
        layers, _, blocks = self._layout(shape)
        width = self.block_size // 2 if self.bits == 4 else self.block_size
        codes, scales = _stored_zeros(param, (layers, blocks, width), (layers, blocks))
        return QuantizedBuffer(codes, scales, shape)

    def read(self, stored: Any, dtype: Any) -> jax.Array:
        if not isinstance(stored, QuantizedBuffer):
            return stored.astype(dtype)
        if _marked(self):
            decode = _codec(self, "decode", stored.shape)
            return decode(stored.codes, stored.scales).astype(dtype)
        return self._decode(stored.codes, stored.scales, stored.shape).astype(dtype)

    def _decode(self, codes: Any, scales: Any, shape: tuple[int, ...]) -> jax.Array:
        """The float32 moment of ``shape`` from its codes and block scales."""
        layers, size, _ = self._layout(shape)
        codes = _unpack4(codes) if self.bits == 4 else codes
        if self.linear:
            unit = (codes.astype(jnp.float32) + 1.0) / 16.0
        else:
            unit = _decode_table(self._table(), codes)
        # Code 0 is (+-)0 even under an infinite scale (a v that overflowed), not 0 * inf = NaN;
        # under a NaN scale every element is NaN (0 * NaN), code 0 included.
        scale = scales[..., None]
        values = jnp.where((unit == 0) & jnp.isinf(scale), unit, unit * scale)
        blocks = values.shape[1] * values.shape[2]
        spec = _spec_of(values)
        rows = _reshape(values, (layers, blocks), None if spec is None else spec[:2])
        if blocks != size:
            rows = rows[:, :size]
        return _to_param(rows, shape)

    def _table(self) -> np.ndarray:
        magnitudes = dynamic_code(self._magnitude_bits)
        if not self.signed:
            return magnitudes
        return np.concatenate([magnitudes, -magnitudes])  # code = sign bit | magnitude

    def write(self, value: jax.Array, stored: Any) -> Any:
        if not isinstance(stored, QuantizedBuffer):
            return value.astype(stored.dtype)
        _check_real(value, "blockwise storage")
        value = value.astype(jnp.float32)
        codes_shape, scales_shape = tuple(stored.codes.shape), tuple(stored.scales.shape)
        if _marked(self):
            encode = _codec(self, "encode", stored.shape)
            codes, scales = encode(value)
        else:
            codes, scales = self._encode(value, stored.shape, codes_shape, scales_shape)
        return QuantizedBuffer(codes, scales, stored.shape)

    def _encode(
        self, value: jax.Array, shape: tuple[int, ...], codes: tuple, scales: tuple
    ) -> tuple[jax.Array, jax.Array]:
        """The codes and block scales of the float32 moment ``value`` of ``shape``."""
        layers, size, blocks = self._layout(shape)
        layout = _layout_spec(_explicit_sharding(value), shape, codes, scales)
        layer, block = (None, None) if layout is None else layout[1]
        value = _reshard(value, _kept(shape, layers, layer, block))
        flat = _reshape(value, (layers, size), (layer, block))
        flat = jnp.pad(flat, ((0, 0), (0, blocks * self.block_size - size)))
        x = _reshape(flat, (layers, blocks, self.block_size), (layer, block, None))
        magnitude = jnp.abs(x)
        scale = _absmax(x, -1)[..., None]  # NaN if any element is NaN
        # The absmax element is exactly 1, also when it is inf (where inf * (1 / inf) is NaN).
        y = jnp.where(
            (magnitude == scale) & (scale > 0),
            1.0,
            magnitude * (1.0 / jnp.where(scale > 0, scale, 1.0)),
        )
        scale = scale[..., 0]
        mag_bits = self._magnitude_bits
        if self.linear:
            code = _linear_code(jnp.where(x > 0, y, 0.0))
        else:
            code = encode_magnitude(y, mag_bits, zero_free=not self.signed)
        if self.signed:
            code = code | jnp.where(x < 0, 1 << mag_bits, 0)
        code = code.astype(jnp.uint8)
        return _pack4(code) if self.bits == 4 else code, scale.astype(jnp.float32)


# ---- the codecs, marked for the derived kernel and the bounded path ---------------------------------
#
# A quantised moment's decode (codes and scales -> float32 values) and encode (float32 values ->
# codes and scales) each run as one named call: a `jax.custom_jvp` around the same operations,
# which JAX runs op by op when eager and inlines under `jit`, so the numbers are those of the
# operations themselves. The derived kernel (adamx/kernels/_derived.py) recognises the call by its
# name (`CODECS`) and lowers it as a block operation of the leaf's loop instead of its gather and
# block reduction; the bounded jnp path (adamx/kernels/_bounded.py) runs it a chunk at a time. A
# rank-1 moment's (`Rank1`, a matrix: codes and the (row, column) scales) is one call too: its
# encode reduces the whole layer to its scales, which the bounded path takes in a pass of its own.

CODECS: dict[str, tuple[str, Any]] = {}  # name -> ("decode" or "encode", `Blockwise` or `Rank1`)


def codec_name(kind: str, config: Any) -> str:
    if isinstance(config, Rank1):
        return f"adamx_rank1_{kind}"
    sign = "s" if config.signed else "u"
    linear = "l" if config.linear else ""
    return f"adamx_blockwise_{kind}_{config.bits}{sign}{linear}_{config.block_size}"


def _marked(config: Any) -> bool:
    """Whether a read or write runs as a named call: with a hashable configuration (a
    ``batch_dims`` function that cannot be hashed cannot key the calls' cache). On an
    ``Explicit`` mesh too: the call holds the storage's own resharding, and the bounded path
    (adamx/kernels/_bounded.py) runs the codec on each device's shard of it."""
    try:
        hash(config)
    except TypeError:
        return False
    return True


@functools.cache
def _codec(config: Any, kind: str, shape: tuple[int, ...]) -> Any:
    """The named call that decodes or encodes a moment of ``shape`` stored by ``config`` (a
    `Blockwise`, or a `Rank1` matrix's)."""
    name = codec_name(kind, config)
    body: Any
    # What the kernel needs of the configuration (the layout comes with the call's shapes).
    if isinstance(config, Rank1):
        CODECS[name] = (kind, Rank1())
        if kind == "decode":

            def body(codes, row, col):
                return config._decode(codes, row, col, shape)

        else:

            def body(value):
                return config._encode(value, shape)

    else:
        CODECS[name] = (
            kind,
            Blockwise(config.bits, config.signed, config.block_size, linear=config.linear),
        )
        if kind == "decode":

            def body(codes, scales):
                return config._decode(codes, scales, shape)

        else:
            layers, _, blocks = config._layout(shape)
            width = config.block_size // 2 if config.bits == 4 else config.block_size

            def body(value):
                return config._encode(value, shape, (layers, blocks, width), (layers, blocks))

    body.__name__ = body.__qualname__ = name
    call = jax.custom_jvp(body)
    call.defjvp(lambda primals, tangents: jax.jvp(body, primals, tangents))
    return call


def blockwise_8bit(
    signed: bool = True, *, block_size: int = 256, min_size: int = 4096, batch_dims: BatchDims = 0
) -> Blockwise:
    """8-bit block-wise moment storage (bitsandbytes' scheme): 1 byte per element + 4 per block.

    Args:
      signed: ``True`` for a first moment (a sign bit and a 7-bit dynamic-exponent magnitude),
        ``False`` for a second moment, which is never negative (8-bit magnitude, and a positive
        value never stored as 0). An unsigned storage clips negative values to 0: use it for
        ``nu_dtype`` only.
      block_size: elements per absmax scale (bitsandbytes: 256).
      min_size: tensors with fewer elements stay float32 (bitsandbytes: 4096).
      batch_dims: leading stacked-layer axes (an int, or a function ``leaf -> int``); a block
        never spans two layers.
    """
    return Blockwise(8, signed, block_size, min_size, batch_dims)


def blockwise_4bit(
    signed: bool = True, *, block_size: int = 128, min_size: int = 4096, batch_dims: BatchDims = 0
) -> Blockwise:
    """4-bit block-wise moment storage (Li et al. 2023's first moment): two codes per byte.

    Args as in `blockwise_8bit`; the default block is 128 elements (Li et al.).
    """
    return Blockwise(4, signed, block_size, min_size, batch_dims)


@dataclass(frozen=True)
class Rank1:
    """4-bit second-moment storage after Li et al. (2023): rank-1 scales and a linear code.

    Each element of a layer viewed as a ``(rows, cols)`` matrix (``cols``: the last axis) is scaled
    by ``min(row max, column max)`` and coded linearly without zero: ``(k + 1) / 16``, ``k < 16``.
    Vectors are scaled by blocks of ``block_size`` instead. Built by `rank1_4bit`.
    """

    min_size: int = 4096
    block_size: int = 128
    batch_dims: BatchDims = 0

    def _matrix(self, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        nb = _layers(self.batch_dims, shape)
        core = shape[nb:]
        if len(core) < 2:
            return None
        return math.prod(shape[:nb]), math.prod(core[:-1]), core[-1]

    def _vector(self) -> Blockwise:
        return Blockwise(4, False, self.block_size, 0, self.batch_dims, linear=True)

    def init(self, param: jax.Array) -> Any:
        shape = tuple(jnp.shape(param))
        if math.prod(shape) < max(self.min_size, 1):  # as `Blockwise`
            return jnp.zeros_like(param, dtype=jnp.float32)  # where the param lives
        _check_real(param, "rank1_4bit")
        matrix = self._matrix(shape)
        if matrix is None:
            return self._vector().init(param)
        layers, rows, cols = matrix
        codes, scales = _stored_zeros(
            param, (layers, -(-rows * cols // 2)), ((layers, rows), (layers, cols))
        )
        return QuantizedBuffer(codes, scales, shape)

    def read(self, stored: Any, dtype: Any) -> jax.Array:
        if not isinstance(stored, QuantizedBuffer):
            return stored.astype(dtype)
        if not isinstance(stored.scales, tuple):
            return self._vector().read(stored, dtype)
        row, col = stored.scales
        if _marked(self):
            decode = _codec(self, "decode", stored.shape)
            return decode(stored.codes, row, col).astype(dtype)
        return self._decode(stored.codes, row, col, stored.shape).astype(dtype)

    def _decode(self, codes: Any, row: Any, col: Any, shape: tuple[int, ...]) -> jax.Array:
        """The float32 moment of ``shape`` from its packed codes and row and column scales."""
        layers, rows, cols = self._matrix(shape)  # type: ignore[misc]
        codes = _unpack4(codes)
        if codes.shape[1] != rows * cols:
            codes = codes[:, : rows * cols]
        spec = _spec_of(codes)
        codes = _reshape(codes, (layers, rows, cols), None if spec is None else (*spec, None))
        return _to_param(rank1_values(codes, row, col), shape)

    def write(self, value: jax.Array, stored: Any) -> Any:
        if not isinstance(stored, QuantizedBuffer):
            return value.astype(stored.dtype)
        _check_real(value, "rank1_4bit")
        if not isinstance(stored.scales, tuple):
            return self._vector().write(value, stored)
        value = value.astype(jnp.float32)
        if _marked(self):
            codes, row, col = _codec(self, "encode", stored.shape)(value)
        else:
            codes, row, col = self._encode(value, stored.shape)
        return QuantizedBuffer(codes, (row, col), stored.shape)

    def _encode(self, value: jax.Array, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        """The packed codes and the row and column scales of the float32 moment ``value``."""
        layers, rows, cols = self._matrix(shape)  # type: ignore[misc]
        scales = ((layers, rows), (layers, cols))
        codes_shape = (layers, -(-rows * cols // 2))
        layout = _layout_spec(_explicit_sharding(value), shape, codes_shape, scales)
        (layer, pairs), ((_, first), (_, last)) = layout or ((None, None), ((None,) * 2,) * 2)
        value = _reshard(value, _kept(shape, layers, layer, first, last))
        x = jnp.maximum(_reshape(value, (layers, rows, cols), (layer, first, last)), 0.0)
        row, col = rank1_scales(x)
        code = rank1_codes(x, row, col)
        code = _reshard(code, (layer, pairs, None))  # columns, or an odd count per device: whole
        flat = _reshape(code, (layers, rows * cols), (layer, pairs))
        flat = jnp.pad(flat, ((0, 0), (0, (rows * cols) % 2)))
        return _pack4(flat), row, col


# The rank-1 code's equations, over ``(layers, rows, cols)`` arrays: the storage applies them to a
# whole layer, the bounded jnp path (adamx/kernels/_bounded.py) to a chunk of whole rows, with the
# scales of the whole layer (the row maxima of the chunk's rows, the column maxima of all rows).


def rank1_scales(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The row and column maxima of ``x = max(v, 0)``, NaN-propagating (`_absmax`): a NaN
    element makes its row's and its column's scale NaN."""
    return _absmax(x, 2), _absmax(x, 1)


def rank1_values(codes: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
    """``(k + 1) / 16 * min(row max, column max)``: the values of unpacked ``codes``."""
    scale = jnp.minimum(row[:, :, None], col[:, None, :])
    return (codes.astype(jnp.float32) + 1.0) / 16.0 * scale


def rank1_codes(x: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
    """The codes (unpacked, ``uint8``) of ``x = max(v, 0)`` under its row and column scales."""
    scale = jnp.minimum(row[:, :, None], col[:, None, :])
    return _linear_code(x / jnp.where(scale > 0, scale, 1.0))


def _linear_code(y: jax.Array) -> jax.Array:
    """The nearest of the 16 points ``(k + 1) / 16`` to ``y`` in ``[0, 1]`` (no zero point)."""
    return jnp.clip(jnp.round(y * 16.0 - 1.0), 0, 15).astype(jnp.uint8)


def rank1_4bit(*, min_size: int = 4096, block_size: int = 128, batch_dims: BatchDims = 0) -> Rank1:
    """4-bit second-moment storage (Li et al. 2023): rank-1 scales, a linear code without zero.

    Args:
      min_size: tensors with fewer elements stay float32.
      block_size: the block of a vector (1-D layer), scaled block-wise instead.
      batch_dims: leading stacked-layer axes: each layer gets its own row and column scales.
    """
    return Rank1(min_size, block_size, batch_dims)


def low_bit_moments(bits: int, *, batch_dims: BatchDims = 0) -> dict[str, Any]:
    """``mu_dtype`` and ``nu_dtype`` storing both moments in ``bits`` bits: 16, 8 or 4.

    ``adamx.adamw(1e-3, **adamx.low_bit_moments(8))``. 16: `stochastic_bfloat16` (4 bytes per
    parameter for both moments); 8: `blockwise_8bit`, signed for ``m``, unsigned for ``v`` (about
    2.03); 4: `blockwise_4bit` for ``m`` and `rank1_4bit` for ``v`` (about 1.04). Tensors under 4096
    elements stay float32.
    """
    if bits == 16:
        return {"mu_dtype": stochastic_bfloat16(), "nu_dtype": stochastic_bfloat16()}
    if bits == 8:
        return {
            "mu_dtype": blockwise_8bit(True, batch_dims=batch_dims),
            "nu_dtype": blockwise_8bit(False, batch_dims=batch_dims),
        }
    if bits == 4:
        return {
            "mu_dtype": blockwise_4bit(True, batch_dims=batch_dims),
            "nu_dtype": rank1_4bit(batch_dims=batch_dims),
        }
    raise ValueError(f"`bits` must be 16, 8 or 4, got {bits!r}.")
