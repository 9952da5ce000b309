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

  const char* row_ptr(int64_t r) const {
    return static_cast<const char*>(data) + r * cols * dtype_size(dtype);
  }
};

}  // namespace td
