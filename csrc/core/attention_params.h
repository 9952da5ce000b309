// One parameter struct shared by every attention implementation (CPU now, CUDA later).
//
// Mask convention (the only one in the project): the chunk's n_q queries are the LAST n_q of the kv_len
// keys. Causal is bottom-right aligned: query i sees key j iff j <= kv_len - n_q + i. Bidirectional sees
// every key. GQA: query head h reads kv head h / (heads / kv_heads).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace td {

struct AttentionParams {
  const float* q = nullptr;  // [n_q, heads, head_dim], contiguous
  const void* k = nullptr;   // element (t, g, d) at k[t * kv_token_stride + g * kv_head_stride + d]
  const void* v = nullptr;   // same strides as k
  DType kv_dtype = DType::F32;   // of k and v: fp32, or bf16 (a CUDA cache for 16-bit checkpoints)
  float* out = nullptr;      // [n_q, heads, head_dim], contiguous
  DType out_dtype = DType::F32;   // BF16 (device backends): out holds bf16 values, rounded to nearest even
  int n_q = 0;
  int kv_len = 0;            // keys visible to the last query (cache length + n_q)
  // Device backends, for graphs: when set, the cache length is read from this device int when the kernel
  // runs (kv_len = *cached + n_q there), and kv_len above is only the bound that sizes the launch.
  const int32_t* cached = nullptr;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int64_t kv_token_stride = 0;
  int64_t kv_head_stride = 0;
  float scale = 1.0f;        // usually 1/sqrt(head_dim)
  bool causal = true;
};

inline bool attention_visible(const AttentionParams& p, int qi, int kj) {
  return !p.causal || kj <= p.kv_len - p.n_q + qi;
}

}  // namespace td
