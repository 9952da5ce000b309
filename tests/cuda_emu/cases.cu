// Cases for the CUDA emulator, written as ordinary CUDA C++ (tests/test_cuda_emu.py builds this file
// against the emulator with rewrite.py and the host compiler, then runs `cases NAME`).
//
// Exit status: 0 the case held, 1 it did not (a line says why), 2 the emulator stopped the kernel
// (KernelFault: the message is printed). Cases print values for the test to check against CUDA's
// documented semantics where an independent host computation would only repeat this file.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_emu/state.h"   // the launch log and the traffic setting (the traffic case)

#define CHECK(x)                                                                                    \
  do {                                                                                              \
    cudaError_t e_ = (x);                                                                           \
    if (e_ != cudaSuccess) {                                                                        \
      std::printf("line %d: %s failed: %s\n", __LINE__, #x, cudaGetErrorString(e_));                 \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)
#define EXPECT(c)                                                                                   \
  do {                                                                                              \
    if (!(c)) {                                                                                     \
      std::printf("line %d: expected %s\n", __LINE__, #c);                                          \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)

template <class T>
struct Buf {
  T* p = nullptr;
  size_t n;
  explicit Buf(size_t count) : n(count) {
    if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) std::abort();
  }
  ~Buf() { cudaFree(p); }
  void put(const std::vector<T>& v) { cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice); }
  std::vector<T> get() const {
    std::vector<T> v(n);
    cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }
};

// ---- semantics ----

__global__ void index_kernel(int* out) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int per = blockDim.x * blockDim.y * blockDim.z;
  out[block * per + thread] = block * 1000 + thread;
}

int case_indices() {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  Buf<int> out(12 * 24);
  index_kernel<<<grid, block>>>(out.p);
  CHECK(cudaGetLastError());
  const auto v = out.get();
  for (int b = 0; b < 12; ++b)
    for (int t = 0; t < 24; ++t) EXPECT(v[b * 24 + t] == b * 1000 + t);
  return 0;
}

// 64 threads; each warp exchanges lane * 10 + warp. Rows of out: one per shuffle variant.
__global__ void shuffle_kernel(int* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int v = lane * 10 + warp;
  const int i = threadIdx.x;
  out[0 * 64 + i] = __shfl_sync(0xffffffffu, v, 5);
  out[1 * 64 + i] = __shfl_sync(0xffffffffu, v, lane + 1, 8);
  out[2 * 64 + i] = __shfl_up_sync(0xffffffffu, v, 3);
  out[3 * 64 + i] = __shfl_down_sync(0xffffffffu, v, 3, 16);
  out[4 * 64 + i] = __shfl_xor_sync(0xffffffffu, v, 1);
  out[5 * 64 + i] = __shfl_xor_sync(0xffffffffu, v, 16, 16);
  float f = static_cast<float>(v);
  for (int off = 16; off > 0; off >>= 1) f += __shfl_xor_sync(0xffffffffu, f, off);
  out[6 * 64 + i] = static_cast<int>(f);
  double d = __shfl_down_sync(0xffffffffu, static_cast<double>(v) + 0.5, 1);
  out[7 * 64 + i] = static_cast<int>(d * 2);
}

int case_shuffles() {
  Buf<int> out(8 * 64);
  shuffle_kernel<<<1, 64>>>(out.p);
  CHECK(cudaGetLastError());
  const auto v = out.get();
  for (int r = 0; r < 8; ++r) {
    for (int i = 0; i < 64; ++i) std::printf("%d ", v[r * 64 + i]);
    std::printf("\n");
  }
  return 0;
}

// Votes and reductions; only lanes < 16 of each warp take part (mask 0x0000ffff).
__global__ void vote_kernel(unsigned* out) {
  const int lane = threadIdx.x & 31;
  if (lane >= 16) return;
  const unsigned m = 0x0000ffffu;
  out[threadIdx.x * 8 + 0] = __ballot_sync(m, lane % 3 == 0);
  out[threadIdx.x * 8 + 1] = __any_sync(m, lane == 7);
  out[threadIdx.x * 8 + 2] = __all_sync(m, lane < 16);
  out[threadIdx.x * 8 + 3] = __all_sync(m, lane < 15);
  out[threadIdx.x * 8 + 4] = __reduce_add_sync(m, static_cast<unsigned>(lane + 1));
  out[threadIdx.x * 8 + 5] = static_cast<unsigned>(__reduce_min_sync(m, 5 - lane));
  out[threadIdx.x * 8 + 6] = __reduce_max_sync(m, static_cast<unsigned>(lane * 3));
  __syncwarp(m);
  out[threadIdx.x * 8 + 7] = __reduce_xor_sync(m, static_cast<unsigned>(lane));
}

int case_votes() {
  Buf<unsigned> out(64 * 8);
  vote_kernel<<<1, 64>>>(out.p);
  CHECK(cudaGetLastError());
  const auto v = out.get();
  unsigned ballot = 0, x = 0;
  for (int l = 0; l < 16; ++l) {
    if (l % 3 == 0) ballot |= 1u << l;
    x ^= static_cast<unsigned>(l);
  }
  for (int t = 0; t < 64; ++t) {
    if ((t & 31) >= 16) continue;
    const unsigned* r = &v[t * 8];
    EXPECT(r[0] == ballot);
    EXPECT(r[1] == 1 && r[2] == 1 && r[3] == 0);
    EXPECT(r[4] == 136);
    EXPECT(static_cast<int>(r[5]) == 5 - 15);
    EXPECT(r[6] == 45);
    EXPECT(r[7] == x);
  }
  return 0;
}

__global__ void barrier_kernel(int* out) {
  const int t = threadIdx.x;
  out[0 + t] = __syncthreads_count(t % 5 == 0);
  out[96 + t] = __syncthreads_and(t < 96);
  out[192 + t] = __syncthreads_or(t == 95);
  out[288 + t] = __syncthreads_and(t != 40);
}

int case_barrier_reductions() {
  Buf<int> out(4 * 96);
  barrier_kernel<<<1, 96>>>(out.p);
  CHECK(cudaGetLastError());
  const auto v = out.get();
  for (int t = 0; t < 96; ++t) EXPECT(v[t] == 20 && v[96 + t] == 1 && v[192 + t] == 1 && v[288 + t] == 0);
  return 0;
}

// Static shared memory inside a device function used by two kernels; a reduction over 256 threads.
__device__ float block_total(float v) {
  __shared__ float part[8];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0;
  for (int w = 0; w < 8; ++w) s += part[w];
  __syncthreads();
  return s;
}

__global__ void total_kernel(float* out) { out[blockIdx.x] = block_total(static_cast<float>(threadIdx.x + blockIdx.x)); }
__global__ void total_twice_kernel(float* out) {
  const float a = block_total(1.0f);
  const float b = block_total(2.0f);
  if (threadIdx.x == 0) out[blockIdx.x] = a + b;
}

// Reads shared memory before anything wrote it: the emulator hands out 0xff bytes, never zeros.
__global__ void uninitialised_shared_kernel(unsigned* out) {
  __shared__ unsigned scratch[4];
  out[threadIdx.x] = scratch[threadIdx.x];
}

int case_shared() {
  Buf<float> out(3);
  total_kernel<<<3, 256>>>(out.p);
  CHECK(cudaGetLastError());
  auto v = out.get();
  for (int b = 0; b < 3; ++b) EXPECT(v[b] == 255.0f * 256.0f / 2.0f + 256.0f * b);
  total_twice_kernel<<<3, 256>>>(out.p);
  CHECK(cudaGetLastError());
  v = out.get();
  for (int b = 0; b < 3; ++b) EXPECT(v[b] == 768.0f);
  Buf<unsigned> raw(4);
  uninitialised_shared_kernel<<<1, 4>>>(raw.p);
  for (unsigned u : raw.get()) EXPECT(u == 0xffffffffu);
  return 0;
}

__global__ void dynamic_shared_kernel(long long* out, int n) {
  extern __shared__ __align__(16) int buf[];
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = i;
  __syncthreads();
  long long s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += buf[n - 1 - i];
  atomicAdd(out, s);
}

__global__ void other_dynamic_kernel(float* out) {
  extern __shared__ float unused[];
  out[0] = unused == nullptr ? 0.0f : 1.0f;
}

int case_dynamic_shared() {
  const int n = 15000;   // 60000 bytes: over the 48 KiB default, within the opt-in limit
  Buf<long long> sum(1);
  sum.put({0});
  CHECK(cudaFuncSetAttribute(dynamic_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n * 4));
  dynamic_shared_kernel<<<1, 128, n * sizeof(int)>>>(sum.p, n);
  CHECK(cudaGetLastError());
  EXPECT(sum.get()[0] == static_cast<long long>(n) * (n - 1) / 2);
  Buf<float> out(1);
  other_dynamic_kernel<<<1, 32, n * sizeof(float), nullptr>>>(out.p);   // no opt-in: refused at launch
  const cudaError_t e = cudaGetLastError();
  EXPECT(e == cudaErrorInvalidValue);
  std::printf("%s\n", cudaGetErrorString(e));
  return 0;
}

// D = 2 (A B + C) for one M x N x K tile; ld* follow the layouts (row major: the row length).
template <class T, class LA, class LB, int M, int N, int K>
__global__ void wmma_kernel(const T* a, const T* b, const float* c, float* d, int c_col, int d_col) {
  using namespace nvcuda;
  constexpr bool a_col = std::is_same<LA, wmma::col_major>::value, b_col = std::is_same<LB, wmma::col_major>::value;
  wmma::fragment<wmma::matrix_a, M, N, K, T, LA> fa;
  wmma::fragment<wmma::matrix_b, M, N, K, T, LB> fb;
  wmma::fragment<wmma::accumulator, M, N, K, float> fc;
  wmma::load_matrix_sync(fa, a, a_col ? M : K);
  wmma::load_matrix_sync(fb, b, b_col ? K : N);
  wmma::load_matrix_sync(fc, c, c_col ? M : N, c_col ? wmma::mem_col_major : wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  for (int i = 0; i < fc.num_elements; ++i) fc.x[i] *= 2.0f;
  wmma::store_matrix_sync(d, fc, d_col ? M : N, d_col ? wmma::mem_col_major : wmma::mem_row_major);
}

template <class T, class LA, class LB, int M, int N, int K>
int run_wmma(int c_col, int d_col) {
  constexpr bool a_col = std::is_same<LA, nvcuda::wmma::col_major>::value;
  constexpr bool b_col = std::is_same<LB, nvcuda::wmma::col_major>::value;
  std::vector<float> af(M * K), bf(K * N), cf(M * N);
  for (int i = 0; i < M * K; ++i) af[i] = static_cast<float>((i * 7) % 13) / 4.0f - 1.5f;   // exact in 16 bits
  for (int i = 0; i < K * N; ++i) bf[i] = static_cast<float>((i * 5) % 11) / 8.0f - 0.5f;
  for (int i = 0; i < M * N; ++i) cf[i] = static_cast<float>(i % 9) - 4.0f;
  std::vector<T> at(af.begin(), af.end()), bt(bf.begin(), bf.end());
  Buf<T> a(M * K), b(K * N);
  Buf<float> c(M * N), d(M * N);
  a.put(at);
  b.put(bt);
  c.put(cf);
  wmma_kernel<T, LA, LB, M, N, K><<<1, 32>>>(a.p, b.p, c.p, d.p, c_col, d_col);
  CHECK(cudaGetLastError());
  const auto out = d.get();
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = c_col ? cf[j * M + i] : cf[i * N + j];
      for (int k = 0; k < K; ++k)
        s += static_cast<double>(a_col ? af[k * M + i] : af[i * K + k]) * (b_col ? bf[j * K + k] : bf[k * N + j]);
      const float got = d_col ? out[j * M + i] : out[i * N + j];
      if (std::fabs(got - 2 * s) > 1e-4) {
        std::printf("%dx%dx%d: D[%d][%d] = %g, expected %g\n", M, N, K, i, j, got, 2 * s);
        return 1;
      }
    }
  return 0;
}

int case_wmma() {
  using nvcuda::wmma::col_major;
  using nvcuda::wmma::row_major;
  int bad = 0;
  bad |= run_wmma<__half, row_major, col_major, 16, 16, 16>(0, 0);
  bad |= run_wmma<__half, col_major, row_major, 16, 16, 16>(1, 0);
  bad |= run_wmma<__nv_bfloat16, row_major, row_major, 16, 16, 16>(0, 1);
  bad |= run_wmma<__nv_bfloat16, col_major, col_major, 16, 16, 16>(1, 1);
  bad |= run_wmma<__nv_bfloat16, row_major, col_major, 32, 8, 16>(0, 1);
  bad |= run_wmma<__half, col_major, row_major, 8, 32, 16>(1, 0);
  return bad;
}

__global__ void convert_kernel(const float* in, unsigned short* bf, unsigned short* hf, float* back, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  bf[i] = __bfloat16_as_ushort(__float2bfloat16(in[i]));
  hf[i] = __half_as_ushort(__float2half(in[i]));
  back[2 * i] = __bfloat162float(__ushort_as_bfloat16(bf[i]));
  back[2 * i + 1] = __half2float(__ushort_as_half(hf[i]));
}

// Reads float bit patterns (hex) from stdin, prints "bf16 f16 bf16->f32 f16->f32" bit patterns per value.
int case_conversions() {
  std::vector<float> in;
  unsigned u;
  while (std::scanf("%x", &u) == 1) {
    float f;
    std::memcpy(&f, &u, 4);
    in.push_back(f);
  }
  const int n = static_cast<int>(in.size());
  Buf<float> din(n), back(2 * n);
  Buf<unsigned short> bf(n), hf(n);
  din.put(in);
  convert_kernel<<<(n + 63) / 64, 64>>>(din.p, bf.p, hf.p, back.p, n);
  CHECK(cudaGetLastError());
  const auto b = bf.get(), h = hf.get();
  const auto r = back.get();
  for (int i = 0; i < n; ++i) {
    unsigned r0, r1;
    std::memcpy(&r0, &r[2 * i], 4);
    std::memcpy(&r1, &r[2 * i + 1], 4);
    std::printf("%04x %04x %08x %08x\n", b[i], h[i], r0, r1);
  }
  return 0;
}

__global__ void atomic_kernel(int* counter, int* maximum, unsigned* cas) {
  const int id = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(counter, 1);
  atomicMax(maximum, (id * 37) % 1001);
  unsigned old = *cas, assumed;
  do {
    assumed = old;
    old = atomicCAS(cas, assumed, assumed + 2);
  } while (old != assumed);
}

int case_atomics() {
  Buf<int> counter(1), maximum(1);
  Buf<unsigned> cas(1);
  counter.put({0});
  maximum.put({-1});
  cas.put({1});
  atomic_kernel<<<7, 96>>>(counter.p, maximum.p, cas.p);
  CHECK(cudaGetLastError());
  int best = -1;
  for (int id = 0; id < 672; ++id) best = std::max(best, (id * 37) % 1001);
  EXPECT(counter.get()[0] == 672 && maximum.get()[0] == best && cas.get()[0] == 1 + 2 * 672);
  return 0;
}

// ---- what the runtime refuses ----

int case_bad_config() {
  Buf<int> out(4);
  index_kernel<<<1, 1025>>>(out.p);
  cudaError_t e = cudaGetLastError();
  EXPECT(e == cudaErrorInvalidConfiguration);
  std::printf("%s\n", cudaGetErrorString(e));
  index_kernel<<<dim3(1, 65536), 32>>>(out.p);
  e = cudaGetLastError();
  EXPECT(e == cudaErrorInvalidConfiguration);
  std::printf("%s\n", cudaGetErrorString(e));
  EXPECT(cudaGetLastError() == cudaSuccess);   // reading the error cleared it
  return 0;
}

int case_memcpy_bounds() {
  Buf<float> a(16);
  std::vector<float> host(32, 1.0f);
  cudaError_t e = cudaMemcpy(a.p, host.data(), 32 * sizeof(float), cudaMemcpyHostToDevice);
  EXPECT(e == cudaErrorInvalidValue);
  std::printf("%s\n", cudaGetErrorString(cudaGetLastError()));
  e = cudaMemcpy(host.data(), a.p + 8, 9 * sizeof(float), cudaMemcpyDeviceToHost);
  EXPECT(e == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(host.data(), a.p + 8, 8 * sizeof(float), cudaMemcpyDeviceToHost));
  int x;
  EXPECT(cudaFree(&x) == cudaErrorInvalidValue);
  cudaGetLastError();
  return 0;
}

int case_out_of_memory() {
  void* p = nullptr;
  size_t free_b = 0, total_b = 0;
  CHECK(cudaMemGetInfo(&free_b, &total_b));
  const cudaError_t e = cudaMalloc(&p, total_b + 1);
  EXPECT(e == cudaErrorMemoryAllocation && p == nullptr);
  std::printf("%s\n", cudaGetErrorString(cudaGetLastError()));
  CHECK(cudaMalloc(&p, 1024));
  size_t free2 = 0;
  CHECK(cudaMemGetInfo(&free2, &total_b));
  EXPECT(free2 == free_b - 1024);
  CHECK(cudaFree(p));
  return 0;
}

// Stream capture: launches and async copies into the capturing stream are recorded, not run; a replay runs
// them in order with the captured arguments (reading device memory as it is then); a graph replays as many
// times as asked; an allocation, a synchronous copy or work into another stream during a capture is refused
// and invalidates it.
__global__ void add_from_kernel(const int* src, int* dst, int k) {
  dst[threadIdx.x] += src[0] + k;
}

int case_graph() {
  Buf<int> src(1), dst(32);
  dst.put(std::vector<int>(32, 0));
  int* pinned = nullptr;
  CHECK(cudaMallocHost(&pinned, sizeof(int)));
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaStreamCaptureStatus st;
  CHECK(cudaStreamIsCapturing(s, &st));
  EXPECT(st == cudaStreamCaptureStatusActive);
  CHECK(cudaMemcpyAsync(src.p, pinned, sizeof(int), cudaMemcpyHostToDevice, s));
  add_from_kernel<<<1, 32, 0, s>>>(src.p, dst.p, 1);
  add_from_kernel<<<1, 32, 0, s>>>(src.p, dst.p, 2);
  CHECK(cudaGetLastError());
  cudaGraph_t g;
  CHECK(cudaStreamEndCapture(s, &g));
  EXPECT(dst.get()[0] == 0);                       // nothing ran while recording
  cudaGraphExec_t exec;
  CHECK(cudaGraphInstantiate(&exec, g, 0));
  CHECK(cudaGraphDestroy(g));
  *pinned = 10;
  CHECK(cudaGraphLaunch(exec, nullptr));
  EXPECT(dst.get()[31] == 23);                     // (10 + 1) + (10 + 2)
  *pinned = 100;
  CHECK(cudaGraphLaunch(exec, s));
  EXPECT(dst.get()[0] == 23 + 203);                // the copy node read the new host value
  CHECK(cudaGraphExecDestroy(exec));

  // Refused during a capture: each invalidates it, and cudaStreamEndCapture then gives no graph.
  const auto refused = [&](const char* what, const std::function<cudaError_t()>& call, cudaError_t code) -> bool {
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return false;
    const cudaError_t e = call();
    if (e != code) {
      std::printf("FAIL %s: got %d, expected %d\n", what, static_cast<int>(e), static_cast<int>(code));
      return false;
    }
    std::printf("%s: %s\n", what, cudaGetErrorString(cudaGetLastError()));
    cudaGraph_t none = reinterpret_cast<cudaGraph_t>(1);
    const cudaError_t end = cudaStreamEndCapture(s, &none);
    cudaGetLastError();
    return end == cudaErrorStreamCaptureInvalidated && none == nullptr;
  };
  void* p = nullptr;
  std::vector<int> host(32);
  EXPECT(refused("malloc", [&] { return cudaMalloc(&p, 64); }, cudaErrorStreamCaptureUnsupported));
  EXPECT(refused("memcpy", [&] { return cudaMemcpy(host.data(), dst.p, 128, cudaMemcpyDeviceToHost); },
                 cudaErrorStreamCaptureUnsupported));
  EXPECT(refused("synchronize", [&] { return cudaDeviceSynchronize(); }, cudaErrorStreamCaptureUnsupported));
  EXPECT(refused("legacy launch", [&] {
    add_from_kernel<<<1, 32>>>(src.p, dst.p, 0);
    return cudaPeekAtLastError();
  }, cudaErrorStreamCaptureImplicit));
  EXPECT(dst.get()[0] == 226);                     // the refused launch did not run
  EXPECT(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeThreadLocal) == cudaErrorStreamCaptureUnsupported);
  cudaGetLastError();
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaFreeHost(pinned));
  return 0;
}

// A graph that outlives a buffer it captured is a fault at replay, like the eager launch would be.
int launch_stale_graph() {
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  cudaGraphExec_t exec;
  {
    Buf<int> src(1), dst(32);
    cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    add_from_kernel<<<1, 32, 0, s>>>(src.p, dst.p, 1);
    cudaGraph_t g;
    cudaStreamEndCapture(s, &g);
    cudaGraphInstantiate(&exec, g, 0);
  }
  cudaGraphLaunch(exec, nullptr);
  return 1;
}

// ---- faults: each of these kernels is wrong, and the emulator must say so (exit status 2) ----

__global__ void exit_before_barrier_kernel(float* out) {
  if (threadIdx.x >= 40) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void two_barriers_kernel(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

__global__ void half_warp_shuffle_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void shuffle_from_exited_kernel(float* out) {
  if ((threadIdx.x & 31) >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 16);
}

__global__ void mask_without_self_kernel(float* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, static_cast<float>(threadIdx.x), 0);
}

__global__ void wmma_ldm_kernel(const __half* a, float* d, unsigned ldm, int offset, int lane_dependent) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  const __half* p = a + offset + (lane_dependent ? (threadIdx.x / 16) * 256 : 0);
  wmma::load_matrix_sync(fa, p, ldm);
  d[threadIdx.x] = static_cast<float>(fa.x[0]);
}

__global__ void big_static_shared_kernel(float* out) {
  __shared__ float big[13000];   // 52000 bytes: over the 48 KiB static limit
  big[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = big[(threadIdx.x + 1) % blockDim.x];
}

__global__ void misaligned_ldg_kernel(const float* in, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(in + 1));
  out[threadIdx.x] = v.x;
}

__global__ void __launch_bounds__(64) bounded_kernel(float* out) { out[threadIdx.x] = 1.0f; }

__global__ void child_kernel(float* out) { out[0] = 1.0f; }
__global__ void parent_kernel(float* out) {
  if (threadIdx.x == 0) child_kernel<<<1, 1>>>(out);
}

// Thread 0 publishes a value in shared memory that thread 1 reads with no barrier in between: a race that
// the forward order hides (thread 0 runs first) and the reverse order exposes (prints "wrong").
__global__ void race_kernel(int* out) {
  __shared__ int value;
  if (threadIdx.x == 0) value = 42;
  if (threadIdx.x == 1) out[0] = value;
}

int case_race() {
  Buf<int> out(1);
  race_kernel<<<1, 2>>>(out.p);
  CHECK(cudaGetLastError());
  std::printf("%s\n", out.get()[0] == 42 ? "right" : "wrong");
  return 0;
}

// AddressSanitizer cases (the test builds them with -fsanitize=address).
__global__ void oob_global_kernel(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;   // one past the end
}

__global__ void oob_shared_kernel(float* out) {
  __shared__ float tile[32];
  tile[threadIdx.x] = static_cast<float>(threadIdx.x);   // launched with 64 threads
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x % 32];
}

