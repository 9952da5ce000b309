// Block-causal attention over the KV cache, in tiles that every query of a GQA group shares.
//
// One block per (kv head, row tile, key chunk). Its rows are the (query, head) pairs that read this kv head
// (n_q x heads / kv_heads of them, up to kRows per tile), so each K/V tile is read from global memory once
// for the whole group and every query of the chunk, with 16-byte loads, and staged in shared memory as fp32
// (the cache is fp32 or bf16). A tile is 32 keys, one per lane: a lane computes its key's score for a row
// from shared memory, the warp takes the online-softmax step, then each lane accumulates its head-dim
// elements of P.V. Rows are spread over the warps and keep their accumulators in registers.
//
// Batch invariance: chunks are kChunk keys and tiles 32 keys, both aligned to the absolute key index, and
// the per-row arithmetic does not depend on the other rows, on n_q or on kv_len. A query therefore gets the
// same bits whether it is decoded alone or verified inside a block (self-speculation == AR on the GPU), as
// long as it sees the same keys. A query's chunks are merged in chunk order by a second kernel when there
// are several; with one chunk the block writes the output itself (the merge of one chunk is that division).
//
// A bf16 cache with head_dim a multiple of 16 (up to 128) runs attention_mma_kernel instead: the same blocks
// and tiles with S = Q K^T and P V on the tensor cores (below).
//
// Same mask as AttentionParams: causal query i sees keys 0..kv_len - n_q + i. Under a graph the cache length
// is read from device memory (AttentionParams::cached) and the grid covers the cache's capacity: chunks past
// the keys find nothing to do, write an empty partial (sum 0), and the merge skips them.
#include <mma.h>

#include <algorithm>
#include <cfloat>

#include "cuda/common.cuh"
#include "cuda/cuda_backend.h"

namespace td::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kKeys = 32;          // keys per tile: one per lane
constexpr int kChunk = 2048;       // keys per chunk (split); a multiple of kKeys
constexpr int kMaxDim = 256;

// kPer head-dim elements per lane (head_dim <= 32 * kPer); rows per warp so that the accumulators stay at
// 64 registers.
template <int kPer>
struct Tile {
  static constexpr int kRowsPerWarp = 64 / kPer;
  static constexpr int kRows = kRowsPerWarp * kWarps;
};

__host__ __device__ inline int round4(int d) { return (d + 3) & ~3; }

