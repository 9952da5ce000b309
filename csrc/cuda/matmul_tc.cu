// Tensor-core matmuls with bf16 weights: out[m, n] = x[m, k] . W[n, k], x rounded to bf16 as it is staged in
// shared memory (the precision of the reference on a GPU: bf16 products, fp32 accumulation).
//
// Skinny (m <= 64: decode steps, verify and diffusion blocks): weight streaming. A block of 8 warps owns 256
// rows of W (32 per warp) and one k-chunk; per 64-wide k-step the block stages its x rows once, each warp
// copies its 32 x 64 W tile with 16-byte loads into its own shared memory and multiplies every x row by it
// (16 x 16 x 16 bf16 fragments, fp32 accumulation), so each weight is read from global memory once for all
// m rows. The k-chunks (split-k, to fill the SMs when W has few rows) are summed in chunk order by the last
// block to finish. The outputs may be several matrices, one per range of W rows (fused q/k/v and gate/up
// projections: one launch reads x once per block for all of them). The k order of every output element depends on (n, k) and the SM count only, not on m:
// a row gets the same bits alone (decode) as inside a block (verify), which keeps self-speculation == AR.
//
// Prefill (m > 64): block tile 64 (rows of x) x 64 (rows of W), k-step 32, 4 warps each owning a 32x32 quadrant as 2x2 WMMA
// 16x16x16 bf16 fragments with fp32 accumulation. x is rounded to bf16 while it is staged in shared memory
// (the one precision loss of this path: about 2^-9 relative per product; tests bound it against a naive
// bf16-input product). Edges are zero-padded in shared memory, so any m, n, k work.
#include <mma.h>

#include <algorithm>

#include "cuda/common.cuh"
#include "core/buffer.h"
#include "cuda/cuda_backend.h"

