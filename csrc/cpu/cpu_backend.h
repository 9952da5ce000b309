// The CPU backend: plain loops with fp32 accumulation and OpenMP. It is the no-GPU path, the reference,
// and the oracle the CUDA kernels are compared with.
#pragma once
#include "core/backend.h"

namespace td::cpu {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void embed(const WeightView& table, const int32_t* ids, int n, float* out) override;
  void rms_norm(const float* x, const WeightView& w, int n, int dim, float eps, float* out) override;
  void matmul(const float* x, int m, const WeightView& w, float* out) override;
  void rope(float* x, int n, int heads, int head_dim, const int64_t* positions, const RopeParams& rp,
            bool is_query) override;
  void attention(const AttentionParams& p) override;
  void swiglu(const float* gate, const float* up, int64_t n, float* out) override;
  void add(float* x, const float* y, int64_t n) override;
  void argmax_confidence(const float* logits, int n, int vocab, int exclude_id, int32_t* idx,
                         float* conf) override;
};

}  // namespace td::cpu
