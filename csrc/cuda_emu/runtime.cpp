// The CUDA runtime API of the emulator: one device, memory from the host allocator with exact sizes
// (AddressSanitizer then sees every out-of-bounds access), synchronous copies checked against the
// allocations, and the error model of the real runtime (cudaGetLastError returns and clears).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "cuda_emu/state.h"

namespace td_emu {
namespace {

size_t parse_bytes(const char* name, const char* v) {
  char* end = nullptr;
  const double x = std::strtod(v, &end);
  double mult = 1;
  if (end != nullptr && *end != '\0') {
    const char c = static_cast<char>(*end | 0x20);
    mult = c == 'k' ? 1024.0 : c == 'm' ? 1048576.0 : c == 'g' ? 1073741824.0 : 0;
    if (mult == 0 || end[1] != '\0') mult = -1;
  }
  if (end == v || mult < 0 || !(x > 0) || x * mult > 1e18)
    throw std::invalid_argument(std::string("[cuda-emu] ") + name + "=" + v +
                                " is not a positive byte count (e.g. 8G, 512M, 65536)");
  return static_cast<size_t>(x * mult);
}

Settings read_env() {
  Settings s;
  if (const char* v = std::getenv("TD_CUDA_EMU_SM_COUNT")) {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (end == v || *end != '\0' || n < 1 || n > 100000)
      throw std::invalid_argument(std::string("[cuda-emu] TD_CUDA_EMU_SM_COUNT=") + v + " is not an SM count in [1, 100000]");
    s.sm_count = static_cast<int>(n);
  }
  if (const char* v = std::getenv("TD_CUDA_EMU_MEMORY")) s.memory_bytes = parse_bytes("TD_CUDA_EMU_MEMORY", v);
  if (const char* v = std::getenv("TD_CUDA_EMU_STACK")) s.stack_bytes = parse_bytes("TD_CUDA_EMU_STACK", v);
  if (const char* v = std::getenv("TD_CUDA_EMU_ORDER")) {
    if (std::strcmp(v, "reverse") == 0) s.reverse = true;
    else if (std::strcmp(v, "forward") != 0)
      throw std::invalid_argument(std::string("[cuda-emu] TD_CUDA_EMU_ORDER=") + v + " must be 'forward' or 'reverse'");
  }
  return s;
}

struct Error {
  cudaError_t code = cudaSuccess;
  std::string detail;
};
thread_local Error t_error;          // the runtime's error state is per host thread
thread_local std::string t_message;  // storage behind cudaGetErrorString

std::mutex g_mem_mutex;
std::map<uintptr_t, size_t> g_device;   // base -> exact size
std::map<uintptr_t, size_t> g_pinned;
size_t g_used = 0;
std::unordered_map<const void*, int> g_dyn_limits;
std::set<const void*> g_streams;
std::set<const void*> g_events;
std::vector<LaunchRecord> g_log;

bool inside(const std::map<uintptr_t, size_t>& m, uintptr_t p, size_t bytes) {
  auto it = m.upper_bound(p);
  if (it == m.begin()) return false;
  --it;
  return p >= it->first && p - it->first <= it->second && bytes <= it->second - (p - it->first);
}

const char* plain_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
    default: return "unknown error";
  }
}

cudaError_t fail_call(cudaError_t code, const std::string& what) { return set_error(code, "[cuda-emu] " + what); }

std::string ptr_str(const void* p) {
  char b[32];
  std::snprintf(b, sizeof b, "%p", p);
  return b;
}

bool device_range_locked(const void* p, size_t bytes, std::string* why) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  if (inside(g_device, u, bytes) || inside(g_pinned, u, bytes)) return true;
  if (why != nullptr) {
    auto it = g_device.upper_bound(u);
    if (it != g_device.begin()) {
      --it;
      if (u >= it->first && u - it->first <= it->second) {
        *why = "the range " + ptr_str(p) + " + " + std::to_string(bytes) + " bytes runs past the end of the " +
               std::to_string(it->second) + "-byte allocation at " + ptr_str(reinterpret_cast<void*>(it->first));
        return false;
      }
    }
    *why = ptr_str(p) + " is not inside any cudaMalloc allocation";
  }
  return false;
}

