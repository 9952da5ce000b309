// The CUDA emulator: compiles unmodified CUDA C++ kernels as host C++ and runs them on the CPU.
//
// Model (see README.md in this folder): a launch runs its blocks one after another; each CUDA thread of a
// block is a user-mode fiber with its own stack; a thread runs until it reaches a synchronisation point
// (__syncthreads, a warp intrinsic, a WMMA operation) or exits, then the next thread runs. When every
// thread of the block waits or has exited, the scheduler completes what can complete: a warp operation
// once every lane named in its mask has arrived at it, the block barrier once every thread has. Warps are
// real 32-lane warps, so shuffles exchange exactly what they would on a GPU; what cannot complete (a
// barrier reached by only part of a block, a shuffle reading an exited lane, lanes waiting at different
// operations) is a KernelFault naming the kernel, block, thread and source line.
//
// This header is included through the shims in include/ (cuda_runtime.h, cuda_bf16.h, cuda_fp16.h, mma.h).
// Kernel launches `k<<<grid, block, shmem, stream>>>(args)` and __shared__ declarations are rewritten by
// rewrite.py into calls of this header at build time; the kernel sources themselves are not changed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "types.h"
#include "device_math.h"

// ---- execution-space qualifiers ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static   // one object per launch site; the scheduler runs one block at a time
#define __constant__
#define __managed__
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)   // checked at run time: rewrite.py inserts td_emu::check_launch_bounds()

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

// ---- built-in variables: set by the scheduler before it resumes a thread ----
// Plain globals (not thread_local): one OS thread runs every emulated thread, under the launch lock.
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

namespace td_emu {

// A kernel did something a GPU would not do correctly (or at all); the message names where.
struct KernelFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Site {
  const char* file;
  int line;
};
// The source position of the expression (inserted by rewrite.py), and of a call, as a default argument.
#define TD_EMU_SITE (::td_emu::Site{__FILE__, __LINE__})
// (GCC and clang evaluate __builtin_FILE / __builtin_LINE at the call only when they are themselves the
// default arguments, so the position travels as two parameters.)
#define TD_EMU_CALLER_ARGS const char* td_file_ = __builtin_FILE(), int td_line_ = __builtin_LINE()

enum WarpOp : int {
  kSyncwarp, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kActiveMask,
  kReduceAddU, kReduceMinU, kReduceMaxU, kReduceMinS, kReduceMaxS, kReduceAnd, kReduceOr, kReduceXor,
  kCollective,
};
enum BarrierOp : int { kBarSync, kBarCount, kBarAnd, kBarOr };

// Warp operation of the calling thread; returns its result (shuffled value, ballot, reduction, ...).
uint64_t warp_op(Site site, int op, unsigned mask, uint64_t value, int arg, int width);
// A collective of the whole warp (WMMA): once all 32 lanes have arrived with the same fn, fn runs once with
// every lane's args (in lane order), in the scheduler. fn throws std::exception to report misuse.
using CollectiveFn = void (*)(void* const* lane_args, int lanes);
void warp_collective(Site site, const char* what, CollectiveFn fn, void* args);
int block_barrier(Site site, int op, int predicate);

// Throws a KernelFault naming the running kernel and thread (or a plain one outside kernels).
[[noreturn]] void fail(const std::string& what);
[[noreturn]] void fail_misaligned(const char* op, const void* p, size_t alignment);
// Counts one global-memory access of the given width when traffic is being counted (traffic.cpp); the
// loads and stores of instrumented kernel code reach it by themselves, the __ldg family explicitly.
void note_access(const void* p, size_t bytes, bool store);
bool in_kernel();
// Static __shared__ bookkeeping (inserted after each declaration by rewrite.py): counts the bytes against
// the limit and poisons the array (0xff bytes: NaN for floats) the first time a block reaches it.
void note_shared(void* p, size_t bytes, Site site);
struct SharedNote {
  SharedNote(void* p, size_t bytes, Site site) { note_shared(p, bytes, site); }
};
void* dynamic_shared();   // `extern __shared__ T name[]` (rewritten to a pointer)
void check_launch_bounds(unsigned long long max_threads, Site site);

// ---- launches ----
using ThreadFn = void (*)(void* ctx);
struct LaunchSpec {
  const char* kernel;   // the kernel expression as written, e.g. "skinny_matmul_kernel<WT, true>"
  const char* context;  // __PRETTY_FUNCTION__ of the launching function (names its template arguments)
  Site site;
  dim3 grid, block;
  size_t dynamic_shared;
  cudaStream_t stream;
  const void* fn;       // identity of the kernel function (for cudaFuncSetAttribute)
  const void* const* pointer_args;   // the kernel's pointer arguments, checked to be device memory
  const int* pointer_index;
  int pointer_count;
};
void launch(const LaunchSpec& spec, ThreadFn body, void* ctx);
// Stream capture (graph.cpp): whether any capture is open, and the capture of one launch: 1 recorded (replay
// runs it later), 0 not captured (run it now), -1 refused (the error is set).
bool any_capture();
int capture_launch(const LaunchSpec& spec, std::function<void()> replay);

class Launch {
 public:
  Launch(const char* kernel, const char* context, const char* file, int line, dim3 grid, dim3 block,
         size_t shmem = 0, cudaStream_t stream = nullptr)
      : spec_{kernel, context, Site{file, line}, grid, block, shmem, stream, nullptr, nullptr, nullptr, 0} {}

