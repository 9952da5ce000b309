// What the CUDA side offers the rest of the project. cuda/*.cu implement it when CMake finds nvcc;
// no_cuda.cpp implements it otherwise (cuda_compiled() false, every op throws).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

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
std::pair<uint64_t, uint64_t> allocation_counts();    // device allocations and frees by the backend so far

// The CUDA emulator: a TRIDECODE_CUDA=EMU build runs the same kernels on the CPU (csrc/cuda_emu/).
// emulated() is false in other builds, where the emu_* calls throw td::Error.
bool emulated();
struct EmuLaunch {
  std::string kernel;   // as written at the launch, e.g. "skinny_matmul_kernel<WT, true>"
  std::string template_args;   // of the launching function, e.g. "td::DType WT = td::DType::BF16"
  unsigned grid[3];
  unsigned block[3];
  size_t dynamic_shared;
  size_t static_shared;
  double seconds;       // host time the emulation took
  bool counted;         // the fields below were counted (setting count_traffic on)
  uint64_t load_bytes, store_bytes;        // global memory, as the threads request it
};
// Settings by name: sm_count, memory_bytes, reverse (0/1), stack_bytes, static_shared_limit,
// shared_optin_limit, record_launches (0/1), count_traffic (0/1). The backend reads sm_count once, when first used.
std::vector<std::pair<std::string, int64_t>> emu_settings();
void emu_configure(const std::string& key, int64_t value);
std::vector<EmuLaunch> emu_take_launches();   // launches recorded since the last call (record_launches=1)
// Running totals: graph_launches (cudaGraphLaunch calls), graph_kernels (kernels run by their replays),
// eager_kernels (kernels launched directly).
std::vector<std::pair<std::string, int64_t>> emu_counters();

}  // namespace td::cuda
