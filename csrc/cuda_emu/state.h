// Emulator state shared by the scheduler, the runtime API and the control API (not seen by kernels).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cuda_emu/runtime_api.h"

namespace td_emu {

struct Settings {
  int sm_count = 132;                          // what cudaDevAttrMultiProcessorCount reports (H100 SXM)
  size_t memory_bytes = size_t{8} << 30;       // device memory the allocator hands out
  bool reverse = false;                        // run threads (and blocks) in reverse order
  size_t stack_bytes = 256 << 10;              // per emulated thread
  size_t static_shared_limit = 48 << 10;       // static __shared__ per block
  size_t shared_optin_limit = 227 << 10;       // static + dynamic, with cudaFuncSetAttribute (H100)
  bool record_launches = false;
  bool count_traffic = false;                  // count each launch's global-memory traffic (traffic.cpp)
};
// The settings, read from TD_CUDA_EMU_* environment variables on first use (std::invalid_argument on a
// malformed value); tests change them through the control API.
Settings& settings();

// The sticky-until-read error of the runtime API, with a message that cudaGetErrorString returns.
cudaError_t set_error(cudaError_t code, const std::string& detail);

// True when [p, p + bytes) lies inside one live device allocation (or pinned host allocation); otherwise
// false with why filled in.
bool is_device_range(const void* p, size_t bytes, std::string* why);
int dynamic_shared_limit(const void* fn);
bool is_valid_stream(cudaStream_t s);

// Global-memory bytes of one launch, as the threads request them (traffic.cpp).
struct Traffic {
  uint64_t load_bytes = 0, store_bytes = 0;
};
// Count the accesses of the calling thread's kernel code into *out until traffic_end().
void traffic_begin(Traffic* out);
void traffic_end();
// The live device allocations (base, size), for traffic.cpp's address test.
std::vector<std::pair<uintptr_t, size_t>> device_ranges();

// Stream capture (graph.cpp). An API call that is not permitted while a capture applies to the calling
// thread: returns the error (set, and the capture invalidated), else cudaSuccess.
cudaError_t capture_refuses(const char* api);
// Work for stream s: 1 recorded into s's capture, 0 to run now, -1 refused (*err set).
int capture_stream_op(cudaStream_t s, const char* api, std::function<void()> op, cudaError_t* err);
// A launch's configuration error, reported as cudaGetLastError does (scheduler.cpp).
bool launch_config_invalid(const LaunchSpec& sp);
// Kernels run by graph replays, kernels launched directly, graphs launched.
void count_kernel();
std::vector<std::pair<std::string, int64_t>> graph_counters();

struct LaunchRecord {
  std::string kernel;
  std::string template_args;   // of the launching function, e.g. "td::DType WT = td::DType::BF16"
  unsigned grid[3];
  unsigned block[3];
  size_t dynamic_shared;
  size_t static_shared;
  double seconds;              // host time the emulation took
  bool counted = false;        // traffic below was counted (count_traffic on)
  Traffic traffic;
};
void record_launch(LaunchRecord r);
std::vector<LaunchRecord> take_launch_log();

}  // namespace td_emu
