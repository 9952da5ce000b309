// Stream capture and graphs: work issued into a capturing stream is recorded instead of run, and a graph
// replays it, in order, with the arguments it was captured with.
//
// What the emulator refuses, as the driver does (cudaErrorStreamCaptureUnsupported, and the capture is then
// invalidated: cudaStreamEndCapture returns cudaErrorStreamCaptureInvalidated and no graph): from a thread
// with a capture open (any thread, in global mode; none, in relaxed mode), an allocation or free, a
// synchronous copy or memset, or a synchronisation. Stricter than the driver: that thread may not issue work
// into any other stream while it captures (with a non-blocking capture stream the driver would run such
// work at once, outside the graph: in a capture that is always a stream left out by mistake).
//
// A replay launches each recorded kernel through the ordinary launch path, so pointer arguments are checked
// against the live allocations again: a graph that outlived a buffer it captured is a KernelFault.
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emu/emu.h"
#include "cuda_emu/state.h"

struct CUgraph_st {
  std::vector<std::function<void()>> nodes;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> nodes;
};

namespace td_emu {
namespace {

struct Capture {
  cudaStream_t stream = nullptr;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::vector<std::function<void()>> nodes;
  bool invalidated = false;
  std::string why;                  // the first refused call
  const void* owner = nullptr;      // the capturing OS thread (address of a thread_local)
};

std::mutex g_capture_mutex;
std::vector<std::unique_ptr<Capture>> g_captures;   // open captures, one per stream
std::vector<const void*> g_graphs, g_execs;        // live handles
thread_local int t_me;                              // its address names this OS thread
thread_local int t_replaying = 0;
std::atomic<uint64_t> g_graph_launches{0}, g_graph_kernels{0}, g_eager_kernels{0};
std::atomic<int> g_open{0};                         // open captures (launches skip the capture path at 0)

Capture* find_locked(cudaStream_t s) {
  for (auto& c : g_captures)
    if (c->stream == s) return c.get();
  return nullptr;
}

Capture* mine_locked() {
  for (auto& c : g_captures)
    if (c->owner == &t_me) return c.get();
  return nullptr;
}

std::string stream_str(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy) return "the legacy default stream";
  if (s == cudaStreamPerThread) return "the per-thread default stream";
  char b[40];
  std::snprintf(b, sizeof b, "stream %p", static_cast<void*>(s));
  return b;
}

cudaError_t refuse_locked(Capture& c, cudaError_t code, const std::string& what) {
  if (!c.invalidated) {
    c.invalidated = true;
    c.why = what;
  }
  return set_error(code, "[cuda-emu] " + what + " (the capture of " + stream_str(c.stream) + " is invalidated)");
}

}  // namespace

cudaError_t capture_refuses(const char* api) {
  std::lock_guard<std::mutex> lock(g_capture_mutex);
  for (auto& c : g_captures) {
    const bool applies = c->mode == cudaStreamCaptureModeGlobal ||
                         (c->mode == cudaStreamCaptureModeThreadLocal && c->owner == &t_me);
    if (applies)
      return refuse_locked(*c, cudaErrorStreamCaptureUnsupported,
                           std::string(api) + " is not permitted while " + stream_str(c->stream) + " is capturing");
  }
  return cudaSuccess;
}

int capture_stream_op(cudaStream_t s, const char* api, std::function<void()> op, cudaError_t* err) {
  std::lock_guard<std::mutex> lock(g_capture_mutex);
  if (Capture* c = find_locked(s)) {
    if (!c->invalidated) c->nodes.push_back(std::move(op));
    return 1;
  }
  if (Capture* c = mine_locked()) {
    *err = refuse_locked(*c, cudaErrorStreamCaptureImplicit,
                         std::string(api) + " into " + stream_str(s) + " while this thread captures " +
                             stream_str(c->stream) + ": it would run outside the graph");
    return -1;
  }
  return 0;
}

int capture_launch(const LaunchSpec& sp, std::function<void()> replay) {
  if (launch_config_invalid(sp)) return -1;       // reported at capture, as at an eager launch
  cudaError_t err = cudaSuccess;
  return capture_stream_op(sp.stream, ("the launch of " + std::string(sp.kernel)).c_str(), std::move(replay), &err);
}

bool any_capture() { return g_open.load(std::memory_order_relaxed) > 0; }

void count_kernel() { (t_replaying > 0 ? g_graph_kernels : g_eager_kernels).fetch_add(1); }

std::vector<std::pair<std::string, int64_t>> graph_counters() {
  return {{"graph_launches", static_cast<int64_t>(g_graph_launches.load())},
          {"graph_kernels", static_cast<int64_t>(g_graph_kernels.load())},
          {"eager_kernels", static_cast<int64_t>(g_eager_kernels.load())}};
}

