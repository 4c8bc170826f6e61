// Element types and XLA's rounding, without XLA's headers: shared by the kernels (fused_common.h)
// and by the programs adamx/kernels/_derived.py generates, which include nothing else (so each
// compiles in a fraction of a second).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace {

// ---- element types ----------------------------------------------------------------------------

inline float load(const float* x, size_t i) { return x[i]; }
inline float load(const uint16_t* x, size_t i) {
  uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline void store(float* x, size_t i, float f) { x[i] = f; }
// float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN. XLA's conversion.
inline void store(uint16_t* x, size_t i, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  uint32_t nan = (bits >> 16) | 0x40u;
  x[i] = static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}
// The value a bfloat16 store followed by a load gives (float32: the value itself).
inline float round_as(const float*, float f) { return f; }
inline float round_as(const uint16_t*, float f) {
  uint16_t b;
  store(&b, 0, f);
  return load(&b, 0);
}

// XLA's maximum: NaN if either operand is NaN.
inline float nan_max(float a, float b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }

// XLA's minimum: NaN if either operand is NaN.
inline float nan_min(float a, float b) { return a != a ? a : (b != b ? b : (a < b ? a : b)); }

}  // namespace