namespace td::cuda {
namespace {

using namespace nvcuda;

constexpr int kBM = 64, kBN = 64, kBK = 32;
constexpr int kThreads = 128;
constexpr int kPad = 8;   // bf16 elements of padding per smem row (keeps ldm a multiple of 8, spreads banks)

// vec: k % 8 == 0 and 16-byte aligned rows, so the tiles are staged with 16-byte loads.
__global__ void __launch_bounds__(kThreads) tc_matmul_kernel(const float* __restrict__ x, int m, int64_t k,
                                                             const __nv_bfloat16* __restrict__ w, int64_t n,
                                                             bool vec, float* __restrict__ out) {
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
    if (vec) {
      for (int t = threadIdx.x; t < kBM * kBK / 4; t += kThreads) {
        const int r = t / (kBK / 4), c = (t % (kBK / 4)) * 4;
        const int64_t gr = m0 + r, gc = k0 + c;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (gr < m && gc < k) v = __ldg(reinterpret_cast<const float4*>(x + gr * k + gc));
        xs[r][c] = __float2bfloat16(v.x);
        xs[r][c + 1] = __float2bfloat16(v.y);
        xs[r][c + 2] = __float2bfloat16(v.z);
        xs[r][c + 3] = __float2bfloat16(v.w);
      }
      for (int t = threadIdx.x; t < kBN * kBK / 8; t += kThreads) {
        const int r = t / (kBK / 8), c = (t % (kBK / 8)) * 8;
        const int64_t gr = n0 + r, gc = k0 + c;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (gr < n && gc < k) v = __ldg(reinterpret_cast<const uint4*>(w + gr * k + gc));
        *reinterpret_cast<uint4*>(&ws[r][c]) = v;
      }
    } else {
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

constexpr int kSWarps = 8;
constexpr int kSThreads = 32 * kSWarps;
constexpr int kSK = 64;                           // k per step
constexpr int kSMaxM = 64;
constexpr int kSPad = 8;
// Two shapes with the same 8 accumulator fragments per warp: up to 32 rows of x with 64 W rows per warp
// (512 per block: x is staged half as often), or up to 64 rows with 32 W rows per warp (256 per block).
// The k-chunks are chosen for 512-row blocks in both, so a product's k order does not depend on the shape.
constexpr int kSChunkRows = 512;

template <int kMF, int kNF>   // x row fragments, W row fragments per warp
struct Skinny {
  static constexpr int kWarpRows = 16 * kNF;
  static constexpr int kRows = kSWarps * kWarpRows;   // W rows per block
  static constexpr int kM = 16 * kMF;                 // most x rows
  static constexpr size_t kSmem = (kM + kSWarps * kWarpRows) * (kSK + kSPad) * sizeof(__nv_bfloat16);
};

// grid (W row blocks, k-chunks), dynamic shared memory Skinny::kSmem. Chunk c covers k [c * k_chunk,
// min(k, (c + 1) * k_chunk)). With one chunk the block writes its outputs; with several it writes partial
// [chunks, m, n], and the last block of its column block to finish (a ticket per column block, reset after
// use) sums the chunks in chunk order and writes the outputs, so a split product costs one launch.
// x is fp32 (rounded to bf16 as it is staged) or bf16 already (copied as it is: the same bits).
template <int kMF, int kNF, typename XT>
__global__ void __launch_bounds__(kSThreads) tc_skinny_kernel(const XT* __restrict__ x, int m, int64_t k,
                                                              const __nv_bfloat16* __restrict__ w, int64_t n,
                                                              int64_t k_chunk, MatmulOutputs outs,
                                                              float* __restrict__ partial, int* __restrict__ tickets) {
  using S = Skinny<kMF, kNF>;
  constexpr int kLd = kSK + kSPad;
  extern __shared__ __align__(32) unsigned char smem_raw[];
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem_raw);            // [kM][kLd]
  __shared__ int last;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __nv_bfloat16* ws = xs + S::kM * kLd + warp * S::kWarpRows * kLd;         // this warp's [kWarpRows][kLd]
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * S::kRows + warp * S::kWarpRows;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * k_chunk, k1 = min(k, k0 + k_chunk);
  const int mt = (m + 15) / 16;                   // x row fragments in use
  const bool split = gridDim.y > 1;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kMF][kNF];
#pragma unroll
  for (int i = 0; i < kMF; ++i)
#pragma unroll
    for (int j = 0; j < kNF; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t kb = k0; kb < k1; kb += kSK) {
    __syncthreads();                              // the previous step's tiles are consumed
    // x rows 0..16 * mt - 1 of this step as bf16; zero past m and past the chunk.
    if constexpr (sizeof(XT) == 4) {
      for (int t = threadIdx.x; t < mt * 16 * (kSK / 4); t += kSThreads) {
        const int r = t / (kSK / 4), c = (t - r * (kSK / 4)) * 4;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < m && kb + c < k1) v = __ldg(reinterpret_cast<const float4*>(x + r * k + kb + c));
        __nv_bfloat16* d = xs + r * kLd + c;
        d[0] = __float2bfloat16(v.x);
        d[1] = __float2bfloat16(v.y);
        d[2] = __float2bfloat16(v.z);
        d[3] = __float2bfloat16(v.w);
      }
    } else {
      for (int t = threadIdx.x; t < mt * 16 * (kSK / 8); t += kSThreads) {
        const int r = t / (kSK / 8), c = (t - r * (kSK / 8)) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < m && kb + c < k1) v = __ldg(reinterpret_cast<const uint4*>(x + r * k + kb + c));
        *reinterpret_cast<uint4*>(xs + r * kLd + c) = v;
      }
    }
    // This warp's W tile: 8 lanes per row, one 16-byte load each, 4 rows per pass.
#pragma unroll
    for (int it = 0; it < S::kWarpRows * kSK / 8 / 32; ++it) {
      const int idx = it * 32 + lane;
      const int r = idx >> 3, c = (idx & 7) * 8;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (n0 + r < n && kb + c < k1) v = __ldg(reinterpret_cast<const uint4*>(w + (n0 + r) * k + kb + c));
      *reinterpret_cast<uint4*>(ws + r * kLd + c) = v;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[kNF];
#pragma unroll
      for (int j = 0; j < kNF; ++j) wmma::load_matrix_sync(b[j], ws + 16 * j * kLd + kk, kLd);
#pragma unroll
      for (int i = 0; i < kMF; ++i) {
        if (i < mt) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
          wmma::load_matrix_sync(a, xs + 16 * i * kLd + kk, kLd);
#pragma unroll
          for (int j = 0; j < kNF; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
        }
      }
    }
  }
  // Each fragment through this warp's (now free) W tile memory to guarded stores.
  __syncthreads();
  float* cs = reinterpret_cast<float*>(ws);       // 256 floats of the warp's tile
  float* part = split ? partial + static_cast<int64_t>(blockIdx.y) * m * n : nullptr;
#pragma unroll
  for (int i = 0; i < kMF; ++i) {
    if (i >= mt) break;
#pragma unroll
    for (int j = 0; j < kNF; ++j) {
      __syncwarp();
      wmma::store_matrix_sync(cs, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int t = lane; t < 256; t += 32) {
        const int r = 16 * i + t / 16;
        const int64_t col = n0 + 16 * j + t % 16;
        if (r < m && col < n) {
          if (split) part[r * n + col] = cs[t];
          else *outs.at(r, col) = cs[t];
        }
      }
    }
  }
  if (!split) return;
  __threadfence();                                // this chunk's partial is visible before the ticket
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&tickets[blockIdx.x], 1) == static_cast<int>(gridDim.y) - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * S::kRows;
  for (int t = threadIdx.x; t < m * S::kRows; t += kSThreads) {
    const int r = t / S::kRows;
    const int64_t col = c0 + (t - r * S::kRows);
    if (col >= n) continue;
    float sum = __ldcg(partial + r * n + col);
    for (int c = 1; c < static_cast<int>(gridDim.y); ++c)
      sum += __ldcg(partial + (static_cast<int64_t>(c) * m + r) * n + col);
    *outs.at(r, col) = sum;
  }
  if (threadIdx.x == 0) tickets[blockIdx.x] = 0;  // ready for the next launch
}

}  // namespace

