// Block-causal attention over the KV cache, split along the keys (flash-decoding): when there are few
// (query, head) pairs, each is cut into key chunks (of at least kMinChunk keys) so that even a single
// decoding query keeps every SM busy on long contexts; long prefills, with many pairs, are not split. Pass 1: one block per (query, head, chunk) computes an online-softmax partial (max, sum,
// weighted V). Pass 2: one block per (query, head) merges the chunks. Same mask as AttentionParams:
// causal query i sees keys 0..kv_len - n_q + i.
#include <algorithm>
#include <cfloat>

#include "cuda/common.cuh"
#include "cuda/cuda_backend.h"

namespace td::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMinChunk = 256;         // fewest keys per split
constexpr int kMaxDim = 256;
constexpr int kPer = kMaxDim / 32;     // head-dim elements per lane


__device__ __forceinline__ int visible_keys(const AttentionParams& p, int qi) {
  return p.causal ? p.kv_len - p.n_q + qi + 1 : p.kv_len;
}

// grid (n_q * heads, splits). Writes partials [n_q * heads, splits, 2 + head_dim].
__global__ void __launch_bounds__(kThreads) attention_split_kernel(AttentionParams p, int splits, int chunk,
                                                                   float* __restrict__ partial) {
  const int qh = blockIdx.x, split = blockIdx.y;
  const int qi = qh / p.heads, h = qh % p.heads;
  const int g = h / (p.heads / p.kv_heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int d = p.head_dim;
  const int visible = visible_keys(p, qi);
  const int k0 = split * chunk, k1 = min(visible, k0 + chunk);

  float q[kPer], acc[kPer];
  const float* qrow = p.q + (static_cast<int64_t>(qi) * p.heads + h) * d;
#pragma unroll
  for (int t = 0; t < kPer; ++t) {
    const int e = lane + 32 * t;
    q[t] = e < d ? qrow[e] * p.scale : 0.0f;
    acc[t] = 0.0f;
  }
  float m = -FLT_MAX, l = 0.0f;
  const float* kb = p.k + g * p.kv_head_stride;
  const float* vb = p.v + g * p.kv_head_stride;
  for (int j = k0 + warp; j < k1; j += kWarps) {
    const float* kr = kb + static_cast<int64_t>(j) * p.kv_token_stride;
    float s = 0.0f;
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const int e = lane + 32 * t;
      if (e < d) s += q[t] * kr[e];
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new);
    const float pj = expf(s - m_new);
    l = l * corr + pj;
    const float* vr = vb + static_cast<int64_t>(j) * p.kv_token_stride;
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const int e = lane + 32 * t;
      acc[t] = acc[t] * corr + (e < d ? pj * vr[e] : 0.0f);
    }
    m = m_new;
  }
  // Merge the warps of this block.
  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float sacc[kWarps][kMaxDim];
  if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
  for (int t = 0; t < kPer; ++t) {
    const int e = lane + 32 * t;
    if (e < d) sacc[warp][e] = acc[t];
  }
  __syncthreads();
  float M = -FLT_MAX;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  float* out = partial + (static_cast<int64_t>(qh) * splits + split) * (2 + d);
  for (int e = threadIdx.x; e < d; e += kThreads) {
    float a = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (sl[w] > 0.0f) a += sacc[w][e] * expf(sm[w] - M);
    out[2 + e] = a;
  }
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (sl[w] > 0.0f) L += sl[w] * expf(sm[w] - M);
    out[0] = M;
    out[1] = L;
  }
}

// grid (n_q * heads), block kThreads: merges the splits into out [n_q, heads, head_dim].
__global__ void attention_merge_kernel(AttentionParams p, int splits, const float* __restrict__ partial) {
  const int qh = blockIdx.x;
  const int d = p.head_dim;
  const float* base = partial + static_cast<int64_t>(qh) * splits * (2 + d);
  float M = -FLT_MAX;
  for (int s = 0; s < splits; ++s)
    if (base[s * (2 + d) + 1] > 0.0f) M = fmaxf(M, base[s * (2 + d)]);
  float L = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float* ps = base + s * (2 + d);
    if (ps[1] > 0.0f) L += ps[1] * expf(ps[0] - M);
  }
  float* out = p.out + static_cast<int64_t>(qh) * d;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float* ps = base + s * (2 + d);
      if (ps[1] > 0.0f) a += ps[2 + e] * expf(ps[0] - M);
    }
    out[e] = a / L;
  }
}

}  // namespace

void CudaBackend::attention(const AttentionParams& p) {
  TD_CHECK(p.n_q > 0 && p.kv_len >= p.n_q, "[attention] kv_len (", p.kv_len, ") must be >= n_q (", p.n_q, ") > 0");
  TD_CHECK(p.heads > 0 && p.kv_heads > 0 && p.heads % p.kv_heads == 0, "[attention] heads (", p.heads,
           ") must be a multiple of kv_heads (", p.kv_heads, ")");
  TD_CHECK(p.head_dim > 0 && p.head_dim <= kMaxDim, "[attention] head_dim ", p.head_dim,
           " is not supported on CUDA (at most ", kMaxDim, ")");
  const int64_t pairs = static_cast<int64_t>(p.n_q) * p.heads;
  TD_CHECK(pairs <= 2147483647, "[attention] problem too large");
  const int64_t want = (4 * static_cast<int64_t>(sm_count_) + pairs - 1) / pairs;   // ~4 blocks per SM
  const int64_t most = (p.kv_len + kMinChunk - 1) / kMinChunk;
  const int splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, most, 65535})));
  const int chunk = (p.kv_len + splits - 1) / splits;
  float* partial = scratch_partial_.as<float>(static_cast<size_t>(pairs) * splits * (2 + p.head_dim));
  attention_split_kernel<<<dim3(static_cast<unsigned>(pairs), splits), kThreads>>>(p, splits, chunk, partial);
  TD_CUDA_LAUNCH_CHECK("attention");
  attention_merge_kernel<<<static_cast<unsigned>(pairs), 128>>>(p, splits, partial);
  TD_CUDA_LAUNCH_CHECK("attention");
}

}  // namespace td::cuda
