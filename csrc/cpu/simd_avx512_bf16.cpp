// Kernels for CPUs with AVX512_BF16 and AVX512_VNNI (compiled with those flags only here, called only when
// the CPU has them):
// - bf16 x bf16 -> fp32 tiles on vdpbf16ps: 32 products per instruction, reading bf16 weights as they are;
// - int8 weights (a bf16 scale per group of 32) times int16 activations on vpdpwssd: a group's 32 products
//   per instruction, exact in int32, then scaled into fp32 lanes.
// Tails are masked loads (zeros), so every output is accumulated in the same order for any m and nr.
// GCC 12's _mm512_reduce_add_* headers trip -W(maybe-)uninitialized on their own placeholder variables.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "cpu/simd_kernels.h"

namespace td::cpu {
namespace {

inline __m512bh load_bh(const uint16_t* p, __mmask32 mask) {
  return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}

template <int MR, int NR, bool kMasked>
inline void bf16_step(const uint16_t* x, int64_t k, const uint16_t* const* w, int64_t kk, __m512 (&acc)[MR][NR]) {
  const __mmask32 mask = kMasked ? static_cast<__mmask32>((1u << (k - kk)) - 1) : ~__mmask32{0};
  __m512bh wv[NR];
  for (int j = 0; j < NR; ++j)
    wv[j] = kMasked ? load_bh(w[j] + kk, mask) : (__m512bh)_mm512_loadu_si512(w[j] + kk);
  if (MR == 1 && NR > 1)   // few rows: the next tile's rows follow these in memory; fetch them meanwhile
    for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(w[j] + NR * k + kk), _MM_HINT_T0);
  for (int i = 0; i < MR; ++i) {
    const __m512bh xv = kMasked ? load_bh(x + i * k + kk, mask) : (__m512bh)_mm512_loadu_si512(x + i * k + kk);
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
  }
}

template <int MR, int NR>
void bf16_tile(const uint16_t* x, int64_t k, const uint16_t* const* w, float* out, int64_t ldo) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t kk = 0;
  for (; kk + 32 <= k; kk += 32) bf16_step<MR, NR, false>(x, k, w, kk, acc);
  if (kk < k) bf16_step<MR, NR, true>(x, k, w, kk, acc);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * ldo + j] = _mm512_reduce_add_ps(acc[i][j]);
}

constexpr int64_t kI8PrefetchAhead = 4096;

// One group of 32 is one instruction: 16 lanes of int16 pairs. The weights are widened once per group and
// reused for every row of x; scale[j][gi] is group g's scale of row j as fp32.
template <int MR, int NR, bool kMasked>
inline void i8_group(const int16_t* x, int64_t k, const int8_t* const* w, const float (*scale)[16], int gi,
                     int64_t g, __m512 (&acc)[MR][NR]) {
  const int64_t kk = g * 32;
  const __mmask32 mask = kMasked ? static_cast<__mmask32>((1u << (k - kk)) - 1) : ~__mmask32{0};
  __m512i wv[NR];
  for (int j = 0; j < NR; ++j)
    wv[j] = _mm512_cvtepi8_epi16(kMasked ? _mm256_maskz_loadu_epi8(mask, w[j] + kk)
                                         : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + kk)));
  if (MR == 1 && NR > 1 && (g & 1) == 0)   // few rows: fetch the next tile's rows (they follow these)
    for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(w[j] + NR * k + kk), _MM_HINT_T0);
  // Decode (one row at a time, rows back to back): this kernel spends more instructions per weight byte than
  // the bf16 one, so the hardware prefetchers run less far ahead; a line 4 KiB ahead (measured best of 2-8
  // KiB, a few percent per decode step) keeps more of the stream in flight.
  if (MR == 1 && NR == 1 && (g & 1) == 0)
    _mm_prefetch(reinterpret_cast<const char*>(w[0] + kk + kI8PrefetchAhead), _MM_HINT_T0);
  for (int i = 0; i < MR; ++i) {
    const __m512i xv = kMasked ? _mm512_maskz_loadu_epi16(mask, x + i * k + kk) : _mm512_loadu_si512(x + i * k + kk);
    for (int j = 0; j < NR; ++j) {
      const __m512i p = _mm512_dpwssd_epi32(_mm512_setzero_si512(), xv, wv[j]);
      acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(scale[j][gi]), acc[i][j]);
    }
  }
}

