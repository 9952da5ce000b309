// Kernels for CPUs with AVX512_BF16 and AVX512_VNNI (compiled with those flags only here, called only when
// the CPU has them):
// - bf16 x bf16 -> fp32 tiles on vdpbf16ps: 32 products per instruction, reading bf16 weights as they are;
// - int8 weights (a bf16 scale per group of 32) times int16 activations on vpdpwssd: a group's 32 products
//   per instruction, exact in int32, then scaled into fp32 lanes.
// Tails are masked loads (zeros), so every output is accumulated in the same order for any m and nr.
// GCC 12's _mm512_reduce_add_* headers trip -Wmaybe-uninitialized on their own placeholder variables.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "cpu/simd_kernels.h"

namespace td::cpu {
namespace {

inline __m512bh load_bh(const uint16_t* p, __mmask32 mask) {
  return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}

template <int MR, int NR>
void bf16_tile(const uint16_t* x, int64_t k, const uint16_t* const* w, float* out, int64_t ldo) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; kk += 32) {
    const int64_t left = k - kk;
    const __mmask32 mask = left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << left) - 1);
    __m512bh wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = load_bh(w[j] + kk, mask);
    if (MR == 1)   // decode: the next tile's rows follow these in memory; fetch them while these multiply
      for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(w[j] + NR * k + kk), _MM_HINT_T0);
    for (int i = 0; i < MR; ++i) {
      const __m512bh xv = load_bh(x + i * k + kk, mask);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * ldo + j] = _mm512_reduce_add_ps(acc[i][j]);
}

inline __m512 group_scale(const uint16_t* s, int64_t g) {
  return _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(s[g]) << 16)));
}

// One group of 32 is one instruction: 16 lanes of int16 pairs. The weights are widened once per group and
// reused for every row of x.
template <int MR, int NR>
void i8_tile(const int16_t* x, int64_t k, const int8_t* const* w, const uint16_t* const* sc, float* out,
             int64_t ldo) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t kk = 0, g = 0; kk < k; kk += 32, ++g) {
    const int64_t left = k - kk;
    const __mmask32 mask = left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << left) - 1);
    __m512i wv[NR];
    __m512 sv[NR];
    for (int j = 0; j < NR; ++j) {
      wv[j] = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, w[j] + kk));
      sv[j] = group_scale(sc[j], g);
    }
    if (MR == 1 && (g & 1) == 0)   // decode: fetch the next tile's rows (they follow these), a line per row
      for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(w[j] + NR * k + kk), _MM_HINT_T0);
    for (int i = 0; i < MR; ++i) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + i * k + kk);
      for (int j = 0; j < NR; ++j) {
        const __m512i p = _mm512_dpwssd_epi32(_mm512_setzero_si512(), xv, wv[j]);
        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sv[j], acc[i][j]);
      }
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
  rows_by_shape(
      m, nr, [&](int i) { i8_tile<1, 8>(x + i * k, k, w, sc, out + i * ldo, ldo); },
      [&](int i, int j0) { i8_tile<4, 4>(x + i * k, k, w + j0, sc + j0, out + i * ldo + j0, ldo); },
      [&](int i, int j0) { i8_tile<1, 4>(x + i * k, k, w + j0, sc + j0, out + i * ldo + j0, ldo); },
      [&](int i, int j0, int nj) {
        for (int j = 0; j < nj; ++j) i8_tile<1, 1>(x + i * k, k, w + j0 + j, sc + j0 + j, out + i * ldo + j0 + j, ldo);
      });
}

}  // namespace td::cpu
