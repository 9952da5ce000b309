#include <cuda_fp16.h>

#include "cuda/common.cuh"
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

}  // namespace td::cuda
