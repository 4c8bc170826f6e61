// adamx's fused optimizer step for XLA:CPU, registered through jax.ffi.
//
// One call updates every leaf of a parameter tree in place: it reads p, g and the moments once and
// writes p and the moments once (28 bytes per float32 parameter for Adam), where XLA:CPU's plain
// jnp step makes three passes. The arithmetic is the jnp path's (adamx/optimizers/_adam.py and the blocks it
// chains), operation for operation, and this file is compiled with -ffp-contract=off so that no
// multiply-add is fused: the results are bit-identical to the jnp path, which stays the reference
// (tests/test_fused.py). Scalars that change per step (bias corrections, learning rate, weight
// decay) arrive in a small float32 buffer computed by JAX; which algorithm and which leaves are
// decayed arrive as attributes.
//
// Operands: hyper, then p[0..n), g[0..n), m[0..n), v[0..n) (v absent for Lion), c[0..n) (only
// with `kahan`), then the write counters of the stochastic moments (below); results: p, m, v, c and
// the counters, each aliased to its operand (input_output_aliases). Leaves may be float32 or
// bfloat16 (params and gradients alike; moments independently). A bfloat16 moment marked in
// `stochastic` (bit 0: m, bit 1: v) is a `stochastic_bfloat16()` buffer: it is written with
// stochastic rounding, its random bits hashed from the element's index in its leaf and its write
// counter (a uint32 scalar, operands after c: those of the marked m's in leaf order, then those of
// the marked v's), which the kernel advances by one, as StochasticBfloat16.write does. With
// `kahan` the parameter takes its update through Kahan compensation, c being the compensation
// (adamx/toolkit/_kahan.py), in the params' dtype.

#include "fused_common.h"

namespace {

// ---- stochastic rounding to bfloat16, and the parameter's update ---------------------------------

// A bfloat16 moment written with stochastic rounding: the storage `stochastic_bfloat16()`.
struct Sr16 {
  uint16_t bits;
};
inline float load(const Sr16* x, size_t i) {
  uint32_t bits = static_cast<uint32_t>(x[i].bits) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

constexpr uint32_t kGolden = 0x9e3779b9u;  // the index's multiplier in stochastic_round_bfloat16

// The top 16 bits of Wellons' lowbias32 (adamx/storage/_quantize.py's _hash32) of x: its last step,
// x ^ (x >> 16), leaves the top 16 bits as they are, so it is skipped.
inline uint32_t hash32_top16(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x >> 16;
}
// All of lowbias32 (the seed of a write, hash32(counter)).
inline uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}

// stochastic_round_bfloat16 (adamx/storage/_quantize.py): add 16 random bits below bfloat16's last bit and
// truncate, so f rounds up with probability proportional to its distance from the value below. The
// bits are hash32(index * golden + seed) >> 16, seed = hash32(write counter) and index the
// element's in its leaf (uint32 arithmetic, wrapping, as in JAX); the caller passes key = index *
// golden + seed, kept as an induction variable (an add per element, not a multiply). A NaN
// converts as XLA converts it, quiet bit set: (bits >> 16) | 0x40.
inline void store(Sr16* x, size_t i, float f, uint32_t key) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t sum = f != f ? bits | 0x00400000u : bits + hash32_top16(key);
  x[i].bits = static_cast<uint16_t>(sum >> 16);
}
// Round-to-nearest element types take no seed.
template <class T>
inline void store(T* x, size_t i, float f, uint32_t) {
  store(x, i, f);
}

// The parameter takes its update u (after -lr): rounded to the parameter's dtype (the chain's cast)
// and added (apply_updates); or, with kKahan, kahan_summation's rounding sequence, step for step:
// y = u - c, step = round(p + y) - p, c' = (round(p + step) - p) - y, then p + round(step).
template <bool kKahan, class P>
inline void apply(P* p, P* c, size_t i, float pi, float u) {
  if constexpr (kKahan) {
    const float y = u - load(c, i);
    const float step = round_as(p, pi + y) - pi;
    const float applied = round_as(p, pi + step);
    store(c, i, (applied - pi) - y);
    store(p, i, pi + round_as(p, step));
  } else {
    store(p, i, pi + round_as(p, u));
  }
}

// ---- one range of one leaf -----------------------------------------------------------------------

