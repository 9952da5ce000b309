// Runs launches: blocks one after another; each CUDA thread is a fiber that runs until it waits (see emu.h).
//
// Threads hand over to each other directly: a thread that must wait switches to the next runnable thread
// of its block (a queue in thread order, or reverse order), and the thread whose arrival completes a warp
// operation or the block barrier performs it, queues the others and carries on. The scheduler's own stack
// runs only when a block starts and when its queue runs dry: then either every thread has exited, or
// nothing can ever run again, and it explains why (a divergent barrier, a warp operation some lanes never
// reach).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emu/emu.h"
#include "cuda_emu/fiber.h"
#include "cuda_emu/state.h"

#define TD_EMU_INLINE inline __attribute__((always_inline))

namespace td_emu {
namespace {

enum class St : uint8_t { Ready, Running, Barrier, Warp, Exited, Faulted };

struct Thread {
  Fiber fiber;
  uint3 tid{};
  int linear = 0;
  St st = St::Ready;
  // what it waits at
  Site site{};
  int op = 0;           // WarpOp, or BarrierOp at a barrier
  unsigned mask = 0;
  int arg = 0;
  int width = 32;
  uint64_t value = 0;
  uint64_t result = 0;
  CollectiveFn coll = nullptr;
  const char* coll_name = nullptr;
  void* coll_args = nullptr;
};

struct Warp {
  unsigned waiting = 0;   // lanes parked at a warp operation
  unsigned exited = 0;
  unsigned exist = ~0u;   // lanes the warp has (fewer in the last warp of a block not a multiple of 32)
  int lanes = 32;
  // The operation of the first waiting lane; mixed once a lane waits at another one (then completion
  // checks compare lane by lane).
  int sig_op = 0;
  unsigned sig_mask = 0;
  CollectiveFn sig_coll = nullptr;
  bool mixed = false;
};

// One launch in progress.
struct Run {
  const LaunchSpec* spec = nullptr;
  ThreadFn body = nullptr;
  void* ctx = nullptr;
  int n = 0;                       // threads per block
  bool reverse = false;
  uint3 block{};
  Thread* current = nullptr;       // the thread running now
  std::vector<Warp> warps;
  std::vector<int> queue;          // runnable threads, a ring of n + 1 slots
  size_t head = 0, tail = 0;
  int exited = 0;
  int at_barrier = 0;
  std::string fault;               // set by a thread that faulted (it then switches to the scheduler)
  std::vector<std::pair<void*, size_t>> shared;   // static __shared__ arrays this block has reached
  size_t static_shared = 0;
  size_t max_static_shared = 0;
  void* dynamic = nullptr;
  size_t dynamic_bytes = 0;
};

std::mutex g_launch_mutex;                         // one launch at a time, whichever OS thread calls
// Fibers, reused by every block and launch, by linear thread index: one array, for locality.
std::unique_ptr<Thread[]> g_pool;
Thread* g_threads[1024];
Run* g_run = nullptr;
thread_local bool t_launching = false;

std::string short_path(const char* file) {
  const char* p = std::strstr(file, "csrc/");
  return p ? p : file;
}

std::string site_str(Site s) { return short_path(s.file) + ":" + std::to_string(s.line); }

std::string hex(unsigned v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

std::string dims(uint3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

std::string where(const Run& r) {
  return "[cuda-emu] kernel " + std::string(r.spec->kernel) + " (launched at " + site_str(r.spec->site) +
         ", grid " + dims(r.spec->grid) + ", block " + dims(r.spec->block) + ")";
}

std::string who(const Run& r, const Thread& t) {
  return where(r) + ", block " + dims(r.block) + ", thread " + dims(t.tid) + " (warp " +
         std::to_string(t.linear / 32) + ", lane " + std::to_string(t.linear % 32) + "): ";
}

[[noreturn]] void fault(const Run& r, const Thread& t, const std::string& what) { throw KernelFault(who(r, t) + what); }

const char* op_name(const Thread& t) {
  switch (t.op) {
    case kSyncwarp: return "__syncwarp";
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kBallot: return "__ballot_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    case kCollective: return t.coll_name;
    default: return "__reduce_*_sync";
  }
}

std::string waits_at(const Thread& t) {
  if (t.st == St::Barrier) return "__syncthreads at " + site_str(t.site);
  if (t.st == St::Warp) return std::string(op_name(t)) + "(mask " + hex(t.mask) + ") at " + site_str(t.site);
  if (t.st == St::Exited) return "exit (it has exited)";
  return "no synchronisation point (it is still running)";
}

inline Thread& current(const char* what) {
  if (g_run == nullptr || g_run->current == nullptr)
    throw KernelFault(std::string("[cuda-emu] ") + what + " called outside a kernel");
  return *g_run->current;
}

// ---- the run queue and hand-over ----

TD_EMU_INLINE void push(Run& r, Thread& t) {
  t.st = St::Ready;
  r.queue[r.tail] = t.linear;
  r.tail = r.tail + 1 == r.queue.size() ? 0 : r.tail + 1;
}

TD_EMU_INLINE Thread* pop(Run& r) {
  if (r.head == r.tail) return nullptr;
  Thread* t = g_threads[r.queue[r.head]];
  r.head = r.head + 1 == r.queue.size() ? 0 : r.head + 1;
  return t;
}

// The thread to run after `self` stops: the next runnable one, or null (back to the scheduler).
TD_EMU_INLINE Thread* next_thread(Run& r) {
  Thread* next = pop(r);
  r.current = next;
  if (next != nullptr) {
    next->st = St::Running;
    threadIdx = next->tid;
  }
  return next;
}

// Parks the calling thread (its state already says where it waits) and runs another; returns when the
// thread has been released (its result set).
TD_EMU_INLINE void park(Run& r, Thread& self) {
  Thread* next = next_thread(r);
  fiber_switch(&self.fiber, next != nullptr ? &next->fiber : nullptr);
}

// ---- warps ----

bool same_op(const Thread& a, const Thread& b) {
  return a.op == b.op && a.mask == b.mask && (a.op != kCollective || a.coll == b.coll);
}

// The lane a shuffle of `lane` reads (its own lane when the source lies outside its segment).
int shuffle_source(const Run& r, const Thread& t, int lane) {
  const int w = t.width;
  if (w < 1 || w > 32 || (w & (w - 1)) != 0)
    fault(r, t, std::string(op_name(t)) + " width " + std::to_string(w) + " is not a power of two in [1, 32]");
  const int seg = lane & ~(w - 1);
  switch (t.op) {
    case kShflIdx: return seg + (t.arg & (w - 1));
    case kShflUp: return lane - t.arg < seg ? lane : lane - t.arg;
    case kShflDown: return (lane - seg) + t.arg >= w ? lane : lane + t.arg;
    default: {   // xor: a source in a later segment gives the lane its own value
      const int s = lane ^ t.arg;
      return s >= seg + w || s > 31 || s < 0 ? lane : s;
    }
  }
}

// Carries out a warp operation whose lanes (group) have all arrived; results land in each lane's Thread.
void perform(Run& r, Thread* const* w, const Warp& warp, unsigned group, const Thread& t0) {
  const int op = t0.op;
  if (op == kCollective) {
    void* args[32];
    for (int l = 0; l < 32; ++l) args[l] = w[l]->coll_args;
    try {
      t0.coll(args, 32);
    } catch (const std::exception& e) {
      fault(r, t0, std::string(e.what()) + " (at " + site_str(t0.site) + ")");
    }
    return;
  }
  if (op >= kShflIdx && op <= kShflXor) {
    for (unsigned rest = group; rest; rest &= rest - 1) {
      const int l = __builtin_ctz(rest);
      Thread& t = *w[l];
      const int src = shuffle_source(r, t, l);
      if (src != l && !((group >> src) & 1)) {
        const std::string why = src >= warp.lanes ? "which does not exist (a partial warp)"
                                : ((warp.exited >> src) & 1) ? "which has exited"
                                                              : "which is not in the mask " + hex(t.mask);
        fault(r, t, std::string(op_name(t)) + " at " + site_str(t.site) + " reads lane " + std::to_string(src) + ", " + why);
      }
      t.result = w[src]->value;
    }
    return;
  }
  uint32_t acc = 0;
  bool first = true;
  unsigned ballot = 0;
  for (unsigned rest = group; rest; rest &= rest - 1) {
    const int l = __builtin_ctz(rest);
    const uint32_t v = static_cast<uint32_t>(w[l]->value);
    if (v) ballot |= 1u << l;
    if (first) {
      acc = v;
      first = false;
      continue;
    }
    switch (op) {
      case kReduceAddU: acc += v; break;
      case kReduceMinU: acc = std::min(acc, v); break;
      case kReduceMaxU: acc = std::max(acc, v); break;
      case kReduceMinS: acc = static_cast<uint32_t>(std::min(static_cast<int32_t>(acc), static_cast<int32_t>(v))); break;
      case kReduceMaxS: acc = static_cast<uint32_t>(std::max(static_cast<int32_t>(acc), static_cast<int32_t>(v))); break;
      case kReduceAnd: acc &= v; break;
      case kReduceOr: acc |= v; break;
      case kReduceXor: acc ^= v; break;
      default: break;
    }
  }
  uint64_t res = acc;
  if (op == kBallot) res = ballot;
  if (op == kAny) res = ballot != 0;
  if (op == kAll) res = ballot == group;
  if (op == kSyncwarp) res = 0;
  for (unsigned rest = group; rest; rest &= rest - 1) w[__builtin_ctz(rest)]->result = res;
}

// If every live lane named by t's mask waits at t's operation, performs it and queues those lanes (all but
// `running`, the thread that is executing this). Returns whether it completed.
bool complete(Run& r, int wi, Thread& t, const Thread* running, unsigned group);

TD_EMU_INLINE bool try_complete(Run& r, int wi, Thread& t, const Thread* running) {
  const Warp& warp = r.warps[wi];
  const unsigned group = t.mask & ~warp.exited;
  if (group & ~warp.waiting) return false;   // the common case: lanes still to come
  return complete(r, wi, t, running, group);
}

__attribute__((noinline)) bool complete(Run& r, int wi, Thread& t, const Thread* running, unsigned group) {
  Warp& warp = r.warps[wi];
  Thread* const* w = &g_threads[wi * 32];
  if (warp.mixed) {
    for (unsigned rest = group; rest; rest &= rest - 1)
      if (!same_op(*w[__builtin_ctz(rest)], t)) return false;
  }
  perform(r, w, warp, group, t);
  warp.waiting &= ~group;
  if (warp.waiting == 0) warp.mixed = false;
  for (int k = 0; k < 32; ++k) {
    const int l = r.reverse ? 31 - k : k;
    if (!((group >> l) & 1)) continue;
    if (w[l] == running) w[l]->st = St::Running;
    else push(r, *w[l]);
  }
  return true;
}

bool same_site(Site a, Site b) { return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0); }

// ---- the block ----

void thread_main(void* p) {
  Thread* t = static_cast<Thread*>(p);
  Run& r = *g_run;
  try {
    r.body(r.ctx);
    t->st = St::Exited;
    ++r.exited;
    const int wi = t->linear / 32;
    Warp& warp = r.warps[wi];
    warp.exited |= 1u << (t->linear % 32);
    // Lanes that waited only for this one (exited lanes drop out of warp operations) may complete now.
    for (bool progress = true; progress;) {
      progress = false;
      for (unsigned rest = warp.waiting; rest && !progress; rest &= rest - 1)
        progress = try_complete(r, wi, *g_threads[wi * 32 + __builtin_ctz(rest)], nullptr);
    }
  } catch (const std::exception& e) {
    t->st = St::Faulted;
    r.fault = e.what();
    if (r.fault.rfind("[cuda-emu]", 0) != 0) r.fault = who(r, *t) + r.fault;
    r.current = nullptr;
    fiber_exit_to(t->fiber, nullptr);
  }
  Thread* next = next_thread(r);
  fiber_exit_to(t->fiber, next != nullptr ? &next->fiber : nullptr);
}

// Nothing can run and some threads have not exited: explain (always throws).
[[noreturn]] void explain_stuck(const Run& r) {
  for (int i = 0; i < r.n; ++i) {
    const Thread& t = *g_threads[i];
    if (t.st != St::Warp) continue;
    const int base = t.linear / 32 * 32;
    for (unsigned rest = t.mask; rest; rest &= rest - 1) {
      const int j = __builtin_ctz(rest);
      const Thread& u = *g_threads[base + j];
      if ((u.st == St::Warp && same_op(u, t)) || u.st == St::Exited) continue;
      fault(r, t, "waits at " + waits_at(t) + ", but lane " + std::to_string(j) + ", named in the mask, waits at " +
                      waits_at(u) + " (divergent warp: this would hang or be undefined on a GPU)");
    }
    fault(r, t, "waits at " + waits_at(t) + ", which cannot complete");
  }
  const Thread* first = nullptr;
  const Thread* gone = nullptr;
  for (int i = 0; i < r.n; ++i) {
    if (first == nullptr && g_threads[i]->st == St::Barrier) first = g_threads[i];
    if (gone == nullptr && g_threads[i]->st == St::Exited) gone = g_threads[i];
  }
  if (first != nullptr && gone != nullptr)
    fault(r, *first, "__syncthreads at " + site_str(first->site) + " is reached by " + std::to_string(r.at_barrier) +
                         " of " + std::to_string(r.n) + " threads: thread " + dims(gone->tid) +
                         " exited without reaching it (a barrier in divergent code)");
  throw KernelFault(where(r) + ": the block stopped with no thread able to run");
}

void run_block(Run& r) {
  const Settings& s = settings();
  const dim3 b = r.spec->block;
  r.head = r.tail = 0;
  for (int k = 0; k < r.n; ++k) {
    const int i = r.reverse ? r.n - 1 - k : k;
    Thread& t = *g_threads[i];
    t.tid = uint3{static_cast<unsigned>(i) % b.x, static_cast<unsigned>(i) / b.x % b.y, static_cast<unsigned>(i) / (b.x * b.y)};
    t.linear = i;
    fiber_reset(t.fiber, s.stack_bytes, &thread_main, &t, static_cast<size_t>(i) * 1088);
    push(r, t);
  }
  for (size_t wi = 0; wi < r.warps.size(); ++wi) {
    Warp& w = r.warps[wi];
    w = Warp{};
    w.lanes = std::min(32, r.n - static_cast<int>(wi) * 32);
    w.exist = w.lanes == 32 ? ~0u : (1u << w.lanes) - 1;
  }
  r.exited = 0;
  r.at_barrier = 0;
  r.fault.clear();
  r.shared.clear();
  r.static_shared = 0;
  if (r.dynamic != nullptr) std::memset(r.dynamic, 0xff, r.dynamic_bytes);
  Thread* first = next_thread(r);
  fiber_switch(nullptr, &first->fiber);
  // Back here when no thread can run.
  r.current = nullptr;
  try {
    if (!r.fault.empty()) throw KernelFault(r.fault);
    if (r.exited != r.n) explain_stuck(r);
  } catch (...) {
    for (int i = 0; i < r.n; ++i)
      if (g_threads[i]->st != St::Exited) g_threads[i]->fiber.abandoned = true;
    throw;
  }
  r.max_static_shared = std::max(r.max_static_shared, r.static_shared);
}

// "T = float, ..." from the launching function's __PRETTY_FUNCTION__ ("... [with T = float]"), or "".
std::string template_args(const char* pretty) {
  const char* w = pretty != nullptr ? std::strstr(pretty, "[with ") : nullptr;
  if (w == nullptr) return "";
  std::string s(w + 6);
  if (!s.empty() && s.back() == ']') s.pop_back();
  return s;
}

bool bad_launch(const LaunchSpec& sp, cudaError_t code, const std::string& what) {
  set_error(code, "[cuda-emu] kernel " + std::string(sp.kernel) + " (launched at " + site_str(sp.site) + "): " + what);
  return true;
}

}  // namespace

// Launch-configuration errors are reported as CUDA does: the kernel does not run and cudaGetLastError
// returns the error.
bool launch_config_invalid(const LaunchSpec& sp) {
  const dim3 g = sp.grid, b = sp.block;
  const unsigned long long threads = static_cast<unsigned long long>(b.x) * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || g.x == 0 || g.y == 0 || g.z == 0)
    return bad_launch(sp, cudaErrorInvalidConfiguration, "grid " + dims(g) + " or block " + dims(b) + " has a zero dimension");
  if (threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
    return bad_launch(sp, cudaErrorInvalidConfiguration, "block " + dims(b) + " has " + std::to_string(threads) +
                                                             " threads; at most 1024 (x, y <= 1024, z <= 64)");
  if (g.x > 2147483647u || g.y > 65535u || g.z > 65535u)
    return bad_launch(sp, cudaErrorInvalidConfiguration, "grid " + dims(g) + " exceeds (2^31 - 1, 65535, 65535)");
  const size_t limit = static_cast<size_t>(dynamic_shared_limit(sp.fn));
  if (sp.dynamic_shared > limit)
    return bad_launch(sp, cudaErrorInvalidValue, std::to_string(sp.dynamic_shared) + " bytes of dynamic shared memory, over the " +
                                                     std::to_string(limit) + "-byte limit of this kernel (raise it with cudaFuncSetAttribute)");
  if (!is_valid_stream(sp.stream))
    return bad_launch(sp, cudaErrorInvalidResourceHandle, "the stream was not created by cudaStreamCreate (or is destroyed)");
  return false;
}

namespace {

void check_mask(const Run& r, const Thread& t) {
  const int lane = t.linear % 32;
  const Warp& warp = r.warps[t.linear / 32];
  const unsigned exist = warp.exist;
  if (t.op == kCollective && warp.lanes < 32)
    fault(r, t, std::string(t.coll_name) + " at " + site_str(t.site) + " needs a full warp of 32 threads; this warp has " +
                    std::to_string(warp.lanes));
  if (!((t.mask >> lane) & 1))
    fault(r, t, std::string(op_name(t)) + " at " + site_str(t.site) + ": the mask " + hex(t.mask) +
                    " does not include the calling lane " + std::to_string(lane));
  if (t.mask & ~exist)
    fault(r, t, std::string(op_name(t)) + " at " + site_str(t.site) + ": the mask " + hex(t.mask) +
                    " names lanes that do not exist (this warp has " + std::to_string(warp.lanes) + " threads)");
  if (t.op == kCollective && warp.exited != 0)
    fault(r, t, std::string(t.coll_name) + " at " + site_str(t.site) + " needs all 32 lanes, but lane " +
                    std::to_string(__builtin_ctz(warp.exited)) + " has exited");
}

// Arrival of the running thread at a warp operation (fields already set).
TD_EMU_INLINE void arrive_warp(Thread& t) {
  Run& r = *g_run;
  t.st = St::Warp;
  const int wi = t.linear / 32;
  Warp& warp = r.warps[wi];
  if (t.mask != warp.exist || t.op == kCollective) check_mask(r, t);   // a full-warp mask needs no checks
  if (warp.waiting == 0) {
    warp.sig_op = t.op;
    warp.sig_mask = t.mask;
    warp.sig_coll = t.coll;
  } else if (t.op != warp.sig_op || t.mask != warp.sig_mask || (t.op == kCollective && t.coll != warp.sig_coll)) {
    warp.mixed = true;
  }
  warp.waiting |= 1u << (t.linear % 32);
  if (!try_complete(r, wi, t, &t)) park(r, t);
}

}  // namespace

// ---- API used by the kernels (emu.h) ----

uint64_t warp_op(Site site, int op, unsigned mask, uint64_t value, int arg, int width) {
  Thread& t = current("a warp intrinsic");
  t.site = site;
  t.op = op;
  t.mask = mask;
  t.value = value;
  t.arg = arg;
  t.width = width;
  arrive_warp(t);
  return t.result;
}

void warp_collective(Site site, const char* what, CollectiveFn fn, void* args) {
  Thread& t = current(what);
  t.site = site;
  t.op = kCollective;
  t.mask = 0xffffffffu;
  t.coll = fn;
  t.coll_name = what;
  t.coll_args = args;
  arrive_warp(t);
}

int block_barrier(Site site, int op, int predicate) {
  Thread& t = current("__syncthreads");
  Run& r = *g_run;
  t.st = St::Barrier;
  t.site = site;
  t.op = op;
  t.value = static_cast<uint64_t>(predicate);
  if (++r.at_barrier < r.n) {
    park(r, t);
    return static_cast<int>(t.result);
  }
  // The last thread to arrive: every thread is here (none can have exited, or the count could not be n).
  int count = 0;
  for (int i = 0; i < r.n; ++i) {
    const Thread& u = *g_threads[i];
    if (!same_site(u.site, t.site) || u.op != t.op)
      fault(r, u, "waits at __syncthreads at " + site_str(u.site) + " while thread " + dims(t.tid) +
                      " waits at __syncthreads at " + site_str(t.site) + " (a barrier in divergent code)");
    count += static_cast<int>(u.value);
  }
  uint64_t res = 0;
  if (op == kBarCount) res = static_cast<uint64_t>(count);
  if (op == kBarAnd) res = count == r.n;
  if (op == kBarOr) res = count > 0;
  r.at_barrier = 0;
  for (int k = 0; k < r.n; ++k) {
    Thread& u = *g_threads[r.reverse ? r.n - 1 - k : k];
    u.result = res;
    if (&u == &t) u.st = St::Running;
    else push(r, u);
  }
  return static_cast<int>(res);
}

unsigned active_mask() {
  Thread& t = current("__activemask");
  const Warp& w = g_run->warps[t.linear / 32];
  return w.exist & ~w.exited;
}

bool in_kernel() { return g_run != nullptr && g_run->current != nullptr; }

void fail(const std::string& what) {
  if (in_kernel()) throw KernelFault(who(*g_run, *g_run->current) + what);
  throw KernelFault("[cuda-emu] " + what);
}

void fail_misaligned(const char* op, const void* p, size_t alignment) {
  char b[128];
  std::snprintf(b, sizeof b, "%s of address %p, which is not %zu-byte aligned (misaligned address on a GPU)", op, p,
                alignment);
  fail(b);
}

void note_shared(void* p, size_t bytes, Site site) {
  if (!in_kernel()) return;
  Run& r = *g_run;
  for (const auto& e : r.shared)
    if (e.first == p) return;
  r.shared.emplace_back(p, bytes);
  std::memset(p, 0xff, bytes);   // what a block finds in shared memory is garbage, not zeros
  r.static_shared += bytes;
  const Settings& s = settings();
  if (r.static_shared > s.static_shared_limit)
    fail("uses " + std::to_string(r.static_shared) + " bytes of static __shared__ memory (" + std::to_string(bytes) +
         " declared at " + site_str(site) + "), over the " + std::to_string(s.static_shared_limit) + "-byte limit");
  if (r.static_shared + r.dynamic_bytes > s.shared_optin_limit)
    fail("uses " + std::to_string(r.static_shared) + " bytes of static and " + std::to_string(r.dynamic_bytes) +
         " of dynamic shared memory, over the " + std::to_string(s.shared_optin_limit) + "-byte limit per block");
}

void* dynamic_shared() {
  current("extern __shared__");
  return g_run->dynamic;
}

void check_launch_bounds(unsigned long long max_threads, Site site) {
  Thread& t = current("__launch_bounds__");
  if (t.linear != 0) return;
  const unsigned long long n = static_cast<unsigned long long>(blockDim.x) * blockDim.y * blockDim.z;
  if (n > max_threads)
    fail("launched with " + std::to_string(n) + " threads per block, more than its __launch_bounds__(" +
         std::to_string(max_threads) + ") at " + site_str(site) + " (too many resources requested for launch)");
}

void launch(const LaunchSpec& sp, ThreadFn body, void* ctx) {
  if (t_launching)
    fail("kernel " + std::string(sp.kernel) + " launched from inside a kernel: dynamic parallelism is not emulated");
  if (launch_config_invalid(sp)) return;
  count_kernel();
  for (int i = 0; i < sp.pointer_count; ++i) {
    std::string why;
    if (sp.pointer_args[i] != nullptr && !is_device_range(sp.pointer_args[i], 0, &why)) {
      char b[64];
      std::snprintf(b, sizeof b, "%p", sp.pointer_args[i]);
      throw KernelFault("[cuda-emu] kernel " + std::string(sp.kernel) + " (launched at " + site_str(sp.site) +
                        "): pointer argument " + std::to_string(sp.pointer_index[i]) + " (" + b +
                        ") is not device memory: " + why);
    }
  }
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  struct Flag {
    Flag() { t_launching = true; }
    ~Flag() {
      t_launching = false;
      g_run = nullptr;
    }
  } flag;
  const Settings& s = settings();
  Run r;
  r.spec = &sp;
  r.body = body;
  r.ctx = ctx;
  r.n = static_cast<int>(sp.block.x * sp.block.y * sp.block.z);
  r.reverse = s.reverse;
  r.queue.resize(static_cast<size_t>(r.n) + 1);
  r.warps.resize(static_cast<size_t>((r.n + 31) / 32));
  if (!g_pool) {
    g_pool.reset(new Thread[1024]);
    for (int i = 0; i < 1024; ++i) g_threads[i] = &g_pool[i];
  }
  std::unique_ptr<void, void (*)(void*)> dyn(nullptr, std::free);
  if (sp.dynamic_shared > 0) {
    void* p = nullptr;
    if (posix_memalign(&p, 128, sp.dynamic_shared) != 0) throw std::bad_alloc();
    dyn.reset(p);
    r.dynamic = p;
    r.dynamic_bytes = sp.dynamic_shared;
  }
  gridDim = sp.grid;
  blockDim = sp.block;
  g_run = &r;
  const auto t0 = std::chrono::steady_clock::now();
  const dim3 g = sp.grid;
  const unsigned long long blocks = static_cast<unsigned long long>(g.x) * g.y * g.z;
  Traffic traffic;
  struct Counter {
    bool on;
    Counter(bool on, Traffic* t) : on(on) {
      if (on) traffic_begin(t);
    }
    ~Counter() {
      if (on) traffic_end();
    }
  } counter(s.count_traffic, &traffic);
  for (unsigned long long k = 0; k < blocks; ++k) {
    const unsigned long long b = r.reverse ? blocks - 1 - k : k;
    r.block = uint3{static_cast<unsigned>(b % g.x), static_cast<unsigned>(b / g.x % g.y),
                    static_cast<unsigned>(b / (static_cast<unsigned long long>(g.x) * g.y))};
    blockIdx = r.block;
    run_block(r);
  }
  if (s.record_launches)
    record_launch(LaunchRecord{sp.kernel, template_args(sp.context), {g.x, g.y, g.z},
                               {sp.block.x, sp.block.y, sp.block.z}, sp.dynamic_shared, r.max_static_shared,
                               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                               s.count_traffic, traffic});
}

}  // namespace td_emu