cudaError_t check_copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* api) {
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return fail_call(cudaErrorInvalidValue, std::string(api) + ": null pointer");
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  std::string why;
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault)
    return fail_call(cudaErrorInvalidMemcpyDirection, std::string(api) + ": unknown cudaMemcpyKind " + std::to_string(kind));
  if (dst_dev && !device_range_locked(dst, bytes, &why))
    return fail_call(cudaErrorInvalidValue, std::string(api) + ": destination " + why);
  if (src_dev && !device_range_locked(src, bytes, &why))
    return fail_call(cudaErrorInvalidValue, std::string(api) + ": source " + why);
  return cudaSuccess;
}

}  // namespace

Settings& settings() {
  static Settings s = read_env();
  return s;
}

cudaError_t set_error(cudaError_t code, const std::string& detail) {
  if (code != cudaSuccess) t_error = Error{code, detail};
  return code;
}

std::vector<std::pair<uintptr_t, size_t>> device_ranges() {
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  return {g_device.begin(), g_device.end()};
}

bool is_device_range(const void* p, size_t bytes, std::string* why) {
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  return device_range_locked(p, bytes, why);
}

int dynamic_shared_limit(const void* fn) {
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  auto it = g_dyn_limits.find(fn);
  return it == g_dyn_limits.end() ? static_cast<int>(settings().static_shared_limit) : it->second;
}

bool is_valid_stream(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return true;
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  return g_streams.count(s) != 0;
}

cudaError_t set_dynamic_shared_limit(const void* fn, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > settings().shared_optin_limit)
    return fail_call(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(bytes) +
                                                " bytes of dynamic shared memory, over the device's " +
                                                std::to_string(settings().shared_optin_limit));
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  g_dyn_limits[fn] = bytes;
  return cudaSuccess;
}

cudaError_t copy_symbol(void* dst, const void* src, size_t bytes) {
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

void record_launch(LaunchRecord r) {
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  g_log.push_back(std::move(r));
}

std::vector<LaunchRecord> take_launch_log() {
  std::lock_guard<std::mutex> lock(g_mem_mutex);
  std::vector<LaunchRecord> out;
  out.swap(g_log);
  return out;
}

}  // namespace td_emu

using td_emu::fail_call;
using td_emu::settings;

// ---- errors ----

const char* cudaGetErrorString(cudaError_t err) {
  // The detailed message of the last error (which names the kernel or the call) when it is the one asked
  // about; the runtime's fixed string otherwise.
  if (err != cudaSuccess && td_emu::t_error.code == err && !td_emu::t_error.detail.empty()) {
    td_emu::t_message = std::string(td_emu::plain_string(err)) + ": " + td_emu::t_error.detail;
    return td_emu::t_message.c_str();
  }
  if (err != cudaSuccess && !td_emu::t_message.empty() && td_emu::t_message.rfind(td_emu::plain_string(err), 0) == 0)
    return td_emu::t_message.c_str();
  return td_emu::plain_string(err);
}

const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    default: return "cudaError";
  }
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = td_emu::t_error.code;
  if (e != cudaSuccess) td_emu::t_message = std::string(td_emu::plain_string(e)) + ": " + td_emu::t_error.detail;
  td_emu::t_error = td_emu::Error{};
  return e;
}

cudaError_t cudaPeekAtLastError() { return td_emu::t_error.code; }

// ---- device ----

cudaError_t cudaGetDeviceCount(int* count) {
  settings();   // a malformed TD_CUDA_EMU_* variable raises here, before anything runs
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device != 0) return fail_call(cudaErrorInvalidDevice, "cudaSetDevice(" + std::to_string(device) + "): the emulator has one device");
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return fail_call(cudaErrorInvalidDevice, "cudaGetDeviceProperties: device " + std::to_string(device));
  const td_emu::Settings& s = settings();
  std::memset(prop, 0, sizeof *prop);
  std::snprintf(prop->name, sizeof prop->name, "tridecode CUDA emulator (CPU, %d SMs)", s.sm_count);
  prop->totalGlobalMem = s.memory_bytes;
  prop->sharedMemPerBlock = s.static_shared_limit;
  prop->sharedMemPerBlockOptin = s.shared_optin_limit;
  prop->sharedMemPerMultiprocessor = s.shared_optin_limit + 1024;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->clockRate = 1000000;
  prop->totalConstMem = 65536;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = s.sm_count;
  prop->l2CacheSize = 50 << 20;
  prop->memoryBusWidth = 5120;
  prop->integrated = 0;
  prop->concurrentKernels = 1;
  prop->unifiedAddressing = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *value = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *value = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: *value = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(p.sharedMemPerBlock); break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrClockRate: *value = p.clockRate; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = static_cast<int>(p.sharedMemPerMultiprocessor); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(p.sharedMemPerBlockOptin); break;
    default:
      return fail_call(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute " + std::to_string(attr) + " is not emulated");
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {   // launches complete before they return
  return td_emu::capture_refuses("cudaDeviceSynchronize");
}
cudaError_t cudaDeviceReset() { return cudaSuccess; }
cudaError_t cudaDriverGetVersion(int* v) { *v = 13000; return cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int* v) { *v = 13000; return cudaSuccess; }

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard<std::mutex> lock(td_emu::g_mem_mutex);
  *total_bytes = settings().memory_bytes;
  *free_bytes = td_emu::g_used < *total_bytes ? *total_bytes - td_emu::g_used : 0;
  return cudaSuccess;
}

