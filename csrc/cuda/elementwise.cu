// Memory-bound per-token ops: embedding, RMSNorm, RoPE, SwiGLU, residual adds, KV append, random fill.
#include "core/select_params.h"
#include "cuda/common.cuh"
#include "cuda/cuda_backend.h"

namespace td::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxHalfDim = 128;   // head_dim <= 256

__global__ void embed_kernel(const void* __restrict__ table, DType t, int64_t cols, const int32_t* __restrict__ ids,
                             float* __restrict__ out) {
  const int64_t row = ids[blockIdx.x];
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
    out[blockIdx.x * cols + j] = load_f32(table, t, row * cols + j);
}

// Sum of v over the block (kThreads threads), returned to every thread.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float part[kThreads / 32];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < kThreads / 32 ? part[threadIdx.x] : 0.0f;
    t = warp_sum(t);
    if (threadIdx.x == 0) part[0] = t;
  }
  __syncthreads();
  return part[0];
}

constexpr int kNormPer = 32;   // row elements a thread keeps in registers between the two passes (dim <= 8192)

// out = rms_norm(x) * w, one block per row; with y, x += y first (the residual add, fused). The row is read
// once: the first kNormPer * kThreads elements stay in registers for the second pass.
__global__ void rms_norm_kernel(float* __restrict__ x, const float* __restrict__ y, const void* __restrict__ w,
                                DType wt, int dim, float eps, void* __restrict__ out, bool bf16_out) {
  float* xr = x + static_cast<int64_t>(blockIdx.x) * dim;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * dim;
  const auto load = [&](int j) {
    float v = xr[j];
    if (y != nullptr) {
      v += y[static_cast<int64_t>(blockIdx.x) * dim + j];
      xr[j] = v;
    }
    return v;
  };
  float kept[kNormPer];
  float ss = 0.0f;
#pragma unroll
  for (int t = 0; t < kNormPer; ++t) {
    const int j = threadIdx.x + t * kThreads;
    kept[t] = j < dim ? load(j) : 0.0f;
    ss += kept[t] * kept[t];
  }
  for (int j = threadIdx.x + kNormPer * kThreads; j < dim; j += kThreads) {
    const float v = load(j);
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss) / dim + eps);
#pragma unroll
  for (int t = 0; t < kNormPer; ++t) {
    const int j = threadIdx.x + t * kThreads;
    if (j < dim) store_act(out, bf16_out, o0 + j, load_f32(w, wt, j) * (kept[t] * r));
  }
  for (int j = threadIdx.x + kNormPer * kThreads; j < dim; j += kThreads)
    store_act(out, bf16_out, o0 + j, load_f32(w, wt, j) * (xr[j] * r));
}

// positions[i] as fp32, read once per block.
__device__ __forceinline__ float block_position(const int64_t* __restrict__ positions, int i) {
  __shared__ float pos;
  if (threadIdx.x == 0) pos = static_cast<float>(positions[i]);
  __syncthreads();
  return pos;
}

struct RopeArgs {
  float inv_freq[kMaxHalfDim];
  float attention_factor;
  float qscale_beta;
  long long qscale_length;
  int half;
  int heads;
  bool is_query;
};

__device__ __forceinline__ void rotate(float* v, int j, int half, float cs, float sn, float scale) {
  const float p = v[j], q = v[j + half];
  v[j] = (p * cs - q * sn) * scale;
  v[j + half] = (q * cs + p * sn) * scale;
}

// grid (n, heads), block half_dim threads: rotate-half at the token's absolute position.
__global__ void rope_kernel(float* __restrict__ x, const int64_t* __restrict__ positions, RopeArgs a) {
  const int i = blockIdx.x, h = blockIdx.y, j = threadIdx.x;
  const float pos = block_position(positions, i);
  const float angle = pos * a.inv_freq[j];   // fp32 product, as the reference computes it
  float sn, cs;
  sincosf(angle, &sn, &cs);
  cs *= a.attention_factor;
  sn *= a.attention_factor;
  float scale = 1.0f;
  if (a.is_query && a.qscale_beta != 0.0f)
    scale = 1.0f + a.qscale_beta * logf(1.0f + floorf(pos / static_cast<float>(a.qscale_length)));
  float* v = x + (static_cast<int64_t>(i) * a.heads + h) * (2 * a.half);
  rotate(v, j, a.half, cs, sn, scale);
}

__device__ __forceinline__ void store_kv(void* cache, DType t, int64_t i, float v) {
  if (t == DType::BF16) static_cast<__nv_bfloat16*>(cache)[i] = __float2bfloat16(v);
  else static_cast<float*>(cache)[i] = v;
}

