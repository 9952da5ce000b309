// The CPU backend: plain loops with fp32 accumulation and OpenMP. It is the no-GPU path, the reference,
// and the oracle the CUDA kernels are compared with.
#pragma once
#include "core/backend.h"

namespace td::cpu {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void* alloc(size_t bytes) override;
  void free(void* p) override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill_random(void* dst, DType t, int64_t n, float std, uint64_t seed) override;
  void kv_write(void* cache, DType cache_dtype, const float* chunk, int n, int kv_heads, int head_dim, int64_t row0,
                int64_t head_stride) override;
  void embed(const WeightView& table, const int32_t* ids, int n, float* out) override;
  void rms_norm(const float* x, const WeightView& w, int n, int dim, float eps, float* out) override;
  void matmul(const float* x, int m, const WeightView& w, float* out) override;
  void matmul_group(const float* x, int m, const WeightView* const* ws, int count, float* const* outs) override;
  void rope(float* x, int n, int heads, int head_dim, const int64_t* positions, const RopeParams& rp,
            bool is_query) override;
  void attention(const AttentionParams& p) override;
  void swiglu(const float* gate, const float* up, int64_t n, float* out) override;
  void add(float* x, const float* y, int64_t n) override;
  void axpy(float* x, const float* y, float a, int64_t n) override;
  void head_select(const float* x, int n, const WeightView& head, const SelectParams& sp, int32_t* idx,
                   float* conf) override;
  void select(const float* logits, int n, int vocab, const SelectParams& sp, int32_t* idx, float* conf) override;
  int select_commits(const float* conf, const uint8_t* masked, int L, float threshold, int k,
                     uint8_t* commit) override;
  int accept_length(const int32_t* draft, const int32_t* target, int L) override;
};

// OpenMP queries, wrapped so files need not include omp.h.
int region_threads();  // threads the next large region should use (1 when the CPUs are oversubscribed)
int omp_thread_id();   // inside a region
int omp_team_size();   // inside a region

}  // namespace td::cpu