// Adam / AdamW / optax's NAdam(W): ema, bias_correction, scale_by_second_moment, decay, -lr, apply.
template <bool kNesterov, bool kDecayed, bool kKahan, class P, class M, class V>
void adam(const float* h, P* p, const P* g, M* m, V* v, P* comp, uint32_t sm, uint32_t sv,
          size_t begin, size_t end) {
  const float a1 = h[kA1], b1 = h[kB1], c1 = h[kC1], a2 = h[kA2], b2 = h[kB2], c2 = h[kC2];
  const float eps_root = h[kEpsRoot], eps = h[kEps], decay = h[kDecay], neg_lr = h[kNegLr];
  const float c1_next = h[kC1Next], g_weight = h[kGWeight];
  // Stochastic rounding's keys, index * golden + seed, for m and v.
  uint32_t km = static_cast<uint32_t>(begin) * kGolden + sm, kv = km - sm + sv;
  for (size_t i = begin; i < end; ++i, km += kGolden, kv += kGolden) {
    const float gi = load(g, i), pi = load(p, i);
    const float mi = a1 * gi + b1 * load(m, i);
    const float vi = a2 * (gi * gi) + b2 * load(v, i);
    store(m, i, mi, km);
    store(v, i, vi, kv);
    const float m_hat = kNesterov ? b1 * (mi * c1_next) + g_weight * gi : mi * c1;
    const float denominator = std::sqrt(vi * c2 + eps_root) + eps;
    float u = denominator != 0.0f ? m_hat / denominator : 0.0f;
    if (kDecayed) u = u + decay * pi;
    apply<kKahan>(p, comp, i, pi, u * neg_lr);
  }
}

// AdaMax(W): ema, bias_correction, scale_by_infinity_norm, decay, -lr, apply.
template <bool kNesterov, bool kDecayed, bool kKahan, class P, class M, class V>
void adamax(const float* h, P* p, const P* g, M* m, V* v, P* comp, uint32_t sm, uint32_t sv,
            size_t begin, size_t end) {
  const float a1 = h[kA1], b1 = h[kB1], c1 = h[kC1], b2 = h[kB2], eps = h[kEps];
  const float decay = h[kDecay], neg_lr = h[kNegLr];
  // Stochastic rounding's keys, index * golden + seed, for m and v.
  uint32_t km = static_cast<uint32_t>(begin) * kGolden + sm, kv = km - sm + sv;
  for (size_t i = begin; i < end; ++i, km += kGolden, kv += kGolden) {
    const float gi = load(g, i), pi = load(p, i);
    const float mi = a1 * gi + b1 * load(m, i);
    const float ui = nan_max(b2 * load(v, i), std::fabs(gi) + eps);
    store(m, i, mi, km);
    store(v, i, ui, kv);
    float u = ui != 0.0f ? (mi * c1) / ui : 0.0f;
    if (kDecayed) u = u + decay * pi;
    apply<kKahan>(p, comp, i, pi, u * neg_lr);
  }
}

// Lion: sign of the interpolation (b1), then the momentum update (b2), decay, -lr, apply.
// Uses kA1/kB1 for b1 and kA2/kB2 for b2.
template <bool kNesterov, bool kDecayed, bool kKahan, class P, class M, class V>
void lion(const float* h, P* p, const P* g, M* m, V*, P* comp, uint32_t sm, uint32_t,
          size_t begin, size_t end) {
  const float a1 = h[kA1], b1 = h[kB1], a2 = h[kA2], b2 = h[kB2];
  const float decay = h[kDecay], neg_lr = h[kNegLr];
  uint32_t km = static_cast<uint32_t>(begin) * kGolden + sm;  // stochastic rounding's key for m
  for (size_t i = begin; i < end; ++i, km += kGolden) {
    const float gi = load(g, i), pi = load(p, i), mi = load(m, i);
    const float c = a1 * gi + b1 * mi;
    // sign(c) for finite c (0 and -0 kept); a non-finite c passes through (adamx/optimizers/_lion.py).
    float u = std::isfinite(c) ? (c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : c)) : c;
    store(m, i, a2 * gi + b2 * mi, km);
    if (kDecayed) u = u + decay * pi;
    apply<kKahan>(p, comp, i, pi, u * neg_lr);
  }
}

