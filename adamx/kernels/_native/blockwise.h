// The block-quantised moments' code (adamx/storage/_quantize.py: `Blockwise`, `encode_magnitude`),
// in C++, for the programs adamx/kernels/_derived.py generates for a step over such moments (which
// include elements.h and this header alone). Each function is the jnp path's operations, one for
// one, so the codes and scales are the same bit for bit (tests/test_derived_blockwise.py,
// tests/test_quantize.py, tests/test_low_bit_nan.py).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

// The AVX-512 path (8-bit codes: `decode64`, `encode16`) needs F, BW (byte masks) and VBMI (byte
// permutes); anything else, or a build with -DADAMX_NO_AVX512, takes the portable loops, which
// compute the same bits.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__) && \
    !defined(ADAMX_NO_AVX512)
#define ADAMX_BLOCKWISE_AVX512 1
#include <immintrin.h>
#define ADAMX_INLINE inline __attribute__((always_inline))
#endif

namespace {

// The encoder's constants for a `kBits`-bit magnitude code (adamx/storage/_quantize.py:
// `code_constants`): decade edges (kBits + 1), and per decade the affine map to the code grid,
// slope and offset.
template <int kBits>
struct Code {
  float bounds[kBits + 1];
  float slope[kBits];
  float offset[kBits];
  explicit Code(const float* t) {  // a local copy: no store through a byte pointer can alias it
    for (int k = 0; k <= kBits; ++k) bounds[k] = t[k];
    for (int k = 0; k < kBits; ++k) slope[k] = t[kBits + 1 + k];
    for (int k = 0; k < kBits; ++k) offset[k] = t[2 * kBits + 1 + k];
  }
};

template <int kBits, bool kZeroFree>
inline int encode(float y, const Code<kBits>& c) {
  // y = |x| / absmax is in [0, 1] up to an ulp; above 1 the clamp gives the top code, as 1 would.
  // (No clamp of y: its NaN-aware select keeps the loop from vectorising.)
  // The decade by comparisons with its edges; its constants by selects, not table lookups.
  float slope = c.slope[0], offset = c.offset[0];
  int points = 1;
#pragma GCC unroll 8
  for (int k = 1; k < kBits; ++k) {
    const bool above = y >= c.bounds[k];
    slope = above ? c.slope[k] : slope;
    offset = above ? c.offset[k] : offset;
    points = above ? (1 << k) : points;
  }
  // rint: round half to even in the default mode, as jnp.round (nearbyint is a libm call). An
  // infinite y (under an absmax below 2^-128, whose inverse is inf) converts as XLA converts it,
  // to the top of the range; a NaN y stays NaN and converts to INT_MIN, below the clamp.
  const float u = std::min(y * slope + offset, static_cast<float>(2 * points));
  int code = static_cast<int>(std::rint(u));
  code = std::max(code, points - 1);
  code = std::min(code, 2 * points - 1);
  const float tiny = c.bounds[1];
  const int below = kZeroFree ? static_cast<int>(y > 0.0f) : static_cast<int>(y >= 0.5f * tiny);
  const int under = static_cast<int>(y < tiny);  // an arithmetic select: it vectorises
  return under * below + (1 - under) * code;
}

// ---- one block of a derived program -------------------------------------------------------------

namespace blockwise {
//
// A block of `kBlock` elements of one layer: its first `count` are the layer's (the last block of
// a layer may be short), the rest is padding (`jnp.pad`'s zeros, code 0).

// `Blockwise.read`: out[j] = table[code j] * scale, where code 0 stays (+-)0 under an infinite
// scale (not 0 * inf = NaN); a NaN scale makes every element NaN, code 0 included. kBits 4: two
// codes a byte, the first in the low half.
template <int kBits, size_t kBlock>
inline void decode_portable(const float* __restrict table, const uint8_t* __restrict codes,
                         float scale, float* __restrict out, size_t count) {
  if (kBits == 8) {
    if (!std::isinf(scale)) {
      for (size_t j = 0; j < count; ++j) out[j] = table[codes[j]] * scale;
    } else {
      for (size_t j = 0; j < count; ++j) {
        const float unit = table[codes[j]];
        out[j] = unit == 0.0f ? unit : unit * scale;
      }
    }
  } else {
    for (size_t j = 0; j < count; ++j) {
      const uint8_t pair = codes[j / 2];
      const float unit = table[(j & 1) ? (pair >> 4) : (pair & 15)];
      out[j] = (unit == 0.0f && std::isinf(scale)) ? unit : unit * scale;
    }
  }
}

// `Blockwise.write` of one block: the scale is the absmax of x[0, count) (`top_bits`: the maximum
// of the magnitudes' bit patterns, `magnitude_bits`; NaN when any element is NaN), the codes
// those of `encode_magnitude` of y = |x| / absmax (exactly 1 for the absmax element, also when it
// is inf), with the sign bit when kSigned and x < 0 (kMagnitude: the magnitude code's bits).
// Padding codes 0.
template <int kBits, int kMagnitude, bool kSigned, size_t kBlock>
inline void encode_portable(const float* __restrict x, size_t count, uint32_t top_bits,
                            const Code<kMagnitude>& c, uint8_t* __restrict codes,
                            float* __restrict scale) {
  float absmax;
  std::memcpy(&absmax, &top_bits, 4);
  const float inverse = 1.0f / (absmax > 0.0f ? absmax : 1.0f);
  const float top = absmax > 0.0f ? absmax : -1.0f;
  alignas(64) int32_t code[kBlock];
  alignas(64) float y[kBlock];
  // (Two loops: each vectorises.)
  for (size_t j = 0; j < count; ++j) {
    const float a = std::fabs(x[j]);
    code[j] = kSigned && x[j] < 0.0f ? (1 << kMagnitude) : 0;  // the sign bit
    y[j] = a == top ? 1.0f : a * inverse;
  }
  for (size_t j = 0; j < count; ++j) code[j] += encode<kMagnitude, !kSigned>(y[j], c);
  for (size_t j = count; j < kBlock; ++j) code[j] = 0;
  if (kBits == 8) {
    for (size_t j = 0; j < kBlock; ++j) codes[j] = static_cast<uint8_t>(code[j]);
  } else {
    for (size_t j = 0; j < kBlock / 2; ++j)
      codes[j] = static_cast<uint8_t>(code[2 * j] | (code[2 * j + 1] << 4));
  }
  *scale = absmax;
}


// ---- 8-bit codes, 64 elements at a time (AVX-512) -------------------------------------------------
//
// The same bits as the portable loops, faster: the table lookups of a decode as byte permutes, and
// the encoder's decade from the pair of binades of y (from the hand-written 8-bit Adam kernel this
// replaced, where they were checked against `encode` for every float y in [0, 1 + 2^-17], and the
// general case for every y >= 0 including inf and NaN, issue 10). Each table is checked when it is
// built (`vector`); a table that fails a check takes the portable loops.

// A decode's table as four byte planes: planes[b][code] is byte b (little-endian) of the float32
// value of `code`; four byte lookups of 256 entries rebuild the exact float.
struct Planes {
  bool vector = false;
#ifdef ADAMX_BLOCKWISE_AVX512
  alignas(64) uint8_t planes[4][256];
#endif
  Planes(const float* table, bool is_signed) {
#ifdef ADAMX_BLOCKWISE_AVX512
    vector = true;
    for (int code = 0; code < 256; ++code) {
      uint32_t bits;
      std::memcpy(&bits, table + code, 4);
      for (int b = 0; b < 4; ++b) planes[b][code] = static_cast<uint8_t>(bits >> (8 * b));
    }
    if (table[0] != 0.0f) vector = false;  // lanes past a block's end decode code 0: must be 0
    // A signed table: code 128 + k is code k negated (`decode64<true>`).
    for (int code = 0; code < 128 && is_signed; ++code) {
      uint32_t magnitude, negated;
      std::memcpy(&magnitude, table + code, 4);
      std::memcpy(&negated, table + 128 + code, 4);
      if (negated != (magnitude ^ 0x80000000u)) vector = false;
    }
#else
    (void)table;
    (void)is_signed;
#endif
  }
};

// An encoder's tables for `encode16`: the signed code's 7-bit magnitude (kZeroFree false) or the
// unsigned 8-bit code (kZeroFree true), from its `Code` constants.
struct Fast {
  bool vector = false;
#ifdef ADAMX_BLOCKWISE_AVX512
  // The decade from y's pair of binades [2^2i, 2^(2i+2)) (index i: y's biased exponent halved,
  // mod 16: exponents 96 .. 127, y in [2^-31, 1]): the decade of the pair's lowest value, and the
  // one decade edge inside the pair (+inf if none), so decade = low_decade + (y >= edge).
  alignas(64) int32_t low_decade[16];
  alignas(64) float edge[16];
  // The code's affine map by decade, and (y in [0, 1]) by pair of binades and side of its edge:
  // entry 16 + i below pair i's edge, i above it (the index is y's bits >> 24, whose bit 4 is set
  // for these exponents, flipped above the edge).
  alignas(64) float slope[16];
  alignas(64) float offset[16];
  alignas(64) float slope_at[32];
  alignas(64) float offset_at[32];
  alignas(64) float tiny[16];       // bounds[1]: the single point of decade 0
  alignas(64) float half_tiny[16];  // 0.5f * bounds[1]
#endif
  Fast(const float* bounds, int nbits, bool zero_free) {
#ifdef ADAMX_BLOCKWISE_AVX512
    vector = (nbits == 7 && !zero_free) || (nbits == 8 && zero_free);  // the codes checked
    for (int d = 0; d < 16; ++d) {
      slope[d] = d < nbits ? bounds[nbits + 1 + d] : 0.0f;
      offset[d] = d < nbits ? bounds[2 * nbits + 1 + d] : 0.0f;
    }
    // The map of decade 0 for `encode16`: the zero-free code's as it is; the other's decade 0
    // holds only y under tiny (y >= 2^-31, or clamped to it for the index), where the code is 1
    // from half of tiny up, else 0. Its map there becomes (a, 0), with which y * a + 0 rounds to
    // 0 below 0.5f * tiny and to 1 from there up to tiny (it does not decrease with y): a near
    // 0.5 / (tiny / 2), checked at the four ends.
    float slope0 = slope[0], offset0 = offset[0];
    if (!zero_free) {
      const float half = 0.5f * bounds[1], small = bounds[1];
      auto code_of = [](float y, float a) { return static_cast<int>(std::nearbyint(y * a + 0.0f)); };
      auto fits = [&](float a) {
        return code_of(0.0f, a) == 0 && code_of(std::nextafter(half, 0.0f), a) == 0 &&
               code_of(half, a) == 1 && code_of(std::nextafter(small, 0.0f), a) == 1;
      };
      float a = 0.5f / half;
      bool found = false;
      for (int step = 0; step < 1024 && !found; ++step) {
        found = fits(a);
        if (!found) a = std::nextafter(a, INFINITY);
      }
      if (!found) vector = false;
      slope0 = a;
      offset0 = 0.0f;
    }
    for (int l = 0; l < 16; ++l) tiny[l] = bounds[1];
    for (int l = 0; l < 16; ++l) half_tiny[l] = 0.5f * bounds[1];
    for (int i = 0; i < 16; ++i) {
      const float low = std::ldexp(1.0f, 96 + 2 * i - 127), high = 4.0f * low;
      int decade = 0, inside = 0;
      float at = INFINITY;
      for (int k = 1; k < nbits; ++k) {
        if (low >= bounds[k]) {
          ++decade;
        } else if (bounds[k] < high) {
          ++inside;
          at = bounds[k];
        }
      }
      if (inside > 1) vector = false;  // two edges in one pair: not this code's tables
      low_decade[i] = decade;
      edge[i] = at;
      for (int above = 0; above < 2; ++above) {
        const int d = decade + (above ? inside : 0);
        slope_at[above ? i : 16 + i] = d == 0 ? slope0 : slope[d];
        offset_at[above ? i : 16 + i] = d == 0 ? offset0 : offset[d];
      }
    }
    if (zero_free) {
      // y = 0 takes pair 0's above-edge entry (its bits >> 24 are 0), which must round to 0.
      if (!(edge[0] > 0.0f) || std::nearbyint(0.0f * slope_at[0] + offset_at[0]) != 0.0f)
        vector = false;
    }
    // Below 2^-31 the index of the pair of binades wraps around; such a y must be under `tiny`
    // (code 0 or 1, whatever its decade).
    if (!(bounds[1] >= std::ldexp(1.0f, -31))) vector = false;
#else
    (void)bounds;
    (void)nbits;
    (void)zero_free;
#endif
  }
};

#ifdef ADAMX_BLOCKWISE_AVX512
// Dequantise 64 codes to their table values (out[q]: elements 16q .. 16q + 15), with no gather:
// each byte b of the float32 value is a byte lookup in the code's table (`vpermi2b`: 128
// entries), and the four byte planes are interleaved back into floats. kSigned: the table's upper
// half is the lower half negated (code = sign bit | magnitude), so the magnitude's 128 entries
// are looked up and the sign bit is the code's; else two 128-entry lookups chosen by the code's
// top bit. The interleave (unpack within 128-bit lanes) takes plane positions 16L + 4q + r to
// out[q] lane 4L + r, so the codes are first permuted so that position 16L + 4q + r holds code
// 16q + 4L + r.
template <bool kSigned>
ADAMX_INLINE void decode64(__m512i codes, const uint8_t (*planes)[256], __m512 out[4]) {
  alignas(64) static const uint8_t kTranspose[64] = {
      0,  1,  2,  3,  16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51,  //
      4,  5,  6,  7,  20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55,  //
      8,  9,  10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59,  //
      12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
  const __m512i index = _mm512_permutexvar_epi8(_mm512_load_si512(kTranspose), codes);
  __m512i plane[4];
  if (kSigned) {
    for (int b = 0; b < 4; ++b) {
      const uint8_t* p = planes[b];
      plane[b] = _mm512_permutex2var_epi8(_mm512_load_si512(p), index, _mm512_load_si512(p + 64));
    }
    // The top byte's bit 7 (the float's sign) = the code's bit 7: plane3 ^ (code & 0x80).
    plane[3] = _mm512_ternarylogic_epi32(plane[3], index, _mm512_set1_epi8(-128), 0x78);
  } else {
    const __mmask64 upper = _mm512_movepi8_mask(index);  // code >= 128
    for (int b = 0; b < 4; ++b) {
      const uint8_t* p = planes[b];
      const __m512i lower_half = _mm512_permutex2var_epi8(_mm512_load_si512(p), index,
                                                          _mm512_load_si512(p + 64));
      const __m512i upper_half = _mm512_permutex2var_epi8(_mm512_load_si512(p + 128), index,
                                                          _mm512_load_si512(p + 192));
      plane[b] = _mm512_mask_blend_epi8(upper, lower_half, upper_half);
    }
  }
  const __m512i low01 = _mm512_unpacklo_epi8(plane[0], plane[1]);  // 16-bit halves
  const __m512i high01 = _mm512_unpackhi_epi8(plane[0], plane[1]);
  const __m512i low23 = _mm512_unpacklo_epi8(plane[2], plane[3]);
  const __m512i high23 = _mm512_unpackhi_epi8(plane[2], plane[3]);
  out[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(low01, low23));
  out[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(low01, low23));
  out[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(high01, high23));
  out[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(high01, high23));
}

// `encode<kBits, kZeroFree>` on 16 lanes. kAny: y may be anything (NaN, above 1, inf: a block
// whose absmax is NaN or under 2^-128, where 1 / absmax is inf). Otherwise y is in [0, 1 + 2^-22]
// (not NaN): there the clamps never act, and the signed code's codes under `tiny` come out of the
// affine map (`Fast`).
template <int kBits, bool kZeroFree, bool kAny>
ADAMX_INLINE __m512i encode16(__m512 y, const Fast& t) {
  const __m512i one = _mm512_set1_epi32(1);
  __m512i bits = _mm512_castps_si512(y);
  if (!kAny) {
    // The map of y's decade, from its pair of binades and the side of the pair's edge: two
    // lookups and a comparison. (Signed: y under 2^-31 takes 2^-31's pair, whose map rounds it to
    // 0. Zero-free: such a y is under tiny, set below, or 0, whose wrapped entry rounds it to 0.)
    if (!kZeroFree) bits = _mm512_max_epu32(bits, _mm512_set1_epi32(0x30000000));
    const __m512i pair = _mm512_srli_epi32(bits, 24);
    const __m512 edge = _mm512_permutexvar_ps(pair, _mm512_load_ps(t.edge));
    const __m512i at = _mm512_mask_xor_epi32(
        pair, _mm512_cmp_ps_mask(_mm512_castsi512_ps(bits), edge, _CMP_GE_OQ), pair,
        _mm512_set1_epi32(16));
    const __m512 a =
        _mm512_permutex2var_ps(_mm512_load_ps(t.slope_at), at, _mm512_load_ps(t.slope_at + 16));
    const __m512 b =
        _mm512_permutex2var_ps(_mm512_load_ps(t.offset_at), at, _mm512_load_ps(t.offset_at + 16));
    __m512i code = _mm512_cvt_roundps_epi32(_mm512_add_ps(_mm512_mul_ps(y, a), b),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (kZeroFree) {  // a y in (0, tiny) gets code 1 (y = 0 came out as 0)
      const __mmask16 under = _mm512_cmp_ps_mask(y, _mm512_load_ps(t.tiny), _CMP_LT_OQ);
      code = _mm512_mask_mov_epi32(
          code, _mm512_mask_cmp_ps_mask(under, y, _mm512_setzero_ps(), _CMP_GT_OQ), one);
    }
    return code;
  }
  // kAny: the decade itself, its map and the clamps. y is clamped to 1 for the decade (y above 1
  // or inf: the top decade), and a NaN y gets decade 0 (it fails every comparison). A y under
  // 2^-31 would take another pair's entry (the index wraps around): it is under tiny, set below.
  bits = _mm512_min_epu32(bits, _mm512_set1_epi32(0x3f800000));
  const __m512i pair = _mm512_srli_epi32(bits, 24);  // the exponent halved (mod 16 in the lookups)
  __m512i decade = _mm512_maskz_permutexvar_epi32(_mm512_cmp_ps_mask(y, y, _CMP_ORD_Q), pair,
                                                  _mm512_load_si512(t.low_decade));
  const __m512 edge = _mm512_permutexvar_ps(pair, _mm512_load_ps(t.edge));
  decade = _mm512_mask_add_epi32(
      decade, _mm512_cmp_ps_mask(_mm512_castsi512_ps(bits), edge, _CMP_GE_OQ), decade, one);
  const __m512 a = _mm512_permutexvar_ps(decade, _mm512_load_ps(t.slope));
  const __m512 b = _mm512_permutexvar_ps(decade, _mm512_load_ps(t.offset));
  const __m512i points = _mm512_sllv_epi32(one, decade);  // codes points - 1 .. 2 points - 1
  // rint (nearest, ties to even) of the map, at most 2 points (inf: the top code, as XLA's
  // conversion); a NaN converts to INT_MIN, below the clamp.
  // (vminps returns its second operand when either is NaN.)
  const __m512 top = _mm512_cvtepi32_ps(_mm512_add_epi32(points, points));
  const __m512 u = _mm512_min_ps(top, _mm512_add_ps(_mm512_mul_ps(y, a), b));
  __m512i code = _mm512_cvt_roundps_epi32(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  code = _mm512_max_epi32(code, _mm512_sub_epi32(points, one));
  code = _mm512_min_epi32(code, _mm512_sub_epi32(_mm512_add_epi32(points, points), one));
  // Under tiny (the single point of decade 0): code 0, or 1 when `below` (zero-free: y > 0).
  const __mmask16 under = _mm512_cmp_ps_mask(y, _mm512_load_ps(t.tiny), _CMP_LT_OQ);
  const __mmask16 below = kZeroFree
                              ? _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ)
                              : _mm512_cmp_ps_mask(y, _mm512_load_ps(t.half_tiny), _CMP_GE_OQ);
  return _mm512_mask_blend_epi32(under, code, _mm512_maskz_mov_epi32(below, one));
}

// The low bytes of four vectors of 16 int32 codes, in order: 64 bytes (three byte permutes).
ADAMX_INLINE __m512i pack64(const __m512i code[4]) {
  alignas(64) static const uint8_t kLow[64] = {
      0,  4,  8,  12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60,  // first operand
      64, 68, 72, 76, 80, 84, 88, 92, 96, 100, 104, 108, 112, 116, 120, 124,  // second
      0,  4,  8,  12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60,
      64, 68, 72, 76, 80, 84, 88, 92, 96, 100, 104, 108, 112, 116, 120, 124};
  const __m512i index = _mm512_load_si512(kLow);
  const __m512i low = _mm512_permutex2var_epi8(code[0], index, code[1]);   // bytes 0 .. 31
  const __m512i high = _mm512_permutex2var_epi8(code[2], index, code[3]);  // bytes 32 .. 63
  return _mm512_mask_blend_epi8(0xffffffff00000000ull, low, high);
}

inline __mmask64 first64(size_t count, size_t o) {  // lanes o .. o + 63 below count
  return count <= o ? 0 : count - o >= 64 ? ~0ull : (1ull << (count - o)) - 1;
}

template <bool kSigned, size_t kBlock>
ADAMX_INLINE void decode_avx512(const Planes& t, const uint8_t* __restrict codes, float scale,
                                float* __restrict out, size_t count) {
  const __m512 s = _mm512_set1_ps(scale), zero = _mm512_setzero_ps();
  const bool infinite = std::isinf(scale);
  for (size_t o = 0; o < count; o += 64) {
    __m512 unit[4];
    decode64<kSigned>(_mm512_maskz_loadu_epi8(first64(count, o), codes + o), t.planes, unit);
    for (int q = 0; q < 4; ++q) {
      // unit * scale; code 0 stays (+-)0 under an infinite scale (not 0 * inf = NaN)
      __m512 value = _mm512_mul_ps(unit[q], s);
      if (infinite)
        value = _mm512_mask_mov_ps(unit[q], _mm512_cmp_ps_mask(unit[q], zero, _CMP_NEQ_UQ), value);
      _mm512_store_ps(out + o + 16 * q, value);
    }
  }
}

template <bool kAny, int kMagnitude, bool kSigned>
ADAMX_INLINE void encode64(const Fast& t, const float* __restrict x, uint8_t* __restrict codes,
                           size_t o, __mmask64 valid, __m512 inverse, __m512 top) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512i code[4];
  __mmask64 negative = 0;
  for (int q = 0; q < 4; ++q) {
    const __m512 xi = _mm512_maskz_loadu_ps(static_cast<__mmask16>(valid >> (16 * q)), x + o + 16 * q);
    const __m512 a = _mm512_abs_ps(xi);
    // y = |x| == absmax ? 1 : |x| * (1 / absmax). Unless kAny, absmax * (1 / absmax) is within
    // 2^-22 of 1, where the code is 1's: the select is not needed.
    __m512 y = _mm512_mul_ps(a, inverse);
    if (kAny) y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(a, top, _CMP_EQ_OQ), one);
    code[q] = encode16<kMagnitude, !kSigned, kAny>(y, t);
    if (kSigned)
      negative |= static_cast<__mmask64>(_mm512_cmp_ps_mask(xi, _mm512_setzero_ps(), _CMP_LT_OQ))
                  << (16 * q);
  }
  __m512i bytes = pack64(code);
  if (kSigned) bytes = _mm512_mask_add_epi8(bytes, negative, bytes, _mm512_set1_epi8(-128));
  _mm512_storeu_si512(codes + o, _mm512_maskz_mov_epi8(valid, bytes));  // padding: code 0
}

template <int kMagnitude, bool kSigned, size_t kBlock>
ADAMX_INLINE void encode_avx512(const Fast& t, const float* __restrict x, size_t count,
                                uint32_t top_bits, uint8_t* __restrict codes,
                                float* __restrict scale) {
  float absmax;
  std::memcpy(&absmax, &top_bits, 4);
  const float inverse = 1.0f / (absmax > 0.0f ? absmax : 1.0f);
  const float top = absmax > 0.0f ? absmax : -1.0f;
  const __m512 vi = _mm512_set1_ps(inverse), vt = _mm512_set1_ps(top);
  // |x| <= absmax, so y = |x| * (1 / absmax) <= 1 + 2^-22, unless the absmax is NaN (y = |x|),
  // inf (y = 0, or NaN for inf * 0) or under 2^-128 (1 / absmax = inf): then kAny.
  const bool any = absmax != absmax || std::isinf(absmax) || std::isinf(inverse);
  if (any) {
    for (size_t o = 0; o < kBlock; o += 64)
      encode64<true, kMagnitude, kSigned>(t, x, codes, o, first64(count, o), vi, vt);
  } else {
    for (size_t o = 0; o < kBlock; o += 64)
      encode64<false, kMagnitude, kSigned>(t, x, codes, o, first64(count, o), vi, vt);
  }
  *scale = absmax;
}
#endif  // ADAMX_BLOCKWISE_AVX512

// ---- what a derived program calls -----------------------------------------------------------------

template <int kBits, bool kSigned, size_t kBlock>
inline void decode_block(const Planes& planes, const float* __restrict table,
                         const uint8_t* __restrict codes, float scale, float* __restrict out,
                         size_t count) {
#ifdef ADAMX_BLOCKWISE_AVX512
  if (kBits == 8 && kBlock % 64 == 0 && planes.vector) {
    decode_avx512<kSigned, kBlock>(planes, codes, scale, out, count);
    return;
  }
#endif
  (void)planes;
  decode_portable<kBits, kBlock>(table, codes, scale, out, count);
}

template <int kBits, int kMagnitude, bool kSigned, size_t kBlock>
inline void encode_block(const Fast& fast, const float* __restrict x, size_t count,
                         uint32_t top_bits, const Code<kMagnitude>& c, uint8_t* __restrict codes,
                         float* __restrict scale) {
#ifdef ADAMX_BLOCKWISE_AVX512
  if (kBits == 8 && kBlock % 64 == 0 && fast.vector) {
    encode_avx512<kMagnitude, kSigned, kBlock>(fast, x, count, top_bits, codes, scale);
    return;
  }
#endif
  (void)fast;
  encode_portable<kBits, kMagnitude, kSigned, kBlock>(x, count, top_bits, c, codes, scale);
}

// The absmax's running maximum as the elements are computed: the maximum of the magnitudes' bit
// patterns (the same order for non-negative floats; a NaN's pattern is above inf's, so a NaN
// element gives a NaN scale, as `_absmax` on the jnp path).
inline uint32_t magnitude_bits(float x) {
  const float a = std::fabs(x);
  uint32_t bits;
  std::memcpy(&bits, &a, 4);
  return bits;
}

}  // namespace blockwise

}  // namespace