  template <class... P, class... A>
  void run(void (*kernel)(P...), A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
    using Args = std::tuple<std::decay_t<P>...>;
    struct Ctx {
      void (*k)(P...);
      Args args;
    };
    Ctx ctx{kernel, Args(std::forward<A>(args)...)};
    const void* ptrs[sizeof...(P) + 1];
    int index[sizeof...(P) + 1];
    int count = 0;
    collect(ctx.args, ptrs, index, count, std::index_sequence_for<P...>{});
    spec_.fn = reinterpret_cast<const void*>(kernel);
    spec_.pointer_args = ptrs;
    spec_.pointer_index = index;
    spec_.pointer_count = count;
    ThreadFn body = [](void* c) {
      Ctx* x = static_cast<Ctx*>(c);
      std::apply(x->k, x->args);   // each thread gets its own copies of the by-value parameters
    };
    if (any_capture()) {
      // A capturing stream keeps a copy of the launch (its arguments by value) for the graph to replay.
      struct Node {
        LaunchSpec spec;
        std::vector<const void*> ptrs;
        std::vector<int> index;
        Ctx ctx;
      };
      auto node = std::make_shared<Node>(Node{spec_, std::vector<const void*>(ptrs, ptrs + count),
                                              std::vector<int>(index, index + count), ctx});
      const int r = capture_launch(spec_, [node, body]() {
        node->spec.pointer_args = node->ptrs.data();
        node->spec.pointer_index = node->index.data();
        launch(node->spec, body, &node->ctx);
      });
      if (r != 0) return;
    }
    launch(spec_, body, &ctx);
  }

 private:
  template <class Tuple, size_t... I>
  static void collect(const Tuple& t, const void** ptrs, int* index, int& count, std::index_sequence<I...>) {
    (add<I>(std::get<I>(t), ptrs, index, count), ...);
  }
  template <size_t I, class T>
  static void add(const T& v, const void** ptrs, int* index, int& count) {
    if constexpr (std::is_pointer_v<T>) {
      ptrs[count] = reinterpret_cast<const void*>(v);
      index[count++] = static_cast<int>(I);
    }
  }
  LaunchSpec spec_;
};

template <class T>
inline uint64_t to_bits(const T& v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp intrinsics take values of up to 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
template <class T>
inline T shfl(Site s, int op, unsigned mask, T v, int arg, int width) {
  return from_bits<T>(warp_op(s, op, mask, to_bits(v), arg, width));
}
template <class T>
__attribute__((no_sanitize_thread)) inline T checked_load(const char* op, const T* p) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) fail_misaligned(op, p, alignof(T));
  note_access(p, sizeof(T), false);   // the whole width, whichever members the caller then uses
  return *p;
}
template <class T>
__attribute__((no_sanitize_thread)) inline void checked_store(const char* op, T* p, const T& v) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) fail_misaligned(op, p, alignof(T));
  note_access(p, sizeof(T), true);
  *p = v;
}

}  // namespace td_emu

