// adamx's fused Adam(W) step over 8-bit block-quantised moments, registered through jax.ffi.
//
// See fused_step.cc for the conventions (operation order, no FP contraction, aliasing).

#include "fused_common.h"

namespace {

// ---- Adam(W) with 8-bit block-quantised moments (adamx/_quantize.py's `Blockwise`) ----------------
//
// One pass per block: dequantise m and v (code table times the block's absmax), run the Adam step
// above on float32 values, update p, then take the new block absmax and re-encode both moments
// with the dynamic-exponent code, in the jnp path's operations (adamx/_quantize.py:
// `encode_magnitude`, `Blockwise.write`), so the results are bit-identical to it.
//
// Operands: hyper, tables, then p[0..n), g[0..n), m_codes[0..n), m_scales[0..n), v_codes[0..n),
// v_scales[0..n); results p, m_codes, m_scales, v_codes, v_scales (aliased). `tables` holds the
// signed code's 256 values, the unsigned code's 256 values, the signed code's 8 decade edges and
// the unsigned code's 9. A leaf is `layers` x `sizes` elements; codes are [layers, blocks, block].

constexpr int kMaxBlock = 4096;
constexpr size_t kTables = 512 + 22 + 25;

// The encoder's constants for a `kBits`-bit magnitude code (adamx/_quantize.py: `code_constants`):
// decade edges (kBits + 1), one over each decade's top (kBits), grid steps per unit (kBits).
template <int kBits>
struct Code {
  float bounds[kBits + 1];
  float inverse_top[kBits];
  float per_step[kBits];
  explicit Code(const float* t) {  // a local copy: no store through a byte pointer can alias it
    for (int k = 0; k <= kBits; ++k) bounds[k] = t[k];
    for (int k = 0; k < kBits; ++k) inverse_top[k] = t[kBits + 1 + k];
    for (int k = 0; k < kBits; ++k) per_step[k] = t[2 * kBits + 1 + k];
  }
};

template <int kBits, bool kZeroFree>
inline int encode(float y, const Code<kBits>& c) {
  // y = |x| / absmax is in [0, 1] up to an ulp; above 1 the clamp of j gives the top code, as 1
  // would. (No clamp of y: its NaN-aware select keeps the loop from vectorising.)
  // The decade by comparisons with its edges; its constants by selects, not table lookups.
  float inverse_top = c.inverse_top[0], per_step = c.per_step[0];
  int points = 1;
#pragma GCC unroll 8
  for (int k = 1; k < kBits; ++k) {
    const bool above = y >= c.bounds[k];
    inverse_top = above ? c.inverse_top[k] : inverse_top;
    per_step = above ? c.per_step[k] : per_step;
    points = above ? (1 << k) : points;
  }
  const float u = (y * inverse_top - 0.1f) * per_step - 1.0f;
  // rint: round half to even in the default mode, as jnp.round (nearbyint is a libm call).
  int j = static_cast<int>(std::rint(u));
  j = std::max(j, -1);
  j = std::min(j, points - 1);
  const float tiny = c.bounds[1];
  const int below = kZeroFree ? static_cast<int>(y > 0.0f) : static_cast<int>(y >= 0.5f * tiny);
  const int under = static_cast<int>(y < tiny);  // an arithmetic select: it vectorises
  return under * below + (1 - under) * (points + j);
}

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
  // finite scale gives that by itself, and keeps this loop vectorised.
  if (std::isfinite(m_scale)) {
    for (size_t o = 0; o < count; ++o) m[o] = signed_values[mc[o]] * m_scale;
  } else {
    for (size_t o = 0; o < count; ++o) {
      const float unit = signed_values[mc[o]];
      m[o] = unit == 0.0f ? unit : unit * m_scale;
    }
  }
  if (std::isfinite(v_scale)) {
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
  // floats; a NaN's pattern is above inf's, so a NaN moment gives a NaN scale, as jnp.max).
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
  const float* t = tables.typed_data();
  const long total = static_cast<long>(jobs.size());
#pragma omp parallel for schedule(static) if (total > 4)
  for (long i = 0; i < total; ++i) {
    const Job& job = jobs[i];
    const QuantizedLeaf& leaf = leaves[job.leaf];
    auto kernel = nesterov ? (leaf.decayed ? &adam_quantized_block<true, true>
                                           : &adam_quantized_block<true, false>)
                           : (leaf.decayed ? &adam_quantized_block<false, true>
                                           : &adam_quantized_block<false, false>);
    for (size_t b = job.first; b < job.last; ++b) kernel(h, t, leaf, job.layer, b, width);
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