struct Smem {   // float offsets into the dynamic shared memory
  int q_stride, k_stride, q, k, v, ml, total;
  __host__ __device__ Smem(int rows, int d) {
    q_stride = round4(d);
    k_stride = round4(d) + 4;      // 16-byte rows that start in different banks for the lanes' keys
    q = 0;
    k = q + rows * q_stride;
    v = k + kKeys * k_stride;
    ml = v + kKeys * d;           // running max and sum of each row
    total = ml + 2 * rows;
  }
};

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Stages keys t0..t0+31 of one kv head as fp32: K rows at k_stride (zero tail to round4(d)), V rows at d.
// Keys at or past kv_len are zeros, so masked lanes add exact zeros.
template <typename T>
__device__ __forceinline__ void stage_tile(const AttentionParams& p, int kv_len, const T* __restrict__ kb,
                                           const T* __restrict__ vb, int t0, bool vec, const Smem& s,
                                           float* __restrict__ sm) {
  const int d = p.head_dim;
  float* ks = sm + s.k;
  float* vs = sm + s.v;
  constexpr int kVec = 16 / sizeof(T);       // elements per 16-byte load
  if (vec) {                                 // d % kVec == 0 and 16-byte aligned rows
    const int per = d / kVec;
    for (int i = threadIdx.x; i < kKeys * per; i += kThreads) {
      const int j = i / per, e = (i - j * per) * kVec;
      const int key = t0 + j;
      float kf[kVec], vf[kVec];
      if (key < kv_len) {
        const int64_t off = static_cast<int64_t>(key) * p.kv_token_stride + e;
        const uint4 kr = __ldg(reinterpret_cast<const uint4*>(kb + off));
        const uint4 vr = __ldg(reinterpret_cast<const uint4*>(vb + off));
        if constexpr (sizeof(T) == 4) {
          kf[0] = __uint_as_float(kr.x); kf[1] = __uint_as_float(kr.y);
          kf[2] = __uint_as_float(kr.z); kf[3] = __uint_as_float(kr.w);
          vf[0] = __uint_as_float(vr.x); vf[1] = __uint_as_float(vr.y);
          vf[2] = __uint_as_float(vr.z); vf[3] = __uint_as_float(vr.w);
        } else {
          const unsigned int ku[4] = {kr.x, kr.y, kr.z, kr.w}, vu[4] = {vr.x, vr.y, vr.z, vr.w};
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            kf[2 * t] = __uint_as_float(ku[t] << 16);
            kf[2 * t + 1] = __uint_as_float(ku[t] & 0xffff0000u);
            vf[2 * t] = __uint_as_float(vu[t] << 16);
            vf[2 * t + 1] = __uint_as_float(vu[t] & 0xffff0000u);
          }
        }
      } else {
#pragma unroll
        for (int t = 0; t < kVec; ++t) kf[t] = vf[t] = 0.0f;
      }
#pragma unroll
      for (int t = 0; t < kVec; t += 4) {
        *reinterpret_cast<float4*>(ks + j * s.k_stride + e + t) = make_float4(kf[t], kf[t + 1], kf[t + 2], kf[t + 3]);
        *reinterpret_cast<float4*>(vs + j * d + e + t) = make_float4(vf[t], vf[t + 1], vf[t + 2], vf[t + 3]);
      }
    }
  } else {
    const int w = s.q_stride;
    for (int i = threadIdx.x; i < kKeys * w; i += kThreads) {
      const int j = i / w, e = i - j * w;
      const int key = t0 + j;
      float kf = 0.0f, vf = 0.0f;
      if (key < kv_len && e < d) {
        const int64_t off = static_cast<int64_t>(key) * p.kv_token_stride + e;
        kf = to_f32(kb[off]);
        vf = to_f32(vb[off]);
      }
      ks[j * s.k_stride + e] = kf;
      if (e < d) vs[j * d + e] = vf;
    }
  }
}

