#include "core/config.h"

#include <cmath>

#include "core/check.h"

namespace td {

void ModelConfig::validate() const {
  TD_CHECK(hidden > 0, "[config] hidden_size must be positive, got ", hidden);
  TD_CHECK(layers > 0, "[config] num_hidden_layers must be positive, got ", layers);
  TD_CHECK(heads > 0, "[config] num_attention_heads must be positive, got ", heads);
  TD_CHECK(kv_heads > 0, "[config] num_key_value_heads must be positive, got ", kv_heads);
  TD_CHECK(heads % kv_heads == 0, "[config] num_attention_heads (", heads,
           ") is not divisible by num_key_value_heads (", kv_heads, ")");
  TD_CHECK(head_dim > 0 && head_dim % 2 == 0, "[config] head_dim must be a positive even number, got ", head_dim);
  TD_CHECK(intermediate > 0, "[config] intermediate_size must be positive, got ", intermediate);
  TD_CHECK(vocab > 0, "[config] vocab_size must be positive, got ", vocab);
  TD_CHECK(rms_eps > 0.0f && std::isfinite(rms_eps), "[config] rms_norm_eps must be positive, got ", rms_eps);
  TD_CHECK(static_cast<int>(rope.inv_freq.size()) == head_dim / 2, "[config] rope inv_freq has ",
           rope.inv_freq.size(), " entries, expected head_dim/2 = ", head_dim / 2);
  for (float f : rope.inv_freq) TD_CHECK(std::isfinite(f), "[config] rope inv_freq holds a non-finite value");
  TD_CHECK(rope.qscale_length > 0, "[config] original_max_position_embeddings must be positive, got ",
           rope.qscale_length);
}

}  // namespace td
