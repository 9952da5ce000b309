#include "cpu/product.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace td::cpu {

namespace {
// Scratch of the calling thread: a product prepares its x there and its tiles only read it.
thread_local std::vector<float> t_xf;
thread_local std::vector<uint16_t> t_x16;
thread_local std::vector<uint16_t> t_xpack;   // x16 as the kernel set packs it (AMX tiles)
thread_local std::vector<int16_t> t_xq;
thread_local std::vector<float> t_xs;
// Scratch of each worker thread.
thread_local std::vector<float> t_stage;    // f16 weight rows widened to fp32
}  // namespace

void quantize_rows(const float* x, int m, int64_t k, int16_t* q, float* scales) {
  for (int i = 0; i < m; ++i) {
    const float* xi = x + i * k;
    int16_t* qi = q + i * k;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t t = 0; t < k; ++t) {
      const float a = std::fabs(xi[t]);
      finite = finite && std::isfinite(a);
      amax = std::max(amax, a);
    }
    if (!finite || amax == 0.0f) {
      std::fill(qi, qi + k, int16_t{0});
      scales[i] = finite ? 0.0f : NAN;
      continue;
    }
    const float inv = 32767.0f / amax;
    // Round to nearest even by the 1.5 * 2^23 trick (exact for |v| < 2^22; here |v| <= 32767 plus rounding):
    // the same as nearbyint, without a libm call per element where SSE4.1 is not assumed.
    constexpr float kMagic = 12582912.0f;
    for (int64_t t = 0; t < k; ++t) {
      const float v = std::min(32767.0f, std::max(-32767.0f, xi[t] * inv));
      qi[t] = static_cast<int16_t>((v + kMagic) - kMagic);
    }
    scales[i] = amax / 32767.0f;
  }
}

ProductInput::ProductInput(const float* x, int m, const WeightView& w) : K_(simd()), m_(m), k_(w.cols) {
  const size_t count = static_cast<size_t>(m) * w.cols;
  if (w.dtype == DType::I8) {
    TD_CHECK(w.scales != nullptr, "[matmul] int8 weight without its group scales");
    path_ = Path::I8;
    t_xq.resize(count);
    t_xs.resize(m);
    quantize_rows(x, m, w.cols, t_xq.data(), t_xs.data());
    xq_ = t_xq.data();
    xs_ = t_xs.data();
  } else if (w.dtype == DType::BF16 && w.round_input) {
    if (K_.dot_tile_bf16 != nullptr) {
      path_ = Path::BF16;
      t_x16.resize(count);
      for (size_t i = 0; i < count; ++i) t_x16[i] = f32_to_bf16(x[i]);
      x16_ = t_x16.data();
      if (K_.pack_bf16 != nullptr) {
        t_xpack.resize(static_cast<size_t>(K_.pack_bf16(x16_, m, w.cols, nullptr)));
        K_.pack_bf16(x16_, m, w.cols, t_xpack.data());
        x16_ = t_xpack.data();
      }
    } else {   // the same products in fp32: a bf16 times a bf16 is exact in fp32
      t_xf.resize(count);
      for (size_t i = 0; i < count; ++i) t_xf[i] = bf16_to_f32(f32_to_bf16(x[i]));
      xf_ = t_xf.data();
    }
  } else {
    xf_ = x;
  }
}

void ProductInput::tile(const WeightView& w, int64_t r0, int nr, float* out, int64_t ldo) const {
  const void* rows[kMaxTile];
  if (path_ == Path::I8) {
    const int8_t* qrows[kMaxTile] = {};
    const uint16_t* scales[kMaxTile] = {};
    for (int j = 0; j < nr; ++j) {
      qrows[j] = reinterpret_cast<const int8_t*>(w.row_ptr(r0 + j));
      scales[j] = w.scales + (r0 + j) * w.groups();
    }
    K_.dot_tile_i8(xq_, m_, k_, qrows, scales, nr, out, ldo);
    for (int i = 0; i < m_; ++i)
      for (int j = 0; j < nr; ++j) out[i * ldo + j] *= xs_[i];
    return;
  }
  if (path_ == Path::BF16) {
    for (int j = 0; j < nr; ++j) rows[j] = w.row_ptr(r0 + j);
    K_.dot_tile_bf16(x16_, m_, k_, rows, nr, out, ldo);
    return;
  }
  if (w.dtype == DType::F16) {
    if (t_stage.size() < static_cast<size_t>(kMaxTile * k_)) t_stage.resize(static_cast<size_t>(kMaxTile * k_));
    for (int j = 0; j < nr; ++j) {
      K_.to_f32(w.row_ptr(r0 + j), w.dtype, k_, t_stage.data() + j * k_);
      rows[j] = t_stage.data() + j * k_;
    }
    K_.dot_tile(xf_, m_, k_, rows, DType::F32, nr, out, ldo);
    return;
  }
  for (int j = 0; j < nr; ++j) rows[j] = w.row_ptr(r0 + j);
  K_.dot_tile(xf_, m_, k_, rows, w.dtype, nr, out, ldo);
}

}  // namespace td::cpu