// The bandwidth probe: the same bytes as Adam (read p, g, m, v; write p, m, v) and trivial math.
template <bool kNesterov, bool kDecayed, bool kKahan, class P, class M, class V>
void stream(const float* h, P* p, const P* g, M* m, V* v, P*, uint32_t, uint32_t, size_t begin,
            size_t end) {
  const float a = h[kA1];
  for (size_t i = begin; i < end; ++i) {
    const float gi = load(g, i);
    store(p, i, load(p, i) + a * gi);
    store(m, i, load(m, i) + gi);
    store(v, i, load(v, i) + a * load(v, i));
  }
}

// ---- dispatch on the algorithm and the element types ----------------------------------------------

using Kernel = void (*)(const float*, void*, const void*, void*, void*, void*, uint32_t, uint32_t,
                        size_t, size_t);

template <template <bool, bool, bool, class, class, class> class F, bool N, bool D, bool K,
          class P, class M, class V>
void call(const float* h, void* p, const void* g, void* m, void* v, void* c, uint32_t sm,
          uint32_t sv, size_t b, size_t e) {
  F<N, D, K, P, M, V>::run(h, static_cast<P*>(p), static_cast<const P*>(g), static_cast<M*>(m),
                           static_cast<V*>(v), static_cast<P*>(c), sm, sv, b, e);
}

#define ADAMX_WRAP(name)                                                                   \
  template <bool N, bool D, bool K, class P, class M, class V>                             \
  struct name##_t {                                                                        \
    static void run(const float* h, P* p, const P* g, M* m, V* v, P* c, uint32_t sm,       \
                    uint32_t sv, size_t b, size_t e) {                                     \
      name<N, D, K, P, M, V>(h, p, g, m, v, c, sm, sv, b, e);                              \
    }                                                                                      \
  };
ADAMX_WRAP(adam)
ADAMX_WRAP(adamax)
ADAMX_WRAP(lion)
ADAMX_WRAP(stream)
#undef ADAMX_WRAP

// An element type by its kind: float32, bfloat16 rounded to nearest, bfloat16 rounded stochastically.
enum Kind : int { kF32 = 0, kBf16 = 1, kSr = 2 };
template <class T>
struct Type {
  using type = T;
};

// fn(std::true_type) if b, else fn(std::false_type); with kAllowed false only the latter is built.
template <bool kAllowed, class Fn>
Kernel branch(bool b, Fn fn) {
  if constexpr (kAllowed) {
    if (b) return fn(std::true_type{});
  }
  return fn(std::false_type{});
}

// fn(Type<element type of kind k>); kinds above kMax are not built (they fall to float32, which
// FusedStepImpl never asks for: it checks the kinds first).
template <int kMax, class Fn>
Kernel element(int k, Fn fn) {
  if constexpr (kMax >= kSr) {
    if (k == kSr) return fn(Type<Sr16>{});
  }
  if constexpr (kMax >= kBf16) {
    if (k == kBf16) return fn(Type<uint16_t>{});
  }
  return fn(Type<float>{});
}

// The kernel for one leaf. The template arguments say which variants an algorithm has, so only
// those are compiled: Nesterov (Adam only), decay, Kahan, and the most general kind of m and v.
template <template <bool, bool, bool, class, class, class> class F, bool kN, bool kD, bool kK,
          int kM, int kV>
Kernel pick(bool nesterov, bool decayed, bool kahan, int p, int m, int v) {
  return branch<kN>(nesterov, [&](auto n) {
    return branch<kD>(decayed, [&](auto d) {
      return branch<kK>(kahan, [&](auto k) {
        return element<kBf16>(p, [&](auto pt) {
          return element<kM>(m, [&](auto mt) {
            return element<kV>(v, [&](auto vt) -> Kernel {
              return &call<F, decltype(n)::value, decltype(d)::value, decltype(k)::value,
                           typename decltype(pt)::type, typename decltype(mt)::type,
                           typename decltype(vt)::type>;
            });
          });
        });
      });
    });
  });
}

bool is_bf16(ffi::DataType t) { return t == ffi::DataType::BF16; }
bool supported(ffi::DataType t) { return t == ffi::DataType::F32 || t == ffi::DataType::BF16; }