namespace {
cudaError_t fail_call(cudaError_t code, const std::string& what) { return set_error(code, "[cuda-emu] " + what); }
}  // namespace

}  // namespace td_emu

using td_emu::fail_call;

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  if (s == nullptr || s == cudaStreamLegacy)
    return fail_call(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture: the legacy default stream cannot be captured");
  if (!td_emu::is_valid_stream(s)) return fail_call(cudaErrorInvalidResourceHandle, "cudaStreamBeginCapture: unknown stream");
  std::lock_guard<std::mutex> lock(td_emu::g_capture_mutex);
  if (td_emu::find_locked(s) != nullptr)
    return fail_call(cudaErrorIllegalState, "cudaStreamBeginCapture: the stream is already capturing");
  if (td_emu::mine_locked() != nullptr)
    return fail_call(cudaErrorIllegalState, "cudaStreamBeginCapture: this thread already captures another stream "
                                            "(nested captures are not emulated)");
  auto c = std::make_unique<td_emu::Capture>();
  c->stream = s;
  c->mode = mode;
  c->owner = &td_emu::t_me;
  td_emu::g_captures.push_back(std::move(c));
  td_emu::g_open.fetch_add(1);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  std::unique_ptr<td_emu::Capture> c;
  {
    std::lock_guard<std::mutex> lock(td_emu::g_capture_mutex);
    auto& v = td_emu::g_captures;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i]->stream == s) {
        c = std::move(v[i]);
        v.erase(v.begin() + static_cast<std::ptrdiff_t>(i));
        td_emu::g_open.fetch_sub(1);
        break;
      }
    }
  }
  if (!c) return fail_call(cudaErrorIllegalState, "cudaStreamEndCapture: the stream is not capturing");
  if (c->owner != &td_emu::t_me && c->mode != cudaStreamCaptureModeRelaxed)
    return fail_call(cudaErrorStreamCaptureWrongThread, "cudaStreamEndCapture: called from another thread than the capture's");
  if (c->invalidated) {
    *graph = nullptr;
    return fail_call(cudaErrorStreamCaptureInvalidated, "cudaStreamEndCapture: the capture was invalidated: " + c->why);
  }
  *graph = new CUgraph_st{std::move(c->nodes)};
  std::lock_guard<std::mutex> lock(td_emu::g_capture_mutex);
  td_emu::g_graphs.push_back(*graph);
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  std::lock_guard<std::mutex> lock(td_emu::g_capture_mutex);
  const td_emu::Capture* c = td_emu::find_locked(s);
  *status = c == nullptr ? cudaStreamCaptureStatusNone
            : c->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

namespace td_emu {
namespace {
bool erase_handle(std::vector<const void*>& v, const void* h) {
  std::lock_guard<std::mutex> lock(g_capture_mutex);
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == h) {
      v.erase(v.begin() + static_cast<std::ptrdiff_t>(i));
      return true;
    }
  }
  return false;
}
bool live(const std::vector<const void*>& v, const void* h) {
  std::lock_guard<std::mutex> lock(g_capture_mutex);
  for (const void* x : v)
    if (x == h) return true;
  return false;
}
}  // namespace
}  // namespace td_emu

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (!td_emu::live(td_emu::g_graphs, graph)) return fail_call(cudaErrorInvalidValue, "cudaGraphInstantiate: unknown graph");
  *exec = new CUgraphExec_st{graph->nodes};
  std::lock_guard<std::mutex> lock(td_emu::g_capture_mutex);
  td_emu::g_execs.push_back(*exec);
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (!td_emu::live(td_emu::g_execs, exec)) return fail_call(cudaErrorInvalidValue, "cudaGraphLaunch: unknown executable graph");
  if (!td_emu::is_valid_stream(s)) return fail_call(cudaErrorInvalidResourceHandle, "cudaGraphLaunch: unknown stream");
  {
    std::lock_guard<std::mutex> lock(td_emu::g_capture_mutex);
    if (td_emu::find_locked(s) != nullptr || td_emu::mine_locked() != nullptr)
      return fail_call(cudaErrorStreamCaptureUnsupported, "cudaGraphLaunch during a capture (child graphs are not emulated)");
  }
  td_emu::g_graph_launches.fetch_add(1);
  struct Depth {
    Depth() { ++td_emu::t_replaying; }
    ~Depth() { --td_emu::t_replaying; }
  } depth;
  for (const auto& node : exec->nodes) node();
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (!td_emu::erase_handle(td_emu::g_execs, exec)) return fail_call(cudaErrorInvalidValue, "cudaGraphExecDestroy: unknown executable graph");
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  if (!td_emu::erase_handle(td_emu::g_graphs, graph)) return fail_call(cudaErrorInvalidValue, "cudaGraphDestroy: unknown graph");
  delete graph;
  return cudaSuccess;
}
