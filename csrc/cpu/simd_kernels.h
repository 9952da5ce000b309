// Hot inner kernels of the CPU backend, compiled once per x86 ISA level (simd_*.cpp) and picked at run
// time, so one build runs everywhere and still uses AVX2 / AVX-512 / AVX512_BF16 / VNNI where the CPU has
// them. A kernel set is chosen once (the best the CPU has); use_kernels() switches it for parity tests.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace td::cpu {

// out[i * ldo + j] = dot(x + i*k, w_rows[j]) for i < m, j < nr (nr <= 8): a small output tile. Each output is
// accumulated in the same order whatever m and nr are, so a row's result does not depend on the batch.
using DotTileF32 = void (*)(const float* x, int m, int64_t k, const void* const* w_rows, DType wt, int nr,
                            float* out, int64_t ldo);   // fp32 x; fp32 or bf16 weight rows
using DotTileBF16 = void (*)(const uint16_t* x, int m, int64_t k, const void* const* w_rows, int nr, float* out,
                             int64_t ldo);              // bf16 x and bf16 weight rows, fp32 accumulation
// int16 x times int8 weight rows with a bf16 scale per group of 32 (w_scales[j]: the groups of row j):
// out[i * ldo + j] = sum over groups g of float(exact int32 sum of group g) * scale[g], in fp32.
using DotTileI8 = void (*)(const int16_t* x, int m, int64_t k, const int8_t* const* w_rows,
                           const uint16_t* const* w_scales, int nr, float* out, int64_t ldo);

struct SimdKernels {
  const char* isa;       // the kernel set: generic, avx2, avx512, avx512_vnni, avx512_bf16
  DotTileF32 dot_tile;
  // dst[0..n) = fp32(src[0..n)) for a float storage dtype.
  void (*to_f32)(const void* src, DType t, int64_t n, float* dst);
  // sum_i a[i] * b[i]
  float (*dot)(const float* a, const float* b, int64_t n);
  // null: bf16 products run as dot_tile on x rounded to bf16 (the same products, fp32 FMA sums)
  DotTileBF16 dot_tile_bf16;
  const char* bf16_path;   // what bf16 x bf16 products run on
  DotTileI8 dot_tile_i8;
  const char* int8_path;   // what int8 products run on
  // null: dot_tile_bf16 reads x [m, k] as it is; else x is first packed once per product (this returns the
  // packed size in bf16 values when `packed` is null) and dot_tile_bf16 reads the packed form.
  int64_t (*pack_bf16)(const uint16_t* x, int m, int64_t k, uint16_t* packed);
};

const SimdKernels& simd();
// Whether AMX-BF16 tiles run here: "ok", "emulated", or why not ("not built", "no amx_bf16", ...).
std::string amx_availability();
// The kernel sets this CPU can run, weakest first (the last is the default).
std::vector<std::string> available_kernels();
// Switches every later product to the named set (one of available_kernels()); throws otherwise.
void use_kernels(const std::string& isa);

// One declaration per compiled ISA level.
#define TD_DECLARE_SIMD(suffix)                                                                        \
  void dot_tile_##suffix(const float*, int, int64_t, const void* const*, DType, int, float*, int64_t);      \
  void to_f32_##suffix(const void*, DType, int64_t, float*);                                           \
  float dot_##suffix(const float*, const float*, int64_t);                                             \
  void dot_tile_i8_##suffix(const int16_t*, int, int64_t, const int8_t* const*, const uint16_t* const*, int,    \
                            float*, int64_t);
TD_DECLARE_SIMD(generic)
TD_DECLARE_SIMD(avx2)
TD_DECLARE_SIMD(avx512)
#undef TD_DECLARE_SIMD
// simd_avx512_bf16.cpp: AVX512_BF16 (vdpbf16ps) and AVX512_VNNI (vpdpwssd) kernels.
void dot_tile_bf16_avx512bf16(const uint16_t*, int, int64_t, const void* const*, int, float*, int64_t);
void dot_tile_i8_vnni(const int16_t*, int, int64_t, const int8_t* const*, const uint16_t* const*, int, float*,
                      int64_t);
// simd_amx.cpp: AMX-BF16 tiles (x packed by pack_bf16_amx), and whether they may run here: "ok" (or
// "emulated" in a TRIDECODE_AMX=EMU build), else why not.
int64_t pack_bf16_amx(const uint16_t*, int, int64_t, uint16_t*);
void dot_tile_bf16_amx(const uint16_t*, int, int64_t, const void* const*, int, float*, int64_t);
const std::string& amx_bf16_status();

}  // namespace td::cpu
