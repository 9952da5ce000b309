// x [m, k] @ W^T for W [n, k] in its stored dtype. Weight-stationary: each thread takes a slab of W rows,
// 8 rows at a time, and multiplies them by all m input rows, so W is read exactly once whatever m is; for
// the small m of decoding that read is what bounds the time. fp32 and bf16 rows feed the kernel directly;
// f16 rows are converted to an fp32 scratch first.
#include <algorithm>
#include <vector>

#include "core/check.h"
#include "cpu/cpu_backend.h"
#include "cpu/simd_kernels.h"

namespace td::cpu {

constexpr double kParallelMinWork = 1 << 20;  // multiply-adds (~0.1 ms on one core)

void CpuBackend::matmul(const float* x, int m, const WeightView& w, float* out) {
  TD_CHECK(m > 0, "[matmul] no input rows");
  const int64_t n = w.rows, k = w.cols;
  const SimdKernels& K = simd();
  constexpr int kRows = 8;
  const int64_t blocks = (n + kRows - 1) / kRows;
  // Threads pay off only on real work: a parallel region costs microseconds, and far more when another
  // process holds the other cores, so tiny products stay on the calling thread.
  const bool parallel = static_cast<double>(m) * n * k >= kParallelMinWork;
#pragma omp parallel if (parallel)
  {
    const bool staged = w.dtype == DType::F16;
    std::vector<float> buf(staged ? static_cast<size_t>(kRows * k) : 0);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kRows;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, n - r0));
      const void* rows[kRows];
      for (int j = 0; j < nr; ++j) {
        if (staged) {
          K.to_f32(w.row_ptr(r0 + j), w.dtype, k, buf.data() + j * k);
          rows[j] = buf.data() + j * k;
        } else {
          rows[j] = w.row_ptr(r0 + j);
        }
      }
      K.dot_tile(x, m, k, rows, staged ? DType::F32 : w.dtype, nr, out + r0, n);
    }
  }
}

}  // namespace td::cpu
