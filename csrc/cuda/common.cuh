// Shared by every .cu: the status check and dtype dispatch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/check.h"
#include "core/dtype.h"

#define TD_CUDA_CHECK(expr)                                                                          \
  do {                                                                                               \
    cudaError_t td_err_ = (expr);                                                                    \
    TD_CHECK(td_err_ == cudaSuccess, "[cuda] ", #expr, " failed: ", cudaGetErrorString(td_err_));    \
  } while (0)

namespace td::cuda {

__device__ __forceinline__ float load_f32(const void* p, DType t, int64_t i) {
  if (t == DType::F32) return static_cast<const float*>(p)[i];
  const unsigned short h = static_cast<const unsigned short*>(p)[i];
  if (t == DType::BF16) return __uint_as_float(static_cast<unsigned int>(h) << 16);
  return __half2float(__ushort_as_half(h));
}

// The outputs of a matmul whose weight stacks several projections: columns [end[s - 1], end[s]) of the product
// go to ptr[s], a row-major [m, end[s] - end[s - 1]] matrix. One part is the plain product.
struct MatmulOutputs {
  static constexpr int kMax = 3;
  float* ptr[kMax] = {};
  int64_t end[kMax] = {};
  int count = 0;
  __host__ __device__ float* at(int64_t r, int64_t col) const {
    // Constant indices only: a dynamically indexed kernel parameter would be copied to local memory.
    float* p = ptr[0];
    int64_t start = 0, stop = end[0];
#pragma unroll
    for (int s = 1; s < kMax; ++s) {
      if (s < count && col >= end[s - 1]) {
        p = ptr[s];
        start = end[s - 1];
        stop = end[s];
      }
    }
    return p + r * (stop - start) + (col - start);
  }
};

// An activation store: fp32, or bf16 rounded to nearest even (bf16 activations between ops).
__device__ __forceinline__ void store_act(void* out, bool bf16, int64_t i, float v) {
  if (bf16) static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16(v);
  else static_cast<float*>(out)[i] = v;
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

// Throws td::Error unless a device is usable.
void require_device();

// The stream every kernel of the backend is launched into: the legacy default stream, or the backend's
// capture stream while this host thread records a graph (CudaBackend::begin_capture).
cudaStream_t launch_stream();

// Launch-error check after every kernel launch (cheap: no synchronisation).
#define TD_CUDA_LAUNCH_CHECK(op) TD_CUDA_CHECK_NAMED(cudaGetLastError(), op)
#define TD_CUDA_CHECK_NAMED(expr, op)                                                               \
  do {                                                                                               \
    cudaError_t td_err_ = (expr);                                                                    \
    TD_CHECK(td_err_ == cudaSuccess, "[", op, "] kernel launch failed: ", cudaGetErrorString(td_err_)); \
  } while (0)

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace td::cuda
