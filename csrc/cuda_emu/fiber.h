// User-mode fibers for the emulated CUDA threads: a stack each and a context switch that saves only the
// callee-saved registers (x86-64: a dozen instructions, no system call). Other architectures fall back to
// ucontext, which is correct but slower (swapcontext saves the signal mask with a system call).
// Under AddressSanitizer every switch is announced to it, so its stack checks stay exact.
#pragma once
#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define TD_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TD_EMU_ASAN 1
#endif
#endif

namespace td_emu {

struct Fiber {
  void* sp = nullptr;          // saved stack pointer (x86-64) or ucontext_t* (fallback)
  char* stack = nullptr;       // lowest usable address (a guard page lies below it)
  size_t size = 0;
  void* asan_fake_stack = nullptr;
  bool abandoned = false;      // stopped mid-kernel by a fault: its stack shadow must be cleared before reuse
  void (*entry)(void*) = nullptr;   // never returns: it ends with fiber_exit_to
  void* arg = nullptr;
};

using FiberEntry = void (*)(void* arg);

// Makes f start entry(arg) when it is next switched to (allocating its stack the first time). color
// (< 32 KiB) moves the start of the stack down: fibers of different colours keep their hot stack tops in
// different cache sets (equal power-of-two stacks would all compete for the same few sets).
void fiber_reset(Fiber& f, size_t stack_bytes, FiberEntry entry, void* arg, size_t color = 0);
// Switches from `from` to `to`; null means the scheduler (the OS thread's own stack). Returns when
// something switches back to `from`. Inline where it can be (x86-64, no sanitizer): every return taken
// after a switch is mispredicted, so the fewer frames between a kernel and the switch, the better.
#if defined(__x86_64__) && !defined(TD_EMU_ASAN)
extern "C" void td_emu_swap(void** save, void* load);
extern thread_local void* t_main_sp;
inline void fiber_switch(Fiber* from, Fiber* to) {
  td_emu_swap(from != nullptr ? &from->sp : &t_main_sp, to != nullptr ? to->sp : t_main_sp);
}
#else
void fiber_switch(Fiber* from, Fiber* to);
#endif
// Like fiber_switch, for a fiber that has finished and will only run again after fiber_reset.
void fiber_exit_to(Fiber& from, Fiber* to);   // never returns (not [[noreturn]]: see fiber.cpp)
void fiber_free(Fiber& f);

}  // namespace td_emu
