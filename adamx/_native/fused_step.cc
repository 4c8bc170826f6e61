// adamx's fused optimizer step for XLA:CPU, registered through jax.ffi.
//
// One call updates every leaf of a parameter tree in place: it reads p, g and the moments once and
// writes p and the moments once (28 bytes per float32 parameter for Adam), where XLA:CPU's plain
// jnp step makes three passes. The arithmetic is the jnp path's (adamx/_adam.py and the blocks it
// chains), operation for operation, and this file is compiled with -ffp-contract=off so that no
// multiply-add is fused: the results are bit-identical to the jnp path, which stays the reference
// (tests/test_fused.py). Scalars that change per step (bias corrections, learning rate, weight
// decay) arrive in a small float32 buffer computed by JAX; which algorithm and which leaves are
// decayed arrive as attributes.
//
// Operands: hyper, then p[0..n), g[0..n), m[0..n), v[0..n) (v absent for Lion);
// results: p[0..n), m[0..n), v[0..n), each aliased to its operand (input_output_aliases).
// Leaves may be float32 or bfloat16 (params and gradients alike; moments independently).

#include "fused_common.h"

namespace {

// ---- one range of one leaf -----------------------------------------------------------------------

// Adam / AdamW / optax's NAdam(W): ema, bias_correction, scale_by_second_moment, decay, -lr, apply.
template <bool kNesterov, bool kDecayed, class P, class M, class V>
void adam(const float* h, P* p, const P* g, M* m, V* v, size_t begin, size_t end) {
  const float a1 = h[kA1], b1 = h[kB1], c1 = h[kC1], a2 = h[kA2], b2 = h[kB2], c2 = h[kC2];
  const float eps_root = h[kEpsRoot], eps = h[kEps], decay = h[kDecay], neg_lr = h[kNegLr];
  const float c1_next = h[kC1Next], g_weight = h[kGWeight];
  for (size_t i = begin; i < end; ++i) {
    const float gi = load(g, i), pi = load(p, i);
    const float mi = a1 * gi + b1 * load(m, i);
    const float vi = a2 * (gi * gi) + b2 * load(v, i);
    store(m, i, mi);
    store(v, i, vi);
    const float m_hat = kNesterov ? b1 * (mi * c1_next) + g_weight * gi : mi * c1;
    const float denominator = std::sqrt(vi * c2 + eps_root) + eps;
    float u = denominator != 0.0f ? m_hat / denominator : 0.0f;
    if (kDecayed) u = u + decay * pi;
    u = round_as(p, u * neg_lr);
    store(p, i, pi + u);
  }
}

// AdaMax(W): ema, bias_correction, scale_by_infinity_norm, decay, -lr, apply.
template <bool kNesterov, bool kDecayed, class P, class M, class V>
void adamax(const float* h, P* p, const P* g, M* m, V* v, size_t begin, size_t end) {
  const float a1 = h[kA1], b1 = h[kB1], c1 = h[kC1], b2 = h[kB2], eps = h[kEps];
  const float decay = h[kDecay], neg_lr = h[kNegLr];
  for (size_t i = begin; i < end; ++i) {
    const float gi = load(g, i), pi = load(p, i);
    const float mi = a1 * gi + b1 * load(m, i);
    const float ui = nan_max(b2 * load(v, i), std::fabs(gi) + eps);
    store(m, i, mi);
    store(v, i, ui);
    float u = ui != 0.0f ? (mi * c1) / ui : 0.0f;
    if (kDecayed) u = u + decay * pi;
    u = round_as(p, u * neg_lr);
    store(p, i, pi + u);
  }
}

// Lion: sign of the interpolation (b1), then the momentum update (b2), decay, -lr, apply.
// Uses kA1/kB1 for b1 and kA2/kB2 for b2.
template <bool kNesterov, bool kDecayed, class P, class M, class V>
void lion(const float* h, P* p, const P* g, M* m, V*, size_t begin, size_t end) {
  const float a1 = h[kA1], b1 = h[kB1], a2 = h[kA2], b2 = h[kB2];
  const float decay = h[kDecay], neg_lr = h[kNegLr];
  for (size_t i = begin; i < end; ++i) {
    const float gi = load(g, i), pi = load(p, i), mi = load(m, i);
    const float c = a1 * gi + b1 * mi;
    // sign(c) for finite c (0 and -0 kept); a non-finite c passes through (adamx/_lion.py).
    float u = std::isfinite(c) ? (c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : c)) : c;
    store(m, i, a2 * gi + b2 * mi);
    if (kDecayed) u = u + decay * pi;
    u = round_as(p, u * neg_lr);
    store(p, i, pi + u);
  }
}

