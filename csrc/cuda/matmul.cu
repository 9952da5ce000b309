// out[m, n] = x[m, k] . W[n, k] for the skinny shapes of low-batch decoding (weight streaming), fp32 and fp16
// weights (bf16 weights go to the tensor cores, matmul_tc.cu, but for shapes they do not take).
//
// Vector path (k a multiple of 8, 16-byte aligned rows): a block of 8 warps owns 32 output rows (4 per
// warp) and up to kMT input rows. The block stages its x rows in shared memory once per k-tile, so x is
// read from global memory once per 32 weight rows instead of once per row; each lane then streams 8
// consecutive weights of each of its warp's 4 rows per step (four independent 16-byte loads in flight),
// widens them in registers and multiplies them by x from shared memory. Each lane visits k in the same
// order as a one-row product would (lane * 8 + j * 256), so a row's result does not depend on how many
// rows share the launch. More than kMT input rows use several row tiles, adjacent in the launch order.
// Scalar path (any other shape): one warp per output row, x read through the read-only cache.
#include "cuda/common.cuh"
#include "cuda/cuda_backend.h"

namespace td::cuda {

// matmul_tc.cu
void tensor_core_matmul(const float* x, int m, const WeightView& w, float* out);
bool tensor_core_skinny_fits(const void* x, int m, const WeightView& w);
void tensor_core_skinny(const void* x, bool x_bf16, int m, const WeightView& w, const MatmulOutputs& outs,
                        int sm_count, Buffer& partials, Tickets& tickets);

namespace {

constexpr int kTensorCoreMinRows = 64;  // prefill-sized chunks go to the tensor cores (bf16 weights)
constexpr int kMT = 8;                  // input rows per block
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsPerWarp = 4;         // vector path: output rows per warp
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kXTile = 8192;            // vector path: floats of x staged per k-tile (32 KiB)
constexpr int kStep = 32 * 8;           // k covered by one warp step

template <DType WT>
__device__ __forceinline__ void load8(const void* w, int64_t i, float* f) {
  if constexpr (WT == DType::F32) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(w) + i));
    const float4 b = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(w) + i + 4));
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
  } else {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(w) + i));
    const unsigned int u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const unsigned short lo = static_cast<unsigned short>(u[t] & 0xffffu), hi = static_cast<unsigned short>(u[t] >> 16);
      if constexpr (WT == DType::BF16) {
        f[2 * t] = __uint_as_float(static_cast<unsigned int>(lo) << 16);
        f[2 * t + 1] = __uint_as_float(static_cast<unsigned int>(hi) << 16);
      } else {
        f[2 * t] = __half2float(__ushort_as_half(lo));
        f[2 * t + 1] = __half2float(__ushort_as_half(hi));
      }
    }
  }
}

// Vector path: grid (row tiles of x, blocks of kRowsPerBlock output rows).
template <DType WT>
__global__ void __launch_bounds__(kThreads) skinny_matmul_vec_kernel(const float* __restrict__ x, int m, int64_t k,
                                                                     const void* __restrict__ w, int64_t n,
                                                                     float* __restrict__ out) {
  __shared__ __align__(16) float xs[kXTile];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int m0 = blockIdx.x * kMT;
  const int mt = min(kMT, m - m0);
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock + warp * kRowsPerWarp;
  // The k-tile: a multiple of one warp step that holds mt rows of x.
  const int64_t tile = max(static_cast<int64_t>(kStep), static_cast<int64_t>(kXTile / mt / kStep * kStep));
  float acc[kRowsPerWarp][kMT];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int i = 0; i < kMT; ++i) acc[r][i] = 0.0f;
  for (int64_t t0 = 0; t0 < k; t0 += tile) {
    const int64_t tk = min(tile, k - t0);   // a multiple of 8
    const int64_t quads = tk / 4;
    __syncthreads();                        // the previous tile is consumed
    for (int64_t e = threadIdx.x; e < mt * quads; e += kThreads) {
      const int i = static_cast<int>(e / quads);
      const int64_t c = e - i * quads;
      reinterpret_cast<float4*>(xs + i * tk)[c] =
          __ldg(reinterpret_cast<const float4*>(x + static_cast<int64_t>(m0 + i) * k + t0) + c);
    }
    __syncthreads();
    for (int64_t kk = static_cast<int64_t>(lane) * 8; kk < tk; kk += kStep) {
      float wf[kRowsPerWarp][8];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        if (row0 + r < n) {
          load8<WT>(w, (row0 + r) * k + t0 + kk, wf[r]);
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) wf[r][j] = 0.0f;
        }
      }
#pragma unroll
      for (int i = 0; i < kMT; ++i) {
        if (i < mt) {
          const float4 a = *reinterpret_cast<const float4*>(xs + i * tk + kk);
          const float4 b = *reinterpret_cast<const float4*>(xs + i * tk + kk + 4);
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r)
            acc[r][i] += a.x * wf[r][0] + a.y * wf[r][1] + a.z * wf[r][2] + a.w * wf[r][3] + b.x * wf[r][4] +
                         b.y * wf[r][5] + b.z * wf[r][6] + b.w * wf[r][7];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int i = 0; i < kMT; ++i) {
      if (i < mt) {                         // mt is the same for the whole block: no partial warp sums
        const float s = warp_sum(acc[r][i]);
        if (lane == 0 && row0 + r < n) out[static_cast<int64_t>(m0 + i) * n + row0 + r] = s;
      }
    }
}

