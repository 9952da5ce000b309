// The transformer forward: one chunk of tokens over the KV cache, in either attention pattern.
// It calls the backend only; no maths lives here.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/backend.h"
#include "core/buffer.h"
#include "core/config.h"
#include "core/kv_cache.h"
#include "core/tensor.h"

namespace td {

struct LayerWeights {
  WeightView in_norm;    // [1, hidden]
  WeightView q, k, v;    // [heads*head_dim, hidden], [kv_heads*head_dim, hidden] x2
  WeightView o;          // [hidden, heads*head_dim]
  WeightView post_norm;  // [1, hidden]
  WeightView gate, up;   // [intermediate, hidden]
  WeightView down;       // [hidden, intermediate]
  // On device backends q/k/v and gate/up live stacked in one buffer each (q, k, v above are views into it),
  // so one launch computes them; empty where they are separate (the CPU backend reads the files in place).
  WeightView qkv;        // [(heads + 2 * kv_heads) * head_dim, hidden]
  WeightView gate_up;    // [2 * intermediate, hidden]
  // Optional LoRA on o_proj (the self-speculation drafter): o(x) = W x + lora_scale * B (A x).
  WeightView lora_a;     // [r, heads*head_dim]
  WeightView lora_b;     // [hidden, r]
};

struct ModelWeights {
  WeightView embed;       // [vocab, hidden]
  WeightView final_norm;  // [1, hidden]
  WeightView head;        // [vocab, hidden] (the embedding itself when tied)
  std::vector<LayerWeights> layers;
  float lora_scale = 0.0f;  // 0 when no adapter is attached
  int lora_rank = 0;
};

enum class AttnMode { Causal = 0, Bidirectional = 1 };

// What a forward produces for rows logits_from..n-1: full logits, or (fused sampler head) the chosen
// token and its confidence per row. The pointers are in the backend's memory.
struct ForwardOutput {
  float* logits = nullptr;  // [(n - logits_from), vocab], or null
  int32_t* idx = nullptr;   // [(n - logits_from)] when logits is null
  float* conf = nullptr;    // [(n - logits_from)]
  SelectParams select;
};

class Model {
 public:
  // Weights are host views (memory-mapped files). A device backend uploads them once; the CPU backend reads
  // them in place. With random_init, the weights hold only shapes/dtypes and are allocated and filled with
  // random values in the backend's memory (benchmarks without a checkpoint).
  Model(ModelConfig cfg, ModelWeights weights, int capacity, Backend& backend, bool random_init = false,
        uint64_t seed = 0);

  // Forwards of up to this many tokens (decode steps, verify and diffusion blocks, short prefills) allocate
  // nothing in backend memory: the activations and the backend's scratch are reserved for them at load (and
  // again when a LoRA adapter changes the weights). Longer chunks grow the buffers once.
  static constexpr int kReservedRows = 64;

  const ModelConfig& config() const { return cfg_; }
  KVCache& cache() { return cache_; }
  Backend& backend() { return backend_; }

  // Runs ids[0..n) at absolute positions start_pos..start_pos+n-1 over the cached tokens. The chunk's
  // K/V land in cache rows length..length+n-1; write_cache commits them (only allowed in causal mode).
  // Logits are produced for rows logits_from..n-1 into logits [(n - logits_from), vocab].
  // use_lora applies the attached o_proj adapter (drafts only).
  void forward(const int32_t* ids, int n, int64_t start_pos, AttnMode mode, bool write_cache, int logits_from,
               const ForwardOutput& out, bool use_lora = false);

  // Graphs (backends that have them): the layer stack of a forward of up to kReservedRows tokens is
  // recorded the second time its shape (chunk length, attention pattern, LoRA use) runs and replayed after,
  // one launch instead of one per op; the chunk's ids, positions and the cache length reach it through
  // device memory. The LM head and sampler run after it as usual. On by default; off records nothing and
  // drops what was recorded.
  void set_graphs(bool on);
  bool graphs() const { return use_graphs_; }
  int graph_count() const;    // graphs recorded and usable now
  static constexpr int kMaxGraphs = 8;   // per model; the least recently used shape makes room

  // bf16 activations between the ops whose consumers round their input to bf16 anyway (device backends
  // with bf16 weights): on by default; results are the same bits either way (tested), only the bytes moved
  // differ. A diagnostic switch.
  void set_bf16_activations(bool on) { bf16_activations_ = on; drop_graphs(); }
  bool bf16_activations() const { return bf16_activations_; }

  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Attaches (or, with empty views, removes) a LoRA adapter on o_proj; validated against the shapes.
  void set_lora(const std::vector<WeightView>& a, const std::vector<WeightView>& b, float scale);
  bool has_lora() const { return w_.lora_rank > 0; }
  // Bytes of backend memory held: uploaded weights, KV cache, scratch.
  int64_t backend_bytes() const;

 private:
  void mark_compute(WeightView& w) const;   // sets round_input from cfg_.compute_f32
  WeightView place(const WeightView& host, bool random, uint64_t seed, float std);
  void reserve(int rows);   // activations and backend scratch for forwards of up to `rows` tokens
  // Places the parts stacked by rows in one buffer (each part's seed is ++seed); the parts become views.
  // Parts of different dtypes are placed apart, and the result is empty.
  WeightView place_stacked(std::initializer_list<WeightView*> parts, bool random, uint64_t& seed, float std);
  // Embedding, the layers and the final norm into norm_. cached_device (graphs) holds the cache length in
  // backend memory; attention is then launched for the whole capacity.
  void run_layers(const int32_t* ids, int n, const int64_t* pos, int cached, const int32_t* cached_device,
                  AttnMode mode, bool use_lora);
  void drop_graphs();

  struct LayerGraph {
    int n = 0;
    AttnMode mode = AttnMode::Causal;
    bool lora = false;
    int runs = 0;             // eager runs so far (recorded on the second)
    bool failed = false;      // the backend refused to record it: always eager
    void* exec = nullptr;
    uint64_t epoch = 0;       // backend memory_epoch() when recorded
    uint64_t last_use = 0;    // graph_clock_ at its latest forward
  };
  LayerGraph* graph_for(int n, AttnMode mode, bool lora);

  ModelConfig cfg_;
  ModelWeights w_;
  Backend& backend_;
  KVCache cache_;
  std::vector<Buffer> owned_;        // uploaded weights (device backends)
  std::vector<Buffer> lora_owned_;
  // Scratch, grown on demand: [n, hidden] x3, [n, q_dim] x2, [n, kv_dim] x2, [n, intermediate] x2, LoRA.
  // step_ (device backends): the chunk's positions [n] int64, the cache length (int32, then 4 bytes of
  // padding) and the token ids [n] int32, uploaded in one copy.
  // act16_ (device backends): a bf16 activation [n, max(hidden, q_dim, intermediate)], used by one op pair
  // at a time.
  Buffer x_, norm_, q_, k_, v_, attn_, proj_, gate_, up_, lora_t_, lora_u_, act16_, step_;
  bool bf16_activations_ = true;
  bool use_graphs_ = true;
  std::vector<LayerGraph> graphs_;   // at most kMaxGraphs; the least recently used shape is replaced
  uint64_t graph_clock_ = 0;
};

void validate_weights(const ModelConfig& cfg, const ModelWeights& w, bool need_data = true);

}  // namespace td
