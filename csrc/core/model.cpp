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

void Model::set_lora(const std::vector<WeightView>& a, const std::vector<WeightView>& b, float scale) {
  const ModelConfig& c = cfg_;
  if (a.empty() && b.empty()) {
    for (auto& L : w_.layers) L.lora_a = L.lora_b = WeightView{};
    w_.lora_rank = 0;
    w_.lora_scale = 0.0f;
    return;
  }
  TD_CHECK(static_cast<int>(a.size()) == c.layers && static_cast<int>(b.size()) == c.layers, "[lora] got ",
           a.size(), "/", b.size(), " A/B matrices, expected one per layer (", c.layers, ")");
  TD_CHECK(std::isfinite(scale), "[lora] scale must be finite");
  const int64_t r = a[0].rows;
  TD_CHECK(r > 0, "[lora] rank must be positive");
  for (int i = 0; i < c.layers; ++i) {
    TD_CHECK(a[i].rows == r && a[i].cols == c.q_dim(), "[lora] layer ", i, " lora_A has shape [", a[i].rows, ", ",
             a[i].cols, "], expected [", r, ", ", c.q_dim(), "]");
    TD_CHECK(b[i].rows == c.hidden && b[i].cols == r, "[lora] layer ", i, " lora_B has shape [", b[i].rows, ", ",
             b[i].cols, "], expected [", c.hidden, ", ", r, "]");
  }
  for (int i = 0; i < c.layers; ++i) {
    w_.layers[i].lora_a = a[i];
    w_.layers[i].lora_b = b[i];
  }
  w_.lora_rank = static_cast<int>(r);
  w_.lora_scale = scale;
}

void Model::forward(const int32_t* ids, int n, int64_t start_pos, AttnMode mode, bool write_cache,
                    int logits_from, const ForwardOutput& out, bool use_lora) {
  const ModelConfig& c = cfg_;
  TD_CHECK(n > 0, "[forward] the chunk is empty");
  TD_CHECK(start_pos >= 0, "[forward] start position must be >= 0, got ", start_pos);
  TD_CHECK(logits_from >= 0 && logits_from < n, "[forward] logits_from ", logits_from, " outside [0, ", n, ")");
  TD_CHECK(!use_lora || has_lora(), "[forward] use_lora is set but no LoRA adapter is attached");
  TD_CHECK(out.logits != nullptr || (out.idx != nullptr && out.conf != nullptr), "[forward] no output buffer");
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
  if (use_lora) {
    lora_t_.resize(static_cast<size_t>(n) * w_.lora_rank);
    lora_u_.resize(n * H);
  }
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
    if (use_lora) {
      backend_.matmul(attn_.data(), n, L.lora_a, lora_t_.data());
      backend_.matmul(lora_t_.data(), n, L.lora_b, lora_u_.data());
      backend_.axpy(proj_.data(), lora_u_.data(), w_.lora_scale, n * H);
    }
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
  if (out.logits != nullptr)
    backend_.matmul(norm_.data(), rows, w_.head, out.logits);
  else
    backend_.head_select(norm_.data(), rows, w_.head, out.select, out.idx, out.conf);
  if (write_cache) cache_.append(n);
}

}  // namespace td
