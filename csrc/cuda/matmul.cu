// out[m, n] = x[m, k] . W[n, k] for the skinny shapes of low-batch decoding (weight streaming).
//
// One warp per output row n and up to kMT input rows: the lanes split k, each reading 8 consecutive
// weights per step (one 16-byte load for bf16/f16, two for fp32) and widening them in registers, so W is
// streamed once per kMT rows of x at full width. x ([m, k], small) is read through the read-only cache.
// More than kMT rows use several row tiles; the tiles that share W rows are adjacent in the launch order
// (grid.x), so they run together and the re-reads of W hit L2 instead of HBM.
#include "cuda/common.cuh"
#include "cuda/cuda_backend.h"

namespace td::cuda {

void tensor_core_matmul(const float* x, int m, const WeightView& w, float* out);   // matmul_tc.cu

namespace {

constexpr int kTensorCoreMinRows = 64;  // prefill-sized chunks go to the tensor cores (bf16 weights)
constexpr int kMT = 8;            // input rows per warp
constexpr int kWarps = 8;         // output rows per block
constexpr int kThreads = 32 * kWarps;

template <DType WT>
__device__ __forceinline__ void load8(const void* w, int64_t i, float* f) {
  if constexpr (WT == DType::F32) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(w) + i));
    const float4 b = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(w) + i + 4));
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
  } else {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(w) + i));
    const unsigned int u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const unsigned short lo = static_cast<unsigned short>(u[t] & 0xffffu), hi = static_cast<unsigned short>(u[t] >> 16);
      if constexpr (WT == DType::BF16) {
        f[2 * t] = __uint_as_float(static_cast<unsigned int>(lo) << 16);
        f[2 * t + 1] = __uint_as_float(static_cast<unsigned int>(hi) << 16);
      } else {
        f[2 * t] = __half2float(__ushort_as_half(lo));
        f[2 * t + 1] = __half2float(__ushort_as_half(hi));
      }
    }
  }
}

// kVec: k is a multiple of 8 and rows are 16-byte aligned, so the vector path covers every element.
template <DType WT, bool kVec>
__global__ void __launch_bounds__(kThreads) skinny_matmul_kernel(const float* __restrict__ x, int m, int64_t k,
                                                                 const void* __restrict__ w, int64_t n,
                                                                 float* __restrict__ out) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kWarps + warp;
  const int m0 = blockIdx.x * kMT;
  if (row >= n) return;
  const int mt = min(kMT, m - m0);
  float acc[kMT];
#pragma unroll
  for (int i = 0; i < kMT; ++i) acc[i] = 0.0f;
  const int64_t wrow = row * k;
  if constexpr (kVec) {
    for (int64_t kk = static_cast<int64_t>(lane) * 8; kk < k; kk += 32 * 8) {
      float wf[8];
      load8<WT>(w, wrow + kk, wf);
#pragma unroll
      for (int i = 0; i < kMT; ++i) {
        if (i < mt) {
          const float* xr = x + static_cast<int64_t>(m0 + i) * k + kk;
          const float4 a = __ldg(reinterpret_cast<const float4*>(xr));
          const float4 b = __ldg(reinterpret_cast<const float4*>(xr + 4));
          acc[i] += a.x * wf[0] + a.y * wf[1] + a.z * wf[2] + a.w * wf[3] + b.x * wf[4] + b.y * wf[5] +
                    b.z * wf[6] + b.w * wf[7];
        }
      }
    }
  } else {
    for (int64_t kk = lane; kk < k; kk += 32) {
      const float wv = load_f32(w, WT, wrow + kk);
#pragma unroll
      for (int i = 0; i < kMT; ++i)
        if (i < mt) acc[i] += x[static_cast<int64_t>(m0 + i) * k + kk] * wv;
    }
  }
#pragma unroll
  for (int i = 0; i < kMT; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < mt) out[static_cast<int64_t>(m0 + i) * n + row] = s;
  }
}

template <DType WT>
void launch(const float* x, int m, const WeightView& w, float* out) {
  const dim3 grid(blocks_for(m, kMT), blocks_for(w.rows, kWarps));
  const bool vec = w.cols % 8 == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(x) % 16 == 0;
  if (vec)
    skinny_matmul_kernel<WT, true><<<grid, kThreads>>>(x, m, w.cols, w.data, w.rows, out);
  else
    skinny_matmul_kernel<WT, false><<<grid, kThreads>>>(x, m, w.cols, w.data, w.rows, out);
}

}  // namespace

void CudaBackend::matmul(const float* x, int m, const WeightView& w, float* out) {
  TD_CHECK(m > 0, "[matmul] no input rows");
  TD_CHECK(w.rows <= 65535LL * kWarps, "[matmul] too many output features: ", w.rows);
  if (w.dtype == DType::BF16 && m > kTensorCoreMinRows) {
    tensor_core_matmul(x, m, w, out);
    return;
  }
  switch (w.dtype) {
    case DType::F32: launch<DType::F32>(x, m, w, out); break;
    case DType::BF16: launch<DType::BF16>(x, m, w, out); break;
    case DType::F16: launch<DType::F16>(x, m, w, out); break;
  }
  TD_CUDA_LAUNCH_CHECK("matmul");
}

}  // namespace td::cuda
