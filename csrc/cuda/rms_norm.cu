// RMSNorm: one block per row, fp32 sum of squares reduced through shared memory.
#include <cuda_fp16.h>

#include <memory>

#include "cuda/common.cuh"
#include "cuda_api.h"

namespace td::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rms_norm_kernel(const float* __restrict__ x, const void* __restrict__ w, DType wt, int dim,
                                float eps, float* __restrict__ out) {
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* orow = out + static_cast<int64_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < dim; j += kThreads) ss += xr[j] * xr[j];
  __shared__ float part[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < kThreads / 32 ? part[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float r = rsqrtf(part[0] / dim + eps);
  for (int j = threadIdx.x; j < dim; j += kThreads) orow[j] = load_f32(w, wt, j) * (xr[j] * r);
}

struct DeviceFree {
  void operator()(void* p) const { cudaFree(p); }
};
using DevicePtr = std::unique_ptr<void, DeviceFree>;

DevicePtr device_alloc(size_t bytes) {
  void* p = nullptr;
  TD_CUDA_CHECK(cudaMalloc(&p, bytes));
  return DevicePtr(p);
}

}  // namespace

void rms_norm_host(const float* x, const void* w, DType wt, int n, int dim, float eps, float* out) {
  require_device();
  TD_CHECK(n > 0 && dim > 0, "[rms_norm] empty input");
  const size_t xb = static_cast<size_t>(n) * dim * sizeof(float);
  const size_t wb = static_cast<size_t>(dim) * dtype_size(wt);
  DevicePtr dx = device_alloc(xb), dw = device_alloc(wb), dout = device_alloc(xb);
  TD_CUDA_CHECK(cudaMemcpy(dx.get(), x, xb, cudaMemcpyHostToDevice));
  TD_CUDA_CHECK(cudaMemcpy(dw.get(), w, wb, cudaMemcpyHostToDevice));
  rms_norm_kernel<<<n, kThreads>>>(static_cast<const float*>(dx.get()), dw.get(), wt, dim, eps,
                                   static_cast<float*>(dout.get()));
  TD_CUDA_CHECK(cudaGetLastError());
  TD_CUDA_CHECK(cudaMemcpy(out, dout.get(), xb, cudaMemcpyDeviceToHost));
}

}  // namespace td::cuda