// The bandwidth probe: the same bytes as Adam (read p, g, m, v; write p, m, v) and trivial math.
template <bool kNesterov, bool kDecayed, class P, class M, class V>
void stream(const float* h, P* p, const P* g, M* m, V* v, size_t begin, size_t end) {
  const float a = h[kA1];
  for (size_t i = begin; i < end; ++i) {
    const float gi = load(g, i);
    store(p, i, load(p, i) + a * gi);
    store(m, i, load(m, i) + gi);
    store(v, i, load(v, i) + a * load(v, i));
  }
}

// ---- dispatch on the algorithm and the element types ----------------------------------------------

using Kernel = void (*)(const float*, void*, const void*, void*, void*, size_t, size_t);

template <template <bool, bool, class, class, class> class F, bool N, bool D, class P, class M,
          class V>
void call(const float* h, void* p, const void* g, void* m, void* v, size_t b, size_t e) {
  F<N, D, P, M, V>::run(h, static_cast<P*>(p), static_cast<const P*>(g), static_cast<M*>(m),
                        static_cast<V*>(v), b, e);
}

#define ADAMX_WRAP(name)                                                              \
  template <bool N, bool D, class P, class M, class V>                                \
  struct name##_t {                                                                   \
    static void run(const float* h, P* p, const P* g, M* m, V* v, size_t b, size_t e) { \
      name<N, D, P, M, V>(h, p, g, m, v, b, e);                                       \
    }                                                                                 \
  };
ADAMX_WRAP(adam)
ADAMX_WRAP(adamax)
ADAMX_WRAP(lion)
ADAMX_WRAP(stream)
#undef ADAMX_WRAP

template <template <bool, bool, class, class, class> class F, bool N, bool D, class P, class M>
Kernel pick_v(bool v_bf16) {
  return v_bf16 ? &call<F, N, D, P, M, uint16_t> : &call<F, N, D, P, M, float>;
}
template <template <bool, bool, class, class, class> class F, bool N, bool D, class P>
Kernel pick_m(bool m_bf16, bool v_bf16) {
  return m_bf16 ? pick_v<F, N, D, P, uint16_t>(v_bf16) : pick_v<F, N, D, P, float>(v_bf16);
}
template <template <bool, bool, class, class, class> class F, bool N, bool D>
Kernel pick_p(bool p_bf16, bool m_bf16, bool v_bf16) {
  return p_bf16 ? pick_m<F, N, D, uint16_t>(m_bf16, v_bf16) : pick_m<F, N, D, float>(m_bf16, v_bf16);
}
template <template <bool, bool, class, class, class> class F>
Kernel pick(bool nesterov, bool decayed, bool p_bf16, bool m_bf16, bool v_bf16) {
  if (nesterov)
    return decayed ? pick_p<F, true, true>(p_bf16, m_bf16, v_bf16)
                   : pick_p<F, true, false>(p_bf16, m_bf16, v_bf16);
  return decayed ? pick_p<F, false, true>(p_bf16, m_bf16, v_bf16)
                 : pick_p<F, false, false>(p_bf16, m_bf16, v_bf16);
}

bool is_bf16(ffi::DataType t) { return t == ffi::DataType::BF16; }
bool supported(ffi::DataType t) { return t == ffi::DataType::F32 || t == ffi::DataType::BF16; }

struct Task {
  Kernel kernel;
  void* p;
  const void* g;
  void* m;
  void* v;
  size_t begin, end;
};


