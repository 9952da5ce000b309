// Global-memory traffic of emulated kernels. The kernel sources are compiled with the compiler's
// ThreadSanitizer instrumentation (-fsanitize=thread at compile time only): every load and store the
// compiled code makes becomes a call to a __tsan_* hook. No sanitizer runtime is linked; this file
// defines the hooks. While a launch is being counted, a hook adds the access to the launch's totals when
// its address lies in a device allocation (stacks, shared memory and the emulator's own state are not
// device memory, so they never count); otherwise it does nothing. This file itself is not instrumented.
//
// What is counted is the bytes the threads request: a value that 32 lanes read is counted 32 times
// (hardware would coalesce it; the counts show where a kernel relies on that), and WMMA tile loads and
// stores once per warp, as the warp issues them. The __ldg family counts its full width; a plain vector
// load counts the members the host compiler keeps (a member the kernel never uses may not be loaded).
// Access widths are not reported: the host compiler splits vector types into their members, so widths
// here would say nothing about the GPU's (the SASS checks do).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cuda_emu/state.h"

namespace td_emu {
namespace {

struct Counting {
  Traffic* out = nullptr;
  std::vector<std::pair<uintptr_t, size_t>> ranges;  // sorted device allocations at the launch's start
  uintptr_t last_base = 0;
  size_t last_size = 0;
};
thread_local Counting t_count;

inline bool in_device(uintptr_t p) {
  Counting& c = t_count;
  if (p - c.last_base < c.last_size) return true;
  auto it = std::upper_bound(c.ranges.begin(), c.ranges.end(), p,
                             [](uintptr_t a, const std::pair<uintptr_t, size_t>& r) { return a < r.first; });
  if (it == c.ranges.begin()) return false;
  --it;
  if (p - it->first >= it->second) return false;
  c.last_base = it->first;
  c.last_size = it->second;
  return true;
}

inline void note(const void* p, size_t n, bool store) {
  Traffic* t = t_count.out;
  if (t == nullptr || n == 0 || !in_device(reinterpret_cast<uintptr_t>(p))) return;
  (store ? t->store_bytes : t->load_bytes) += n;
}

}  // namespace

void note_access(const void* p, size_t bytes, bool store) { note(p, bytes, store); }

void traffic_begin(Traffic* out) {
  Counting& c = t_count;
  c.ranges = device_ranges();
  std::sort(c.ranges.begin(), c.ranges.end());
  c.last_base = 0;
  c.last_size = 0;
  *out = Traffic{};
  c.out = out;
}

void traffic_end() {
  t_count.out = nullptr;
  t_count.ranges.clear();
}

}  // namespace td_emu

// The hooks the instrumentation calls (the ThreadSanitizer interface, as far as GCC and Clang emit it).
// Not in AddressSanitizer builds: nothing is instrumented there, and the compiler declares these names
// itself (with its own signatures) whenever a sanitizer is on.
#ifndef __SANITIZE_ADDRESS__
extern "C" {
#define TD_EMU_HOOK __attribute__((visibility("hidden")))

TD_EMU_HOOK void __tsan_init() {}
TD_EMU_HOOK void __tsan_func_entry(void*) {}
TD_EMU_HOOK void __tsan_func_exit() {}
TD_EMU_HOOK void __tsan_vptr_update(void**, void*) {}
TD_EMU_HOOK void __tsan_vptr_read(void**) {}

#define TD_EMU_RW(N)                                                                         \
  TD_EMU_HOOK void __tsan_read##N(void* p) { td_emu::note(p, N, false); }                    \
  TD_EMU_HOOK void __tsan_write##N(void* p) { td_emu::note(p, N, true); }                    \
  TD_EMU_HOOK void __tsan_volatile_read##N(void* p) { td_emu::note(p, N, false); }           \
  TD_EMU_HOOK void __tsan_volatile_write##N(void* p) { td_emu::note(p, N, true); }           \
  TD_EMU_HOOK void __tsan_read##N##_pc(void* p, void*) { td_emu::note(p, N, false); }        \
  TD_EMU_HOOK void __tsan_write##N##_pc(void* p, void*) { td_emu::note(p, N, true); }
TD_EMU_RW(1)
TD_EMU_RW(2)
TD_EMU_RW(4)
TD_EMU_RW(8)
TD_EMU_RW(16)
#undef TD_EMU_RW

#define TD_EMU_UNALIGNED(N)                                                                  \
  TD_EMU_HOOK void __tsan_unaligned_read##N(void* p) { td_emu::note(p, N, false); }          \
  TD_EMU_HOOK void __tsan_unaligned_write##N(void* p) { td_emu::note(p, N, true); }          \
  TD_EMU_HOOK void __tsan_unaligned_volatile_read##N(void* p) { td_emu::note(p, N, false); } \
  TD_EMU_HOOK void __tsan_unaligned_volatile_write##N(void* p) { td_emu::note(p, N, true); }
TD_EMU_UNALIGNED(2)
TD_EMU_UNALIGNED(4)
TD_EMU_UNALIGNED(8)
TD_EMU_UNALIGNED(16)
#undef TD_EMU_UNALIGNED

TD_EMU_HOOK void __tsan_read_range(void* p, unsigned long n) { td_emu::note(p, n, false); }
TD_EMU_HOOK void __tsan_write_range(void* p, unsigned long n) { td_emu::note(p, n, true); }

// Atomics in instrumented code (host-side reference counts, for instance) are performed as written, with
// the strongest ordering; device-memory atomics of kernels are plain code in the emulator and counted above.
#define TD_EMU_RMW(BITS, T, OP)                                                                         \
  TD_EMU_HOOK T __tsan_atomic##BITS##_##OP(volatile T* a, T v, int) {                                   \
    return __atomic_##OP(a, v, __ATOMIC_SEQ_CST);                                                        \
  }
#define TD_EMU_ATOMIC(BITS, T)                                                                          \
  TD_EMU_HOOK T __tsan_atomic##BITS##_load(const volatile T* a, int) {                                  \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                         \
  }                                                                                                     \
  TD_EMU_HOOK void __tsan_atomic##BITS##_store(volatile T* a, T v, int) {                                \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                     \
  TD_EMU_HOOK T __tsan_atomic##BITS##_exchange(volatile T* a, T v, int) {                               \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                  \
  }                                                                                                     \
  TD_EMU_RMW(BITS, T, fetch_add)                                                                        \
  TD_EMU_RMW(BITS, T, fetch_sub)                                                                        \
  TD_EMU_RMW(BITS, T, fetch_and)                                                                        \
  TD_EMU_RMW(BITS, T, fetch_or)                                                                         \
  TD_EMU_RMW(BITS, T, fetch_xor)                                                                        \
  TD_EMU_RMW(BITS, T, fetch_nand)                                                                       \
  TD_EMU_HOOK int __tsan_atomic##BITS##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {   \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);              \
  }                                                                                                     \
  TD_EMU_HOOK int __tsan_atomic##BITS##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {     \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);              \
  }                                                                                                     \
  TD_EMU_HOOK T __tsan_atomic##BITS##_compare_exchange_val(volatile T* a, T c, T v, int, int) {         \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                    \
    return c;                                                                                           \
  }
TD_EMU_ATOMIC(8, char)
TD_EMU_ATOMIC(16, short)
TD_EMU_ATOMIC(32, int)
TD_EMU_ATOMIC(64, long)
#undef TD_EMU_ATOMIC
#undef TD_EMU_RMW

TD_EMU_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
TD_EMU_HOOK void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#undef TD_EMU_HOOK
}
#endif  // __SANITIZE_ADDRESS__