// ---- barriers and warp intrinsics: the call site comes in as default arguments, so faults name the line ----
#define TD_EMU_HERE ::td_emu::Site{td_file_, td_line_}
inline void __syncthreads(TD_EMU_CALLER_ARGS) { ::td_emu::block_barrier(TD_EMU_HERE, ::td_emu::kBarSync, 0); }
inline int __syncthreads_count(int p, TD_EMU_CALLER_ARGS) {
  return ::td_emu::block_barrier(TD_EMU_HERE, ::td_emu::kBarCount, p != 0);
}
inline int __syncthreads_and(int p, TD_EMU_CALLER_ARGS) { return ::td_emu::block_barrier(TD_EMU_HERE, ::td_emu::kBarAnd, p != 0); }
inline int __syncthreads_or(int p, TD_EMU_CALLER_ARGS) { return ::td_emu::block_barrier(TD_EMU_HERE, ::td_emu::kBarOr, p != 0); }
inline void __syncwarp(unsigned mask = 0xffffffffu, TD_EMU_CALLER_ARGS) {
  ::td_emu::warp_op(TD_EMU_HERE, ::td_emu::kSyncwarp, mask, 0, 0, 32);
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, TD_EMU_CALLER_ARGS) {
  return ::td_emu::shfl(TD_EMU_HERE, ::td_emu::kShflIdx, mask, v, src, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32, TD_EMU_CALLER_ARGS) {
  return ::td_emu::shfl(TD_EMU_HERE, ::td_emu::kShflUp, mask, v, static_cast<int>(d), width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32, TD_EMU_CALLER_ARGS) {
  return ::td_emu::shfl(TD_EMU_HERE, ::td_emu::kShflDown, mask, v, static_cast<int>(d), width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, TD_EMU_CALLER_ARGS) {
  return ::td_emu::shfl(TD_EMU_HERE, ::td_emu::kShflXor, mask, v, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int p, TD_EMU_CALLER_ARGS) {
  return static_cast<unsigned>(::td_emu::warp_op(TD_EMU_HERE, ::td_emu::kBallot, mask, p != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int p, TD_EMU_CALLER_ARGS) {
  return static_cast<int>(::td_emu::warp_op(TD_EMU_HERE, ::td_emu::kAny, mask, p != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int p, TD_EMU_CALLER_ARGS) {
  return static_cast<int>(::td_emu::warp_op(TD_EMU_HERE, ::td_emu::kAll, mask, p != 0, 0, 32));
}
namespace td_emu {
inline uint32_t reduce(Site s, int op, unsigned mask, uint32_t v) { return static_cast<uint32_t>(warp_op(s, op, mask, v, 0, 32)); }
unsigned active_mask();
}  // namespace td_emu
#define TD_EMU_REDUCE(name, op_u, op_s)                                                                    \
  inline unsigned name(unsigned mask, unsigned v, TD_EMU_CALLER_ARGS) {                                  \
    return ::td_emu::reduce(TD_EMU_HERE, ::td_emu::op_u, mask, v);                                        \
  }                                                                                                        \
  inline int name(unsigned mask, int v, TD_EMU_CALLER_ARGS) {                                            \
    return static_cast<int>(::td_emu::reduce(TD_EMU_HERE, ::td_emu::op_s, mask, static_cast<uint32_t>(v))); \
  }
TD_EMU_REDUCE(__reduce_add_sync, kReduceAddU, kReduceAddU)
TD_EMU_REDUCE(__reduce_min_sync, kReduceMinU, kReduceMinS)
TD_EMU_REDUCE(__reduce_max_sync, kReduceMaxU, kReduceMaxS)
TD_EMU_REDUCE(__reduce_and_sync, kReduceAnd, kReduceAnd)
TD_EMU_REDUCE(__reduce_or_sync, kReduceOr, kReduceOr)
TD_EMU_REDUCE(__reduce_xor_sync, kReduceXor, kReduceXor)
#undef TD_EMU_REDUCE
inline unsigned __activemask() { return ::td_emu::active_mask(); }

// ---- memory intrinsics: loads through the read-only / streaming caches are plain, alignment-checked loads ----
template <class T> inline T __ldg(const T* p) { return ::td_emu::checked_load("__ldg", p); }
template <class T> inline T __ldca(const T* p) { return ::td_emu::checked_load("__ldca", p); }
template <class T> inline T __ldcg(const T* p) { return ::td_emu::checked_load("__ldcg", p); }
template <class T> inline T __ldcs(const T* p) { return ::td_emu::checked_load("__ldcs", p); }
template <class T> inline T __ldlu(const T* p) { return ::td_emu::checked_load("__ldlu", p); }
template <class T> inline T __ldcv(const T* p) { return ::td_emu::checked_load("__ldcv", p); }
template <class T> inline void __stcg(T* p, T v) { ::td_emu::checked_store("__stcg", p, v); }
template <class T> inline void __stcs(T* p, T v) { ::td_emu::checked_store("__stcs", p, v); }
template <class T> inline void __stwb(T* p, T v) { ::td_emu::checked_store("__stwb", p, v); }
template <class T> inline void __stwt(T* p, T v) { ::td_emu::checked_store("__stwt", p, v); }

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned int) {}
[[noreturn]] inline void __trap() { ::td_emu::fail("__trap() was called"); }
inline long long clock64() { static long long t = 0; return ++t; }

// ---- atomics: one emulated thread runs at a time, so plain read-modify-write is atomic ----
template <class T> inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <class T> inline T atomicSub(T* p, T v) { T o = *p; *p = o - v; return o; }
template <class T> inline T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }
template <class T> inline T atomicMin(T* p, T v) { T o = *p; *p = v < o ? v : o; return o; }
template <class T> inline T atomicMax(T* p, T v) { T o = *p; *p = o < v ? v : o; return o; }
template <class T> inline T atomicAnd(T* p, T v) { T o = *p; *p = o & v; return o; }
template <class T> inline T atomicOr(T* p, T v) { T o = *p; *p = o | v; return o; }
template <class T> inline T atomicXor(T* p, T v) { T o = *p; *p = o ^ v; return o; }
template <class T> inline T atomicCAS(T* p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }
inline unsigned int atomicInc(unsigned int* p, unsigned int limit) {
  const unsigned int o = *p;
  *p = o >= limit ? 0 : o + 1;
  return o;
}
inline unsigned int atomicDec(unsigned int* p, unsigned int limit) {
  const unsigned int o = *p;
  *p = (o == 0 || o > limit) ? limit : o - 1;
  return o;
}