// Scalar path: one warp per output row, grid (row tiles of x, blocks of kWarps output rows).
template <DType WT>
__global__ void __launch_bounds__(kThreads) skinny_matmul_kernel(const float* __restrict__ x, int m, int64_t k,
                                                                 const void* __restrict__ w, int64_t n,
                                                                 float* __restrict__ out) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kWarps + warp;
  const int m0 = blockIdx.x * kMT;
  if (row >= n) return;
  const int mt = min(kMT, m - m0);
  float acc[kMT];
#pragma unroll
  for (int i = 0; i < kMT; ++i) acc[i] = 0.0f;
  const int64_t wrow = row * k;
  for (int64_t kk = lane; kk < k; kk += 32) {
    const float wv = load_f32(w, WT, wrow + kk);
#pragma unroll
    for (int i = 0; i < kMT; ++i) {
      if (i < mt) {
        float xv = x[static_cast<int64_t>(m0 + i) * k + kk];
        if constexpr (WT == DType::BF16) xv = __bfloat162float(__float2bfloat16(xv));   // as the tensor cores
        acc[i] += xv * wv;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kMT; ++i) {
    if (i < mt) {
      const float s = warp_sum(acc[i]);
      if (lane == 0) out[static_cast<int64_t>(m0 + i) * n + row] = s;
    }
  }
}

template <DType WT>
void launch(const float* x, int m, const WeightView& w, float* out) {
  // bf16 weights reach here only in shapes the tensor cores do not take (k % 8 != 0, unaligned rows).
  if constexpr (WT != DType::BF16) {
    if (w.cols % 8 == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
      skinny_matmul_vec_kernel<WT><<<dim3(blocks_for(m, kMT), blocks_for(w.rows, kRowsPerBlock)), kThreads, 0, launch_stream()>>>(
          x, m, w.cols, w.data, w.rows, out);
      return;
    }
  }
  skinny_matmul_kernel<WT><<<dim3(blocks_for(m, kMT), blocks_for(w.rows, kWarps)), kThreads, 0, launch_stream()>>>(
      x, m, w.cols, w.data, w.rows, out);
}

}  // namespace

void CudaBackend::matmul(const float* x, int m, const WeightView& w, float* out) {
  TD_CHECK(m > 0, "[matmul] no input rows");
  TD_CHECK(w.rows <= 65535LL * kWarps, "[matmul] too many output features: ", w.rows);
  if (w.dtype == DType::BF16 && m > kTensorCoreMinRows) {
    tensor_core_matmul(x, m, w, out);
    return;
  }
  if (tensor_core_skinny_fits(x, m, w)) {   // bf16 weights, m <= 64
    MatmulOutputs outs;
    outs.ptr[0] = out;
    outs.end[0] = w.rows;
    outs.count = 1;
    tensor_core_skinny(x, false, m, w, outs, sm_count_, scratch_splitk_, splitk_tickets_);
    return;
  }
  switch (w.dtype) {
    case DType::F32: launch<DType::F32>(x, m, w, out); break;
    case DType::BF16: launch<DType::BF16>(x, m, w, out); break;
    case DType::F16: launch<DType::F16>(x, m, w, out); break;
    case DType::I8: throw Error("[matmul] the CUDA backend has no int8 kernels (load int8 weights on the CPU)");
  }
  TD_CUDA_LAUNCH_CHECK("matmul");
}

// Stacked projections (q/k/v, gate/up): one tensor-core launch writes every part; other paths run a product
// per part on views into the stacked weight.
namespace {
// The parts of a stacked product as one tensor-core launch's outputs (checked to cover the weight's rows).
MatmulOutputs part_outputs(const WeightView& w, int parts, const int64_t* rows, float* const* outs) {
  TD_CHECK(parts >= 1 && parts <= MatmulOutputs::kMax, "[matmul] ", parts, " output parts (1 to ",
           MatmulOutputs::kMax, ")");
  MatmulOutputs o;
  int64_t end = 0;
  for (int i = 0; i < parts; ++i) {
    o.ptr[i] = outs[i];
    o.end[i] = end += rows[i];
  }
  o.count = parts;
  TD_CHECK(end == w.rows, "[matmul] the output parts (", end, " rows) do not cover the weight's ", w.rows);
  return o;
}
}  // namespace

void CudaBackend::matmul_parts(const float* x, int m, const WeightView& w, int parts, const int64_t* rows,
                               float* const* outs) {
  TD_CHECK(parts >= 1 && parts <= MatmulOutputs::kMax, "[matmul] ", parts, " output parts (1 to ",
           MatmulOutputs::kMax, ")");
  if (m > 0 && tensor_core_skinny_fits(x, m, w)) {
    tensor_core_skinny(x, false, m, w, part_outputs(w, parts, rows, outs), sm_count_, scratch_splitk_,
                       splitk_tickets_);
    return;
  }
  Backend::matmul_parts(x, m, w, parts, rows, outs);
}

bool CudaBackend::bf16_input(const WeightView& w, int m) const {
  return m > 0 && tensor_core_skinny_fits(w.data, m, w);   // x: a backend buffer, aligned as w is
}

// A bf16 x goes to the skinny tensor-core path only, where an fp32 x would be rounded to these very values.
void CudaBackend::matmul_bf16(const uint16_t* x, int m, const WeightView& w, int parts, const int64_t* rows,
                              float* const* outs) {
  TD_CHECK(m > 0 && tensor_core_skinny_fits(x, m, w), "[matmul] a bf16 x needs a bf16 weight, at most 64 rows and ",
           "16-byte aligned rows (got ", dtype_name(w.dtype), " weights, ", m, " rows)");
  tensor_core_skinny(x, true, m, w, part_outputs(w, parts, rows, outs), sm_count_, scratch_splitk_,
                     splitk_tickets_);
}

}  // namespace td::cuda
