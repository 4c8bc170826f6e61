// Shared by fused_step.cc and derived.cc: element types, the step's scalars, the task size.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "elements.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

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