// Traffic counting (builds with the access instrumentation, see traffic.cpp): per thread of 64, a 4-byte
// load of its own element, a 4-byte load of element 0 (the same address for every lane: counted 64 times),
// a 16-byte __ldg, a stack array and a shared array (never counted), a 4-byte store; thread 0 also stores
// 16 bytes. A warp then loads a 16x16 half tile (512 bytes) and stores a 16x16 float tile (1024 bytes),
// once per warp, not once per lane.
__global__ void traffic_kernel(const float* in, const float4* in4, float* out, float4* out4) {
  __shared__ float stage[64];
  float local[8];
  const int t = threadIdx.x;
  for (int i = 0; i < 8; ++i) local[i] = in[t] + static_cast<float>(i);
  const float4 v = __ldg(in4 + t);
  stage[t] = local[t % 8] + in[0] + v.x + v.w;
  __syncthreads();
  out[t] = stage[63 - t];
  if (t == 0) out4[0] = make_float4(1.0f, 2.0f, 3.0f, 4.0f);
}

__global__ void traffic_wmma_kernel(const __half* a, float* d) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __half, nvcuda::wmma::col_major> fb;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> fc;
  nvcuda::wmma::load_matrix_sync(fa, a, 16);
  nvcuda::wmma::fill_fragment(fb, __float2half(1.0f));
  nvcuda::wmma::fill_fragment(fc, 0.0f);
  nvcuda::wmma::mma_sync(fc, fa, fb, fc);
  nvcuda::wmma::store_matrix_sync(d, fc, 16, nvcuda::wmma::mem_row_major);
}

