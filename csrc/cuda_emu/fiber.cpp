#include "cuda_emu/fiber.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <new>

#ifdef TD_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace td_emu {

// The scheduler's context: the stack of the OS thread that runs the launch.
thread_local void* t_main_sp = nullptr;

namespace {

constexpr size_t kMaxColor = 32 << 10;

#ifdef TD_EMU_ASAN
thread_local void* t_main_fake = nullptr;
thread_local const void* t_main_bottom = nullptr;
thread_local size_t t_main_size = 0;

void find_main_stack() {
  if (t_main_bottom != nullptr) return;
  pthread_attr_t a;
  void* addr = nullptr;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &a) == 0) {
    pthread_attr_getstack(&a, &addr, &size);
    pthread_attr_destroy(&a);
  }
  t_main_bottom = addr;
  t_main_size = size;
}
#endif
#if !defined(__x86_64__)
thread_local ucontext_t t_main_uc;
#endif

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

// First code of every fiber: finishes the switch for ASan, then runs the entry (which never returns).
void fiber_start(void* p) {
  Fiber* f = static_cast<Fiber*>(p);
#ifdef TD_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  f->entry(f->arg);
  __builtin_trap();
}

}  // namespace
}  // namespace td_emu

#if defined(__x86_64__)
// td_emu_swap(save, load): pushes the callee-saved registers, stores rsp in *save, switches to load and pops
// the registers saved there. A new fiber's stack is laid out as if td_emu_swap had been called on it, with
// td_emu_trampoline as the return address and (fiber_start, the Fiber) in the r12 / r13 slots. The FP
// control words are not switched: no emulated thread changes them.
extern "C" void td_emu_swap(void** save, void* load);
extern "C" void td_emu_trampoline();
asm(R"(
  .text
  .globl td_emu_swap
  .hidden td_emu_swap
  .type td_emu_swap, @function
  .p2align 4
td_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size td_emu_swap, .-td_emu_swap

  .globl td_emu_trampoline
  .hidden td_emu_trampoline
  .type td_emu_trampoline, @function
  .p2align 4
td_emu_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r13, %rdi
  callq *%r12
  ud2
  .cfi_endproc
  .size td_emu_trampoline, .-td_emu_trampoline
)");
#endif

namespace td_emu {

void fiber_reset(Fiber& f, size_t stack_bytes, FiberEntry entry, void* arg, size_t color) {
  const size_t page = page_size();
  color %= kMaxColor;
  stack_bytes = (stack_bytes + kMaxColor + page - 1) / page * page;
  if (f.stack == nullptr || f.size != stack_bytes) {
    fiber_free(f);
    void* m = mmap(nullptr, stack_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    mprotect(m, page, PROT_NONE);   // guard page: a stack overflow faults instead of corrupting memory
    f.stack = static_cast<char*>(m) + page;
    f.size = stack_bytes;
    f.abandoned = false;
  }
#ifdef TD_EMU_ASAN
  // Frames that never return (the entry and fiber_exit_to) leave their redzones poisoned near the top of
  // the stack; an abandoned fiber leaves all of its frames. Clear that shadow before the stack is reused.
  if (f.abandoned) __asan_unpoison_memory_region(f.stack, f.size);
  else __asan_unpoison_memory_region(f.stack + f.size - kMaxColor - 16384, kMaxColor + 16384);
#endif
  f.abandoned = false;
  f.asan_fake_stack = nullptr;
  f.entry = entry;
  f.arg = arg;
#if defined(__x86_64__)
  // 16-byte aligned top; after td_emu_swap pops 6 registers and returns, rsp = top - 16 (aligned for the call).
  const uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + f.size - color) & ~static_cast<uintptr_t>(15);
  void** sp = reinterpret_cast<void**>(top - 72);
  sp[0] = nullptr;                                         // r15
  sp[1] = nullptr;                                         // r14
  sp[2] = &f;                                              // r13
  sp[3] = reinterpret_cast<void*>(&fiber_start);           // r12
  sp[4] = nullptr;                                         // rbx
  sp[5] = nullptr;                                         // rbp (ends frame-pointer walks)
  sp[6] = reinterpret_cast<void*>(&td_emu_trampoline);     // return address
  sp[7] = nullptr;
  sp[8] = nullptr;
  f.sp = sp;
#else
  static_assert(sizeof(void*) == 8, "the ucontext fallback passes the Fiber pointer as two ints");
  auto* uc = static_cast<ucontext_t*>(f.sp);
  if (uc == nullptr) {
    uc = new ucontext_t;
    f.sp = uc;
  }
  getcontext(uc);
  uc->uc_stack.ss_sp = f.stack;
  uc->uc_stack.ss_size = f.size - color;
  uc->uc_link = nullptr;
  auto tramp = +[](int hi, int lo) {
    fiber_start(reinterpret_cast<void*>((static_cast<uintptr_t>(static_cast<unsigned>(hi)) << 32) |
                                        static_cast<unsigned>(lo)));
  };
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(uc, reinterpret_cast<void (*)()>(tramp), 2, static_cast<int>(p >> 32), static_cast<int>(p & 0xffffffffu));
#endif
}

namespace {
inline void do_switch(Fiber* from, Fiber* to, bool dying) {
#ifdef TD_EMU_ASAN
  if (from == nullptr) find_main_stack();
  void** fake = dying ? nullptr : (from != nullptr ? &from->asan_fake_stack : &t_main_fake);
  __sanitizer_start_switch_fiber(fake, to != nullptr ? to->stack : t_main_bottom, to != nullptr ? to->size : t_main_size);
#endif
#if defined(__x86_64__)
  static thread_local void* discard;   // where a finished fiber's stack pointer goes
  td_emu_swap(dying ? &discard : (from != nullptr ? &from->sp : &t_main_sp), to != nullptr ? to->sp : t_main_sp);
#else
  ucontext_t* self = from != nullptr ? static_cast<ucontext_t*>(from->sp) : &t_main_uc;
  ucontext_t* next = to != nullptr ? static_cast<ucontext_t*>(to->sp) : &t_main_uc;
  if (dying) setcontext(next);
  else swapcontext(self, next);
#endif
#ifdef TD_EMU_ASAN
  __sanitizer_finish_switch_fiber(from != nullptr ? from->asan_fake_stack : t_main_fake, nullptr, nullptr);
#endif
}
}  // namespace

#if !(defined(__x86_64__) && !defined(TD_EMU_ASAN))
void fiber_switch(Fiber* from, Fiber* to) { do_switch(from, to, false); }
#endif

void fiber_exit_to(Fiber& from, Fiber* to) {
  do_switch(&from, to, true);
  __builtin_trap();   // a finished fiber is never switched back to
}

void fiber_free(Fiber& f) {
  if (f.stack != nullptr) munmap(f.stack - page_size(), f.size + page_size());
#if !defined(__x86_64__)
  delete static_cast<ucontext_t*>(f.sp);
#endif
  f = Fiber{};
}

}  // namespace td_emu
