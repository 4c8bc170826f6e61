// The block-quantised moments' code (adamx/storage/_quantize.py: `Blockwise`, `encode_magnitude`),
// in C++: shared by fused_quantized.cc and by the programs adamx/kernels/_derived.py generates for
// a step over such moments (which include elements.h and this header alone). Each function is the
// jnp path's operations, one for one, so the codes and scales are the same bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

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
//
// A block of `kBlock` elements of one layer: its first `count` are the layer's (the last block of
// a layer may be short), the rest is padding (`jnp.pad`'s zeros, code 0).

// `Blockwise.read`: out[j] = table[code j] * scale, where code 0 stays (+-)0 under an infinite
// scale (not 0 * inf = NaN); a NaN scale makes every element NaN, code 0 included. kBits 4: two
// codes a byte, the first in the low half.
template <int kBits, size_t kBlock>
inline void decode_block(const float* __restrict table, const uint8_t* __restrict codes,
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

// `Blockwise.write` of one block: the scale is the absmax of x[0, count) (the maximum of the
// magnitudes' bit patterns: NaN when any element is NaN), the codes those of `encode_magnitude`
// of y = |x| / absmax (exactly 1 for the absmax element, also when it is inf), with the sign bit
// when kSigned and x < 0 (kMagnitude: the magnitude code's bits). Padding codes 0.
template <int kBits, int kMagnitude, bool kSigned, size_t kBlock>
inline void encode_block(const float* __restrict x, size_t count, const Code<kMagnitude>& c,
                         uint8_t* __restrict codes, float* __restrict scale) {
  uint32_t top_bits = 0;
  for (size_t j = 0; j < count; ++j) {
    const float a = std::fabs(x[j]);
    uint32_t bits;
    std::memcpy(&bits, &a, 4);
    top_bits = bits > top_bits ? bits : top_bits;
  }
  float absmax;
  std::memcpy(&absmax, &top_bits, 4);
  const float inverse = 1.0f / (absmax > 0.0f ? absmax : 1.0f);
  const float top = absmax > 0.0f ? absmax : -1.0f;
  alignas(64) int32_t code[kBlock];
  alignas(64) float y[kBlock];
  // (Two loops, as in fused_quantized.cc's portable path: each vectorises.)
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

}  // namespace
