// Reference attention: one (query, head) pair per task, scores in fp32 with a max-subtracted softmax.
// Keys outside the mask get no weight; a query always sees at least itself, so no row is empty.
#include <cmath>
#include <vector>

#include "core/check.h"
#include "cpu/cpu_backend.h"
#include "cpu/simd_kernels.h"

namespace td::cpu {

void CpuBackend::attention(const AttentionParams& p) {
  TD_CHECK(p.n_q > 0 && p.kv_len >= p.n_q, "[attention] kv_len (", p.kv_len, ") must be >= n_q (", p.n_q, ") > 0");
  TD_CHECK(p.cached == nullptr, "[attention] the CPU backend takes the cache length as kv_len, not from memory");
  TD_CHECK(p.out_dtype == DType::F32, "[attention] the CPU backend writes fp32 outputs");
  TD_CHECK(p.heads > 0 && p.kv_heads > 0 && p.heads % p.kv_heads == 0, "[attention] heads (", p.heads,
           ") must be a multiple of kv_heads (", p.kv_heads, ")");
  TD_CHECK(p.kv_dtype == DType::F32, "[attention] the CPU backend keeps an fp32 KV cache, got ",
           dtype_name(p.kv_dtype));
  const int group = p.heads / p.kv_heads;
  const int d = p.head_dim;
  const SimdKernels& K = simd();
  const bool parallel = static_cast<double>(p.n_q) * p.heads * p.kv_len * d >= (1 << 19);
#pragma omp parallel num_threads(parallel ? region_threads() : 1) if (parallel)
  {
    std::vector<float> s(p.kv_len);
    std::vector<float> acc(d);
#pragma omp for schedule(static) collapse(2)
    for (int i = 0; i < p.n_q; ++i)
      for (int h = 0; h < p.heads; ++h) {
        const float* q = p.q + (static_cast<int64_t>(i) * p.heads + h) * d;
        const int g = h / group;
        const float* kb = static_cast<const float*>(p.k) + g * p.kv_head_stride;
        const float* vb = static_cast<const float*>(p.v) + g * p.kv_head_stride;
        const int visible = p.causal ? p.kv_len - p.n_q + i + 1 : p.kv_len;
        float mx = -INFINITY;
        for (int j = 0; j < visible; ++j) {
          s[j] = K.dot(q, kb + j * p.kv_token_stride, d) * p.scale;
          mx = std::fmax(mx, s[j]);
        }
        float denom = 0.0f;
        for (int j = 0; j < visible; ++j) {
          s[j] = std::exp(s[j] - mx);
          denom += s[j];
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int j = 0; j < visible; ++j) {
          const float* vj = vb + j * p.kv_token_stride;
          const float wj = s[j];
          for (int t = 0; t < d; ++t) acc[t] += wj * vj[t];
        }
        float* o = p.out + (static_cast<int64_t>(i) * p.heads + h) * d;
        const float inv = 1.0f / denom;
        for (int t = 0; t < d; ++t) o[t] = acc[t] * inv;
      }
  }
}

}  // namespace td::cpu
