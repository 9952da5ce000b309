// The KV cache of one model instance: causal K/V of committed tokens at absolute positions 0..length-1.
//
// Layout per layer: K and V each [kv_heads, capacity, head_dim] in fp32 (or bf16, on a backend that
// supports it, for 16-bit checkpoints), in the backend's memory, so one
// head's keys are contiguous for the attention loop. A forward always writes its chunk's K/V at rows
// length..length+n-1 (scratch when the forward does not commit), so attention reads one contiguous range
// whatever the pattern; committing is then just advancing `length`, and a crop just lowers it.
#pragma once
#include <cstdint>

#include "core/buffer.h"
#include "core/dtype.h"

namespace td {

class KVCache {
 public:
  KVCache() = default;
  KVCache(Backend& backend, int layers, int kv_heads, int head_dim, int capacity, DType dtype = DType::F32);

  int capacity() const { return capacity_; }
  int length() const { return length_; }
  void reset() { length_ = 0; }
  void crop(int new_length);      // keeps tokens 0..new_length-1; new_length <= length
  void append(int n);             // commits rows length..length+n-1, already written by a forward
  void check_room(int n) const;   // throws when length + n exceeds the capacity
  // Appends n rows of N(0, 1) K and V (benchmarks: a long cached context without running its prefill).
  void append_random(int n, uint64_t seed);

  DType dtype() const { return dtype_; }
  // Layer bases; strides below are in elements of dtype().
  void* k(int layer) { return static_cast<char*>(k_.get()) + layer * layer_stride_ * dtype_size(dtype_); }
  void* v(int layer) { return static_cast<char*>(v_.get()) + layer * layer_stride_ * dtype_size(dtype_); }
  int64_t head_stride() const { return static_cast<int64_t>(capacity_) * head_dim_; }
  int64_t token_stride() const { return head_dim_; }
  int64_t bytes() const { return 2 * layer_stride_ * layers_ * static_cast<int64_t>(dtype_size(dtype_)); }

 private:
  int layers_ = 0, kv_heads_ = 0, head_dim_ = 0, capacity_ = 0, length_ = 0;
  int64_t layer_stride_ = 0;
  DType dtype_ = DType::F32;
  Backend* backend_ = nullptr;
  Buffer k_, v_;
};

}  // namespace td
