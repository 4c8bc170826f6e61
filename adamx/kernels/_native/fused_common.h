// Shared by fused_step.cc and fused_quantized.cc: element types, the step's scalars, the task size.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

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

// ---- the scalars of one step: adamx/kernels/_fused.py fills them in this order, by the names in its
// `HYPER` (and `ALGORITHMS` for the enum below); tests/test_fused.py checks that the two agree.

enum Hyper : int {
  kA1 = 0,      // 1 - b1
  kB1,          // b1
  kC1,          // 1 / (1 - b1^t)
  kA2,          // 1 - b2
  kB2,          // b2
  kC2,          // 1 / (1 - b2^t) (Adam); unused by AdaMax
  kEpsRoot,     // eps_root
  kEps,         // eps
  kDecay,       // weight decay lambda
  kNegLr,       // -learning rate
  kC1Next,      // 1 / (1 - b1^(t+1)) (Nesterov)
  kGWeight,     // (1 - b1) / (1 - b1^t) (Nesterov)
  kHyperCount,
};

enum Algorithm : int64_t { kAdam = 0, kAdamNesterov = 1, kAdamax = 2, kLion = 3, kStream = 4 };

constexpr size_t kChunk = 1 << 15;  // elements per task: 128 KiB of float32 per stream

}  // namespace
