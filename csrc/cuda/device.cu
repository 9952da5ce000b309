// Device query, memory and the backend singleton.
#include <cuda_fp16.h>

#include <memory>

#include "cuda/common.cuh"
#include "cuda/cuda_backend.h"
#include "cuda_api.h"

namespace td::cuda {

bool compiled() { return true; }

int device_count() {
  int n = 0;
  // Any failure (no driver, driver too old, no device) means "no GPU", never an error.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  require_device();
  cudaDeviceProp prop;
  TD_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

void require_device() {
  TD_CHECK(device_count() > 0, "[cuda] no CUDA device is available (no driver or no GPU)");
}

void synchronize() {
  require_device();
  TD_CUDA_CHECK(cudaDeviceSynchronize());
}

std::pair<size_t, size_t> memory_info() {
  require_device();
  size_t free_b = 0, total_b = 0;
  TD_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return {free_b, total_b};
}

Backend& backend() {
  require_device();
  static CudaBackend instance;
  return instance;
}

CudaBackend::CudaBackend()
    : scratch_logits_(*this), scratch_partial_(*this), scratch_small_(*this), scratch_splitk_(*this) {
  int dev = 0;
  TD_CUDA_CHECK(cudaGetDevice(&dev));
  TD_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, dev));
}

void* CudaBackend::alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    if (err == cudaErrorMemoryAllocation)
      throw OutOfMemory(detail::concat("[cuda] out of device memory allocating ", bytes, " bytes (", free_b,
                                       " of ", total_b, " bytes free)"));
    throw Error(detail::concat("[cuda] cudaMalloc of ", bytes, " bytes failed: ", cudaGetErrorString(err)));
  }
  return p;
}

void CudaBackend::free(void* p) { cudaFree(p); }

void CudaBackend::upload(void* dst, const void* src, size_t bytes) {
  TD_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void CudaBackend::download(void* dst, const void* src, size_t bytes) {
  TD_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  TD_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

}  // namespace td::cuda