// Prints "kernel load_bytes store_bytes" per counted launch; the uncounted launch prints "uncounted".
int case_traffic() {
  Buf<float> in(64), out(64);
  Buf<float4> in4(64), out4(1);
  Buf<__half> a(256);
  Buf<float> d(256);
  in.put(std::vector<float>(64, 1.0f));
  td_emu::settings().record_launches = true;
  td_emu::settings().count_traffic = true;
  traffic_kernel<<<1, 64>>>(in.p, in4.p, out.p, out4.p);
  traffic_wmma_kernel<<<1, 32>>>(a.p, d.p);
  td_emu::settings().count_traffic = false;
  traffic_kernel<<<1, 64>>>(in.p, in4.p, out.p, out4.p);
  CHECK(cudaGetLastError());
  for (const auto& r : td_emu::take_launch_log()) {
    if (r.counted)
      std::printf("%s %llu %llu\n", r.kernel.c_str(), static_cast<unsigned long long>(r.traffic.load_bytes),
                  static_cast<unsigned long long>(r.traffic.store_bytes));
    else
      std::printf("%s uncounted\n", r.kernel.c_str());
  }
  return 0;
}

// A fault case: launches a wrong kernel; reaching the end means the emulator did not notice.
#define FAULT_CASE(kernel, threads)                                                                \
  [] {                                                                                              \
    Buf<float> out(256);                                                                            \
    kernel(out.p, threads);                                                                         \
    std::printf("launch returned: %s\n", cudaGetErrorString(cudaGetLastError()));                  \
    return 1;                                                                                       \
  }

