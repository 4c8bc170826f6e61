// adamx.flatten's `unflatten()` on XLA:CPU: one buffer cut into consecutive pieces, by one call.
//
// `jax.lax.split` into n pieces becomes n slice kernels under XLA:CPU, each compiled on its own:
// on a 2000-leaf model that made the forward pass compile 5x longer than the tree's (measured in
// docs/performance.md). This call copies every piece in one kernel that is compiled once, for any
// n. Only the forward pass runs here: adamx/distributed/_flat.py gives it a JVP through `jax.lax.split`, so
// its transpose (the gradient) stays XLA's single concatenation.
//
// Operand: x, of shape [..., total] (leading axes from vmap). Results: n buffers of shapes
// [..., size_i], the pieces of each row of x in order. Any element type: bytes are copied.

#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr size_t kTaskBytes = 1 << 20;  // one task copies up to 1 MiB

struct Copy {
  const char* from;
  char* to;
  size_t bytes;
};

ffi::Error SplitImpl(ffi::AnyBuffer x, ffi::RemainingRets rets, int64_t total) {
  const size_t n = rets.size();
  const size_t element = ffi::ByteWidth(x.element_type());
  if (total < 0 || element == 0)
    return ffi::Error::InvalidArgument("adamx split: bad operand");
  const size_t count = x.element_count();
  const size_t rows = total == 0 ? 0 : count / static_cast<size_t>(total);
  if (total != 0 && rows * static_cast<size_t>(total) != count)
    return ffi::Error::InvalidArgument("adamx split: the operand's last axis is not `total`");
  std::vector<char*> out(n);
  std::vector<size_t> width(n);  // bytes of one row of each piece
  size_t sum = 0;
  for (size_t i = 0; i < n; ++i) {
    auto r = rets.get<ffi::AnyBuffer>(i);
    if (!r.has_value() || (*r)->element_type() != x.element_type())
      return ffi::Error::InvalidArgument("adamx split: a result is not like the operand");
    const size_t c = (*r)->element_count();
    if (rows == 0 ? c != 0 : c % rows != 0)
      return ffi::Error::InvalidArgument("adamx split: a result's rows differ from the operand's");
    out[i] = static_cast<char*>((*r)->untyped_data());
    width[i] = rows == 0 ? 0 : (c / rows) * element;
    sum += rows == 0 ? 0 : c / rows;
  }
  if (rows != 0 && sum != static_cast<size_t>(total))
    return ffi::Error::InvalidArgument("adamx split: the pieces do not add up to `total`");
  const char* in = static_cast<const char*>(x.untyped_data());
  const size_t row_bytes = static_cast<size_t>(total) * element;
  std::vector<Copy> tasks;
  size_t bytes = 0;
  for (size_t row = 0; row < rows; ++row) {
    size_t offset = row * row_bytes;
    for (size_t i = 0; i < n; ++i) {
      for (size_t done = 0; done < width[i]; done += kTaskBytes) {
        const size_t b = width[i] - done < kTaskBytes ? width[i] - done : kTaskBytes;
        tasks.push_back({in + offset + done, out[i] + row * width[i] + done, b});
      }
      offset += width[i];
      bytes += width[i];
    }
  }
  const long m = static_cast<long>(tasks.size());
  // Threads pay off only past a few MiB; below that the fork and join cost more than the copy.
#pragma omp parallel for schedule(dynamic, 16) if (bytes > 4 * kTaskBytes)
  for (long t = 0; t < m; ++t) std::memcpy(tasks[t].to, tasks[t].from, tasks[t].bytes);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxSplit, SplitImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingRets()
                                  .Attr<int64_t>("total"));