// grid (kv_heads * row_tiles, chunks). With chunks > 1 writes partials [n_q * heads, chunks, 2 + head_dim]
// (max, sum, unnormalised P.V), else the output.
template <int kPer, typename T>
__global__ void __launch_bounds__(kThreads) attention_tile_kernel(AttentionParams p, int rows_per_tile,
                                                                  int row_tiles, int chunks, bool vec,
                                                                  float* __restrict__ partial) {
  extern __shared__ __align__(16) float sm[];
  constexpr int kRPW = Tile<kPer>::kRowsPerWarp;
  const int d = p.head_dim;
  const int group = p.heads / p.kv_heads;
  const int g = blockIdx.x / row_tiles, rt = blockIdx.x - g * row_tiles, c = blockIdx.y;
  const int r0 = rt * rows_per_tile;
  const int nrows = min(rows_per_tile, p.n_q * group - r0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const Smem s(rows_per_tile, d);
  // The keys of this launch: from device memory when a graph replays it (p.kv_len is then the launch's bound).
  const int kv_len = p.cached != nullptr ? *p.cached + p.n_q : p.kv_len;
  const T* kb = static_cast<const T*>(p.k) + g * p.kv_head_stride;
  const T* vb = static_cast<const T*>(p.v) + g * p.kv_head_stride;

  // Q rows of the tile, scaled, zero tail to q_stride.
  for (int i = threadIdx.x; i < nrows * s.q_stride; i += kThreads) {
    const int r = i / s.q_stride, e = i - r * s.q_stride;
    const int row = r0 + r, qi = row / group, h = g * group + (row - qi * group);
    sm[s.q + r * s.q_stride + e] = e < d ? p.q[(static_cast<int64_t>(qi) * p.heads + h) * d + e] * p.scale : 0.0f;
  }

  float* ms = sm + s.ml;
  float* ls = ms + rows_per_tile;
  for (int r = threadIdx.x; r < rows_per_tile; r += kThreads) {
    ms[r] = -INFINITY;
    ls[r] = 0.0f;
  }
  float acc[kRPW][kPer];
#pragma unroll
  for (int i = 0; i < kRPW; ++i)
#pragma unroll
    for (int t = 0; t < kPer; ++t) acc[i][t] = 0.0f;
  const int last_q = (r0 + nrows - 1) / group;
  const int k_begin = c * kChunk;
  const int k_end = min(kv_len, k_begin + kChunk);
  const int tiles_end = p.causal ? min(k_end, kv_len - p.n_q + last_q + 1) : k_end;
  const float* qs = sm + s.q;
  const float* ks = sm + s.k;
  const float* vs = sm + s.v;
  // Keys row i of the warp sees (0 for rows past the tile).
  const auto vis = [&](int i) {
    const int r = i * kWarps + warp;
    return r < nrows ? (p.causal ? kv_len - p.n_q + (r0 + r) / group + 1 : kv_len) : 0;
  };
  for (int t0 = k_begin; t0 < tiles_end; t0 += kKeys) {
    __syncthreads();                          // Q is staged / the previous tile is consumed
    stage_tile<T>(p, kv_len, kb, vb, t0, vec, s, sm);
    __syncthreads();
    // Scores, e outer and rows inner: the lane's key is read once per step for all of the warp's rows.
    float sc[kRPW];
#pragma unroll
    for (int i = 0; i < kRPW; ++i) sc[i] = 0.0f;
    const float* kr = ks + lane * s.k_stride;
    for (int e = 0; e < s.q_stride; e += 4) {
      const float4 b = *reinterpret_cast<const float4*>(kr + e);
#pragma unroll
      for (int i = 0; i < kRPW; ++i) {
        if (t0 < vis(i)) {                    // warp-uniform
          const float4 a = *reinterpret_cast<const float4*>(qs + (i * kWarps + warp) * s.q_stride + e);
          sc[i] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
        }
      }
    }
    // Online softmax step per row; sc becomes the lane's probability.
#pragma unroll
    for (int i = 0; i < kRPW; ++i) {
      if (t0 < vis(i)) {                      // lane 0 sees its key: the tile max is finite
        const bool valid = t0 + lane < vis(i);
        const int r = i * kWarps + warp;
        const float x = valid ? sc[i] : -INFINITY;
        const float m_old = ms[r], l_old = ls[r];
        const float m_new = fmaxf(m_old, warp_max(x));
        const float corr = expf(m_old - m_new);  // 0 on the row's first tile (m = -inf)
        sc[i] = valid ? expf(x - m_new) : 0.0f;
        const float l_new = l_old * corr + warp_sum(sc[i]);
#pragma unroll
        for (int t = 0; t < kPer; ++t) acc[i][t] *= corr;
        __syncwarp();                            // every lane has read the old values
        if (lane == 0) {
          ms[r] = m_new;
          ls[r] = l_new;
        }
      }
    }
    // P.V, keys outer and rows inner: a value row is read once for all of the warp's rows.
    for (int j = 0; j < kKeys; ++j) {
      float vv[kPer];
#pragma unroll
      for (int t = 0; t < kPer; ++t) {
        const int e = lane + 32 * t;
        vv[t] = e < d ? vs[j * d + e] : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kRPW; ++i) {
        if (t0 < vis(i)) {
          const float pb = __shfl_sync(0xffffffffu, sc[i], j);
#pragma unroll
          for (int t = 0; t < kPer; ++t) acc[i][t] += pb * vv[t];
        }
      }
    }
  }
  __syncthreads();                            // the rows' max and sum are written (and initialised)
#pragma unroll
  for (int i = 0; i < kRPW; ++i) {
    const int r = i * kWarps + warp;
    if (r >= nrows) break;
    const int row = r0 + r, qi = row / group, h = g * group + (row - qi * group);
    const int64_t qh = static_cast<int64_t>(qi) * p.heads + h;
    if (chunks == 1) {
#pragma unroll
      for (int t = 0; t < kPer; ++t) {
        const int e = lane + 32 * t;
        if (e < d) store_act(p.out, p.out_dtype == DType::BF16, qh * d + e, acc[i][t] / ls[r]);
      }
    } else {
      float* out = partial + (qh * chunks + c) * (2 + d);
      if (lane == 0) { out[0] = ms[r]; out[1] = ls[r]; }
#pragma unroll
      for (int t = 0; t < kPer; ++t) {
        const int e = lane + 32 * t;
        if (e < d) out[2 + e] = acc[i][t];
      }
    }
  }
}

// grid (n_q * heads), block 128, dynamic shared memory 2 * chunks floats: merges the chunks with a visible
// key (sum > 0) into out [n_q, heads, d]. Each partial is read once: the chunks' max and sum by warp 0 (lane
// s % 32 takes chunk s, then a fixed tree across lanes), the weighted values by the thread of each element,
// in chunk order. One visible chunk gives acc / sum, the bits of the tile kernel's own single-chunk output.
__global__ void attention_merge_kernel(AttentionParams p, int chunks, const float* __restrict__ partial) {
  extern __shared__ float ml[];               // [chunks] max, then exp(max - M); [chunks] sums
  __shared__ float total;
  float* ms = ml;
  float* ls = ml + chunks;
  const int qh = blockIdx.x;
  const int d = p.head_dim;
  const float* base = partial + static_cast<int64_t>(qh) * chunks * (2 + d);
  for (int s = threadIdx.x; s < chunks; s += blockDim.x) {
    ms[s] = base[s * (2 + d)];
    ls[s] = base[s * (2 + d) + 1];
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float M = -FLT_MAX;
    for (int s = lane; s < chunks; s += 32)
      if (ls[s] > 0.0f) M = fmaxf(M, ms[s]);
    M = warp_max(M);
    float L = 0.0f;
    for (int s = lane; s < chunks; s += 32)
      if (ls[s] > 0.0f) L += ls[s] * expf(ms[s] - M);
    L = warp_sum(L);
    for (int s = lane; s < chunks; s += 32) ms[s] = ls[s] > 0.0f ? expf(ms[s] - M) : 0.0f;
    if (lane == 0) total = L;
  }
  __syncthreads();
  const int64_t o0 = static_cast<int64_t>(qh) * d;
  const bool bf16_out = p.out_dtype == DType::BF16;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float a = 0.0f;
    bool first = true;
    for (int s = 0; s < chunks; ++s) {
      if (ls[s] > 0.0f) {
        const float v = base[s * (2 + d) + 2 + e] * ms[s];
        a = first ? v : a + v;
        first = false;
      }
    }
    store_act(p.out, bf16_out, o0 + e, a / total);
  }
}