struct Task {
  Kernel kernel;
  void* p;
  const void* g;
  void* m;
  void* v;
  void* c;
  uint32_t sm, sv;
  size_t begin, end;
};

// The buffer a result writes into, holding its operand's values: the same buffer when XLA aliased
// the two (donated), else a copy of the operand in the result. nullptr if either cannot be decoded.
void* in_place(ffi::RemainingArgs& args, ffi::RemainingRets& rets, size_t arg, size_t ret) {
  auto in = args.get<ffi::AnyBuffer>(arg);
  auto out = rets.get<ffi::AnyBuffer>(ret);
  if (!in.has_value() || !out.has_value()) return nullptr;
  void* data = (*out)->untyped_data();
  if (data != in->untyped_data()) std::memcpy(data, in->untyped_data(), in->size_bytes());
  return data;
}

// A stochastic moment's write: its counter advanced in place (read before written: the two may be
// one buffer), and the seed hash32(counter + 1) that StochasticBfloat16.write rounds with. false if
// the counter is not a uint32 scalar.
bool next_write(ffi::RemainingArgs& args, ffi::RemainingRets& rets, size_t arg, size_t ret,
                uint32_t* seed) {
  auto in = args.get<ffi::AnyBuffer>(arg);
  auto out = rets.get<ffi::AnyBuffer>(ret);
  if (!in.has_value() || !out.has_value() || in->element_type() != ffi::DataType::U32 ||
      in->element_count() != 1 || (*out)->element_type() != ffi::DataType::U32)
    return false;
  const uint32_t counter = *static_cast<const uint32_t*>(in->untyped_data()) + 1u;
  *static_cast<uint32_t*>((*out)->untyped_data()) = counter;
  *seed = hash32(counter);
  return true;
}

