// Tiled tensor-core matmul for prefill-sized chunks (m > 64) with bf16 weights: out[m, n] = x[m, k] . W[n, k].
//
// Block tile 64 (rows of x) x 64 (rows of W), k-step 32, 4 warps each owning a 32x32 quadrant as 2x2 WMMA
// 16x16x16 bf16 fragments with fp32 accumulation. x is rounded to bf16 while it is staged in shared memory
// (the one precision loss of this path: about 2^-9 relative per product; tests bound it against a naive
// bf16-input product). Edges are zero-padded in shared memory, so any m, n, k work.
#include <mma.h>

#include "cuda/common.cuh"
#include "cuda/cuda_backend.h"

namespace td::cuda {
namespace {

using namespace nvcuda;

constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kThreads = 128;
constexpr int kPad = 8;   // bf16 elements of padding per smem row (keeps ldm a multiple of 8, spreads banks)

__global__ void __launch_bounds__(kThreads) tc_matmul_kernel(const float* __restrict__ x, int m, int64_t k,
                                                             const __nv_bfloat16* __restrict__ w, int64_t n,
                                                             float* __restrict__ out) {
  __shared__ __align__(32) __nv_bfloat16 xs[kBM][kBK + kPad];
  __shared__ __align__(32) __nv_bfloat16 ws[kBN][kBK + kPad];
  __shared__ __align__(32) float cs[4][32 * 32];

  const int warp = threadIdx.x >> 5;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;   // this warp's quadrant
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM, n0 = static_cast<int64_t>(blockIdx.x) * kBN;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < k; k0 += kBK) {
    // Stage the x tile (fp32 -> bf16) and the W tile, zero outside the matrices.
    for (int t = threadIdx.x; t < kBM * kBK; t += kThreads) {
      const int r = t / kBK, c = t % kBK;
      const int64_t gr = m0 + r, gc = k0 + c;
      xs[r][c] = __float2bfloat16(gr < m && gc < k ? x[gr * k + gc] : 0.0f);
    }
    for (int t = threadIdx.x; t < kBN * kBK; t += kThreads) {
      const int r = t / kBK, c = t % kBK;
      const int64_t gr = n0 + r, gc = k0 + c;
      ws[r][c] = gr < n && gc < k ? w[gr * k + gc] : __float2bfloat16(0.0f);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &xs[wm + 16 * i][kk], kBK + kPad);
      // B = W^T: W tile rows are output columns, so W stored row-major [n][k] is B in column-major.
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &ws[wn + 16 * j][kk], kBK + kPad);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
  // Through shared memory to guarded global stores.
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&cs[warp][(16 * i) * 32 + 16 * j], acc[i][j], 32, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x & 31;
  for (int t = lane; t < 32 * 32; t += 32) {
    const int r = t / 32, c = t % 32;
    const int64_t gr = m0 + wm + r, gc = n0 + wn + c;
    if (gr < m && gc < n) out[gr * n + gc] = cs[warp][t];
  }
}

}  // namespace

void tensor_core_matmul(const float* x, int m, const WeightView& w, float* out) {
  TD_CHECK(w.dtype == DType::BF16, "[matmul] the tensor-core path takes bf16 weights");
  const dim3 grid(blocks_for(w.rows, kBN), blocks_for(m, kBM));
  TD_CHECK(grid.y <= 65535, "[matmul] too many rows for one launch: ", m);
  tc_matmul_kernel<<<grid, kThreads>>>(x, m, w.cols, static_cast<const __nv_bfloat16*>(w.data), w.rows, out);
  TD_CUDA_LAUNCH_CHECK("matmul");
}

}  // namespace td::cuda
