#include "cpu/cpu_backend.h"

#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/check.h"
#include "cpu/simd_kernels.h"

namespace td {

Backend& cpu_backend() {
  static cpu::CpuBackend backend;
  return backend;
}

namespace cpu {

// Threads for the next parallel region: all of them, unless the machine has more runnable threads than
// online CPUs (Linux's /proc/loadavg counts them as the kernel schedules), when a region's threads would
// wait at its end for one the scheduler has parked behind another process, for a whole time slice; then
// the calling thread works alone. Re-read at most every 2 ms; two readings in a row switch it.
int region_threads() {
  const int max = omp_get_max_threads();
  if (max <= 1) return 1;
  static std::atomic<int64_t> checked_ns{-1};
  static std::atomic<int> busy{0};
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch()).count();
  const int64_t last = checked_ns.load(std::memory_order_relaxed);
  if (last < 0 || now - last > 2'000'000) {
    checked_ns.store(now, std::memory_order_relaxed);
    int running = 0;
    if (FILE* f = std::fopen("/proc/loadavg", "r")) {   // "0.50 0.40 0.30 3/215 12345"
      double a, b, c;
      int total = 0;
      if (std::fscanf(f, "%lf %lf %lf %d/%d", &a, &b, &c, &running, &total) != 5) running = 0;
      std::fclose(f);
    }
    static const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    // Two readings in a row must agree before the count changes: one of this process's own threads may
    // still be runnable for a moment after a region, and one reading is not a trend.
    static std::atomic<int> streak{0};
    const bool over = cpus > 0 && running > cpus;
    const int s = over ? std::max(1, streak.load(std::memory_order_relaxed) + 1)
                       : std::min(-1, streak.load(std::memory_order_relaxed) - 1);
    streak.store(s, std::memory_order_relaxed);
    if (s >= 2) busy.store(1, std::memory_order_relaxed);
    if (s <= -2) busy.store(0, std::memory_order_relaxed);
  }
  return busy.load(std::memory_order_relaxed) ? 1 : max;
}
int omp_thread_id() { return omp_get_thread_num(); }
int omp_team_size() { return omp_get_num_threads(); }

namespace {
// Every instruction-set level this CPU can run, weakest first.
std::vector<SimdKernels> isa_sets() {
  std::vector<SimdKernels> sets;
  sets.push_back({"generic", dot_tile_generic, to_f32_generic, dot_generic, nullptr, "fp32 fma (generic)",
                  dot_tile_i8_generic, "int32 loops (generic)", nullptr});
#if defined(__x86_64__) && defined(TD_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return sets;
  sets.push_back({"avx2", dot_tile_avx2, to_f32_avx2, dot_avx2, nullptr, "fp32 fma (avx2)", dot_tile_i8_avx2,
                  "vpmaddwd (avx2)", nullptr});
  if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")))
    return sets;
  sets.push_back({"avx512", dot_tile_avx512, to_f32_avx512, dot_avx512, nullptr, "fp32 fma (avx512)",
                  dot_tile_i8_avx512, "vpmaddwd (avx2)", nullptr});
  if (!__builtin_cpu_supports("avx512vnni")) return sets;
  sets.push_back({"avx512_vnni", dot_tile_avx512, to_f32_avx512, dot_avx512, nullptr, "fp32 fma (avx512)",
                  dot_tile_i8_vnni, "vpdpwssd (avx512_vnni)", nullptr});
  if (!__builtin_cpu_supports("avx512bf16")) return sets;
  sets.push_back({"avx512_bf16", dot_tile_avx512, to_f32_avx512, dot_avx512, dot_tile_bf16_avx512bf16,
                  "vdpbf16ps (avx512_bf16)", dot_tile_i8_vnni, "vpdpwssd (avx512_vnni)", nullptr});
#endif
  return sets;
}

// The levels, then AMX tiles for bf16 products on top of the best of them where they may run.
std::vector<SimdKernels> kernel_sets() {
  std::vector<SimdKernels> sets = isa_sets();
#if defined(TD_HAVE_AMX)
  const std::string& amx = amx_bf16_status();
  if (amx == "ok" || amx == "emulated") {
    SimdKernels k = sets.back();
    k.isa = "amx_bf16";
    k.dot_tile_bf16 = dot_tile_bf16_amx;
    k.pack_bf16 = pack_bf16_amx;
    k.bf16_path = amx == "ok" ? "AMX tiles (amx_bf16)" : "AMX tiles (emulated: TRIDECODE_AMX=EMU build)";
    sets.push_back(k);
  }
#endif
  return sets;
}

}  // namespace

std::string amx_availability() {
#if defined(TD_HAVE_AMX)
  return amx_bf16_status();
#else
  return "not built";
#endif
}

namespace {
const std::vector<SimdKernels>& all_sets() {
  static const std::vector<SimdKernels> sets = kernel_sets();
  return sets;
}

std::atomic<const SimdKernels*> current{nullptr};
}  // namespace

const SimdKernels& simd() {
  const SimdKernels* k = current.load(std::memory_order_acquire);
  if (k == nullptr) {
    k = &all_sets().back();
    current.store(k, std::memory_order_release);
  }
  return *k;
}

std::vector<std::string> available_kernels() {
  std::vector<std::string> names;
  for (const SimdKernels& k : all_sets()) names.emplace_back(k.isa);
  return names;
}

void use_kernels(const std::string& isa) {
  for (const SimdKernels& k : all_sets())
    if (isa == k.isa) {
      current.store(&k, std::memory_order_release);
      return;
    }
  std::string have;
  for (const std::string& n : available_kernels()) have += (have.empty() ? "" : ", ") + n;
  throw Error(detail::concat("[cpu] kernel set '", isa, "' is not available on this CPU (it has: ", have, ")"));
}

void* CpuBackend::alloc(size_t bytes) {
  void* p = nullptr;
  if (bytes == 0) bytes = 1;
  if (posix_memalign(&p, 64, bytes) != 0 || p == nullptr)
    throw OutOfMemory(detail::concat("[cpu] out of memory allocating ", bytes, " bytes"));
  return p;
}

void CpuBackend::free(void* p) { std::free(p); }
void CpuBackend::upload(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuBackend::download(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuBackend::copy(void* dst, const void* src, size_t bytes) { std::memmove(dst, src, bytes); }

void CpuBackend::fill_random(void* dst, DType t, int64_t n, float std, uint64_t seed) {
#pragma omp parallel for schedule(static) num_threads(region_threads()) if (n >= (1 << 20))
  for (int64_t i = 0; i < n; ++i) {
    const float v = std == 0.0f ? 1.0f : std * normal_from_hash(seed, static_cast<uint64_t>(i));
    if (t == DType::F32) static_cast<float*>(dst)[i] = v;
    else if (t == DType::BF16) static_cast<uint16_t*>(dst)[i] = f32_to_bf16(v);
    else static_cast<uint16_t*>(dst)[i] = f32_to_f16(v);
  }
}

void CpuBackend::kv_write(void* cache_ptr, DType cache_dtype, const float* chunk, int n, int kv_heads, int head_dim,
                          int64_t row0, int64_t head_stride) {
  TD_CHECK(cache_dtype == DType::F32, "[kv_write] the CPU backend keeps an fp32 KV cache, got ",
           dtype_name(cache_dtype));
  float* cache = static_cast<float*>(cache_ptr);
  for (int i = 0; i < n; ++i)
    for (int g = 0; g < kv_heads; ++g)
      std::memcpy(cache + g * head_stride + (row0 + i) * head_dim,
                  chunk + (static_cast<int64_t>(i) * kv_heads + g) * head_dim, head_dim * sizeof(float));
}

void CpuBackend::embed(const WeightView& table, const int32_t* ids, int n, float* out) {
  for (int i = 0; i < n; ++i) simd().to_f32(table.row_ptr(ids[i]), table.dtype, table.cols, out + i * table.cols);
}

void CpuBackend::rms_norm(const float* x, const WeightView& w, int n, int dim, float eps, float* out) {
  std::vector<float> wf(dim);
  simd().to_f32(w.data, w.dtype, dim, wf.data());
#pragma omp parallel for schedule(static) num_threads(region_threads()) if (static_cast<int64_t>(n) * dim >= (1 << 16))
  for (int i = 0; i < n; ++i) {
    const float* xi = x + static_cast<int64_t>(i) * dim;
    float* oi = out + static_cast<int64_t>(i) * dim;
    // mean of squares accumulated in double: the reference accumulates fp32 pairwise, and double keeps us
    // closer to the exact value than either.
    double ss = 0.0;
    for (int j = 0; j < dim; ++j) ss += static_cast<double>(xi[j]) * xi[j];
    const float var = static_cast<float>(ss / dim);
    const float r = 1.0f / std::sqrt(var + eps);
    for (int j = 0; j < dim; ++j) oi[j] = wf[j] * (xi[j] * r);
  }
}

void CpuBackend::rope(float* x, int n, int heads, int head_dim, const int64_t* positions, const RopeParams& rp,
                      bool is_query) {
  const int half = head_dim / 2;
  TD_CHECK(static_cast<int>(rp.inv_freq.size()) == half, "[rope] inv_freq has ", rp.inv_freq.size(),
           " entries, expected ", half);
#pragma omp parallel for schedule(static) num_threads(region_threads()) if (static_cast<int64_t>(n) * heads * head_dim >= (1 << 16))
  for (int i = 0; i < n; ++i) {
    std::vector<float> cs(half), sn(half);
    const float pos = static_cast<float>(positions[i]);
    for (int j = 0; j < half; ++j) {
      const float angle = pos * rp.inv_freq[j];  // fp32 product, as the reference computes it
      cs[j] = std::cos(angle) * rp.attention_factor;
      sn[j] = std::sin(angle) * rp.attention_factor;
    }
    float qscale = 1.0f;
    if (is_query && rp.qscale_beta != 0.0f) {
      const float steps = std::floor(pos / static_cast<float>(rp.qscale_length));
      qscale = 1.0f + rp.qscale_beta * std::log(1.0f + steps);
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + (static_cast<int64_t>(i) * heads + h) * head_dim;
      for (int j = 0; j < half; ++j) {
        const float a = v[j], b = v[j + half];
        // rotate-half: [a, b] -> [a cos - b sin, b cos + a sin]
        v[j] = (a * cs[j] - b * sn[j]) * qscale;
        v[j + half] = (b * cs[j] + a * sn[j]) * qscale;
      }
    }
  }
}

void CpuBackend::swiglu(const float* gate, const float* up, int64_t n, float* out) {
#pragma omp parallel for schedule(static) num_threads(region_threads()) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void CpuBackend::add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void CpuBackend::axpy(float* x, const float* y, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += a * y[i];
}

}  // namespace cpu
}  // namespace td