// grid (n, heads + kv_heads), block half_dim threads: blocks y < heads rotate (and scale) a query head in
// place; the others rotate a key head into the cache (k itself is left as it was) and append the matching
// value head.
__global__ void rope_kv_append_kernel(float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                      const int64_t* __restrict__ positions, RopeArgs a, int kv_heads,
                                      void* __restrict__ cache_k, void* __restrict__ cache_v, DType cache_dtype,
                                      int64_t row0, const int32_t* __restrict__ row0_device, int64_t head_stride) {
  const int i = blockIdx.x, hy = blockIdx.y, j = threadIdx.x, d = 2 * a.half;
  const float pos = block_position(positions, i);
  float sn, cs;
  sincosf(pos * a.inv_freq[j], &sn, &cs);
  cs *= a.attention_factor;
  sn *= a.attention_factor;
  if (hy < a.heads) {
    float scale = 1.0f;
    if (a.qscale_beta != 0.0f)
      scale = 1.0f + a.qscale_beta * logf(1.0f + floorf(pos / static_cast<float>(a.qscale_length)));
    rotate(q + (static_cast<int64_t>(i) * a.heads + hy) * d, j, a.half, cs, sn, scale);
    return;
  }
  const int g = hy - a.heads;
  const float* kr = k + (static_cast<int64_t>(i) * kv_heads + g) * d;
  const float* vr = v + (static_cast<int64_t>(i) * kv_heads + g) * d;
  float rot[2] = {kr[j], kr[j + a.half]};
  rotate(rot, 0, 1, cs, sn, 1.0f);
  if (row0_device != nullptr) row0 = *row0_device;
  const int64_t dst = g * head_stride + (row0 + i) * d;
  store_kv(cache_k, cache_dtype, dst + j, rot[0]);
  store_kv(cache_k, cache_dtype, dst + j + a.half, rot[1]);
  store_kv(cache_v, cache_dtype, dst + j, vr[j]);
  store_kv(cache_v, cache_dtype, dst + j + a.half, vr[j + a.half]);
}

__global__ void swiglu_kernel(const float* __restrict__ g, const float* __restrict__ u, int64_t n, void* out,
                              bool bf16_out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    const float x = g[i];
    store_act(out, bf16_out, i, x / (1.0f + expf(-x)) * u[i]);
  }
}

__global__ void axpy_kernel(float* __restrict__ x, const float* __restrict__ y, float a, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] += a * y[i];
}

// grid (n, kv_heads), block head_dim threads.
__global__ void kv_write_kernel(void* __restrict__ cache, DType cache_dtype, const float* __restrict__ chunk,
                                int kv_heads, int head_dim, int64_t row0, int64_t head_stride) {
  const int i = blockIdx.x, g = blockIdx.y;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    store_kv(cache, cache_dtype, g * head_stride + (row0 + i) * head_dim + d,
             chunk[(static_cast<int64_t>(i) * kv_heads + g) * head_dim + d]);
}

__global__ void fill_random_kernel(void* dst, DType t, int64_t n, float std, uint64_t seed) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = std == 0.0f ? 1.0f : std * normal_from_hash(seed, static_cast<uint64_t>(i));
  if (t == DType::F32) static_cast<float*>(dst)[i] = v;
  else if (t == DType::BF16) static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16(v);
  else static_cast<__half*>(dst)[i] = __float2half(v);
}

}  // namespace

void CudaBackend::embed(const WeightView& table, const int32_t* ids, int n, float* out) {
  embed_kernel<<<n, kThreads, 0, launch_stream()>>>(table.data, table.dtype, table.cols, ids, out);
  TD_CUDA_LAUNCH_CHECK("embed");
}

void CudaBackend::rms_norm(const float* x, const WeightView& w, int n, int dim, float eps, float* out) {
  if (n == 0) return;
  rms_norm_kernel<<<n, kThreads, 0, launch_stream()>>>(const_cast<float*>(x), nullptr, w.data, w.dtype, dim, eps, out, false);
  TD_CUDA_LAUNCH_CHECK("rms_norm");
}

namespace {
RopeArgs rope_args(int heads, int head_dim, const RopeParams& rp, bool is_query) {
  const int half = head_dim / 2;
  TD_CHECK(half <= kMaxHalfDim && static_cast<int>(rp.inv_freq.size()) == half, "[rope] head_dim ", head_dim,
           " is not supported on CUDA (at most ", 2 * kMaxHalfDim, ") or does not match inv_freq");
  RopeArgs a{};
  for (int j = 0; j < half; ++j) a.inv_freq[j] = rp.inv_freq[j];
  a.attention_factor = rp.attention_factor;
  a.qscale_beta = rp.qscale_beta;
  a.qscale_length = rp.qscale_length;
  a.half = half;
  a.heads = heads;
  a.is_query = is_query;
  return a;
}
}  // namespace

