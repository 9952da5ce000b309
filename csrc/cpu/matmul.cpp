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
  // Static: each thread reads one contiguous stretch of W, front to back (what the prefetchers follow best).
#pragma omp parallel for schedule(static) num_threads(parallel ? region_threads() : 1) if (parallel)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kRows;
    in.tile(w, r0, static_cast<int>(std::min<int64_t>(kRows, n - r0)), out + r0, n);
  }
}

// One parallel region for all the products (a region's wake-up costs tens of microseconds when threads sleep
// between regions), when they share an input path; tiles are dealt out across the weights in order.
void CpuBackend::matmul_group(const float* x, int m, const WeightView* const* ws, int count, float* const* outs) {
  TD_CHECK(m > 0 && count > 0, "[matmul] no input rows or no weights");
  bool same = true;
  double work = 0;
  int64_t blocks = 0;
  constexpr int kRows = ProductInput::kMaxTile;
  int64_t first[8];
  TD_CHECK(count <= 8, "[matmul] at most 8 grouped products");
  for (int i = 0; i < count; ++i) {
    same = same && ws[i]->dtype == ws[0]->dtype && ws[i]->round_input == ws[0]->round_input &&
           ws[i]->cols == ws[0]->cols;
    work += static_cast<double>(m) * ws[i]->rows * ws[i]->cols;
    first[i] = blocks;
    blocks += (ws[i]->rows + kRows - 1) / kRows;
  }
  if (!same) {
    for (int i = 0; i < count; ++i) matmul(x, m, *ws[i], outs[i]);
    return;
  }
  const ProductInput in(x, m, *ws[0]);
  const bool parallel = work >= kParallelMinWork;
#pragma omp parallel for schedule(static) num_threads(parallel ? region_threads() : 1) if (parallel)
  for (int64_t b = 0; b < blocks; ++b) {
    int i = count - 1;
    while (first[i] > b) --i;
    const WeightView& w = *ws[i];
    const int64_t r0 = (b - first[i]) * kRows;
    in.tile(w, r0, static_cast<int>(std::min<int64_t>(kRows, w.rows - r0)), outs[i] + r0, w.rows);
  }
}

}  // namespace td::cpu