// ---- the bf16 cache on the tensor cores ----
//
// Same blocks, chunks, tiles (32 keys aligned to absolute positions) and partial format as the tile kernel,
// for a bf16 cache with head_dim a multiple of 16 up to 128. Q is rounded to bf16 (the precision the
// reference computes q in on a GPU) and staged once; per tile the raw bf16 K and V are staged with 16-byte
// loads, S = Q K^T runs on 16 x 16 x 16 bf16 fragments into fp32, each row takes its online-softmax step in
// fp32 (one key per lane), P is rounded to bf16 (its sum is taken over the rounded values, so numerator and
// denominator agree), and O = O * corr + P V runs on fragments with O kept in fp32 in shared memory. Every
// output element of a fragment product depends on its own row only, and a row's fragments, tiles and
// chunks do not depend on n_q: the batch invariance of the tile kernel holds here too.
constexpr int kMRows = 128;          // (query, head) rows per block: 8 fragments of 16
constexpr int kMKeys = 32;           // keys per tile: one per lane in the softmax step
constexpr int kMMaxDim = 128;

struct MmaSmem {                     // byte offsets into the dynamic shared memory; every part 32-byte aligned
  int ldq, ldk, lds, ldp, ldo;       // leading dimensions, in elements
  int q, k, v, s, pr, o, ml, total;
  __host__ __device__ explicit MmaSmem(int d) {
    ldq = ldk = d + 8;               // bf16: 16-byte multiples, rows start in different banks
    lds = kMKeys + 4;                // fp32 scores
    ldp = kMKeys + 8;                // bf16 probabilities
    ldo = d + 4;                     // fp32 output accumulators
    q = 0;
    k = q + kMRows * ldq * 2;
    v = k + kMKeys * ldk * 2;
    s = v + kMKeys * ldk * 2;
    pr = s + kMRows * lds * 4;
    o = pr + kMRows * ldp * 2;
    ml = o + kMRows * ldo * 4;       // running max, sum and this tile's correction of each row
    total = ml + 3 * kMRows * 4;
  }
};