// ---- memory ----

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (const cudaError_t cap = td_emu::capture_refuses("cudaMalloc")) return cap;
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(td_emu::g_mem_mutex);
    const size_t total = settings().memory_bytes;
    if (bytes > total || td_emu::g_used > total - bytes)
      return fail_call(cudaErrorMemoryAllocation, "cudaMalloc of " + std::to_string(bytes) + " bytes: " +
                                                      std::to_string(total - td_emu::g_used) + " of " + std::to_string(total) +
                                                      " bytes of emulated device memory free (TD_CUDA_EMU_MEMORY)");
  }
  void* p = nullptr;
  // 256-byte aligned like cudaMalloc; the exact size, so sanitizers bound accesses at the end of the request.
  if (posix_memalign(&p, 256, bytes) != 0 || p == nullptr)
    return fail_call(cudaErrorMemoryAllocation, "cudaMalloc of " + std::to_string(bytes) + " bytes: the host is out of memory");
  std::memset(p, 0xff, bytes);   // device memory is not zeroed: reads before writes see NaNs
  std::lock_guard<std::mutex> lock(td_emu::g_mem_mutex);
  td_emu::g_device[reinterpret_cast<uintptr_t>(p)] = bytes;
  td_emu::g_used += bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (const cudaError_t cap = td_emu::capture_refuses("cudaFree")) return cap;
  if (ptr == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(td_emu::g_mem_mutex);
    auto it = td_emu::g_device.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == td_emu::g_device.end())
      return fail_call(cudaErrorInvalidValue, "cudaFree(" + td_emu::ptr_str(ptr) + "): not the start of a cudaMalloc allocation");
    td_emu::g_used -= it->second;
    td_emu::g_device.erase(it);
  }
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t bytes) { return cudaHostAlloc(ptr, bytes, 0); }

cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned int) {
  if (const cudaError_t cap = td_emu::capture_refuses("cudaHostAlloc")) return cap;
  *ptr = nullptr;
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes == 0 ? 1 : bytes) != 0)
    return fail_call(cudaErrorMemoryAllocation, "cudaHostAlloc of " + std::to_string(bytes) + " bytes");
  std::lock_guard<std::mutex> lock(td_emu::g_mem_mutex);
  td_emu::g_pinned[reinterpret_cast<uintptr_t>(p)] = bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (const cudaError_t cap = td_emu::capture_refuses("cudaFreeHost")) return cap;
  if (ptr == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(td_emu::g_mem_mutex);
    if (td_emu::g_pinned.erase(reinterpret_cast<uintptr_t>(ptr)) == 0)
      return fail_call(cudaErrorInvalidValue, "cudaFreeHost(" + td_emu::ptr_str(ptr) + "): not a cudaHostAlloc allocation");
  }
  std::free(ptr);
  return cudaSuccess;
}

