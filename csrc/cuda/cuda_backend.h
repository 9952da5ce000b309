// The CUDA backend: every op of core/backend.h on device pointers, on the legacy default stream (so it
// orders with cupy and torch work on that stream); graphs are recorded on a stream of the backend's own and
// replayed on the legacy stream. Activations are fp32, the KV cache fp32 or bf16 (as the
// model chose); weights stay in their stored dtype (bf16 / f16 / f32) and are widened in registers.
#pragma once
#include <cuda_runtime.h>

#include "core/backend.h"
#include "core/buffer.h"

namespace td::cuda {

// Self-resetting int counters for kernels whose last block to finish completes the work: zero when
// allocated, and every kernel that takes one leaves it zero.
class Tickets {
 public:
  explicit Tickets(Backend& backend) : buf_(backend) {}
  int* get(size_t count);
 private:
  Buffer buf_;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend();
  const char* name() const override { return "cuda"; }
  bool is_device() const override { return true; }
  std::mutex* shared_state_mutex() override { return &mutex_; }
  void* alloc(size_t bytes) override;
  void free(void* p) override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill_random(void* dst, DType t, int64_t n, float std, uint64_t seed) override;
  void kv_write(void* cache, DType cache_dtype, const float* chunk, int n, int kv_heads, int head_dim,
                int64_t row0, int64_t head_stride) override;

  void embed(const WeightView& table, const int32_t* ids, int n, float* out) override;
  void rms_norm(const float* x, const WeightView& w, int n, int dim, float eps, float* out) override;
  void matmul(const float* x, int m, const WeightView& w, float* out) override;
  void reserve_forward(const ForwardPlan& plan) override;
  void matmul_parts(const float* x, int m, const WeightView& w, int parts, const int64_t* rows,
                    float* const* outs) override;
  void rope(float* x, int n, int heads, int head_dim, const int64_t* positions, const RopeParams& rp,
            bool is_query) override;
  void attention(const AttentionParams& p) override;
  void add_rms_norm(float* x, const float* y, const WeightView& w, int n, int dim, float eps, float* out) override;
  void rope_kv_append(float* q, float* k, const float* v, int n, int heads, int kv_heads, int head_dim,
                      const int64_t* positions, const RopeParams& rp, void* cache_k, void* cache_v,
                      DType cache_dtype, int64_t row0, int64_t head_stride,
                      const int32_t* row0_device = nullptr) override;
  void swiglu(const float* gate, const float* up, int64_t n, float* out) override;
  bool bf16_input(const WeightView& w, int m) const override;
  void rms_norm_bf16(float* x, const float* y, const WeightView& w, int n, int dim, float eps,
                     uint16_t* out) override;
  void swiglu_bf16(const float* gate, const float* up, int64_t n, uint16_t* out) override;
  void matmul_bf16(const uint16_t* x, int m, const WeightView& w, int parts, const int64_t* rows,
                   float* const* outs) override;
  void add(float* x, const float* y, int64_t n) override;
  void axpy(float* x, const float* y, float a, int64_t n) override;
  void head_select(const float* x, int n, const WeightView& head, const SelectParams& sp, int32_t* idx,
                   float* conf) override;
  void select(const float* logits, int n, int vocab, const SelectParams& sp, int32_t* idx, float* conf) override;
  int select_commits(const float* conf, const uint8_t* masked, int L, float threshold, int k,
                     uint8_t* commit) override;
  int accept_length(const int32_t* draft, const int32_t* target, int L) override;

  bool has_graphs() const override { return true; }
  void begin_capture() override;
  void* end_capture() override;
  void replay(void* graph) override;
  void destroy_graph(void* graph) override;
  uint64_t memory_epoch() const override;

 private:
  std::mutex mutex_;        // held around ops from different threads: they share the scratch below
  int sm_count_ = 1;
  Buffer scratch_logits_;   // head_select: [n, vocab] logits kept on the device
  Buffer scratch_partial_;  // attention split-KV partials and select per-split statistics
  Buffer scratch_small_;    // single-int results of the decode-loop ops
  Buffer scratch_splitk_;   // skinny tensor-core matmul: per-k-chunk partial products
  Tickets splitk_tickets_;  // and its per-column-block counters
  // Pinned staging for small uploads (upload()); never freed: the backend lives as long as the process.
  static constexpr size_t kStageSlot = 64 << 10;
  static constexpr int kStageSlots = 8;
  std::mutex stage_mutex_;
  char* stage_ = nullptr;
  cudaEvent_t stage_done_[kStageSlots] = {};
  bool stage_used_[kStageSlots] = {};
  int stage_next_ = 0;
  cudaStream_t capture_stream_ = nullptr;   // non-blocking; graphs are replayed on the legacy stream
};

}  // namespace td::cuda
