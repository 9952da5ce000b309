// x [m, k] @ W^T for W [n, k] in its stored dtype. Weight-stationary: each thread takes a slab of W rows,
// converts 4 rows at a time to fp32 (once, whatever m is) and multiplies them by all m input rows. For the
// small m of decoding this reads W exactly once, which is what bounds the time.
#include <algorithm>
#include <vector>

#include "core/check.h"
#include "cpu/cpu_backend.h"
#include "cpu/simd_kernels.h"

namespace td::cpu {

constexpr double kParallelMinWork = 1 << 18;  // multiply-adds

void CpuBackend::matmul(const float* x, int m, const WeightView& w, float* out) {
  TD_CHECK(m > 0, "[matmul] no input rows");
  const int64_t n = w.rows, k = w.cols;
  const SimdKernels& K = simd();
  constexpr int kRows = 4;
  const int64_t blocks = (n + kRows - 1) / kRows;
  // Threads pay off only on real work: a parallel region costs microseconds, and far more when another
  // process holds the other cores, so tiny products stay on the calling thread.
  const bool parallel = static_cast<double>(m) * n * k >= kParallelMinWork;
#pragma omp parallel if (parallel)
  {
    std::vector<float> buf(w.dtype == DType::F32 ? 0 : static_cast<size_t>(kRows * k));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kRows;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, n - r0));
      const float* rows[kRows];
      for (int j = 0; j < nr; ++j) {
        if (w.dtype == DType::F32) {
          rows[j] = reinterpret_cast<const float*>(w.row_ptr(r0 + j));
        } else {
          K.to_f32(w.row_ptr(r0 + j), w.dtype, k, buf.data() + j * k);
          rows[j] = buf.data() + j * k;
        }
      }
      K.dot_tile(x, m, k, rows, nr, out + r0, n);
    }
  }
}

}  // namespace td::cpu