// grid (kv_heads * row_tiles, chunks), 256 threads, MmaSmem(head_dim).total bytes of dynamic shared memory.
__global__ void __launch_bounds__(kThreads) attention_mma_kernel(AttentionParams p, int row_tiles, int chunks,
                                                                 bool vec, float* __restrict__ partial) {
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char smem[];
  const int d = p.head_dim;
  const MmaSmem L(d);
  __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(smem + L.q);
  __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(smem + L.k);
  __nv_bfloat16* sv = reinterpret_cast<__nv_bfloat16*>(smem + L.v);
  float* ss = reinterpret_cast<float*>(smem + L.s);
  __nv_bfloat16* sp = reinterpret_cast<__nv_bfloat16*>(smem + L.pr);
  float* so = reinterpret_cast<float*>(smem + L.o);
  float* ms = reinterpret_cast<float*>(smem + L.ml);
  float* ls = ms + kMRows;
  float* cs = ls + kMRows;
  const int group = p.heads / p.kv_heads;
  const int g = blockIdx.x / row_tiles, rt = blockIdx.x - g * row_tiles, c = blockIdx.y;
  const int r0 = rt * kMRows;
  const int nrows = min(kMRows, p.n_q * group - r0);
  const int frags = (nrows + 15) / 16;           // row fragments in use
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kv_len = p.cached != nullptr ? *p.cached + p.n_q : p.kv_len;
  const __nv_bfloat16* kb = static_cast<const __nv_bfloat16*>(p.k) + g * p.kv_head_stride;
  const __nv_bfloat16* vb = static_cast<const __nv_bfloat16*>(p.v) + g * p.kv_head_stride;

  // Q rows (bf16, zero past the tile's rows), O = 0, max -inf, sum 0.
  for (int i = threadIdx.x; i < frags * 16 * d; i += kThreads) {
    const int r = i / d, e = i - r * d;
    float x = 0.0f;
    if (r < nrows) {
      const int row = r0 + r, qi = row / group, h = g * group + (row - qi * group);
      x = p.q[(static_cast<int64_t>(qi) * p.heads + h) * d + e];
    }
    sq[r * L.ldq + e] = __float2bfloat16(x);
    so[r * L.ldo + e] = 0.0f;
  }
  for (int r = threadIdx.x; r < kMRows; r += kThreads) {
    ms[r] = -INFINITY;
    ls[r] = 0.0f;
  }
  const int last_q = (r0 + nrows - 1) / group;
  const int k_begin = c * kChunk;
  const int k_end = min(kv_len, k_begin + kChunk);
  const int tiles_end = p.causal ? min(k_end, kv_len - p.n_q + last_q + 1) : k_end;
  const auto vis = [&](int r) {      // keys row r sees (0 past the tile's rows)
    return r < nrows ? (p.causal ? kv_len - p.n_q + (r0 + r) / group + 1 : kv_len) : 0;
  };
  for (int t0 = k_begin; t0 < tiles_end; t0 += kMKeys) {
    __syncthreads();                             // Q staged / the previous tile consumed
    // K and V rows t0..t0+31 as stored (bf16), zero past kv_len.
    if (vec) {
      const int per = d / 8;
      for (int i = threadIdx.x; i < kMKeys * per; i += kThreads) {
        const int j = i / per, e = (i - j * per) * 8, key = t0 + j;
        uint4 kr = make_uint4(0u, 0u, 0u, 0u), vr = kr;
        if (key < kv_len) {
          const int64_t off = static_cast<int64_t>(key) * p.kv_token_stride + e;
          kr = __ldg(reinterpret_cast<const uint4*>(kb + off));
          vr = __ldg(reinterpret_cast<const uint4*>(vb + off));
        }
        *reinterpret_cast<uint4*>(sk + j * L.ldk + e) = kr;
        *reinterpret_cast<uint4*>(sv + j * L.ldk + e) = vr;
      }
    } else {
      for (int i = threadIdx.x; i < kMKeys * d; i += kThreads) {
        const int j = i / d, e = i - j * d, key = t0 + j;
        const bool in = key < kv_len;
        const int64_t off = static_cast<int64_t>(key) * p.kv_token_stride + e;
        sk[j * L.ldk + e] = in ? kb[off] : __float2bfloat16(0.0f);
        sv[j * L.ldk + e] = in ? vb[off] : __float2bfloat16(0.0f);
      }
    }
    __syncthreads();
    // S = Q K^T: (row fragment, key fragment) products spread over the warps.
    for (int task = warp; task < frags * 2; task += kWarps) {
      const int rf = task >> 1, kf = task & 1;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < d; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;   // K rows = columns of K^T
        wmma::load_matrix_sync(a, sq + 16 * rf * L.ldq + kk, L.ldq);
        wmma::load_matrix_sync(b, sk + 16 * kf * L.ldk + kk, L.ldk);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(ss + 16 * rf * L.lds + 16 * kf, acc, L.lds, wmma::mem_row_major);
    }
    __syncthreads();
    // Online softmax, a row per warp at a time; rows this tile does not reach get P = 0 and corr = 1.
    for (int r = warp; r < frags * 16; r += kWarps) {
      const int seen = vis(r);
      float pr = 0.0f, corr = 1.0f;
      if (t0 < seen) {                           // warp-uniform; lane 0's key is visible
        const bool valid = t0 + lane < seen;
        const float x = valid ? ss[r * L.lds + lane] * p.scale : -INFINITY;
        const float m_old = ms[r];
        const float m_new = fmaxf(m_old, warp_max(x));
        corr = expf(m_old - m_new);              // 0 on the row's first tile
        pr = valid ? __bfloat162float(__float2bfloat16(expf(x - m_new))) : 0.0f;
        const float l_new = ls[r] * corr + warp_sum(pr);
        __syncwarp();
        if (lane == 0) {
          ms[r] = m_new;
          ls[r] = l_new;
        }
      }
      sp[r * L.ldp + lane] = __float2bfloat16(pr);
      if (lane == 0) cs[r] = corr;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < frags * 16 * d; i += kThreads) {
      const int r = i / d, e = i - r * d;
      so[r * L.ldo + e] *= cs[r];
    }
    __syncthreads();
    // O += P V: (row fragment, head-dim fragment) products.
    const int dfrags = d / 16;
    for (int task = warp; task < frags * dfrags; task += kWarps) {
      const int rf = task / dfrags, df = task - rf * dfrags;
      float* o = so + 16 * rf * L.ldo + 16 * df;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o, L.ldo, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kMKeys; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;   // V rows are keys
        wmma::load_matrix_sync(a, sp + 16 * rf * L.ldp + kk, L.ldp);
        wmma::load_matrix_sync(b, sv + kk * L.ldk + 16 * df, L.ldk);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(o, acc, L.ldo, wmma::mem_row_major);
    }
  }
  __syncthreads();                               // O, max and sum complete (or initial)
  for (int i = threadIdx.x; i < nrows * d; i += kThreads) {
    const int r = i / d, e = i - r * d;
    const int row = r0 + r, qi = row / group, h = g * group + (row - qi * group);
    const int64_t qh = static_cast<int64_t>(qi) * p.heads + h;
    if (chunks == 1) {
      store_act(p.out, p.out_dtype == DType::BF16, qh * d + e, so[r * L.ldo + e] / ls[r]);
    } else {
      float* out = partial + (qh * chunks + c) * (2 + d);
      if (e == 0) {
        out[0] = ms[r];
        out[1] = ls[r];
      }
      out[2 + e] = so[r * L.ldo + e];
    }
  }
}

