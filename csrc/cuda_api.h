// What the CUDA side offers the rest of the project. cuda/*.cu implement it when CMake finds nvcc;
// no_cuda.cpp implements it otherwise (cuda_compiled() false, every op throws).
#pragma once
#include <cstdint>
#include <string>
#include <utility>

#include "core/backend.h"
#include "core/dtype.h"

namespace td::cuda {

bool compiled();          // was the CUDA backend built in?
int device_count();       // 0 when there is no driver, no device, or any error from the query
std::string device_name(int device);

// The CUDA backend (throws td::Error when there is no usable device or no CUDA build).
Backend& backend();

void synchronize();                                  // waits for all queued device work
std::pair<size_t, size_t> memory_info();             // (free, total) device bytes

}  // namespace td::cuda