// The scales are widened from bf16 16 groups at a time into a buffer on the stack (no per-call state).
template <int MR, int NR>
void i8_tile(const int16_t* x, int64_t k, const int8_t* const* w, const uint16_t* const* sc, float* out,
             int64_t ldo) {
  const int64_t groups = (k + 31) / 32, full = k / 32;
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  alignas(64) float scale[NR][16];
  for (int64_t g0 = 0; g0 < groups; g0 += 16) {
    const int ng = groups - g0 < 16 ? static_cast<int>(groups - g0) : 16;
    const __mmask16 smask = static_cast<__mmask16>((1u << ng) - 1);
    for (int j = 0; j < NR; ++j)
      _mm512_store_ps(scale[j], _mm512_castsi512_ps(_mm512_slli_epi32(
                                    _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(smask, sc[j] + g0)), 16)));
    for (int gi = 0; gi < ng; ++gi) {
      if (g0 + gi < full)
        i8_group<MR, NR, false>(x, k, w, scale, gi, g0 + gi, acc);
      else
        i8_group<MR, NR, true>(x, k, w, scale, gi, g0 + gi, acc);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * ldo + j] = _mm512_reduce_add_ps(acc[i][j]);
}

// Decode shapes (few rows of x) take 8 weight rows at once; chunks take 4 x 4 tiles (16 accumulators).
template <class Tile1x8, class Tile4x4, class Tile1x4, class Rest>
void rows_by_shape(int m, int nr, Tile1x8 t18, Tile4x4 t44, Tile1x4 t14, Rest rest) {
  if (nr == 8 && m < 4) {
    for (int i = 0; i < m; ++i) t18(i);
    return;
  }
  for (int j0 = 0; j0 < nr; j0 += 4) {
    const int nj = nr - j0 < 4 ? nr - j0 : 4;
    int i = 0;
    if (nj == 4) {
      for (; i + 4 <= m; i += 4) t44(i, j0);
      for (; i < m; ++i) t14(i, j0);
    } else {
      for (; i < m; ++i) rest(i, j0, nj);
    }
  }
}

}  // namespace

void dot_tile_bf16_avx512bf16(const uint16_t* x, int m, int64_t k, const void* const* w_rows, int nr, float* out,
                              int64_t ldo) {
  const uint16_t* const* w = reinterpret_cast<const uint16_t* const*>(w_rows);
  if (m == 1) {   // decode: one weight row at a time, one ascending stream (the prefetchers' best case)
    for (int j = 0; j < nr; ++j) bf16_tile<1, 1>(x, k, w + j, out + j, ldo);
    return;
  }
  rows_by_shape(
      m, nr, [&](int i) { bf16_tile<1, 8>(x + i * k, k, w, out + i * ldo, ldo); },
      [&](int i, int j0) { bf16_tile<4, 4>(x + i * k, k, w + j0, out + i * ldo + j0, ldo); },
      [&](int i, int j0) { bf16_tile<1, 4>(x + i * k, k, w + j0, out + i * ldo + j0, ldo); },
      [&](int i, int j0, int nj) {
        for (int j = 0; j < nj; ++j) bf16_tile<1, 1>(x + i * k, k, w + j0 + j, out + i * ldo + j0 + j, ldo);
      });
}

void dot_tile_i8_vnni(const int16_t* x, int m, int64_t k, const int8_t* const* w, const uint16_t* const* sc, int nr,
                      float* out, int64_t ldo) {
  if (m == 1) {   // decode: one weight row at a time, one ascending stream
    for (int j = 0; j < nr; ++j) i8_tile<1, 1>(x, k, w + j, sc + j, out + j, ldo);
    return;
  }
  rows_by_shape(
      m, nr, [&](int i) { i8_tile<1, 8>(x + i * k, k, w, sc, out + i * ldo, ldo); },
      [&](int i, int j0) { i8_tile<4, 4>(x + i * k, k, w + j0, sc + j0, out + i * ldo + j0, ldo); },
      [&](int i, int j0) { i8_tile<1, 4>(x + i * k, k, w + j0, sc + j0, out + i * ldo + j0, ldo); },
      [&](int i, int j0, int nj) {
        for (int j = 0; j < nj; ++j) i8_tile<1, 1>(x + i * k, k, w + j0 + j, sc + j0 + j, out + i * ldo + j0 + j, ldo);
      });
}

}  // namespace td::cpu
