// Non-owning views. The owner (numpy memmaps on the Python side, or backend buffers) outlives the view.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace td {

// A row-major weight matrix [rows, cols] in its stored dtype (vectors use rows = 1).
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  // I8 weights: element (r, c) is q[r, c] * scales[r * groups + c / 32], groups = ceil(cols / 32), the
  // scales stored as bf16 bits.
  const uint16_t* scales = nullptr;
  static constexpr int kInt8Group = 32;
  int64_t groups() const { return (cols + kInt8Group - 1) / kInt8Group; }
  // bf16 weights: whether a product rounds x to bf16 first (bf16 x bf16 products, fp32 accumulation, as the
  // reference computes on a GPU); false keeps fp32 x and exact fp32 products.
  bool round_input = false;

  const char* row_ptr(int64_t r) const {
    return static_cast<const char*>(data) + r * cols * dtype_size(dtype);
  }
};

}  // namespace td
