// Shared by every .cu: the status check and dtype dispatch.
#pragma once
#include <cuda_runtime.h>

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

// Throws td::Error unless a device is usable.
void require_device();

}  // namespace td::cuda
