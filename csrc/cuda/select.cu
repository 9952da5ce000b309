// The sampler head on the device: per row, the chosen token (argmax, or Gumbel-max at temperature > 0,
// never exclude_id) and its softmax confidence, so full logits never leave the GPU; plus the decode-loop
// ops (diffusion commit selection, speculative acceptance) as single-block kernels.
//
// Pass 1: grid (rows, kSplits); each block scans a contiguous slice of the vocabulary and reduces its
// running statistics (max, sum of exp, best key and id). Pass 2: one thread per row merges the slices in
// vocabulary order. Ties go to the lower id, as on the CPU.
#include <cfloat>

#include "core/select_params.h"
#include "cuda/common.cuh"
#include "cuda/cuda_backend.h"

namespace td::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSplits = 16;

struct Stats {
  float max;
  float sum;        // sum exp(logit - max)
  double key;       // selection key of the best id
  float logit;      // logit of the best id
  int best;
};

__device__ __forceinline__ Stats empty_stats() { return Stats{-FLT_MAX, 0.0f, -DBL_MAX, 0.0f, -1}; }

__device__ __forceinline__ void merge(Stats& a, const Stats& b) {
  if (b.sum > 0.0f) {
    if (a.sum == 0.0f) {
      a.max = b.max;
      a.sum = b.sum;
    } else if (b.max > a.max) {
      a.sum = a.sum * expf(a.max - b.max) + b.sum;
      a.max = b.max;
    } else {
      a.sum += b.sum * expf(b.max - a.max);
    }
  }
  if (b.best >= 0 && (a.best < 0 || b.key > a.key || (b.key == a.key && b.best < a.best))) {
    a.key = b.key;
    a.logit = b.logit;
    a.best = b.best;
  }
}

__global__ void __launch_bounds__(kThreads) select_split_kernel(const float* __restrict__ logits, int vocab,
                                                                SelectParams sp, Stats* __restrict__ partial) {
  const int row = blockIdx.x, split = blockIdx.y;
  const int per = (vocab + kSplits - 1) / kSplits;
  const int v0 = split * per, v1 = min(vocab, v0 + per);
  const float* l = logits + static_cast<int64_t>(row) * vocab;
  Stats s = empty_stats();
  for (int v = v0 + threadIdx.x; v < v1; v += kThreads) {
    const float x = l[v];
    Stats one{x, 1.0f, -DBL_MAX, x, -1};
    if (v != sp.exclude_id) {
      one.key = sp.temperature > 0.0f ? static_cast<double>(x) / sp.temperature + gumbel(sp.seed, sp.stream, row, v)
                                      : static_cast<double>(x);
      one.best = v;
    }
    merge(s, one);
  }
  __shared__ Stats sh[kThreads];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) merge(sh[threadIdx.x], sh[threadIdx.x + stride]);
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[row * kSplits + split] = sh[0];
}

__global__ void select_merge_kernel(const Stats* __restrict__ partial, int rows, int32_t* __restrict__ idx,
                                    float* __restrict__ conf) {
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  Stats s = empty_stats();
  for (int k = 0; k < kSplits; ++k) merge(s, partial[row * kSplits + k]);
  idx[row] = s.best;
  conf[row] = s.best >= 0 ? expf(s.logit - s.max) / s.sum : 0.0f;
}

// Single thread: L is a block length (tens of slots).
__global__ void select_commits_kernel(const float* conf, const uint8_t* masked, int L, float threshold, int k,
                                      uint8_t* commit, int* count) {
  int c = 0;
  for (int i = 0; i < L; ++i) commit[i] = 0;
  if (k < 0) {
    int best = -1;
    for (int i = 0; i < L; ++i)
      if (masked[i] && (best < 0 || conf[i] > conf[best])) best = i;
    if (best >= 0) {
      for (int i = 0; i < L; ++i)
        if (masked[i] && (i == best || conf[i] >= threshold)) { commit[i] = 1; ++c; }
    }
  } else {
    // k rounds of "most confident remaining masked slot, lower slot on ties".
    for (int r = 0; r < k; ++r) {
      int best = -1;
      for (int i = 0; i < L; ++i)
        if (masked[i] && !commit[i] && (best < 0 || conf[i] > conf[best])) best = i;
      if (best < 0) break;
      commit[best] = 1;
      ++c;
    }
  }
  *count = c;
}

__global__ void accept_length_kernel(const int32_t* draft, const int32_t* target, int L, int* out) {
  int c = 0;
  while (c < L - 1 && target[c] == draft[c + 1]) ++c;
  *out = c;
}

}  // namespace

size_t select_scratch_bytes(int n) { return sizeof(Stats) * n * kSplits; }

void CudaBackend::select(const float* logits, int n, int vocab, const SelectParams& sp, int32_t* idx, float* conf) {
  TD_CHECK(sp.temperature >= 0.0f, "[select] temperature must be >= 0, got ", sp.temperature);
  TD_CHECK(vocab > 1 || sp.exclude_id != 0, "[select] every token id is excluded");
  if (n == 0) return;
  Stats* partial = static_cast<Stats*>(scratch_partial_.reserve(select_scratch_bytes(n)));
  select_split_kernel<<<dim3(n, kSplits), kThreads, 0, launch_stream()>>>(logits, vocab, sp, partial);
  TD_CUDA_LAUNCH_CHECK("select");
  select_merge_kernel<<<blocks_for(n, 128), 128, 0, launch_stream()>>>(partial, n, idx, conf);
  TD_CUDA_LAUNCH_CHECK("select");
}

void CudaBackend::head_select(const float* x, int n, const WeightView& head, const SelectParams& sp, int32_t* idx,
                              float* conf) {
  float* logits = scratch_logits_.as<float>(static_cast<size_t>(n) * head.rows);
  matmul(x, n, head, logits);
  select(logits, n, static_cast<int>(head.rows), sp, idx, conf);
}

int CudaBackend::select_commits(const float* conf, const uint8_t* masked, int L, float threshold, int k,
                                uint8_t* commit) {
  int* count = scratch_small_.as<int>(1);
  select_commits_kernel<<<1, 1, 0, launch_stream()>>>(conf, masked, L, threshold, k, commit, count);
  TD_CUDA_LAUNCH_CHECK("select_commits");
  int host = 0;
  download(&host, count, sizeof(int));
  return host;
}

int CudaBackend::accept_length(const int32_t* draft, const int32_t* target, int L) {
  int* out = scratch_small_.as<int>(1);
  accept_length_kernel<<<1, 1, 0, launch_stream()>>>(draft, target, L, out);
  TD_CUDA_LAUNCH_CHECK("accept_length");
  int host = 0;
  download(&host, out, sizeof(int));
  return host;
}

}  // namespace td::cuda
