// Hot inner kernels of the CPU backend, compiled once per x86 ISA level (gemm_*.cpp) and picked at run
// time, so one build runs everywhere and still uses AVX2/AVX-512 where the CPU has them.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace td::cpu {

struct SimdKernels {
  const char* isa;
  // out[i * ldo + j] = dot(x + i*k, w_rows[j]) for i < m, j < nr (nr <= 8): a small output tile.
  // Weight rows are fp32 or bf16 (wt); other dtypes are converted to fp32 rows by the caller.
  void (*dot_tile)(const float* x, int m, int64_t k, const void* const* w_rows, DType wt, int nr, float* out,
                   int64_t ldo);
  // dst[0..n) = fp32(src[0..n)) for a stored dtype.
  void (*to_f32)(const void* src, DType t, int64_t n, float* dst);
  // sum_i a[i] * b[i]
  float (*dot)(const float* a, const float* b, int64_t n);
};

const SimdKernels& simd();

// One declaration per compiled ISA level.
#define TD_DECLARE_SIMD(suffix)                                                                        \
  void dot_tile_##suffix(const float*, int, int64_t, const void* const*, DType, int, float*, int64_t);      \
  void to_f32_##suffix(const void*, DType, int64_t, float*);                                           \
  float dot_##suffix(const float*, const float*, int64_t);
TD_DECLARE_SIMD(generic)
TD_DECLARE_SIMD(avx2)
TD_DECLARE_SIMD(avx512)
#undef TD_DECLARE_SIMD

}  // namespace td::cpu
