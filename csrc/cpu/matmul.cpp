// x [m, k] @ W^T for W [n, k] in its stored dtype. Weight-stationary: each thread takes a slab of W rows,
// 8 rows at a time, and multiplies them by all m input rows, so W is read exactly once whatever m is; for
// the small m of decoding that read is what bounds the time. The x side is prepared once (product.h).
#include <algorithm>

#include "core/check.h"
#include "cpu/cpu_backend.h"
#include "cpu/product.h"

namespace td::cpu {

constexpr double kParallelMinWork = 1 << 20;  // multiply-adds (~0.1 ms on one core)

void CpuBackend::matmul(const float* x, int m, const WeightView& w, float* out) {
  TD_CHECK(m > 0, "[matmul] no input rows");
  const int64_t n = w.rows;
  const ProductInput in(x, m, w);
  constexpr int kRows = ProductInput::kMaxTile;
  const int64_t blocks = (n + kRows - 1) / kRows;
  // Threads pay off only on real work: a parallel region costs microseconds, and far more when another
  // process holds the other cores, so tiny products stay on the calling thread.
  const bool parallel = static_cast<double>(m) * n * w.cols >= kParallelMinWork;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kRows;
    in.tile(w, r0, static_cast<int>(std::min<int64_t>(kRows, n - r0)), out + r0, n);
  }
}

}  // namespace td::cpu