bool mma_attention_fits(const AttentionParams& p) {
  return p.kv_dtype == DType::BF16 && p.head_dim % 16 == 0 && p.head_dim <= kMMaxDim;
}

void launch_mma(const AttentionParams& p, int chunks, float* partial) {
  const int rows = p.n_q * (p.heads / p.kv_heads);
  const int row_tiles = (rows + kMRows - 1) / kMRows;
  TD_CHECK(static_cast<int64_t>(p.kv_heads) * row_tiles <= 2147483647LL, "[attention] problem too large");
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vec = p.kv_token_stride % 8 == 0 && p.kv_head_stride % 8 == 0 && aligned(p.k) && aligned(p.v);
  const int bytes = MmaSmem(p.head_dim).total;
  static const cudaError_t opt_in = cudaFuncSetAttribute(attention_mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                         MmaSmem(kMMaxDim).total);
  TD_CUDA_CHECK_NAMED(opt_in, "attention");
  attention_mma_kernel<<<dim3(static_cast<unsigned>(p.kv_heads * row_tiles), chunks), kThreads, bytes, launch_stream()>>>(
      p, row_tiles, chunks, vec, partial);
}

template <int kPer, typename T>
void launch_tiles(const AttentionParams& p, int chunks, float* partial) {
  const int rows = p.n_q * (p.heads / p.kv_heads);
  const int rows_per_tile = std::min(rows, Tile<kPer>::kRows);
  const int row_tiles = (rows + rows_per_tile - 1) / rows_per_tile;
  TD_CHECK(static_cast<int64_t>(p.kv_heads) * row_tiles <= 2147483647LL, "[attention] problem too large");
  constexpr int kVec = 16 / sizeof(T);
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vec = p.head_dim % kVec == 0 && p.kv_token_stride % kVec == 0 && p.kv_head_stride % kVec == 0 &&
                   aligned(p.k) && aligned(p.v);
  const size_t bytes = static_cast<size_t>(Smem(rows_per_tile, p.head_dim).total) * sizeof(float);
  static const cudaError_t opt_in = cudaFuncSetAttribute(
      attention_tile_kernel<kPer, T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(Smem(Tile<kPer>::kRows, 32 * kPer).total * sizeof(float)));
  TD_CUDA_CHECK_NAMED(opt_in, "attention");
  attention_tile_kernel<kPer, T><<<dim3(static_cast<unsigned>(p.kv_heads * row_tiles), chunks), kThreads, bytes, launch_stream()>>>(
      p, rows_per_tile, row_tiles, chunks, vec, partial);
}

}  // namespace

