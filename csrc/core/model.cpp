#include "core/model.h"

#include <cmath>
#include <cstring>

#include "core/check.h"

namespace td {

namespace {
void check_shape(const WeightView& w, int64_t rows, int64_t cols, const char* what) {
  TD_CHECK(w.data != nullptr, "[model] weight ", what, " is missing");
  TD_CHECK(w.rows == rows && w.cols == cols, "[model] weight ", what, " has shape [", w.rows, ", ", w.cols,
           "], expected [", rows, ", ", cols, "]");
}
}  // namespace

void validate_weights(const ModelConfig& c, const ModelWeights& w) {
  TD_CHECK(static_cast<int>(w.layers.size()) == c.layers, "[model] got ", w.layers.size(), " layers, expected ",
           c.layers);
  check_shape(w.embed, c.vocab, c.hidden, "embed");
  check_shape(w.final_norm, 1, c.hidden, "final_norm");
  check_shape(w.head, c.vocab, c.hidden, "head");
  for (const auto& l : w.layers) {
    check_shape(l.in_norm, 1, c.hidden, "input_layernorm");
    check_shape(l.q, c.q_dim(), c.hidden, "q_proj");
    check_shape(l.k, c.kv_dim(), c.hidden, "k_proj");
    check_shape(l.v, c.kv_dim(), c.hidden, "v_proj");
    check_shape(l.o, c.hidden, c.q_dim(), "o_proj");
    check_shape(l.post_norm, 1, c.hidden, "post_attention_layernorm");
    check_shape(l.gate, c.intermediate, c.hidden, "gate_proj");
    check_shape(l.up, c.intermediate, c.hidden, "up_proj");
    check_shape(l.down, c.hidden, c.intermediate, "down_proj");
  }
}

Model::Model(ModelConfig cfg, ModelWeights weights, int capacity, Backend& backend)
    : cfg_(std::move(cfg)), w_(std::move(weights)), backend_(backend) {
  cfg_.validate();
  validate_weights(cfg_, w_);
  cache_ = KVCache(cfg_.layers, cfg_.kv_heads, cfg_.head_dim, capacity);
}

void Model::forward(const int32_t* ids, int n, int64_t start_pos, AttnMode mode, bool write_cache,
                    int logits_from, float* logits) {
  const ModelConfig& c = cfg_;
  TD_CHECK(n > 0, "[forward] the chunk is empty");
  TD_CHECK(start_pos >= 0, "[forward] start position must be >= 0, got ", start_pos);
  TD_CHECK(logits_from >= 0 && logits_from < n, "[forward] logits_from ", logits_from, " outside [0, ", n, ")");
  TD_CHECK(!(write_cache && mode == AttnMode::Bidirectional),
           "[forward] a bidirectional forward cannot write the cache (it holds causal K/V only)");
  for (int i = 0; i < n; ++i)
    TD_CHECK(ids[i] >= 0 && ids[i] < c.vocab, "[forward] token id ", ids[i], " at index ", i,
             " is outside the vocabulary [0, ", c.vocab, ")");
  cache_.check_room(n);

  const int64_t H = c.hidden, QD = c.q_dim(), KD = c.kv_dim(), I = c.intermediate;
  x_.resize(n * H); norm_.resize(n * H); q_.resize(n * QD); k_.resize(n * KD); v_.resize(n * KD);
  attn_.resize(n * QD); proj_.resize(n * H); gate_.resize(n * I); up_.resize(n * I);
  pos_.resize(n);
  for (int i = 0; i < n; ++i) pos_[i] = start_pos + i;

  const int cached = cache_.length();
  backend_.embed(w_.embed, ids, n, x_.data());
  for (int li = 0; li < c.layers; ++li) {
    const LayerWeights& L = w_.layers[li];
    backend_.rms_norm(x_.data(), L.in_norm, n, H, c.rms_eps, norm_.data());
    backend_.matmul(norm_.data(), n, L.q, q_.data());
    backend_.matmul(norm_.data(), n, L.k, k_.data());
    backend_.matmul(norm_.data(), n, L.v, v_.data());
    backend_.rope(q_.data(), n, c.heads, c.head_dim, pos_.data(), c.rope, true);
    backend_.rope(k_.data(), n, c.kv_heads, c.head_dim, pos_.data(), c.rope, false);

    // Chunk K/V -> cache rows cached..cached+n-1 (head-major layout).
    float* kc = cache_.k(li);
    float* vc = cache_.v(li);
    for (int i = 0; i < n; ++i)
      for (int g = 0; g < c.kv_heads; ++g) {
        const int64_t dst = g * cache_.head_stride() + (cached + i) * cache_.token_stride();
        std::memcpy(kc + dst, k_.data() + i * KD + g * c.head_dim, c.head_dim * sizeof(float));
        std::memcpy(vc + dst, v_.data() + i * KD + g * c.head_dim, c.head_dim * sizeof(float));
      }

    AttentionParams p;
    p.q = q_.data(); p.k = kc; p.v = vc; p.out = attn_.data();
    p.n_q = n; p.kv_len = cached + n; p.heads = c.heads; p.kv_heads = c.kv_heads; p.head_dim = c.head_dim;
    p.kv_token_stride = cache_.token_stride(); p.kv_head_stride = cache_.head_stride();
    p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    p.causal = mode == AttnMode::Causal;
    backend_.attention(p);

    backend_.matmul(attn_.data(), n, L.o, proj_.data());
    backend_.add(x_.data(), proj_.data(), n * H);
    backend_.rms_norm(x_.data(), L.post_norm, n, H, c.rms_eps, norm_.data());
    backend_.matmul(norm_.data(), n, L.gate, gate_.data());
    backend_.matmul(norm_.data(), n, L.up, up_.data());
    backend_.swiglu(gate_.data(), up_.data(), n * I, gate_.data());
    backend_.matmul(gate_.data(), n, L.down, proj_.data());
    backend_.add(x_.data(), proj_.data(), n * H);
  }
  const int rows = n - logits_from;
  backend_.rms_norm(x_.data() + logits_from * H, w_.final_norm, rows, H, c.rms_eps, norm_.data());
  backend_.matmul(norm_.data(), rows, w_.head, logits);
  if (write_cache) cache_.append(n);
}

}  // namespace td
