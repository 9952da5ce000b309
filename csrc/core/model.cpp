#include "core/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"

namespace td {

namespace {
void check_shape(const WeightView& w, int64_t rows, int64_t cols, const char* what, bool need_data) {
  TD_CHECK(!need_data || w.data != nullptr, "[model] weight ", what, " is missing");
  TD_CHECK(w.rows == rows && w.cols == cols, "[model] weight ", what, " has shape [", w.rows, ", ", w.cols,
           "], expected [", rows, ", ", cols, "]");
}
}  // namespace

void validate_weights(const ModelConfig& c, const ModelWeights& w, bool need_data) {
  TD_CHECK(static_cast<int>(w.layers.size()) == c.layers, "[model] got ", w.layers.size(), " layers, expected ",
           c.layers);
  check_shape(w.embed, c.vocab, c.hidden, "embed", need_data);
  check_shape(w.final_norm, 1, c.hidden, "final_norm", need_data);
  check_shape(w.head, c.vocab, c.hidden, "head", need_data);
  for (const auto& l : w.layers) {
    check_shape(l.in_norm, 1, c.hidden, "input_layernorm", need_data);
    check_shape(l.q, c.q_dim(), c.hidden, "q_proj", need_data);
    check_shape(l.k, c.kv_dim(), c.hidden, "k_proj", need_data);
    check_shape(l.v, c.kv_dim(), c.hidden, "v_proj", need_data);
    check_shape(l.o, c.hidden, c.q_dim(), "o_proj", need_data);
    check_shape(l.post_norm, 1, c.hidden, "post_attention_layernorm", need_data);
    check_shape(l.gate, c.intermediate, c.hidden, "gate_proj", need_data);
    check_shape(l.up, c.intermediate, c.hidden, "up_proj", need_data);
    check_shape(l.down, c.hidden, c.intermediate, "down_proj", need_data);
  }
}

Model::Model(ModelConfig cfg, ModelWeights weights, int capacity, Backend& backend, bool random_init,
             uint64_t seed)
    : cfg_(std::move(cfg)), w_(std::move(weights)), backend_(backend),
      x_(backend), norm_(backend), q_(backend), k_(backend), v_(backend), attn_(backend), proj_(backend),
      gate_(backend), up_(backend), lora_t_(backend), lora_u_(backend), act16_(backend), step_(backend) {
  cfg_.validate();
  validate_weights(cfg_, w_, !random_init);
  const ModelConfig& c = cfg_;
  if (backend_.is_device()) {
    TD_CHECK(w_.head.dtype != DType::I8, "[model] the ", backend_.name(),
             " backend has no int8 kernels: load int8 weights on the CPU (device='cpu')");
    for (const auto& L : w_.layers)
      for (const WeightView* wv : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
        TD_CHECK(wv->dtype != DType::I8, "[model] the ", backend_.name(),
                 " backend has no int8 kernels: load int8 weights on the CPU (device='cpu')");
  }
  for (WeightView* wv : {&w_.embed, &w_.final_norm})
    TD_CHECK(wv->dtype != DType::I8, "[model] the embedding and norm weights cannot be int8");
  for (auto& L : w_.layers)
    for (WeightView* wv : {&L.in_norm, &L.post_norm})
      TD_CHECK(wv->dtype != DType::I8, "[model] the norm weights cannot be int8");
  mark_compute(w_.head);
  for (auto& L : w_.layers)
    for (WeightView* wv : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) mark_compute(*wv);
  if (backend_.is_device() || random_init) {
    const float proj_std = 1.0f / std::sqrt(static_cast<float>(c.hidden));
    uint64_t s = seed;
    w_.embed = place(w_.embed, random_init, ++s, 1.0f);
    w_.final_norm = place(w_.final_norm, random_init, ++s, 0.0f);
    w_.head = place(w_.head, random_init, ++s, proj_std);
    for (auto& L : w_.layers) {
      if (backend_.is_device()) {
        L.qkv = place_stacked({&L.q, &L.k, &L.v}, random_init, s, proj_std);
        L.gate_up = place_stacked({&L.gate, &L.up}, random_init, s, proj_std);
      } else {
        for (WeightView* wv : {&L.q, &L.k, &L.v, &L.gate, &L.up}) *wv = place(*wv, random_init, ++s, proj_std);
      }
      L.o = place(L.o, random_init, ++s, 1.0f / std::sqrt(static_cast<float>(c.q_dim())));
      L.down = place(L.down, random_init, ++s, 1.0f / std::sqrt(static_cast<float>(c.intermediate)));
      L.in_norm = place(L.in_norm, random_init, ++s, 0.0f);
      L.post_norm = place(L.post_norm, random_init, ++s, 0.0f);
    }
  }
  cache_ = KVCache(backend_, c.layers, c.kv_heads, c.head_dim, capacity, c.kv_dtype);
  reserve(std::min(kReservedRows, capacity));
}

void Model::reserve(int rows) {
  const ModelConfig& c = cfg_;
  const size_t n = static_cast<size_t>(rows);
  x_.as<float>(n * c.hidden);
  norm_.as<float>(n * c.hidden);
  q_.as<float>(n * c.q_dim());
  k_.as<float>(n * c.kv_dim());
  v_.as<float>(n * c.kv_dim());
  attn_.as<float>(n * c.q_dim());
  proj_.as<float>(n * c.hidden);
  gate_.as<float>(n * c.intermediate);
  up_.as<float>(n * c.intermediate);
  if (w_.lora_rank > 0) {
    lora_t_.as<float>(n * w_.lora_rank);
    lora_u_.as<float>(n * c.hidden);
  }
  if (!backend_.is_device()) return;
  act16_.reserve(n * static_cast<size_t>(std::max<int64_t>({c.hidden, c.q_dim(), c.intermediate})) * 2);
  step_.reserve(12 * n + 8);
  ForwardPlan plan;
  plan.rows = rows;
  plan.heads = c.heads;
  plan.kv_heads = c.kv_heads;
  plan.head_dim = c.head_dim;
  plan.max_kv_len = cache_.capacity();
  plan.vocab = c.vocab;
  plan.weights = {w_.head};
  for (const LayerWeights& L : w_.layers) {
    for (const WeightView* wv : {&L.qkv, &L.q, &L.k, &L.v, &L.o, &L.gate_up, &L.gate, &L.up, &L.down, &L.lora_a,
                                 &L.lora_b})
      if (wv->data != nullptr) plan.weights.push_back(*wv);
  }
  backend_.reserve_forward(plan);
}

// Copies (or, for random_init, allocates and fills) one weight in backend memory; fill_random with std 0
// writes ones (norm weights).
WeightView Model::place(const WeightView& host, bool random, uint64_t seed, float std) {
  const int64_t count = host.rows * host.cols;
  const size_t bytes = static_cast<size_t>(count) * dtype_size(host.dtype);
  Buffer buf(backend_);
  void* dst = buf.reserve(bytes);
  if (random)
    backend_.fill_random(dst, host.dtype, count, std, seed);
  else
    backend_.upload(dst, host.data, bytes);
  owned_.push_back(std::move(buf));
  WeightView out = host;
  out.data = dst;
  return out;
}

WeightView Model::place_stacked(std::initializer_list<WeightView*> parts, bool random, uint64_t& seed, float std) {
  const WeightView& first = **parts.begin();
  int64_t rows = 0;
  bool same = true;
  for (const WeightView* p : parts) {
    same = same && p->dtype == first.dtype && p->cols == first.cols;
    rows += p->rows;
  }
  if (!same) {   // a checkpoint that stores the projections in different dtypes: separate buffers
    for (WeightView* p : parts) *p = place(*p, random, ++seed, std);
    return WeightView{};
  }
  const size_t row_bytes = static_cast<size_t>(first.cols) * dtype_size(first.dtype);
  Buffer buf(backend_);
  char* dst = static_cast<char*>(buf.reserve(rows * row_bytes));
  WeightView stacked = first;
  stacked.data = dst;
  stacked.rows = rows;
  for (WeightView* p : parts) {
    const size_t bytes = p->rows * row_bytes;
    if (random)
      backend_.fill_random(dst, p->dtype, p->rows * p->cols, std, ++seed);
    else
      backend_.upload(dst, p->data, bytes);
    p->data = dst;
    dst += bytes;
  }
  owned_.push_back(std::move(buf));
  return stacked;
}

int64_t Model::backend_bytes() const {
  int64_t total = cache_.bytes();
  for (const Buffer& b : owned_) total += static_cast<int64_t>(b.capacity());
  for (const Buffer& b : lora_owned_) total += static_cast<int64_t>(b.capacity());
  for (const Buffer* b : {&x_, &norm_, &q_, &k_, &v_, &attn_, &proj_, &gate_, &up_, &lora_t_, &lora_u_, &act16_, &step_})
    total += static_cast<int64_t>(b->capacity());
  return total;
}

void Model::set_lora(const std::vector<WeightView>& a, const std::vector<WeightView>& b, float scale) {
  const ModelConfig& c = cfg_;
  drop_graphs();   // they name the adapter's buffers
  if (a.empty() && b.empty()) {
    for (auto& L : w_.layers) L.lora_a = L.lora_b = WeightView{};
    lora_owned_.clear();
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
  std::vector<Buffer> uploaded;
  for (int i = 0; i < c.layers; ++i) {
    WeightView wa = a[i], wb = b[i];
    if (backend_.is_device()) {
      for (WeightView* wv : {&wa, &wb}) {
        Buffer buf(backend_);
        const size_t bytes = static_cast<size_t>(wv->rows * wv->cols) * dtype_size(wv->dtype);
        backend_.upload(buf.reserve(bytes), wv->data, bytes);
        wv->data = buf.get();
        uploaded.push_back(std::move(buf));
      }
    }
    TD_CHECK(wa.dtype != DType::I8 && wb.dtype != DType::I8, "[lora] the adapter cannot be int8");
    mark_compute(wa);
    mark_compute(wb);
    w_.layers[i].lora_a = wa;
    w_.layers[i].lora_b = wb;
  }
  lora_owned_ = std::move(uploaded);
  w_.lora_rank = static_cast<int>(r);
  w_.lora_scale = scale;
  reserve(std::min(kReservedRows, cache_.capacity()));
}

Model::~Model() { drop_graphs(); }

void Model::mark_compute(WeightView& w) const { w.round_input = w.dtype == DType::BF16 && !cfg_.compute_f32; }

void Model::drop_graphs() {
  for (LayerGraph& g : graphs_) backend_.destroy_graph(g.exec);
  graphs_.clear();
}

void Model::set_graphs(bool on) {
  if (!on) drop_graphs();
  use_graphs_ = on;
}

int Model::graph_count() const {
  int count = 0;
  for (const LayerGraph& g : graphs_) count += g.exec != nullptr && g.epoch == backend_.memory_epoch();
  return count;
}

Model::LayerGraph* Model::graph_for(int n, AttnMode mode, bool lora) {
  if (!use_graphs_ || !backend_.has_graphs() || n > kReservedRows) return nullptr;
  ++graph_clock_;
  for (LayerGraph& g : graphs_) {
    if (g.n == n && g.mode == mode && g.lora == lora) {
      g.last_use = graph_clock_;
      return &g;
    }
  }
  LayerGraph g;
  g.n = n;
  g.mode = mode;
  g.lora = lora;
  g.last_use = graph_clock_;
  if (static_cast<int>(graphs_.size()) < kMaxGraphs) {
    graphs_.push_back(g);
    return &graphs_.back();
  }
  // Full: the shape used least recently (a one-off prefill length, typically) makes room.
  LayerGraph* old = &graphs_[0];
  for (LayerGraph& e : graphs_)
    if (e.last_use < old->last_use) old = &e;
  backend_.destroy_graph(old->exec);
  *old = g;
  return old;
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
  std::unique_lock<std::mutex> backend_lock;   // other models may use the same backend from other threads
  if (std::mutex* m = backend_.shared_state_mutex()) backend_lock = std::unique_lock<std::mutex>(*m);

  const int cached = cache_.length();
  std::vector<int64_t> host_pos(n);
  for (int i = 0; i < n; ++i) host_pos[i] = start_pos + i;
  if (!backend_.is_device()) {
    run_layers(ids, n, host_pos.data(), cached, nullptr, mode, use_lora);
  } else {
    // One upload: positions, the cache length, the ids (step_'s layout).
    const size_t bytes = 12 * static_cast<size_t>(n) + 8;
    std::vector<char> host(bytes, 0);
    std::memcpy(host.data(), host_pos.data(), 8 * static_cast<size_t>(n));
    const int32_t len = cached;
    std::memcpy(host.data() + 8 * n, &len, sizeof len);
    std::memcpy(host.data() + 8 * n + 8, ids, 4 * static_cast<size_t>(n));
    char* dev = static_cast<char*>(step_.reserve(bytes));
    backend_.upload(dev, host.data(), bytes);
    const auto* pos = reinterpret_cast<const int64_t*>(dev);
    const auto* dev_cached = reinterpret_cast<const int32_t*>(dev + 8 * n);
    const auto* dev_ids = reinterpret_cast<const int32_t*>(dev + 8 * n + 8);
    LayerGraph* g = graph_for(n, mode, use_lora);
    if (g != nullptr && g->exec != nullptr && g->epoch != backend_.memory_epoch()) {
      backend_.destroy_graph(g->exec);   // recorded before some backend memory was freed: re-record
      g->exec = nullptr;
    }
    if (g != nullptr && g->exec == nullptr && !g->failed && ++g->runs >= 2) {
      const uint64_t epoch = backend_.memory_epoch();
      try {
        backend_.begin_capture();
        run_layers(dev_ids, n, pos, cached, dev_cached, mode, use_lora);
        g->exec = backend_.end_capture();
      } catch (const std::exception&) {
        backend_.destroy_graph(backend_.end_capture());   // the eager run below reports a real error
        g->exec = nullptr;
      }
      g->failed = g->exec == nullptr;
      g->epoch = epoch;
    }
    if (g != nullptr && g->exec != nullptr)
      backend_.replay(g->exec);
    else
      run_layers(dev_ids, n, pos, cached, nullptr, mode, use_lora);
  }

  const int rows = n - logits_from;
  const float* norm = static_cast<const float*>(norm_.get()) + static_cast<int64_t>(logits_from) * c.hidden;
  if (out.logits != nullptr)
    backend_.matmul(norm, rows, w_.head, out.logits);
  else
    backend_.head_select(norm, rows, w_.head, out.select, out.idx, out.conf);
  if (write_cache) cache_.append(n);
}

void Model::run_layers(const int32_t* ids, int n, const int64_t* pos, int cached, const int32_t* cached_device,
                       AttnMode mode, bool use_lora) {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden, QD = c.q_dim(), KD = c.kv_dim(), I = c.intermediate;
  float* x = x_.as<float>(n * H);
  float* norm = norm_.as<float>(n * H);
  float* q = q_.as<float>(n * QD);
  float* k = k_.as<float>(n * KD);
  float* v = v_.as<float>(n * KD);
  float* attn = attn_.as<float>(n * QD);
  float* proj = proj_.as<float>(n * H);
  float* gate = gate_.as<float>(n * I);
  float* up = up_.as<float>(n * I);
  float* lora_t = use_lora ? lora_t_.as<float>(static_cast<size_t>(n) * w_.lora_rank) : nullptr;
  float* lora_u = use_lora ? lora_u_.as<float>(n * H) : nullptr;
  // bf16 activations where every consumer takes them (its product rounds x to bf16 anyway: the same bits,
  // half the bytes read): the norm before q/k/v and gate/up, attention before o_proj (and the drafter's A),
  // SwiGLU before down_proj. One buffer serves them in turn.
  const auto takes = [&](const WeightView& w) { return bf16_activations_ && w.data != nullptr && backend_.bf16_input(w, n); };
  uint16_t* act16 = bf16_activations_ && backend_.is_device() && n <= kReservedRows   // the skinny products
                        ? static_cast<uint16_t*>(act16_.reserve(static_cast<size_t>(n) * std::max({H, QD, I}) * 2))
                        : nullptr;
  const auto qkv16 = [&](const LayerWeights& L) { return act16 != nullptr && takes(L.qkv); };
  const auto norm_into = [&](float* xr, const float* y, const WeightView& w, bool bf16) {
    if (bf16) backend_.rms_norm_bf16(xr, y, w, n, static_cast<int>(H), c.rms_eps, act16);
    else if (y == nullptr) backend_.rms_norm(xr, w, n, static_cast<int>(H), c.rms_eps, norm);
    else backend_.add_rms_norm(xr, y, w, n, static_cast<int>(H), c.rms_eps, norm);
  };

  backend_.embed(w_.embed, ids, n, x);
  norm_into(x, nullptr, w_.layers[0].in_norm, qkv16(w_.layers[0]));
  for (int li = 0; li < c.layers; ++li) {
    const LayerWeights& L = w_.layers[li];
    // norm (or act16) = input_layernorm(x) here.
    if (qkv16(L)) {
      const int64_t rows[3] = {L.q.rows, L.k.rows, L.v.rows};
      float* const outs[3] = {q, k, v};
      backend_.matmul_bf16(act16, n, L.qkv, 3, rows, outs);
    } else if (L.qkv.data != nullptr) {
      const int64_t rows[3] = {L.q.rows, L.k.rows, L.v.rows};
      float* const outs[3] = {q, k, v};
      backend_.matmul_parts(norm, n, L.qkv, 3, rows, outs);
    } else {
      const WeightView* ws[3] = {&L.q, &L.k, &L.v};
      float* const outs[3] = {q, k, v};
      backend_.matmul_group(norm, n, ws, 3, outs);
    }
    void* kc = cache_.k(li);
    void* vc = cache_.v(li);
    backend_.rope_kv_append(q, k, v, n, c.heads, c.kv_heads, c.head_dim, pos, c.rope, kc, vc, cache_.dtype(), cached,
                            cache_.head_stride(), cached_device);

    AttentionParams p;
    p.q = q; p.k = kc; p.v = vc; p.kv_dtype = cache_.dtype(); p.out = attn;
    p.n_q = n; p.heads = c.heads; p.kv_heads = c.kv_heads; p.head_dim = c.head_dim;
    p.kv_len = cached_device != nullptr ? cache_.capacity() : cached + n;
    p.cached = cached_device;
    p.kv_token_stride = cache_.token_stride(); p.kv_head_stride = cache_.head_stride();
    p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    p.causal = mode == AttnMode::Causal;
    const bool o16 = act16 != nullptr && takes(L.o) && (!use_lora || takes(L.lora_a));
    if (o16) {
      p.out = reinterpret_cast<float*>(act16);
      p.out_dtype = DType::BF16;
    }
    backend_.attention(p);

    const int64_t o_rows[1] = {L.o.rows};
    float* const o_outs[1] = {proj};
    if (o16) backend_.matmul_bf16(act16, n, L.o, 1, o_rows, o_outs);
    else backend_.matmul(attn, n, L.o, proj);
    if (use_lora) {
      const int64_t a_rows[1] = {L.lora_a.rows};
      float* const a_outs[1] = {lora_t};
      if (o16) backend_.matmul_bf16(act16, n, L.lora_a, 1, a_rows, a_outs);
      else backend_.matmul(attn, n, L.lora_a, lora_t);
      backend_.matmul(lora_t, n, L.lora_b, lora_u);
      backend_.axpy(proj, lora_u, w_.lora_scale, n * H);
    }
    const bool up16 = act16 != nullptr && takes(L.gate_up);
    norm_into(x, proj, L.post_norm, up16);   // residual, then post-attn norm
    if (up16) {
      const int64_t rows[2] = {L.gate.rows, L.up.rows};
      float* const outs[2] = {gate, up};
      backend_.matmul_bf16(act16, n, L.gate_up, 2, rows, outs);
    } else if (L.gate_up.data != nullptr) {
      const int64_t rows[2] = {L.gate.rows, L.up.rows};
      float* const outs[2] = {gate, up};
      backend_.matmul_parts(norm, n, L.gate_up, 2, rows, outs);
    } else {
      const WeightView* ws[2] = {&L.gate, &L.up};
      float* const outs[2] = {gate, up};
      backend_.matmul_group(norm, n, ws, 2, outs);
    }
    if (act16 != nullptr && takes(L.down)) {
      backend_.swiglu_bf16(gate, up, n * I, act16);
      const int64_t d_rows[1] = {L.down.rows};
      float* const d_outs[1] = {proj};
      backend_.matmul_bf16(act16, n, L.down, 1, d_rows, d_outs);
    } else {
      backend_.swiglu(gate, up, n * I, gate);
      backend_.matmul(gate, n, L.down, proj);
    }
    // Residual, then the next layer's input norm (or the final norm: the LM head reads fp32).
    const bool last = li + 1 == c.layers;
    norm_into(x, proj, last ? w_.final_norm : w_.layers[li + 1].in_norm, !last && qkv16(w_.layers[li + 1]));
  }
}

}  // namespace td
