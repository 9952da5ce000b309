// One product x @ W^T on the CPU, split into tiles of weight rows that threads share out. The x side is
// prepared once per call, on the calling thread, for the weight's compute path:
// - fp32 and f16 weights, and bf16 weights without round_input: fp32 x (f16 rows are widened per tile);
// - bf16 weights with round_input: x rounded to bf16, multiplied on AMX tiles or vdpbf16ps where the CPU has
//   them (AMX: x packed once here into the kernel's tile layout), else as fp32 products of the rounded values;
// - int8 weights (a bf16 scale per group of 32): x quantized per row to int16 (symmetric, scale
//   max|x| / 32767), each group's products summed exactly in int32 and scaled into fp32, then times the x
//   scale. int16 rather than int8 activations: on a 1024-deep product of Gaussian data the relative error is
//   0.54% so against 0.76% with int8 activations per group (and 1.12% with one weight scale per row and int8
//   activations); the weights' rounding is then nearly the only loss.
// A row's result depends only on that row of x, never on m (the batch), on every path.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "cpu/simd_kernels.h"

namespace td::cpu {

class ProductInput {
 public:
  ProductInput(const float* x, int m, const WeightView& w);
  int rows() const { return m_; }
  // out[i * ldo + j] = x[i] . W[r0 + j] for i < m, j < nr (nr <= kMaxTile). Thread-safe for distinct outputs.
  void tile(const WeightView& w, int64_t r0, int nr, float* out, int64_t ldo) const;
  static constexpr int kMaxTile = 8;

 private:
  enum class Path { F32, BF16, I8 };
  const SimdKernels& K_;
  Path path_ = Path::F32;
  int m_;
  int64_t k_;
  const float* xf_ = nullptr;      // F32 path (x itself, or x rounded to bf16 values)
  const uint16_t* x16_ = nullptr;  // BF16 path with a bf16 kernel
  const int16_t* xq_ = nullptr;    // I8 path
  const float* xs_ = nullptr;      //   and the per-row scales
};

// Symmetric per-row int16 quantization of x [m, k]: q = round(x * 32767 / max|x_row|), scale max|x_row| / 32767
// (a row of zeros gets scale 0; a row holding inf or nan gets scale nan, so its outputs are nan).
void quantize_rows(const float* x, int m, int64_t k, int16_t* q, float* scales);

}  // namespace td::cpu
