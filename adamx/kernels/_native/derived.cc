// The host of the programs adamx/kernels/_derived.py generates from an optimizer's jaxpr.
//
// A program is one leaf's elementwise step, `adamx_leaf(scalars, buffers, begin, end)`, compiled
// from generated C++ into a small library of its own and registered here by its key
// (AdamxRegisterProgram, called from Python right after loading it). This handler, built once with
// the kernel, runs a program over a group of leaves: it finds each leaf's buffers among the
// operands and results, splits the leaves into tasks of kChunk elements and runs them with OpenMP.
//
// Operands: the scalars (uint32 bit patterns, `scalars` per leaf), then per leaf the buffers of
// the slots marked kOperand; results: per leaf the buffers of the slots marked kWritten. A slot
// both an operand and written is updated in place: its result is aliased to its operand (donated),
// or, if XLA had to copy, holds a copy of the operand made here first. `slots` holds each slot's
// flags (kRead, kWritten, kOperand); the program reads all of a slot's element before it writes it.
//
// A program over block-quantised moments (kBlock slots: a moment's codes and block scales) runs
// over units of one block of one layer, not elements: `units` holds each leaf's count of them and
// `chunk` how many make a task, so a task never splits a block. (Empty `units`: the programs over
// elements, whose count is their buffers' and whose task is kChunk of them.)
//
// A program may also accumulate reductions of its leaf in the same pass (`kinds` and `types`, as
// for a reduction pass below; empty: none): each task's partial results go to `acc`, and the
// tasks of a leaf are combined in their order into one more result per leaf, after every leaf's
// written buffers, so the values do not depend on the threads.

#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "fused_common.h"