size_t attention_scratch_bytes(int n_q, int heads, int head_dim, int kv_len) {
  const int64_t chunks = (kv_len + kChunk - 1) / kChunk;
  return chunks > 1 ? static_cast<size_t>(n_q) * heads * chunks * (2 + head_dim) * sizeof(float) : 0;
}

void CudaBackend::attention(const AttentionParams& p) {
  TD_CHECK(p.n_q > 0 && p.kv_len >= p.n_q, "[attention] kv_len (", p.kv_len, ") must be >= n_q (", p.n_q, ") > 0");
  TD_CHECK(p.heads > 0 && p.kv_heads > 0 && p.heads % p.kv_heads == 0, "[attention] heads (", p.heads,
           ") must be a multiple of kv_heads (", p.kv_heads, ")");
  TD_CHECK(p.head_dim > 0 && p.head_dim <= kMaxDim, "[attention] head_dim ", p.head_dim,
           " is not supported on CUDA (at most ", kMaxDim, ")");
  TD_CHECK(p.out_dtype == DType::F32 || p.out_dtype == DType::BF16, "[attention] output dtype ",
           dtype_name(p.out_dtype), " is not supported on CUDA");
  TD_CHECK(p.kv_dtype == DType::F32 || p.kv_dtype == DType::BF16, "[attention] KV cache dtype ",
           dtype_name(p.kv_dtype), " is not supported on CUDA");
  const int64_t pairs = static_cast<int64_t>(p.n_q) * p.heads;
  TD_CHECK(pairs <= 2147483647, "[attention] problem too large");
  const int chunks = (p.kv_len + kChunk - 1) / kChunk;
  TD_CHECK(chunks <= 6144, "[attention] kv_len ", p.kv_len, " is over the CUDA kernel's ", 6144LL * kChunk,
           " keys (the merge keeps two floats per key chunk in 48 KiB of shared memory)");
  float* partial = chunks > 1 ? static_cast<float*>(scratch_partial_.reserve(
                                    attention_scratch_bytes(p.n_q, p.heads, p.head_dim, p.kv_len)))
                              : nullptr;
  const bool wide = p.head_dim > 128;
  if (p.kv_dtype == DType::F32) {
    if (wide) launch_tiles<8, float>(p, chunks, partial);
    else launch_tiles<4, float>(p, chunks, partial);
  } else if (mma_attention_fits(p)) {
    launch_mma(p, chunks, partial);
  } else {
    if (wide) launch_tiles<8, __nv_bfloat16>(p, chunks, partial);
    else launch_tiles<4, __nv_bfloat16>(p, chunks, partial);
  }
  TD_CUDA_LAUNCH_CHECK("attention");
  if (chunks > 1) {
    attention_merge_kernel<<<static_cast<unsigned>(pairs), 128, 2 * chunks * sizeof(float), launch_stream()>>>(p, chunks, partial);
    TD_CUDA_LAUNCH_CHECK("attention");
  }
}

}  // namespace td::cuda
