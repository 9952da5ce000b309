#include "core/kv_cache.h"

#include "core/backend.h"
#include "core/check.h"

namespace td {

KVCache::KVCache(Backend& backend, int layers, int kv_heads, int head_dim, int capacity, DType dtype)
    : layers_(layers), kv_heads_(kv_heads), head_dim_(head_dim), capacity_(capacity), backend_(&backend),
      k_(backend), v_(backend) {
  TD_CHECK(capacity > 0, "[kv_cache] capacity must be positive, got ", capacity);
  TD_CHECK(dtype == DType::F32 || (dtype == DType::BF16 && backend.is_device()), "[kv_cache] a ",
           dtype_name(dtype), " KV cache is not supported on the ", backend.name(), " backend");
  dtype_ = dtype;
  layer_stride_ = static_cast<int64_t>(kv_heads) * capacity * head_dim;
  const size_t bytes = static_cast<size_t>(layer_stride_) * layers * dtype_size(dtype);
  k_.reserve(bytes);
  v_.reserve(bytes);
}

void KVCache::crop(int new_length) {
  TD_CHECK(new_length >= 0 && new_length <= length_, "[kv_cache] cannot crop to ", new_length,
           " tokens: the cache holds ", length_);
  length_ = new_length;
}

void KVCache::check_room(int n) const {
  TD_CHECK(n >= 0 && static_cast<int64_t>(length_) + n <= capacity_, "[kv_cache] a chunk of ", n,
           " tokens after ", length_, " cached tokens exceeds the cache capacity of ", capacity_,
           " tokens (load the model with a larger max_context)");
}

void KVCache::append(int n) {
  check_room(n);
  length_ += n;
}

void KVCache::append_random(int n, uint64_t seed) {
  check_room(n);
  for (int l = 0; l < layers_; ++l)
    for (int h = 0; h < kv_heads_; ++h) {
      const int64_t row0 = h * head_stride() + static_cast<int64_t>(length_) * head_dim_;
      const uint64_t s = seed ^ (static_cast<uint64_t>(l * kv_heads_ + h) << 32) ^ static_cast<uint64_t>(length_);
      const int64_t at = row0 * dtype_size(dtype_);
      backend_->fill_random(static_cast<char*>(k(l)) + at, dtype_, static_cast<int64_t>(n) * head_dim_, 1.0f, s * 2);
      backend_->fill_random(static_cast<char*>(v(l)) + at, dtype_, static_cast<int64_t>(n) * head_dim_, 1.0f,
                            s * 2 + 1);
    }
  length_ += n;
}

}  // namespace td
