// The op table every backend implements. Activations are fp32 [rows, cols] row-major on the CPU backend;
// weights stay in their stored dtype (WeightView). The model calls only these ops.
#pragma once
#include <cstdint>
#include <vector>
#include <mutex>

#include "core/attention_params.h"
#include "core/check.h"
#include "core/config.h"
#include "core/select_params.h"
#include "core/tensor.h"

namespace td {

// The largest forward a model will run without growing any buffer: what a backend reserves its scratch for.
struct ForwardPlan {
  int rows = 0;                 // query rows of a chunk
  int heads = 0, kv_heads = 0, head_dim = 0;
  int max_kv_len = 0;           // keys attended to (the cache capacity)
  int vocab = 0;
  std::vector<WeightView> weights;   // every weight a forward multiplies by (shapes and dtypes)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // ---- memory: every pointer an op takes lives in this backend's memory ----
  virtual bool is_device() const { return false; }    // false: backend memory is host memory
  // A backend that keeps state shared by all its callers (the CUDA backend's scratch buffers) returns the
  // mutex to hold around a sequence of ops (a forward); a stateless one (the CPU backend) returns null.
  virtual std::mutex* shared_state_mutex() { return nullptr; }
  virtual void* alloc(size_t bytes) = 0;               // throws td::OutOfMemory
  virtual void free(void* p) = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;   // waits for pending work
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;            // within backend memory
  // Fills n elements of dtype t with N(0, std^2) draws from a counter hash of (seed, index) (benchmarks).
  virtual void fill_random(void* dst, DType t, int64_t n, float std, uint64_t seed) = 0;

  // chunk [n, kv_heads, head_dim] -> cache rows row0..row0+n-1 of a [kv_heads, capacity, head_dim] layout
  // whose heads are head_stride elements apart, stored as cache_dtype (fp32, or bf16 rounded to nearest even
  // on backends that keep a bf16 cache).
  virtual void kv_write(void* cache, DType cache_dtype, const float* chunk, int n, int kv_heads, int head_dim,
                        int64_t row0, int64_t head_stride) = 0;

  // out[i, :] = table[ids[i], :]; ids already range-checked by the caller.   out: [n, table.cols]
  virtual void embed(const WeightView& table, const int32_t* ids, int n, float* out) = 0;
  // out[i] = x[i] * rsqrt(mean(x[i]^2) + eps) * w                           x, out: [n, dim]
  virtual void rms_norm(const float* x, const WeightView& w, int n, int dim, float eps, float* out) = 0;
  // out[m, n] = sum_k x[m, k] * w[n, k]  (x @ W^T, fp32 accumulation)       x: [m, w.cols], out: [m, w.rows]
  virtual void matmul(const float* x, int m, const WeightView& w, float* out) = 0;
  // Reserves the scratch the ops need for forwards up to `plan`, so that those forwards allocate nothing.
  virtual void reserve_forward(const ForwardPlan& plan) { (void)plan; }
  // Several projections stacked in one weight: w holds rows[0] + ... + rows[parts - 1] rows, and outs[i]
  // [m, rows[i]] = x @ (rows of part i)^T, to matmul's precision (a backend may compute the parts in one
  // pass, and split k differently than for a part alone), with rows independent of m as in matmul.
  virtual void matmul_parts(const float* x, int m, const WeightView& w, int parts, const int64_t* rows,
                            float* const* outs) {
    int64_t start = 0;
    for (int i = 0; i < parts; ++i) {
      WeightView v = w;
      v.data = static_cast<const char*>(w.data) + start * w.cols * dtype_size(w.dtype);
      v.rows = rows[i];
      matmul(x, m, v, outs[i]);
      start += rows[i];
    }
  }
  // Products of one x with several separate weights (q/k/v, gate/up stored apart): outs[i] = x @ ws[i]^T, each
  // as matmul computes it. A backend may run them as one parallel pass.
  virtual void matmul_group(const float* x, int m, const WeightView* const* ws, int count, float* const* outs) {
    for (int i = 0; i < count; ++i) matmul(x, m, *ws[i], outs[i]);
  }
  // bf16 activations between ops (device backends whose products with a bf16 weight round x to bf16 on
  // the way in, so that a producer rounding its output instead changes no bit and halves what the consumer
  // reads). bf16_input(w, m): whether matmul_bf16 takes an [m, w.cols] bf16 x for this weight. The _bf16
  // ops write (or read) bf16 bit patterns, rounded to nearest even; the CPU backend has none.
  virtual bool bf16_input(const WeightView& w, int m) const { (void)w; (void)m; return false; }
  virtual void rms_norm_bf16(float* x, const float* y, const WeightView& w, int n, int dim, float eps,
                             uint16_t* out) {   // y null: out = rms_norm(x) * w; else x += y first
    (void)x; (void)y; (void)w; (void)n; (void)dim; (void)eps; (void)out;
    throw Error(detail::concat("[rms_norm] the ", name(), " backend has no bf16 activations"));
  }
  virtual void swiglu_bf16(const float* gate, const float* up, int64_t n, uint16_t* out) {
    (void)gate; (void)up; (void)n; (void)out;
    throw Error(detail::concat("[swiglu] the ", name(), " backend has no bf16 activations"));
  }
  virtual void matmul_bf16(const uint16_t* x, int m, const WeightView& w, int parts, const int64_t* rows,
                           float* const* outs) {   // matmul_parts with a bf16 x (parts 1: a plain product)
    (void)x; (void)m; (void)w; (void)parts; (void)rows; (void)outs;
    throw Error(detail::concat("[matmul] the ", name(), " backend has no bf16 activations"));
  }
  // In place RoPE on x [n, heads, head_dim] at absolute positions; is_query adds the llama-4 query scale.
  virtual void rope(float* x, int n, int heads, int head_dim, const int64_t* positions, const RopeParams& rp,
                    bool is_query) = 0;
  virtual void attention(const AttentionParams& p) = 0;

