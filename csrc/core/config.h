// The model shape and positional-encoding constants, validated once at load.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace td {

// RoPE as applied by every backend: NeoX rotate-half over the whole head_dim, angle = pos * inv_freq[j]
// computed in fp32, cos/sin scaled by attention_factor; queries then multiplied by
// 1 + qscale_beta * ln(1 + floor(pos / qscale_length)) (the llama-4 query scale; beta 0 disables it).
struct RopeParams {
  std::vector<float> inv_freq;   // [head_dim / 2]
  float attention_factor = 1.0f;
  float qscale_beta = 0.0f;
  int64_t qscale_length = 1;
};

struct ModelConfig {
  int hidden = 0;
  int layers = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int intermediate = 0;
  int vocab = 0;
  float rms_eps = 1e-5f;
  RopeParams rope;
  DType kv_dtype = DType::F32;   // of the KV cache: fp32, or bf16 on the CUDA backend
  // Products with bf16 weights: false rounds x to bf16 (bf16 x bf16, fp32 accumulation, as on a GPU); true
  // keeps fp32 x (exact fp32 products). fp32 and f16 weights always multiply fp32 x.
  bool compute_f32 = false;

  int q_dim() const { return heads * head_dim; }
  int kv_dim() const { return kv_heads * head_dim; }
  void validate() const;  // throws td::Error naming the bad field
};

}  // namespace td