void launch_exit_before_barrier(float* out, unsigned t) { exit_before_barrier_kernel<<<1, t>>>(out); }
void launch_two_barriers(float* out, unsigned t) { two_barriers_kernel<<<1, t>>>(out); }
void launch_half_warp_shuffle(float* out, unsigned t) { half_warp_shuffle_kernel<<<1, t>>>(out); }
void launch_shuffle_from_exited(float* out, unsigned t) { shuffle_from_exited_kernel<<<1, t>>>(out); }
void launch_mask_without_self(float* out, unsigned t) { mask_without_self_kernel<<<1, t>>>(out); }
void launch_big_static_shared(float* out, unsigned t) { big_static_shared_kernel<<<1, t>>>(out); }
void launch_bounded(float* out, unsigned t) { bounded_kernel<<<1, t>>>(out); }
void launch_parent(float* out, unsigned t) { parent_kernel<<<1, t>>>(out); }
void launch_oob_shared(float* out, unsigned t) { oob_shared_kernel<<<1, t>>>(out); }

int main(int argc, char** argv) {
  if (argc < 2) {
    std::printf("usage: cases NAME\n");
    return 1;
  }
  std::map<std::string, std::function<int()>> cases = {
      {"indices", case_indices},
      {"shuffles", case_shuffles},
      {"votes", case_votes},
      {"barrier_reductions", case_barrier_reductions},
      {"shared", case_shared},
      {"dynamic_shared", case_dynamic_shared},
      {"wmma", case_wmma},
      {"conversions", case_conversions},
      {"atomics", case_atomics},
      {"bad_config", case_bad_config},
      {"memcpy_bounds", case_memcpy_bounds},
      {"out_of_memory", case_out_of_memory},
      {"race", case_race},
      {"traffic", case_traffic},
      {"graph", case_graph},
      {"stale_graph", launch_stale_graph},
      {"exit_before_barrier", FAULT_CASE(launch_exit_before_barrier, 64)},
      {"two_barriers", FAULT_CASE(launch_two_barriers, 64)},
      {"half_warp_shuffle", FAULT_CASE(launch_half_warp_shuffle, 64)},
      {"shuffle_from_exited", FAULT_CASE(launch_shuffle_from_exited, 32)},
      {"mask_without_self", FAULT_CASE(launch_mask_without_self, 32)},
      {"big_static_shared", FAULT_CASE(launch_big_static_shared, 64)},
      {"launch_bounds", FAULT_CASE(launch_bounded, 128)},
      {"nested_launch", FAULT_CASE(launch_parent, 32)},
      {"oob_shared", FAULT_CASE(launch_oob_shared, 64)},
      {"misaligned_ldg",
       [] {
         Buf<float> in(64), out(32);
         misaligned_ldg_kernel<<<1, 32>>>(in.p, out.p);
         return 1;
       }},
      {"host_pointer_argument",
       [] {
         std::vector<float> host(64);
         index_kernel<<<1, 32>>>(reinterpret_cast<int*>(host.data()));
         return 1;
       }},
      {"oob_global",
       [] {
         Buf<float> out(100);
         oob_global_kernel<<<4, 32>>>(out.p, 100);
         cudaDeviceSynchronize();
         return 1;
       }},
  };
  for (const char* w : {"bad_ldm", "misaligned", "lanes_disagree", "partial_warp"}) {
    const std::string name = std::string("wmma_") + w;
    cases[name] = [name] {
      Buf<__half> a(1024);
      Buf<float> d(32);
      const bool partial = name == "wmma_partial_warp";
      const unsigned ldm = name == "wmma_bad_ldm" ? 12 : 16;
      const int offset = name == "wmma_misaligned" ? 4 : 0;
      wmma_ldm_kernel<<<1, partial ? 16 : 32>>>(a.p, d.p, ldm, offset, name == "wmma_lanes_disagree");
      return 1;
    };
  }
  auto it = cases.find(argv[1]);
  if (it == cases.end()) {
    std::printf("unknown case %s\n", argv[1]);
    return 1;
  }
  try {
    const int rc = it->second();
    std::printf(rc == 0 ? "PASS\n" : "FAIL\n");
    return rc;
  } catch (const std::exception& e) {
    std::printf("FAULT: %s\n", e.what());
    return 2;
  }
}