void CudaBackend::rope(float* x, int n, int heads, int head_dim, const int64_t* positions, const RopeParams& rp,
                       bool is_query) {
  const RopeArgs a = rope_args(heads, head_dim, rp, is_query);
  rope_kernel<<<dim3(n, heads), a.half, 0, launch_stream()>>>(x, positions, a);
  TD_CUDA_LAUNCH_CHECK("rope");
}

void CudaBackend::rope_kv_append(float* q, float* k, const float* v, int n, int heads, int kv_heads, int head_dim,
                                 const int64_t* positions, const RopeParams& rp, void* cache_k, void* cache_v,
                                 DType cache_dtype, int64_t row0, int64_t head_stride,
                                 const int32_t* row0_device) {
  const RopeArgs a = rope_args(heads, head_dim, rp, true);
  TD_CHECK(cache_dtype == DType::F32 || cache_dtype == DType::BF16, "[rope_kv_append] KV cache dtype ",
           dtype_name(cache_dtype), " is not supported on CUDA");
  rope_kv_append_kernel<<<dim3(n, heads + kv_heads), a.half, 0, launch_stream()>>>(q, k, v, positions, a, kv_heads, cache_k, cache_v,
                                                               cache_dtype, row0, row0_device, head_stride);
  TD_CUDA_LAUNCH_CHECK("rope_kv_append");
}

void CudaBackend::add_rms_norm(float* x, const float* y, const WeightView& w, int n, int dim, float eps, float* out) {
  if (n == 0) return;
  rms_norm_kernel<<<n, kThreads, 0, launch_stream()>>>(x, y, w.data, w.dtype, dim, eps, out, false);
  TD_CUDA_LAUNCH_CHECK("add_rms_norm");
}

void CudaBackend::rms_norm_bf16(float* x, const float* y, const WeightView& w, int n, int dim, float eps,
                                uint16_t* out) {
  if (n == 0) return;
  rms_norm_kernel<<<n, kThreads, 0, launch_stream()>>>(x, y, w.data, w.dtype, dim, eps, out, true);
  TD_CUDA_LAUNCH_CHECK("rms_norm");
}

void CudaBackend::swiglu(const float* gate, const float* up, int64_t n, float* out) {
  swiglu_kernel<<<blocks_for(n, kThreads), kThreads, 0, launch_stream()>>>(gate, up, n, out, false);
  TD_CUDA_LAUNCH_CHECK("swiglu");
}

void CudaBackend::swiglu_bf16(const float* gate, const float* up, int64_t n, uint16_t* out) {
  swiglu_kernel<<<blocks_for(n, kThreads), kThreads, 0, launch_stream()>>>(gate, up, n, out, true);
  TD_CUDA_LAUNCH_CHECK("swiglu");
}

void CudaBackend::add(float* x, const float* y, int64_t n) { axpy(x, y, 1.0f, n); }

void CudaBackend::axpy(float* x, const float* y, float a, int64_t n) {
  axpy_kernel<<<blocks_for(n, kThreads), kThreads, 0, launch_stream()>>>(x, y, a, n);
  TD_CUDA_LAUNCH_CHECK("axpy");
}

void CudaBackend::kv_write(void* cache, DType cache_dtype, const float* chunk, int n, int kv_heads, int head_dim,
                           int64_t row0, int64_t head_stride) {
  TD_CHECK(cache_dtype == DType::F32 || cache_dtype == DType::BF16, "[kv_write] KV cache dtype ",
           dtype_name(cache_dtype), " is not supported on CUDA");
  kv_write_kernel<<<dim3(n, kv_heads), head_dim < 1024 ? head_dim : 1024, 0, launch_stream()>>>(cache, cache_dtype, chunk, kv_heads,
                                                                            head_dim, row0, head_stride);
  TD_CUDA_LAUNCH_CHECK("kv_write");
}

void CudaBackend::fill_random(void* dst, DType t, int64_t n, float std, uint64_t seed) {
  fill_random_kernel<<<blocks_for(n, kThreads), kThreads, 0, launch_stream()>>>(dst, t, n, std, seed);
  TD_CUDA_LAUNCH_CHECK("fill_random");
}

}  // namespace td::cuda