  // ---- fused steps of the layer (the CPU composes the ops above; CUDA runs one kernel each) ----
  // x += y, then out = rms_norm(x) * w.                                   x, y, out: [n, dim]
  virtual void add_rms_norm(float* x, const float* y, const WeightView& w, int n, int dim, float eps, float* out) {
    add(x, y, static_cast<int64_t>(n) * dim);
    rms_norm(x, w, n, dim, eps, out);
  }
  // RoPE on q [n, heads, head_dim] in place (with the query scale) and on k [n, kv_heads, head_dim], then the
  // rotated k and v appended to the cache rows row0..row0+n-1. k is scratch afterwards: a backend may leave
  // it rotated or not. row0_device, when set, holds row0 in backend memory, read when the op runs (graphs).
  virtual void rope_kv_append(float* q, float* k, const float* v, int n, int heads, int kv_heads, int head_dim,
                              const int64_t* positions, const RopeParams& rp, void* cache_k, void* cache_v,
                              DType cache_dtype, int64_t row0, int64_t head_stride,
                              const int32_t* row0_device = nullptr) {
    TD_CHECK(row0_device == nullptr || !is_device(), "[rope_kv_append] ", name(), " does not read row0 from device memory");
    if (row0_device != nullptr) row0 = *row0_device;
    rope(q, n, heads, head_dim, positions, rp, true);
    rope(k, n, kv_heads, head_dim, positions, rp, false);
    kv_write(cache_k, cache_dtype, k, n, kv_heads, head_dim, row0, head_stride);
    kv_write(cache_v, cache_dtype, v, n, kv_heads, head_dim, row0, head_stride);
  }
  // out[i] = silu(gate[i]) * up[i]
  virtual void swiglu(const float* gate, const float* up, int64_t n, float* out) = 0;
  // x[i] += y[i]
  virtual void add(float* x, const float* y, int64_t n) = 0;
  // x[i] += a * y[i]
  virtual void axpy(float* x, const float* y, float a, int64_t n) = 0;
  // The sampler head fused with the LM head: per row of x [n, head.cols], the token chosen from
  // logits = x @ head^T under `sp` and its softmax confidence, without materialising the logits.
  virtual void head_select(const float* x, int n, const WeightView& head, const SelectParams& sp, int32_t* idx,
                           float* conf) = 0;
  // The same selection over given logits [n, vocab]; row r of the call draws its noise from hash row r.
  // At temperature 0 this is argmax (first index of the maximum, never exclude_id) with its confidence.
  virtual void select(const float* logits, int n, int vocab, const SelectParams& sp, int32_t* idx,
                      float* conf) = 0;

  // Diffusion commit selection over one block of L slots. masked[i] != 0 marks still-masked slots.
  // threshold mode (k < 0): the most confident masked slot plus every masked slot with conf >= threshold;
  // fixed mode (k >= 0): the k most confident masked slots. Ties go to the lower slot. commit[i] = 0/1.
  // Returns the number of committed slots.
  virtual int select_commits(const float* conf, const uint8_t* masked, int L, float threshold, int k,
                             uint8_t* commit) = 0;
  // Speculative verification: the longest c with target[j] == draft[j + 1] for all j < c (c <= L - 1).
  // draft, target: [L]; target[j] is the verifier's choice for block position j + 1.
  virtual int accept_length(const int32_t* draft, const int32_t* target, int L) = 0;

  // Graphs (device backends that have them). The ops this thread issues between begin_capture() and
  // end_capture() are recorded instead of run; replay() runs them again, with the same arguments, in order
  // with the backend's other work. Whatever changes between replays must therefore be read from backend
  // memory (AttentionParams::cached, rope_kv_append's row0_device). end_capture() returns null when the
  // capture failed (the device refused a call made during it; the error is cleared): run eagerly then.
  virtual bool has_graphs() const { return false; }
  virtual void begin_capture() { throw Error(detail::concat("[graph] the ", name(), " backend has no graphs")); }
  virtual void* end_capture() { return nullptr; }
  virtual void replay(void* graph) { (void)graph; }
  virtual void destroy_graph(void* graph) { (void)graph; }
  // Changes whenever backend memory is freed: a graph recorded under another value may name a freed buffer.
  virtual uint64_t memory_epoch() const { return 0; }
};

Backend& cpu_backend();

}  // namespace td
