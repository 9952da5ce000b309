// The op table every backend implements. Activations are fp32 [rows, cols] row-major on the CPU backend;
// weights stay in their stored dtype (WeightView). The model calls only these ops.
#pragma once
#include <cstdint>

#include "core/attention_params.h"
#include "core/config.h"
#include "core/tensor.h"

namespace td {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // out[i, :] = table[ids[i], :]; ids already range-checked by the caller.   out: [n, table.cols]
  virtual void embed(const WeightView& table, const int32_t* ids, int n, float* out) = 0;
  // out[i] = x[i] * rsqrt(mean(x[i]^2) + eps) * w                           x, out: [n, dim]
  virtual void rms_norm(const float* x, const WeightView& w, int n, int dim, float eps, float* out) = 0;
  // out[m, n] = sum_k x[m, k] * w[n, k]  (x @ W^T, fp32 accumulation)       x: [m, w.cols], out: [m, w.rows]
  virtual void matmul(const float* x, int m, const WeightView& w, float* out) = 0;
  // In place RoPE on x [n, heads, head_dim] at absolute positions; is_query adds the llama-4 query scale.
  virtual void rope(float* x, int n, int heads, int head_dim, const int64_t* positions, const RopeParams& rp,
                    bool is_query) = 0;
  virtual void attention(const AttentionParams& p) = 0;
  // out[i] = silu(gate[i]) * up[i]
  virtual void swiglu(const float* gate, const float* up, int64_t n, float* out) = 0;
  // x[i] += y[i]
  virtual void add(float* x, const float* y, int64_t n) = 0;
  // Per row of logits [n, vocab]: first index of the maximum (skipping exclude_id when >= 0) and its
  // softmax probability.
  virtual void argmax_confidence(const float* logits, int n, int vocab, int exclude_id, int32_t* idx,
                                 float* conf) = 0;
};

Backend& cpu_backend();

}  // namespace td