ffi::Error FusedStepImpl(ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                         ffi::RemainingRets rets, int64_t algorithm,
                         ffi::Span<const int64_t> decayed, ffi::Span<const int64_t> stochastic,
                         int64_t kahan) {
  const size_t n = decayed.size();
  const bool has_v = algorithm != kLion;
  const size_t moments = has_v ? 2 : 1;
  const size_t streams = 2 + moments + (kahan ? 1 : 0);  // p, g, m, [v], [c]
  if (stochastic.size() != n)
    return ffi::Error::InvalidArgument("adamx fused step: wrong number of buffers");
  size_t m_counters = 0, counters = 0;  // stochastic m's; stochastic m's and v's
  for (size_t leaf = 0; leaf < n; ++leaf) {
    m_counters += (stochastic[leaf] & 1) ? 1 : 0;
    counters += ((stochastic[leaf] & 1) ? 1 : 0) + ((stochastic[leaf] & 2) && has_v ? 1 : 0);
  }
  if (args.size() != streams * n + counters || rets.size() != (streams - 1) * n + counters)
    return ffi::Error::InvalidArgument("adamx fused step: wrong number of buffers");
  if (hyper.element_count() < kHyperCount)
    return ffi::Error::InvalidArgument("adamx fused step: hyper buffer too short");
  const float* h = hyper.typed_data();
  size_t next_m = 0, next_v = m_counters;  // the next stochastic m's and v's counter
  std::vector<Task> tasks;
  for (size_t leaf = 0; leaf < n; ++leaf) {
    auto p = args.get<ffi::AnyBuffer>(leaf);
    auto g = args.get<ffi::AnyBuffer>(n + leaf);
    auto m = args.get<ffi::AnyBuffer>(2 * n + leaf);
    if (!p.has_value() || !g.has_value() || !m.has_value())
      return ffi::Error::InvalidArgument("adamx fused step: a buffer could not be decoded");
    const ffi::DataType pt = p->element_type();
    if (!supported(pt) || g->element_type() != pt || !supported(m->element_type()))
      return ffi::Error::InvalidArgument("adamx fused step: float32 or bfloat16 only");
    const size_t count = p->element_count();
    int v_kind = kF32;
    if (has_v) {
      auto v = args.get<ffi::AnyBuffer>(3 * n + leaf);
      if (!v.has_value())
        return ffi::Error::InvalidArgument("adamx fused step: a buffer could not be decoded");
      if (!supported(v->element_type()))
        return ffi::Error::InvalidArgument("adamx fused step: float32 or bfloat16 only");
      v_kind = is_bf16(v->element_type()) ? ((stochastic[leaf] & 2) ? kSr : kBf16) : kF32;
    }
    const int m_kind = is_bf16(m->element_type()) ? ((stochastic[leaf] & 1) ? kSr : kBf16) : kF32;
    if (((stochastic[leaf] & 1) && m_kind != kSr) || ((stochastic[leaf] & 2) && v_kind != kSr))
      return ffi::Error::InvalidArgument("adamx fused step: stochastic rounding needs bfloat16");
    if (kahan) {
      auto c = args.get<ffi::AnyBuffer>((2 + moments) * n + leaf);
      if (!c.has_value() || c->element_type() != pt)
        return ffi::Error::InvalidArgument("adamx fused step: the compensation is not like p");
    }
    // Results alias the operands (donated); if XLA had to copy, copy the state first.
    void* pd = in_place(args, rets, leaf, leaf);
    void* md = in_place(args, rets, 2 * n + leaf, n + leaf);
    void* vd = has_v ? in_place(args, rets, 3 * n + leaf, 2 * n + leaf) : nullptr;
    void* cd = kahan ? in_place(args, rets, (2 + moments) * n + leaf, (1 + moments) * n + leaf)
                     : nullptr;
    if (!pd || !md || (has_v && !vd) || (kahan && !cd))
      return ffi::Error::InvalidArgument("adamx fused step: a buffer could not be decoded");
    uint32_t sm = 0, sv = 0;
    if (m_kind == kSr &&
        !next_write(args, rets, streams * n + next_m, (streams - 1) * n + next_m, &sm))
      return ffi::Error::InvalidArgument("adamx fused step: a write counter is not a uint32");
    if (v_kind == kSr &&
        !next_write(args, rets, streams * n + next_v, (streams - 1) * n + next_v, &sv))
      return ffi::Error::InvalidArgument("adamx fused step: a write counter is not a uint32");
    next_m += m_kind == kSr ? 1 : 0;
    next_v += v_kind == kSr ? 1 : 0;
    const bool nesterov = algorithm == kAdamNesterov;
    const bool d = decayed[leaf] != 0, k = kahan != 0;
    const int p_kind = is_bf16(pt) ? kBf16 : kF32;
    Kernel kernel;
    switch (algorithm) {
      case kAdam:
      case kAdamNesterov:
        kernel = pick<adam_t, true, true, true, kSr, kSr>(nesterov, d, k, p_kind, m_kind, v_kind);
        break;
      case kAdamax:
        kernel = pick<adamax_t, false, true, true, kSr, kSr>(false, d, k, p_kind, m_kind, v_kind);
        break;
      case kLion:
        kernel = pick<lion_t, false, true, true, kSr, kF32>(false, d, k, p_kind, m_kind, kF32);
        break;
      case kStream:
        if (k || m_kind == kSr || v_kind == kSr)
          return ffi::Error::InvalidArgument("adamx fused step: the probe has no variants");
        kernel = pick<stream_t, false, false, false, kBf16, kBf16>(false, false, false, p_kind,
                                                                   m_kind, v_kind);
        break;
      default:
        return ffi::Error::InvalidArgument("adamx fused step: unknown algorithm");
    }
    for (size_t begin = 0; begin < count; begin += kChunk) {
      const size_t end = begin + kChunk < count ? begin + kChunk : count;
      tasks.push_back({kernel, pd, g->untyped_data(), md, vd, cd, sm, sv, begin, end});
    }
  }
  const long total = static_cast<long>(tasks.size());
  // Threads only pay off past a few chunks; below that the fork and join cost more than the work.
  // Dynamic: a thread that finishes early (the other shares its core with another job) takes the
  // next chunk rather than waiting at the join.
#pragma omp parallel for schedule(dynamic) if (total > 4)
  for (long i = 0; i < total; ++i) {
    const Task& t = tasks[i];
    t.kernel(h, t.p, t.g, t.m, t.v, t.c, t.sm, t.sv, t.begin, t.end);
  }
  return ffi::Error::Success();
}

}  // namespace


XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxFusedStep, FusedStepImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hyper
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("algorithm")
                                  .Attr<ffi::Span<const int64_t>>("decayed")
                                  .Attr<ffi::Span<const int64_t>>("stochastic")
                                  .Attr<int64_t>("kahan"));