namespace {

using Leaf = void (*)(const uint32_t*, void* const*, size_t, size_t, double*);

enum SlotFlag : int64_t { kRead = 1, kWritten = 2, kOperand = 4, kBlock = 8 };

std::mutex registry_lock;
std::unordered_map<std::string, Leaf>& registry() {
  static auto* programs = new std::unordered_map<std::string, Leaf>();
  return *programs;
}

Leaf find(std::string_view key) {
  std::lock_guard<std::mutex> hold(registry_lock);
  auto found = registry().find(std::string(key));
  return found == registry().end() ? nullptr : found->second;
}

struct Task {
  size_t leaf, begin, end;
};

// A reduction pass: the program accumulates each of its leaf's reductions over a chunk into a
// double (`acc`, one per reduction); the chunks of a leaf are then combined in their order, so
// the result does not depend on the threads. Operands: the scalars, then per leaf its buffers;
// results: per leaf the reductions' values as 32-bit patterns (`types`: 0 float32, 1 int32,
// 2 uint32, 3 bool), `kinds`: 0 sum, 1 max, 2 min, 3 and, 4 or.
double combine(int64_t kind, double a, double b) {
  switch (kind) {
    case 0: return a + b;
    case 1: return a != a ? a : (b != b ? b : (a > b ? a : b));
    case 2: return a != a ? a : (b != b ? b : (a < b ? a : b));
    case 3: return (a != 0.0 && b != 0.0) ? 1.0 : 0.0;
    default: return (a != 0.0 || b != 0.0) ? 1.0 : 0.0;
  }
}

double identity(int64_t kind) {
  switch (kind) {
    case 0: return 0.0;
    case 1: return -INFINITY;
    case 2: return INFINITY;
    case 3: return 1.0;
    default: return 0.0;
  }
}

uint32_t bits(int64_t type, double value) {
  uint32_t out = 0;
  if (type == 0) {
    const float f = static_cast<float>(value);
    std::memcpy(&out, &f, 4);
  } else if (type == 1) {
    const int32_t i = static_cast<int32_t>(static_cast<int64_t>(value));
    std::memcpy(&out, &i, 4);
  } else if (type == 2) {
    out = static_cast<uint32_t>(static_cast<int64_t>(value));
  } else {
    out = value != 0.0 ? 1u : 0u;
  }
  return out;
}

// A leaf's reductions: the partial results of its chunks [from, to) combined in their order (the
// same whatever the threads), written as 32-bit patterns.
void combine_chunks(uint32_t* into, ffi::Span<const int64_t> kinds, ffi::Span<const int64_t> types,
                    const std::vector<double>& acc, size_t from, size_t to) {
  const size_t count = kinds.size();
  for (size_t r = 0; r < count; ++r) {
    double value = identity(kinds[r]);
    for (size_t t = from; t < to; ++t) value = combine(kinds[r], value, acc[t * count + r]);
    into[r] = bits(types[r], value);
  }
}

ffi::Error DerivedStepImpl(ffi::Buffer<ffi::U32> scalars, ffi::RemainingArgs args,
                           ffi::RemainingRets rets, std::string_view program,
                           ffi::Span<const int64_t> slots, int64_t scalar_count,
                           ffi::Span<const int64_t> units, int64_t chunk,
                           ffi::Span<const int64_t> kinds, ffi::Span<const int64_t> types) {
  const Leaf leaf_step = find(program);
  if (leaf_step == nullptr)
    return ffi::Error::InvalidArgument("adamx derived step: the program is not registered");
  const size_t width = slots.size();
  size_t operands = 0, results = 0;
  for (int64_t flags : slots) {
    operands += (flags & kOperand) ? 1 : 0;
    results += (flags & kWritten) ? 1 : 0;
  }
  if (results == 0) return ffi::Error::InvalidArgument("adamx derived step: nothing to write");
  // Reductions accumulated in the pass itself (`kinds`, `types`: as for a reduction pass): their
  // values, per leaf, in one more result after every leaf's written buffers.
  const size_t count = kinds.size(), extra = count > 0 ? 1 : 0;
  if (types.size() != count)
    return ffi::Error::InvalidArgument("adamx derived step: wrong number of reduction types");
  const size_t leaves = rets.size() / (results + extra);
  const size_t per_leaf = static_cast<size_t>(scalar_count);
  if (args.size() != leaves * operands || rets.size() != leaves * (results + extra) ||
      scalars.element_count() != leaves * per_leaf)
    return ffi::Error::InvalidArgument("adamx derived step: wrong number of buffers");
  if (!(units.size() == 0) && (units.size() != leaves || chunk < 1))
    return ffi::Error::InvalidArgument("adamx derived step: wrong number of block counts");
  const size_t task = (units.size() == 0) ? kChunk : static_cast<size_t>(chunk);
  std::vector<void*> buffers(leaves * width);
  std::vector<Task> tasks;
  std::vector<size_t> first(leaves + 1, 0);  // each leaf's first task
  for (size_t leaf = 0; leaf < leaves; ++leaf) {
    first[leaf] = tasks.size();
    size_t size = 0, arg = leaf * operands, ret = leaf * results;
    bool seen = false;
    for (size_t k = 0; k < width; ++k) {
      void* data = nullptr;
      size_t n = 0;
      if (slots[k] & kOperand) {
        auto in = args.get<ffi::AnyBuffer>(arg++);
        if (!in.has_value())
          return ffi::Error::InvalidArgument("adamx derived step: a buffer could not be decoded");
        data = in->untyped_data();
        n = in->element_count();
        if (slots[k] & kWritten) {  // in place: the donated buffer, or a copy of the operand
          auto out = rets.get<ffi::AnyBuffer>(ret++);
          if (!out.has_value())
            return ffi::Error::InvalidArgument("adamx derived step: a buffer could not be decoded");
          void* into = (*out)->untyped_data();
          if (into != data) std::memcpy(into, data, in->size_bytes());
          data = into;
        }
      } else {
        auto out = rets.get<ffi::AnyBuffer>(ret++);
        if (!out.has_value())
          return ffi::Error::InvalidArgument("adamx derived step: a buffer could not be decoded");
        data = (*out)->untyped_data();
        n = (*out)->element_count();
      }
      buffers[leaf * width + k] = data;
      if (slots[k] & kBlock) continue;  // codes or scales: a layout of their own
      if (seen && n != size)
        return ffi::Error::InvalidArgument("adamx derived step: a leaf's buffers differ in size");
      size = n;
      seen = true;
    }
    if (!(units.size() == 0)) size = static_cast<size_t>(units[leaf]);
    for (size_t begin = 0; begin < size; begin += task)
      tasks.push_back({leaf, begin, std::min(begin + task, size)});
  }
  first[leaves] = tasks.size();
  std::vector<double> acc(tasks.size() * count);
  const uint32_t* s = scalars.typed_data();
  const long total = static_cast<long>(tasks.size());
  // Threads only past a few chunks; dynamic, so a slow core takes fewer.
#pragma omp parallel for schedule(dynamic) if (total > 4)
  for (long t = 0; t < total; ++t) {
    const Task& task = tasks[t];
    leaf_step(s + task.leaf * per_leaf, buffers.data() + task.leaf * width, task.begin, task.end,
              count > 0 ? acc.data() + t * count : nullptr);
  }
  // The chunks' partial results combined in their order: the same whatever the threads.
  for (size_t leaf = 0; leaf < leaves && count > 0; ++leaf) {
    auto out = rets.get<ffi::Buffer<ffi::U32>>(leaves * results + leaf);
    if (!out.has_value() || (*out)->element_count() != count)
      return ffi::Error::InvalidArgument("adamx derived step: a reduction could not be decoded");
    combine_chunks((*out)->typed_data(), kinds, types, acc, first[leaf], first[leaf + 1]);
  }
  return ffi::Error::Success();
}

ffi::Error DerivedReduceImpl(ffi::Buffer<ffi::U32> scalars, ffi::RemainingArgs args,
                             ffi::RemainingRets rets, std::string_view program,
                             ffi::Span<const int64_t> slots, int64_t scalar_count,
                             ffi::Span<const int64_t> kinds, ffi::Span<const int64_t> types) {
  const Leaf leaf_pass = find(program);
  if (leaf_pass == nullptr)
    return ffi::Error::InvalidArgument("adamx derived reduction: the program is not registered");
  const size_t width = slots.size(), count = kinds.size(), leaves = rets.size();
  const size_t per_leaf = static_cast<size_t>(scalar_count);
  if (args.size() != leaves * width || scalars.element_count() != leaves * per_leaf ||
      types.size() != count)
    return ffi::Error::InvalidArgument("adamx derived reduction: wrong number of buffers");
  std::vector<void*> buffers(leaves * width);
  std::vector<Task> tasks;
  std::vector<size_t> first(leaves + 1, 0);  // each leaf's first task
  for (size_t leaf = 0; leaf < leaves; ++leaf) {
    size_t n = 0;
    for (size_t k = 0; k < width; ++k) {
      auto in = args.get<ffi::AnyBuffer>(leaf * width + k);
      if (!in.has_value())
        return ffi::Error::InvalidArgument("adamx derived reduction: a buffer could not be decoded");
      if (k > 0 && in->element_count() != n)
        return ffi::Error::InvalidArgument("adamx derived reduction: a leaf's buffers differ");
      n = in->element_count();
      buffers[leaf * width + k] = in->untyped_data();
    }
    first[leaf] = tasks.size();
    for (size_t begin = 0; begin < n; begin += kChunk)
      tasks.push_back({leaf, begin, std::min(begin + kChunk, n)});
  }
  first[leaves] = tasks.size();
  std::vector<double> acc(tasks.size() * count);
  const uint32_t* s = scalars.typed_data();
  const long total = static_cast<long>(tasks.size());
#pragma omp parallel for schedule(dynamic) if (total > 4)
  for (long t = 0; t < total; ++t) {
    const Task& task = tasks[t];
    leaf_pass(s + task.leaf * per_leaf, buffers.data() + task.leaf * width, task.begin, task.end,
              acc.data() + t * count);
  }
  for (size_t leaf = 0; leaf < leaves; ++leaf) {
    auto out = rets.get<ffi::Buffer<ffi::U32>>(leaf);
    if (!out.has_value() || (*out)->element_count() != count)
      return ffi::Error::InvalidArgument("adamx derived reduction: a result could not be decoded");
    combine_chunks((*out)->typed_data(), kinds, types, acc, first[leaf], first[leaf + 1]);
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" void AdamxRegisterProgram(const char* key, void* program) {
  std::lock_guard<std::mutex> hold(registry_lock);
  registry()[key] = reinterpret_cast<Leaf>(program);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxDerivedStep, DerivedStepImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()  // the scalars, per leaf
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("program")
                                  .Attr<ffi::Span<const int64_t>>("slots")
                                  .Attr<int64_t>("scalars")
                                  .Attr<ffi::Span<const int64_t>>("units")
                                  .Attr<int64_t>("chunk")
                                  .Attr<ffi::Span<const int64_t>>("kinds")
                                  .Attr<ffi::Span<const int64_t>>("types"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxDerivedReduce, DerivedReduceImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()  // the scalars, per leaf
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("program")
                                  .Attr<ffi::Span<const int64_t>>("slots")
                                  .Attr<int64_t>("scalars")
                                  .Attr<ffi::Span<const int64_t>>("kinds")
                                  .Attr<ffi::Span<const int64_t>>("types"));
