// Shared by the kernel library's handlers (derived.cc): XLA's FFI, element types, the task size.
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

constexpr size_t kChunk = 1 << 15;  // elements per task: 128 KiB of float32 per stream

}  // namespace