namespace td_emu {
namespace {
cudaError_t copy_now(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* api) {
  if (kind == cudaMemcpyDefault) {
    const bool d = is_device_range(dst, bytes, nullptr), s = is_device_range(src, bytes, nullptr);
    kind = d && s ? cudaMemcpyDeviceToDevice : d ? cudaMemcpyHostToDevice : s ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost;
  }
  const cudaError_t e = check_copy(dst, src, bytes, kind, api);
  if (e != cudaSuccess) return e;
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t set_now(void* ptr, int value, size_t bytes, const char* api) {
  if (bytes == 0) return cudaSuccess;
  std::string why;
  if (!is_device_range(ptr, bytes, &why)) return fail_call(cudaErrorInvalidValue, std::string(api) + ": " + why);
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}
// The replay of a captured copy or memset: checked again against the allocations then.
void replay_or_fault(cudaError_t e) {
  if (e != cudaSuccess) throw KernelFault(std::string("[cuda-emu] graph replay: ") + cudaGetErrorString(e));
}
}  // namespace
}  // namespace td_emu

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (const cudaError_t cap = td_emu::capture_refuses("cudaMemcpy")) return cap;
  return td_emu::copy_now(dst, src, bytes, kind, "cudaMemcpy");
}


cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  if (!td_emu::is_valid_stream(stream)) return fail_call(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync: unknown stream");
  cudaError_t err = cudaSuccess;
  const int cap = td_emu::capture_stream_op(stream, "cudaMemcpyAsync", [=] {
    td_emu::replay_or_fault(td_emu::copy_now(dst, src, bytes, kind, "cudaMemcpyAsync"));
  }, &err);
  if (cap != 0) return err;
  return td_emu::copy_now(dst, src, bytes, kind, "cudaMemcpyAsync");
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  if (const cudaError_t cap = td_emu::capture_refuses("cudaMemset")) return cap;
  return td_emu::set_now(ptr, value, bytes, "cudaMemset");
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  if (!td_emu::is_valid_stream(stream)) return fail_call(cudaErrorInvalidResourceHandle, "cudaMemsetAsync: unknown stream");
  cudaError_t err = cudaSuccess;
  const int cap = td_emu::capture_stream_op(stream, "cudaMemsetAsync", [=] {
    td_emu::replay_or_fault(td_emu::set_now(ptr, value, bytes, "cudaMemsetAsync"));
  }, &err);
  if (cap != 0) return err;
  return td_emu::set_now(ptr, value, bytes, "cudaMemsetAsync");
}

// ---- streams and events (work is done when issued; they keep only their identity and timestamps) ----

struct CUstream_st {
  int unused;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point t;
  bool recorded;
};

cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, 0); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
  *s = new CUstream_st{0};
  std::lock_guard<std::mutex> lock(td_emu::g_mem_mutex);
  td_emu::g_streams.insert(*s);
  return cudaSuccess;
}

namespace td_emu {
namespace {
template <class Handle>
cudaError_t destroy(std::set<const void*>& live, Handle h, const char* api) {
  {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    if (live.erase(h) == 0) return fail_call(cudaErrorInvalidResourceHandle, std::string(api) + ": unknown handle");
  }
  delete h;
  return cudaSuccess;
}
}  // namespace
}  // namespace td_emu

cudaError_t cudaStreamDestroy(cudaStream_t s) { return td_emu::destroy(td_emu::g_streams, s, "cudaStreamDestroy"); }

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (const cudaError_t cap = td_emu::capture_refuses("cudaStreamSynchronize")) return cap;
  if (!td_emu::is_valid_stream(s)) return fail_call(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: unknown stream");
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st{{}, false};
  std::lock_guard<std::mutex> lock(td_emu::g_mem_mutex);
  td_emu::g_events.insert(*e);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e) { return td_emu::destroy(td_emu::g_events, e, "cudaEventDestroy"); }

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!td_emu::is_valid_stream(s)) return fail_call(cudaErrorInvalidResourceHandle, "cudaEventRecord: unknown stream");
  {
    std::lock_guard<std::mutex> lock(td_emu::g_mem_mutex);
    if (td_emu::g_events.count(e) == 0) return fail_call(cudaErrorInvalidResourceHandle, "cudaEventRecord: unknown event");
  }
  cudaError_t err = cudaSuccess;
  const int cap = td_emu::capture_stream_op(s, "cudaEventRecord", [e] {
    e->t = std::chrono::steady_clock::now();
    e->recorded = true;
  }, &err);
  if (cap != 0) return err;
  e->t = std::chrono::steady_clock::now();
  e->recorded = true;
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t) { return td_emu::capture_refuses("cudaEventSynchronize"); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!a->recorded || !b->recorded) return fail_call(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event was never recorded");
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
