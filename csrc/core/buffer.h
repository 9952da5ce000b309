// A growable, move-only allocation in one backend's memory.
#pragma once
#include <cstddef>
#include <utility>

#include "core/backend.h"

namespace td {

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(Backend& backend) : be_(&backend) {}
  ~Buffer() { release(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : be_(o.be_), p_(std::exchange(o.p_, nullptr)), cap_(std::exchange(o.cap_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      be_ = o.be_;
      p_ = std::exchange(o.p_, nullptr);
      cap_ = std::exchange(o.cap_, 0);
    }
    return *this;
  }

  // At least `bytes` of storage; the old contents are lost when it grows.
  void* reserve(size_t bytes) {
    if (bytes > cap_) {
      release();
      p_ = be_->alloc(bytes);
      cap_ = bytes;
    }
    return p_;
  }
  template <class T>
  T* as(size_t count) {
    return static_cast<T*>(reserve(count * sizeof(T)));
  }
  void* get() const { return p_; }
  size_t capacity() const { return cap_; }

 private:
  void release() {
    if (p_ != nullptr) be_->free(p_);
    p_ = nullptr;
    cap_ = 0;
  }
  Backend* be_ = nullptr;
  void* p_ = nullptr;
  size_t cap_ = 0;
};

}  // namespace td