ffi::Error FusedStepImpl(ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                         ffi::RemainingRets rets, int64_t algorithm,
                         ffi::Span<const int64_t> decayed) {
  const size_t n = decayed.size();
  const bool has_v = algorithm != kLion;
  const size_t streams = has_v ? 4 : 3;
  if (args.size() != streams * n || rets.size() != (streams - 1) * n)
    return ffi::Error::InvalidArgument("adamx fused step: wrong number of buffers");
  if (hyper.element_count() < kHyperCount)
    return ffi::Error::InvalidArgument("adamx fused step: hyper buffer too short");
  const float* h = hyper.typed_data();
  std::vector<Task> tasks;
  for (size_t leaf = 0; leaf < n; ++leaf) {
    auto p = args.get<ffi::AnyBuffer>(leaf);
    auto g = args.get<ffi::AnyBuffer>(n + leaf);
    auto m = args.get<ffi::AnyBuffer>(2 * n + leaf);
    auto p_out = rets.get<ffi::AnyBuffer>(leaf);
    auto m_out = rets.get<ffi::AnyBuffer>(n + leaf);
    if (!p.has_value() || !g.has_value() || !m.has_value() || !p_out.has_value() ||
        !m_out.has_value())
      return ffi::Error::InvalidArgument("adamx fused step: a buffer could not be decoded");
    void* v_data = nullptr;
    bool v_bf16 = false;
    void* v_out_data = nullptr;
    if (has_v) {
      auto v = args.get<ffi::AnyBuffer>(3 * n + leaf);
      auto v_out = rets.get<ffi::AnyBuffer>(2 * n + leaf);
      if (!v.has_value() || !v_out.has_value())
        return ffi::Error::InvalidArgument("adamx fused step: a buffer could not be decoded");
      if (!supported(v->element_type()))
        return ffi::Error::InvalidArgument("adamx fused step: float32 or bfloat16 only");
      v_data = v->untyped_data();
      v_out_data = (*v_out)->untyped_data();
      v_bf16 = is_bf16(v->element_type());
    }
    if (!supported(p->element_type()) || g->element_type() != p->element_type() ||
        !supported(m->element_type()))
      return ffi::Error::InvalidArgument("adamx fused step: float32 or bfloat16 only");
    const size_t count = p->element_count();
    // Results alias the operands (donated); if XLA had to copy, copy the state first.
    void* pd = (*p_out)->untyped_data();
    void* md = (*m_out)->untyped_data();
    if (pd != p->untyped_data()) std::memcpy(pd, p->untyped_data(), p->size_bytes());
    if (md != m->untyped_data()) std::memcpy(md, m->untyped_data(), m->size_bytes());
    if (has_v && v_out_data != v_data) {
      auto v = args.get<ffi::AnyBuffer>(3 * n + leaf);
      std::memcpy(v_out_data, v_data, v->size_bytes());
    }
    const bool nesterov = algorithm == kAdamNesterov;
    const bool d = decayed[leaf] != 0;
    const bool pb = is_bf16(p->element_type()), mb = is_bf16(m->element_type());
    Kernel kernel;
    switch (algorithm) {
      case kAdam:
      case kAdamNesterov:
        kernel = pick<adam_t>(nesterov, d, pb, mb, v_bf16);
        break;
      case kAdamax:
        kernel = pick<adamax_t>(false, d, pb, mb, v_bf16);
        break;
      case kLion:
        kernel = pick<lion_t>(false, d, pb, mb, false);
        break;
      case kStream:
        kernel = pick<stream_t>(false, false, pb, mb, v_bf16);
        break;
      default:
        return ffi::Error::InvalidArgument("adamx fused step: unknown algorithm");
    }
    for (size_t begin = 0; begin < count; begin += kChunk) {
      const size_t end = begin + kChunk < count ? begin + kChunk : count;
      tasks.push_back({kernel, pd, g->untyped_data(), md, v_out_data, begin, end});
    }
  }
  const long total = static_cast<long>(tasks.size());
  // Threads only pay off past a few chunks; below that the fork and join cost more than the work.
#pragma omp parallel for schedule(static) if (total > 4)
  for (long i = 0; i < total; ++i) {
    const Task& t = tasks[i];
    t.kernel(h, t.p, t.g, t.m, t.v, t.begin, t.end);
  }
  return ffi::Error::Success();
}

}  // namespace


XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamxFusedStep, FusedStepImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int64_t>("algorithm")
                                  .Attr<ffi::Span<const int64_t>>("decayed"));
