// Device query, memory and the backend singleton.
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstring>
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

// Scratch sizes of the ops (attention.cu, matmul_tc.cu, select.cu).
size_t attention_scratch_bytes(int n_q, int heads, int head_dim, int kv_len);
void tensor_core_skinny_scratch(int m, const WeightView& w, int sm_count, size_t* partial_bytes, size_t* tickets);
bool tensor_core_skinny_fits(const void* x, int m, const WeightView& w);
size_t select_scratch_bytes(int n);

void CudaBackend::reserve_forward(const ForwardPlan& plan) {
  std::lock_guard<std::mutex> hold(mutex_);
  const int rows = plan.rows;
  size_t partial = std::max(attention_scratch_bytes(rows, plan.heads, plan.head_dim, plan.max_kv_len),
                            select_scratch_bytes(rows));
  size_t splitk = 0, tickets = 0;
  const int skinny = std::min(rows, 64);   // the skinny tensor-core path (bf16 weights, up to 64 rows)
  for (const WeightView& w : plan.weights) {
    // Activations are device allocations, aligned as the weights are: the weight stands in for x here.
    if (!tensor_core_skinny_fits(w.data, skinny, w)) continue;
    size_t p = 0, t = 0;
    tensor_core_skinny_scratch(skinny, w, sm_count_, &p, &t);
    splitk = std::max(splitk, p);
    tickets = std::max(tickets, t);
  }
  scratch_partial_.reserve(partial);
  scratch_splitk_.reserve(splitk);
  if (tickets > 0) splitk_tickets_.get(tickets);
  scratch_logits_.reserve(static_cast<size_t>(rows) * plan.vocab * sizeof(float));   // head_select
  scratch_small_.reserve(sizeof(int));
}

int* Tickets::get(size_t count) {
  const size_t bytes = count * sizeof(int);
  if (bytes > buf_.capacity()) TD_CUDA_CHECK(cudaMemset(buf_.reserve(bytes), 0, bytes));
  return static_cast<int*>(buf_.get());
}

CudaBackend::CudaBackend()
    : scratch_logits_(*this), scratch_partial_(*this), scratch_small_(*this), scratch_splitk_(*this),
      splitk_tickets_(*this) {
  int dev = 0;
  TD_CUDA_CHECK(cudaGetDevice(&dev));
  TD_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, dev));
}

namespace {
std::atomic<uint64_t> g_allocs{0}, g_frees{0};
thread_local cudaStream_t t_launch_stream = nullptr;
}  // namespace

cudaStream_t launch_stream() { return t_launch_stream; }

// Graphs: this thread's launches go to the capture stream until end_capture(). Thread-local capture mode:
// other threads keep launching eagerly on the legacy stream meanwhile (the backend mutex keeps them out of
// the shared scratch), while this thread may not allocate, free or synchronise (the capture would fail).
void CudaBackend::begin_capture() {
  TD_CHECK(t_launch_stream == nullptr, "[graph] this thread is already recording a graph");
  if (capture_stream_ == nullptr) TD_CUDA_CHECK(cudaStreamCreateWithFlags(&capture_stream_, cudaStreamNonBlocking));
  TD_CUDA_CHECK(cudaStreamBeginCapture(capture_stream_, cudaStreamCaptureModeThreadLocal));
  t_launch_stream = capture_stream_;
}

void* CudaBackend::end_capture() {
  if (t_launch_stream == nullptr) return nullptr;
  t_launch_stream = nullptr;
  cudaGraph_t graph = nullptr;
  if (cudaStreamEndCapture(capture_stream_, &graph) != cudaSuccess || graph == nullptr) {
    cudaGetLastError();
    if (graph != nullptr) cudaGraphDestroy(graph);
    return nullptr;
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return exec;
}

void CudaBackend::replay(void* graph) {
  TD_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), nullptr));
}

void CudaBackend::destroy_graph(void* graph) {
  if (graph != nullptr) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph));
}

uint64_t CudaBackend::memory_epoch() const { return g_frees.load(); }

std::pair<uint64_t, uint64_t> allocation_counts() { return {g_allocs.load(), g_frees.load()}; }

void* CudaBackend::alloc(size_t bytes) {
  g_allocs.fetch_add(1);
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

void CudaBackend::free(void* p) {
  g_frees.fetch_add(1);
  cudaFree(p);
}

// Small uploads (a forward's token ids and positions) go through pinned staging slots as asynchronous copies
// on the legacy stream, ordered before the kernels that read them, so the host does not wait for the device.
// A slot is reused once the copy it last fed has completed.
void CudaBackend::upload(void* dst, const void* src, size_t bytes) {
  if (bytes > kStageSlot) {
    TD_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return;
  }
  std::lock_guard<std::mutex> hold(stage_mutex_);
  if (stage_ == nullptr) {
    void* p = nullptr;
    TD_CUDA_CHECK(cudaMallocHost(&p, kStageSlot * kStageSlots));
    stage_ = static_cast<char*>(p);
    for (cudaEvent_t& e : stage_done_) TD_CUDA_CHECK(cudaEventCreate(&e));
  }
  const int slot = stage_next_;
  stage_next_ = (stage_next_ + 1) % kStageSlots;
  if (stage_used_[slot]) TD_CUDA_CHECK(cudaEventSynchronize(stage_done_[slot]));
  char* host = stage_ + slot * kStageSlot;
  std::memcpy(host, src, bytes);
  TD_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, nullptr));
  TD_CUDA_CHECK(cudaEventRecord(stage_done_[slot], nullptr));
  stage_used_[slot] = true;
}

void CudaBackend::download(void* dst, const void* src, size_t bytes) {
  TD_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  TD_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

}  // namespace td::cuda