bool tensor_core_skinny_fits(const void* x, int m, const WeightView& w) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return w.dtype == DType::BF16 && m <= kSMaxM && w.cols % 8 == 0 && aligned(w.data) && aligned(x);
}

namespace {
// k-chunks: one wave of 512-row blocks, each chunk at least 8 steps; a function of (n, k, SMs), not of m.
int skinny_chunks(int64_t n, int64_t k, int sm_count, int64_t* k_chunk) {
  const int64_t blocks = (n + kSChunkRows - 1) / kSChunkRows;
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>(sm_count / blocks, k / (8 * kSK)));
  *k_chunk = ((k + want - 1) / want + kSK - 1) / kSK * kSK;
  return static_cast<int>((k + *k_chunk - 1) / *k_chunk);
}

int64_t skinny_blocks(int m, int64_t n) {
  const int rows = m <= Skinny<2, 4>::kM ? Skinny<2, 4>::kRows : Skinny<4, 2>::kRows;
  return (n + rows - 1) / rows;
}

template <int kMF, int kNF, typename XT>
void launch_skinny(dim3 grid, const void* x, int m, int64_t k, const void* w, int64_t n, int64_t k_chunk,
                   const MatmulOutputs& outs, float* partial, int* ticket) {
  using S = Skinny<kMF, kNF>;
  static const cudaError_t opt_in = cudaFuncSetAttribute(
      tc_skinny_kernel<kMF, kNF, XT>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(S::kSmem));
  TD_CUDA_CHECK_NAMED(opt_in, "matmul");
  tc_skinny_kernel<kMF, kNF, XT><<<grid, kSThreads, S::kSmem, launch_stream()>>>(static_cast<const XT*>(x), m, k, static_cast<const __nv_bfloat16*>(w), n,
                                                            k_chunk, outs, partial, ticket);
}
}  // namespace

void tensor_core_skinny_scratch(int m, const WeightView& w, int sm_count, size_t* partial_bytes, size_t* tickets) {
  int64_t k_chunk = 0;
  const int chunks = skinny_chunks(w.rows, w.cols, sm_count, &k_chunk);
  size_t most_blocks = 0;
  for (int rows : {1, m}) most_blocks = std::max<size_t>(most_blocks, skinny_blocks(rows, w.rows));
  *partial_bytes = chunks > 1 ? static_cast<size_t>(chunks) * m * w.rows * sizeof(float) : 0;
  *tickets = chunks > 1 ? most_blocks : 0;
}

void tensor_core_skinny(const void* x, bool x_bf16, int m, const WeightView& w, const MatmulOutputs& outs,
                        int sm_count, Buffer& partials, Tickets& tickets) {
  TD_CHECK(tensor_core_skinny_fits(x, m, w), "[matmul] the skinny tensor-core path takes bf16 weights, at most ",
           kSMaxM, " rows and 16-byte aligned rows");
  const int64_t n = w.rows, k = w.cols;
  TD_CHECK(outs.count >= 1 && outs.count <= MatmulOutputs::kMax && outs.end[outs.count - 1] == n,
           "[matmul] the output parts do not cover the ", n, " rows of the weight");
  const int64_t blocks = skinny_blocks(m, n);
  TD_CHECK(blocks <= 2147483647LL, "[matmul] too many output features: ", n);
  int64_t k_chunk = 0;
  const int chunks = skinny_chunks(n, k, sm_count, &k_chunk);
  float* partial = chunks > 1 ? partials.as<float>(static_cast<size_t>(chunks) * m * n) : nullptr;
  int* ticket = chunks > 1 ? tickets.get(static_cast<size_t>(blocks)) : nullptr;
  const dim3 grid(static_cast<unsigned>(blocks), chunks);
  const bool small = m <= Skinny<2, 4>::kM;
  if (x_bf16) {
    if (small) launch_skinny<2, 4, __nv_bfloat16>(grid, x, m, k, w.data, n, k_chunk, outs, partial, ticket);
    else launch_skinny<4, 2, __nv_bfloat16>(grid, x, m, k, w.data, n, k_chunk, outs, partial, ticket);
  } else {
    if (small) launch_skinny<2, 4, float>(grid, x, m, k, w.data, n, k_chunk, outs, partial, ticket);
    else launch_skinny<4, 2, float>(grid, x, m, k, w.data, n, k_chunk, outs, partial, ticket);
  }
  TD_CUDA_LAUNCH_CHECK("matmul");
}

void tensor_core_matmul(const float* x, int m, const WeightView& w, float* out) {
  TD_CHECK(w.dtype == DType::BF16, "[matmul] the tensor-core path takes bf16 weights");
  const dim3 grid(blocks_for(w.rows, kBN), blocks_for(m, kBM));
  TD_CHECK(grid.y <= 65535, "[matmul] too many rows for one launch: ", m);
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vec = w.cols % 8 == 0 && aligned(w.data) && aligned(x);
  tc_matmul_kernel<<<grid, kThreads, 0, launch_stream()>>>(x, m, w.cols, static_cast<const __nv_bfloat16*>(w.data), w.rows, vec, out);
  TD_CUDA_LAUNCH_CHECK("matmul");
}

}  // namespace td::cuda
