// adamx's fused Adam(W) step over 8-bit block-quantised moments, registered through jax.ffi.
//
// See fused_step.cc for the conventions (operation order, no FP contraction, aliasing).

#include "blockwise.h"
#include "fused_common.h"

// The AVX-512 path (below) needs F, BW (byte masks) and VBMI (byte permutes); anything else, or a
// build with -DADAMX_NO_AVX512, takes the portable scalar loops, which compute the same bits.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__) && \
    !defined(ADAMX_NO_AVX512)
#define ADAMX_QUANTIZED_AVX512 1
#include <immintrin.h>
// The pieces of a block's update are inlined into one loop, where the scratch moments, the block's
// constants and the tables stay in registers (a call would make them reachable from the byte
// stores of the codes, so reloaded after each).
#define ADAMX_INLINE inline __attribute__((always_inline))
#endif

namespace {

// ---- Adam(W) with 8-bit block-quantised moments (adamx/storage/_quantize.py's `Blockwise`) ----------------
//
// One pass per block: dequantise m and v (code table times the block's absmax), run the Adam step
// above on float32 values, update p, then take the new block absmax and re-encode both moments
// with the dynamic-exponent code, in the jnp path's operations (adamx/storage/_quantize.py:
// `encode_magnitude`, `Blockwise.write`), so the results are bit-identical to it.
//
// Operands: hyper, tables, then p[0..n), g[0..n), m_codes[0..n), m_scales[0..n), v_codes[0..n),
// v_scales[0..n); results p, m_codes, m_scales, v_codes, v_scales (aliased). `tables` holds the
// signed code's 256 values, the unsigned code's 256 values, the signed code's 8 decade edges and
// the unsigned code's 9. A leaf is `layers` x `sizes` elements; codes are [layers, blocks, block].

constexpr int kMaxBlock = 4096;
constexpr size_t kTables = 512 + 22 + 25;

struct QuantizedLeaf {
  float* p;
  const float* g;
  uint8_t* mc;
  float* ms;
  uint8_t* vc;
  float* vs;
  size_t size;    // elements per layer
  size_t blocks;  // blocks per layer
  bool decayed;
};

// The `tables` operand of one call, and (AVX-512 path) the same numbers laid out for in-register
// lookups, built once per call by `prepare`.
struct Tables {
  const float* raw;     // the operand: the scalar path reads it directly
  bool vector = false;  // the AVX-512 path may run (its layouts below are filled in and valid)
#ifdef ADAMX_QUANTIZED_AVX512
  // planes[moment][b][code]: byte b (little-endian) of the float32 value of `code` (moment 0: m's
  // signed table, 1: v's unsigned one); four byte lookups of 256 entries rebuild the exact float.
  alignas(64) uint8_t planes[2][4][256];
  // The encoder's decade from y's pair of binades [2^2i, 2^(2i+2)) (index i: y's biased exponent
  // halved, mod 16: exponents 96 .. 127, y in [2^-31, 1]): the decade of the pair's lowest value,
  // and the one decade edge inside the pair (+inf if none), so decade = low_decade + (y >= edge).
  alignas(64) int32_t low_decade[2][16];
  alignas(64) float edge[2][16];
  // The code's affine map by decade (moment 0: 7 decades, 1: 8), and (`encode16`, y in [0, 1])
  // by pair of binades and side of its edge: entry 16 + i below pair i's edge, i above it (the
  // index is y's bits >> 24, whose bit 4 is set for these exponents, flipped above the edge).
  alignas(64) float slope[2][16];
  alignas(64) float offset[2][16];
  alignas(64) float slope_at[2][32];
  alignas(64) float offset_at[2][32];
  alignas(64) float tiny[2][16];  // bounds[1]: the single point of decade 0
  alignas(64) float half_tiny[2][16];  // 0.5f * bounds[1]
#endif
};

void prepare(const float* t, Tables& out) {
  out.raw = t;
  out.vector = false;
#ifdef ADAMX_QUANTIZED_AVX512
  out.vector = true;
  for (int moment = 0; moment < 2; ++moment) {
    for (int code = 0; code < 256; ++code) {
      uint32_t bits;
      std::memcpy(&bits, t + 256 * moment + code, 4);
      for (int b = 0; b < 4; ++b) out.planes[moment][b][code] = static_cast<uint8_t>(bits >> (8 * b));
    }
    const int nbits = moment == 0 ? 7 : 8;
    const float* bounds = t + (moment == 0 ? 512 : 534);  // then slope, offset (`Code`)
    for (int d = 0; d < 16; ++d) {
      out.slope[moment][d] = d < nbits ? bounds[nbits + 1 + d] : 0.0f;
      out.offset[moment][d] = d < nbits ? bounds[2 * nbits + 1 + d] : 0.0f;
    }
    // The map of decade 0 for `encode16`: v's as it is; m's decade 0 holds only y under tiny
    // (y >= 2^-31, or clamped to it for the index), where the code is 1 from half of tiny up, else
    // 0. Its map there becomes (a, 0), with which y * a + 0 rounds to 0 below 0.5f * tiny and to 1
    // from there up to tiny (it does not decrease with y): a near 0.5 / (tiny / 2), checked at the
    // four ends.
    float slope0 = out.slope[moment][0], offset0 = out.offset[moment][0];
    if (moment == 0) {
      const float half = 0.5f * bounds[1], tiny = bounds[1];
      auto code_of = [](float y, float a) { return static_cast<int>(std::nearbyint(y * a + 0.0f)); };
      auto fits = [&](float a) {
        return code_of(0.0f, a) == 0 && code_of(std::nextafter(half, 0.0f), a) == 0 &&
               code_of(half, a) == 1 && code_of(std::nextafter(tiny, 0.0f), a) == 1;
      };
      float a = 0.5f / half;
      bool found = false;
      for (int step = 0; step < 1024 && !found; ++step) {
        found = fits(a);
        if (!found) a = std::nextafter(a, INFINITY);
      }
      if (!found) out.vector = false;
      slope0 = a;
      offset0 = 0.0f;
    }
    for (int l = 0; l < 16; ++l) out.tiny[moment][l] = bounds[1];
    for (int l = 0; l < 16; ++l) out.half_tiny[moment][l] = 0.5f * bounds[1];
    for (int i = 0; i < 16; ++i) {
      const float low = std::ldexp(1.0f, 96 + 2 * i - 127), high = 4.0f * low;
      int decade = 0, inside = 0;
      float edge = INFINITY;
      for (int k = 1; k < nbits; ++k) {
        if (low >= bounds[k]) {
          ++decade;
        } else if (bounds[k] < high) {
          ++inside;
          edge = bounds[k];
        }
      }
      if (inside > 1) out.vector = false;  // two edges in one pair: not this code's tables
      out.low_decade[moment][i] = decade;
      out.edge[moment][i] = edge;
      for (int above = 0; above < 2; ++above) {
        const int d = decade + (above ? inside : 0);
        out.slope_at[moment][above ? i : 16 + i] = d == 0 ? slope0 : out.slope[moment][d];
        out.offset_at[moment][above ? i : 16 + i] = d == 0 ? offset0 : out.offset[moment][d];
      }
    }
    if (moment == 1) {
      // v's y = 0 takes pair 0's above-edge entry (its bits >> 24 are 0), which must round to 0.
      if (!(out.edge[1][0] > 0.0f) || std::nearbyint(0.0f * out.slope_at[1][0] + out.offset_at[1][0]) != 0.0f)
        out.vector = false;
    }
    // Lanes past a block's end decode code 0 and must give 0 (no effect on the absmax).
    if (t[256 * moment] != 0.0f) out.vector = false;
    // m's table: code 128 + k is code k negated (`decode64<true>`).
    for (int code = 0; code < 128 && moment == 0; ++code) {
      uint32_t magnitude, negated;
      std::memcpy(&magnitude, t + code, 4);
      std::memcpy(&negated, t + 128 + code, 4);
      if (negated != (magnitude ^ 0x80000000u)) out.vector = false;
    }
    // Below 2^-31 the index of the pair of binades wraps around; such a y must be under `tiny`
    // (code 0 or 1, whatever its decade).
    if (!(bounds[1] >= std::ldexp(1.0f, -31))) out.vector = false;
  }
#endif
}

#ifdef ADAMX_QUANTIZED_AVX512
// ---- the AVX-512 path: the scalar path's operations, 16 lanes at a time -------------------------

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

// `encode<kBits, kZeroFree>` on 16 lanes (moment: 0 for the 7-bit code, 1 for the 8-bit one).
// kAny: y may be anything (NaN, above 1, inf: a block whose absmax is NaN or under 2^-128, where
// 1 / absmax is inf). Otherwise y is in [0, 1 + 2^-22] (not NaN): there the clamps never act, and
// m's codes under `tiny` come out of the affine map (`prepare`). Both were checked against `encode`
// for every float y in [0, 1 + 2^-17], and kAny for every y >= 0 including inf and NaN (a
// standalone harness, issue 10); tests/test_quantize.py compares whole steps.
template <int kBits, bool kZeroFree, bool kAny>
ADAMX_INLINE __m512i encode16(__m512 y, const Tables& t, int moment) {
  const __m512i one = _mm512_set1_epi32(1);
  __m512i bits = _mm512_castps_si512(y);
  if (!kAny) {
    // The map of y's decade, from its pair of binades and the side of the pair's edge: two
    // lookups and a comparison. (m: y under 2^-31 takes 2^-31's pair, whose map rounds it to 0.
    // v: such a y is under tiny, set below, or 0, whose wrapped entry rounds it to 0.)
    if (!kZeroFree) bits = _mm512_max_epu32(bits, _mm512_set1_epi32(0x30000000));
    const __m512i pair = _mm512_srli_epi32(bits, 24);
    const __m512 edge = _mm512_permutexvar_ps(pair, _mm512_load_ps(t.edge[moment]));
    const __m512i at = _mm512_mask_xor_epi32(
        pair, _mm512_cmp_ps_mask(_mm512_castsi512_ps(bits), edge, _CMP_GE_OQ), pair,
        _mm512_set1_epi32(16));
    const float* slope = t.slope_at[moment];
    const float* offset = t.offset_at[moment];
    const __m512 a = _mm512_permutex2var_ps(_mm512_load_ps(slope), at, _mm512_load_ps(slope + 16));
    const __m512 b = _mm512_permutex2var_ps(_mm512_load_ps(offset), at, _mm512_load_ps(offset + 16));
    __m512i code = _mm512_cvt_roundps_epi32(_mm512_add_ps(_mm512_mul_ps(y, a), b),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (kZeroFree) {  // a y in (0, tiny) gets code 1 (y = 0 came out as 0)
      const __mmask16 under = _mm512_cmp_ps_mask(y, _mm512_load_ps(t.tiny[moment]), _CMP_LT_OQ);
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
                                                  _mm512_load_si512(t.low_decade[moment]));
  const __m512 edge = _mm512_permutexvar_ps(pair, _mm512_load_ps(t.edge[moment]));
  decade = _mm512_mask_add_epi32(
      decade, _mm512_cmp_ps_mask(_mm512_castsi512_ps(bits), edge, _CMP_GE_OQ), decade, one);
  const __m512 a = _mm512_permutexvar_ps(decade, _mm512_load_ps(t.slope[moment]));
  const __m512 b = _mm512_permutexvar_ps(decade, _mm512_load_ps(t.offset[moment]));
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
  const __mmask16 under = _mm512_cmp_ps_mask(y, _mm512_load_ps(t.tiny[moment]), _CMP_LT_OQ);
  const __mmask16 below =
      kZeroFree ? _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ)
                : _mm512_cmp_ps_mask(y, _mm512_load_ps(t.half_tiny[moment]), _CMP_GE_OQ);
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

// The second half of a block's update: y = |x| / absmax, and the codes of m and v, 64 at a time
// (kAny: see `encode_block`). a, b: |m|, |v|; negative: the lanes where m < 0, 16 bits per 16.
template <bool kAny>
ADAMX_INLINE void encode64(const Tables& t, const float* a, const float* b,
                           const uint16_t* negative, uint8_t* mc, uint8_t* vc, size_t i,
                           size_t count, size_t width, __m512 m_inverse, __m512 v_inverse,
                           __m512 m_top, __m512 v_top) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512i m_code[4], v_code[4];
  for (int q = 0; q < 4; ++q) {
    const __m512 ai = _mm512_load_ps(a + i + 16 * q), bi = _mm512_load_ps(b + i + 16 * q);
    // y = |x| == absmax ? 1 : |x| * (1 / absmax). Unless kAny, absmax * (1 / absmax) is within
    // 2^-22 of 1, where the code is 1's: the select is not needed.
    __m512 my = _mm512_mul_ps(ai, m_inverse), vy = _mm512_mul_ps(bi, v_inverse);
    if (kAny) {
      my = _mm512_mask_mov_ps(my, _mm512_cmp_ps_mask(ai, m_top, _CMP_EQ_OQ), one);
      vy = _mm512_mask_mov_ps(vy, _mm512_cmp_ps_mask(bi, v_top, _CMP_EQ_OQ), one);
    }
    m_code[q] = encode16<7, false, kAny>(my, t, 0);  // m's 7-bit magnitude code
    v_code[q] = encode16<8, true, kAny>(vy, t, 1);   // v's 8-bit code
  }
  // m's code: the sign bit (m < 0) | the magnitude code. Lanes past `count` are padding (code
  // 0); nothing is stored past `width`.
  __mmask64 sign;
  std::memcpy(&sign, negative + i / 16, 8);
  const __mmask64 valid = count - i >= 64 ? ~0ull : (1ull << (count - i)) - 1;
  const __mmask64 stored = width - i >= 64 ? ~0ull : (1ull << (width - i)) - 1;
  const __m512i m_bytes = pack64(m_code);
  _mm512_mask_storeu_epi8(
      mc + i, stored,
      _mm512_maskz_mov_epi8(valid, _mm512_mask_add_epi8(m_bytes, sign, m_bytes,
                                                        _mm512_set1_epi8(-128))));
  _mm512_mask_storeu_epi8(vc + i, stored, _mm512_maskz_mov_epi8(valid, pack64(v_code)));
}

// The codes of a block from |m|, |v| (a, b) and m's signs (count rounded up to 64: zeros past
// count).
ADAMX_INLINE void encode_block(const Tables& t, const float* m, const float* v,
                               const uint16_t* negative, uint8_t* mc, uint8_t* vc, size_t count,
                               size_t width, float m_max, float v_max) {
  const float m_inv = 1.0f / (m_max > 0.0f ? m_max : 1.0f);
  const float v_inv = 1.0f / (v_max > 0.0f ? v_max : 1.0f);
  // The absmax element is exactly 1, also when it is inf (where inf * (1 / inf) is NaN).
  const float m_top = m_max > 0.0f ? m_max : -1.0f, v_top = v_max > 0.0f ? v_max : -1.0f;
  const __m512 mi = _mm512_set1_ps(m_inv), vi = _mm512_set1_ps(v_inv);
  const __m512 mt = _mm512_set1_ps(m_top), vt = _mm512_set1_ps(v_top);
  // |x| <= absmax, so y = |x| * (1 / absmax) <= 1 + 2^-22, unless the absmax is NaN (y = |x|),
  // inf (y = 0, or NaN for inf * 0) or under 2^-128 (1 / absmax = inf; y = 0 * inf = NaN or inf):
  // then kAny.
  const bool any = m_max != m_max || v_max != v_max || std::isinf(m_max) || std::isinf(v_max) ||
                   std::isinf(m_inv) || std::isinf(v_inv);
  size_t i = 0;
  if (any) {
    for (; i < count; i += 64) encode64<true>(t, m, v, negative, mc, vc, i, count, width, mi, vi, mt, vt);
  } else {
    for (; i < count; i += 64) encode64<false>(t, m, v, negative, mc, vc, i, count, width, mi, vi, mt, vt);
  }
  for (; i < width; ++i) mc[i] = vc[i] = 0;  // the rest of the padding codes 0
}

// Blocks [first, last) of one layer: per block, dequantise m and v, the Adam step (p updated),
// the new m and v into scratch with their absmax, then their codes. kEpsPositive: eps > 0, so
// the denominator sqrt(.) + eps is never 0 (it is > 0 or NaN).
// kFull: every block of the range has `kFull` elements and is that wide (the masks and counts are
// constants); 0: any block, the last one of a layer short.
template <bool kNesterov, bool kDecayed, bool kEpsPositive, size_t kFull>
void adam_quantized_blocks_avx512(const float* h, const Tables& t, const QuantizedLeaf& leaf,
                                  size_t layer, size_t first, size_t last, size_t any_width) {
  const size_t width = kFull ? kFull : any_width;
  const __m512 a1 = _mm512_set1_ps(h[kA1]), b1 = _mm512_set1_ps(h[kB1]);
  const __m512 c1 = _mm512_set1_ps(h[kC1]), a2 = _mm512_set1_ps(h[kA2]);
  const __m512 b2 = _mm512_set1_ps(h[kB2]), c2 = _mm512_set1_ps(h[kC2]);
  const __m512 eps_root = _mm512_set1_ps(h[kEpsRoot]), eps = _mm512_set1_ps(h[kEps]);
  const __m512 decay = _mm512_set1_ps(h[kDecay]), neg_lr = _mm512_set1_ps(h[kNegLr]);
  const __m512 c1_next = _mm512_set1_ps(h[kC1Next]), g_weight = _mm512_set1_ps(h[kGWeight]);
  const __m512 zero = _mm512_setzero_ps();
  alignas(64) float m[kMaxBlock + 64];  // |m| and |v| of the new moments, count rounded up to 64
  alignas(64) float v[kMaxBlock + 64];
  alignas(64) uint16_t negative[kMaxBlock / 16 + 4];  // per 16 elements: the lanes where m < 0
  for (size_t block = first; block < last; ++block) {
    const size_t start = block * width;
    const size_t count = kFull ? kFull : (leaf.size - start < width ? leaf.size - start : width);
    float* p = leaf.p + layer * leaf.size + start;
    const float* g = leaf.g + layer * leaf.size + start;
    uint8_t* mc = leaf.mc + (layer * leaf.blocks + block) * width;
    uint8_t* vc = leaf.vc + (layer * leaf.blocks + block) * width;
    const float m_scale = leaf.ms[layer * leaf.blocks + block];
    const float v_scale = leaf.vs[layer * leaf.blocks + block];
    const __m512 ms = _mm512_set1_ps(m_scale), vs = _mm512_set1_ps(v_scale);
    // Code 0 is (+-)0 even under an infinite scale, not 0 * inf = NaN: a select where a scale is
    // infinite. Under a NaN scale every element is NaN (0 * NaN), code 0 included, as on the jnp
    // path: the block's NaN stays visible.
    const bool m_infinite = std::isinf(m_scale), v_infinite = std::isinf(v_scale);
    __m512i m_bits = _mm512_setzero_si512(), v_bits = _mm512_setzero_si512();
    for (size_t o = 0; o < count; o += 64) {
      // Dequantise 64 codes (code 0 past `count`) to table values.
      const __mmask64 k64 = count - o >= 64 ? ~0ull : (1ull << (count - o)) - 1;
      __m512 m_unit[4], v_unit[4];
      decode64<true>(_mm512_maskz_loadu_epi8(k64, mc + o), t.planes[0], m_unit);
      decode64<false>(_mm512_maskz_loadu_epi8(k64, vc + o), t.planes[1], v_unit);
      for (int q = 0; q < 4; ++q) {  // (past `count`, g = p = 0 and code 0: m = v = 0, or NaN
                                     // under a NaN scale, whose block's absmax is NaN anyway)
        const size_t i = o + 16 * q;
        const __mmask16 k = count <= i         ? 0
                            : count - i >= 16 ? 0xffff
                                              : static_cast<__mmask16>((1u << (count - i)) - 1);
        // m = unit * scale (unit == 0 ? unit : unit * scale, when the scale is infinite)
        __m512 m_old = _mm512_mul_ps(m_unit[q], ms), v_old = _mm512_mul_ps(v_unit[q], vs);
        if (m_infinite)
          m_old = _mm512_mask_mov_ps(m_unit[q], _mm512_cmp_ps_mask(m_unit[q], zero, _CMP_NEQ_UQ), m_old);
        if (v_infinite)
          v_old = _mm512_mask_mov_ps(v_unit[q], _mm512_cmp_ps_mask(v_unit[q], zero, _CMP_NEQ_UQ), v_old);
        // The Adam step, as the scalar loop (and `adam` in fused_step.cc), operation for operation.
        const __m512 gi = _mm512_maskz_loadu_ps(k, g + i), pi = _mm512_maskz_loadu_ps(k, p + i);
        const __m512 mi = _mm512_add_ps(_mm512_mul_ps(a1, gi), _mm512_mul_ps(b1, m_old));
        const __m512 vi =
            _mm512_add_ps(_mm512_mul_ps(a2, _mm512_mul_ps(gi, gi)), _mm512_mul_ps(b2, v_old));
        const __m512 m_hat =
            kNesterov ? _mm512_add_ps(_mm512_mul_ps(b1, _mm512_mul_ps(mi, c1_next)),
                                      _mm512_mul_ps(g_weight, gi))
                      : _mm512_mul_ps(mi, c1);
        const __m512 denominator =
            _mm512_add_ps(_mm512_sqrt_ps(_mm512_add_ps(_mm512_mul_ps(vi, c2), eps_root)), eps);
        // u = denominator != 0 ? m_hat / denominator : 0 (!= is true for NaN).
        __m512 u = kEpsPositive
                       ? _mm512_div_ps(m_hat, denominator)
                       : _mm512_maskz_div_ps(_mm512_cmp_ps_mask(denominator, zero, _CMP_NEQ_UQ),
                                             m_hat, denominator);
        if (kDecayed) u = _mm512_add_ps(u, _mm512_mul_ps(decay, pi));
        _mm512_mask_storeu_ps(p + i, k, _mm512_add_ps(pi, _mm512_mul_ps(u, neg_lr)));
        const __m512 am = _mm512_abs_ps(mi), av = _mm512_abs_ps(vi);
        _mm512_store_ps(m + i, am);
        _mm512_store_ps(v + i, av);
        negative[i / 16] = _mm512_cmp_ps_mask(mi, zero, _CMP_LT_OQ);
        // The new absmax, as the max of the magnitudes' bit patterns (a NaN's is above inf's).
        m_bits = _mm512_max_epu32(m_bits, _mm512_castps_si512(am));
        v_bits = _mm512_max_epu32(v_bits, _mm512_castps_si512(av));
      }
    }
    const uint32_t m_max_bits = _mm512_reduce_max_epu32(m_bits);
    const uint32_t v_max_bits = _mm512_reduce_max_epu32(v_bits);
    float m_max, v_max;
    std::memcpy(&m_max, &m_max_bits, 4);
    std::memcpy(&v_max, &v_max_bits, 4);
    encode_block(t, m, v, negative, mc, vc, count, width, m_max, v_max);
    leaf.ms[layer * leaf.blocks + block] = m_max;
    leaf.vs[layer * leaf.blocks + block] = v_max;
  }
}
#endif  // ADAMX_QUANTIZED_AVX512

// ---- the portable path ----------------------------------------------------------------------------

template <bool kNesterov, bool kDecayed>
void adam_quantized_block(const float* h, const float* tables, const QuantizedLeaf& leaf,
                          size_t layer, size_t block, size_t width) {
  const float a1 = h[kA1], b1 = h[kB1], c1 = h[kC1], a2 = h[kA2], b2 = h[kB2], c2 = h[kC2];
  const float eps_root = h[kEpsRoot], eps = h[kEps], decay = h[kDecay], neg_lr = h[kNegLr];
  const float c1_next = h[kC1Next], g_weight = h[kGWeight];
  const float* signed_values = tables;
  const float* unsigned_values = tables + 256;
  const Code<7> signed_code(tables + 512);
  const Code<8> unsigned_code(tables + 534);
  const size_t start = block * width;
  const size_t count = leaf.size - start < width ? leaf.size - start : width;
  float* p = leaf.p + layer * leaf.size + start;
  const float* g = leaf.g + layer * leaf.size + start;
  uint8_t* mc = leaf.mc + (layer * leaf.blocks + block) * width;
  uint8_t* vc = leaf.vc + (layer * leaf.blocks + block) * width;
  float& m_scale = leaf.ms[layer * leaf.blocks + block];
  float& v_scale = leaf.vs[layer * leaf.blocks + block];
  alignas(64) float m[kMaxBlock];
  alignas(64) float v[kMaxBlock];
  // Dequantise (a table lookup times the block's absmax).
  // Code 0 is (+-)0 even under an infinite scale (a v that overflowed), not 0 * inf = NaN; a
  // finite scale gives that by itself, and keeps this loop vectorised. A NaN scale makes every
  // element NaN (0 * NaN, code 0 included), as on the jnp path.
  if (!std::isinf(m_scale)) {
    for (size_t o = 0; o < count; ++o) m[o] = signed_values[mc[o]] * m_scale;
  } else {
    for (size_t o = 0; o < count; ++o) {
      const float unit = signed_values[mc[o]];
      m[o] = unit == 0.0f ? unit : unit * m_scale;
    }
  }
  if (!std::isinf(v_scale)) {
    for (size_t o = 0; o < count; ++o) v[o] = unsigned_values[vc[o]] * v_scale;
  } else {
    for (size_t o = 0; o < count; ++o) {
      const float unit = unsigned_values[vc[o]];
      v[o] = unit == 0.0f ? unit : unit * v_scale;
    }
  }
  // The Adam step, as `adam` in fused_step.cc.
  for (size_t o = 0; o < count; ++o) {
    const float gi = g[o], pi = p[o];
    const float mi = a1 * gi + b1 * m[o];
    const float vi = a2 * (gi * gi) + b2 * v[o];
    const float m_hat = kNesterov ? b1 * (mi * c1_next) + g_weight * gi : mi * c1;
    const float denominator = std::sqrt(vi * c2 + eps_root) + eps;
    float u = denominator != 0.0f ? m_hat / denominator : 0.0f;
    if (kDecayed) u = u + decay * pi;
    p[o] = pi + u * neg_lr;
    m[o] = mi;
    v[o] = vi;
  }
  // The new absmax, as the max of the magnitudes' bit patterns (the same order for non-negative
  // floats; a NaN's pattern is above inf's, so a NaN moment gives a NaN scale, as `_absmax` on the
  // jnp path).
  uint32_t m_bits = 0, v_bits = 0;
  for (size_t o = 0; o < count; ++o) {
    uint32_t am, av;
    const float fm = std::fabs(m[o]), fv = std::fabs(v[o]);
    std::memcpy(&am, &fm, 4);
    std::memcpy(&av, &fv, 4);
    m_bits = am > m_bits ? am : m_bits;
    v_bits = av > v_bits ? av : v_bits;
  }
  float m_max, v_max;
  std::memcpy(&m_max, &m_bits, 4);
  std::memcpy(&v_max, &v_bits, 4);
  const float m_inverse = 1.0f / (m_max > 0.0f ? m_max : 1.0f);
  const float v_inverse = 1.0f / (v_max > 0.0f ? v_max : 1.0f);
  alignas(64) int32_t m_code[kMaxBlock];
  alignas(64) int32_t v_code[kMaxBlock];
  // The absmax element is exactly 1, also when it is inf (where inf * (1 / inf) is NaN).
  const float m_top = m_max > 0.0f ? m_max : -1.0f, v_top = v_max > 0.0f ? v_max : -1.0f;
  for (size_t o = 0; o < count; ++o) {
    const float a = std::fabs(m[o]), b = std::fabs(v[o]);
    m_code[o] = m[o] < 0.0f ? 128 : 0;  // the sign bit
    m[o] = a == m_top ? 1.0f : a * m_inverse;  // from here on, m and v hold y in [0, 1]
    v[o] = b == v_top ? 1.0f : b * v_inverse;
  }
  for (size_t o = 0; o < count; ++o) m_code[o] += encode<7, false>(m[o], signed_code);
  for (size_t o = 0; o < count; ++o) v_code[o] = encode<8, true>(v[o], unsigned_code);
  for (size_t o = 0; o < count; ++o) {
    mc[o] = static_cast<uint8_t>(m_code[o]);
    vc[o] = static_cast<uint8_t>(v_code[o]);
  }
  for (size_t o = count; o < width; ++o) mc[o] = vc[o] = 0;  // the padding codes 0
  m_scale = m_max;
  v_scale = v_max;
}

// Blocks [first, last) of one layer of a leaf.
template <bool kNesterov, bool kDecayed>
void adam_quantized_blocks(const float* h, const Tables& t, const QuantizedLeaf& leaf,
                           size_t layer, size_t first, size_t last, size_t width) {
#ifdef ADAMX_QUANTIZED_AVX512
  if (t.vector) {
    // bitsandbytes' block of 256: the full blocks with constant counts, then a short last one.
    const size_t full = width == 256 ? std::min(last, leaf.size / 256) : first;
    const bool eps_positive = h[kEps] > 0.0f;
    if (first < full) {
      (eps_positive ? &adam_quantized_blocks_avx512<kNesterov, kDecayed, true, 256>
                    : &adam_quantized_blocks_avx512<kNesterov, kDecayed, false, 256>)(
          h, t, leaf, layer, first, full, width);
    }
    if (std::max(first, full) < last) {
      (eps_positive ? &adam_quantized_blocks_avx512<kNesterov, kDecayed, true, 0>
                    : &adam_quantized_blocks_avx512<kNesterov, kDecayed, false, 0>)(
          h, t, leaf, layer, std::max(first, full), last, width);
    }
    return;
  }
#endif
  for (size_t b = first; b < last; ++b)
    adam_quantized_block<kNesterov, kDecayed>(h, t.raw, leaf, layer, b, width);
}

ffi::Error QuantizedStepImpl(ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> tables,
                             ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t nesterov,
                             int64_t block, ffi::Span<const int64_t> decayed,
                             ffi::Span<const int64_t> layers, ffi::Span<const int64_t> sizes) {
  const size_t n = decayed.size();
  if (args.size() != 6 * n || rets.size() != 5 * n || layers.size() != n || sizes.size() != n)
    return ffi::Error::InvalidArgument("adamx quantized step: wrong number of buffers");
  if (hyper.element_count() < kHyperCount || tables.element_count() < kTables)
    return ffi::Error::InvalidArgument("adamx quantized step: hyper or tables buffer too short");
  if (block < 1 || block > kMaxBlock)
    return ffi::Error::InvalidArgument("adamx quantized step: block size out of range");
  const size_t width = static_cast<size_t>(block);
  std::vector<QuantizedLeaf> leaves(n);
  struct Job {
    size_t leaf, layer, first, last;  // blocks [first, last) of one layer
  };
  std::vector<Job> jobs;
  const size_t blocks_per_job = kChunk / width > 0 ? kChunk / width : 1;
  for (size_t k = 0; k < n; ++k) {
    ffi::AnyBuffer in[6] = {*args.get<ffi::AnyBuffer>(k),         *args.get<ffi::AnyBuffer>(n + k),
                            *args.get<ffi::AnyBuffer>(2 * n + k), *args.get<ffi::AnyBuffer>(3 * n + k),
                            *args.get<ffi::AnyBuffer>(4 * n + k), *args.get<ffi::AnyBuffer>(5 * n + k)};
    ffi::Result<ffi::AnyBuffer> out[5] = {
        *rets.get<ffi::AnyBuffer>(k), *rets.get<ffi::AnyBuffer>(n + k),
        *rets.get<ffi::AnyBuffer>(2 * n + k), *rets.get<ffi::AnyBuffer>(3 * n + k),
        *rets.get<ffi::AnyBuffer>(4 * n + k)};
    if (in[0].element_type() != ffi::DataType::F32 || in[1].element_type() != ffi::DataType::F32 ||
        in[2].element_type() != ffi::DataType::U8 || in[3].element_type() != ffi::DataType::F32 ||
        in[4].element_type() != ffi::DataType::U8 || in[5].element_type() != ffi::DataType::F32)
      return ffi::Error::InvalidArgument("adamx quantized step: unexpected element types");
    // Results alias the operands (donated); if XLA had to copy, copy the state first.
    const int sources[5] = {0, 2, 3, 4, 5};
    for (int r = 0; r < 5; ++r) {
      ffi::AnyBuffer source = in[sources[r]];
      if (out[r]->untyped_data() != source.untyped_data())
        std::memcpy(out[r]->untyped_data(), source.untyped_data(), source.size_bytes());
    }
    const size_t size = static_cast<size_t>(sizes[k]);
    const size_t blocks = (size + width - 1) / width;
    if (in[0].element_count() != static_cast<size_t>(layers[k]) * size ||
        in[2].element_count() != static_cast<size_t>(layers[k]) * blocks * width)
      return ffi::Error::InvalidArgument("adamx quantized step: a leaf's layout does not match");
    leaves[k] = {static_cast<float*>(out[0]->untyped_data()),
                 static_cast<const float*>(in[1].untyped_data()),
                 static_cast<uint8_t*>(out[1]->untyped_data()),
                 static_cast<float*>(out[2]->untyped_data()),
                 static_cast<uint8_t*>(out[3]->untyped_data()),
                 static_cast<float*>(out[4]->untyped_data()),
                 size,
                 blocks,
                 decayed[k] != 0};
    for (size_t layer = 0; layer < static_cast<size_t>(layers[k]); ++layer)
      for (size_t first = 0; first < blocks; first += blocks_per_job)
        jobs.push_back({k, layer, first, first + blocks_per_job < blocks ? first + blocks_per_job : blocks});
  }
  const float* h = hyper.typed_data();
  Tables t;
  prepare(tables.typed_data(), t);
  const long total = static_cast<long>(jobs.size());
  // Dynamic: the jobs are equal, but the two threads are not always (a shared machine); a thread
  // that finishes early takes the next job rather than waiting at the join.
#pragma omp parallel for schedule(dynamic) if (total > 4)
  for (long i = 0; i < total; ++i) {
    const Job& job = jobs[i];
    const QuantizedLeaf& leaf = leaves[job.leaf];
    auto kernel = nesterov ? (leaf.decayed ? &adam_quantized_blocks<true, true>
                                           : &adam_quantized_blocks<true, false>)
                           : (leaf.decayed ? &adam_quantized_blocks<false, true>
                                           : &adam_quantized_blocks<false, false>);
    kernel(h, t, leaf, job.layer, job.first, job.last, width);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxQuantizedStep, QuantizedStepImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("nesterov")
                                  .Attr<int64_t>("block")
                                  .Attr<ffi::Span<const int64_t>>("decayed")
                                  .Attr<ffi::Span<const int64_t>>("layers")
                                  .Attr<ffi::Span<const int64_t>>("sizes"));
