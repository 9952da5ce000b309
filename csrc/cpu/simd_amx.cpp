// bf16 x bf16 -> fp32 products on AMX tiles (AMX-BF16: Intel Xeon since Sapphire Rapids), for every m, so a
// row's bits never depend on its batch and decode and verification multiply alike.
//
// C^T = W x^T with the weight rows as A tiles just as they lie in memory (up to 8 rows x 32 k, row stride k)
// and x packed once per product (pack_bf16_amx) into B tiles: 16 k-pairs x up to 16 tokens, the two values
// of a pair side by side, as TDPBF16PS reads them. C is rows x tokens in fp32. The K-tiles of 32 go to four
// accumulator tiles in turn (K-tile t into C[t mod 4], so four chains overlap) which are added at the end as
// (C0 + C1) + (C2 + C3): the same order for any m and any nr. The last, partial K-tile is read from a
// zero-padded copy (a zero product adds nothing), so no tile load reads past a row.
//
// Compiled with -mamx-tile -mamx-bf16 only (no AVX-512: amx_bf16_status() runs on every CPU before any
// check), and used only once the CPU has AMX, Linux has granted this process the tile data state
// (arch_prctl ARCH_REQ_XCOMP_PERM) and a self-test on a small product has passed.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "cpu/simd_kernels.h"

namespace td::cpu {
namespace {

constexpr int kTokens = 16;            // B and C tile columns
constexpr int kPairs = 16;             // B tile rows: k-pairs of one K-tile
constexpr int kDepth = 2 * kPairs;     // k per K-tile
constexpr int kMaxRows = 8;

// The 64-byte operand of LDTILECFG (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// Tiles 0-1: A (W rows x 32 k); 2-3: B (16 k-pairs x tokens); 4-7: C (W rows x tokens).
void configure(int rows, int tokens) {
  TileConfig c;
  std::memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 2; ++t) {
    c.rows[t] = static_cast<uint8_t>(rows);
    c.colsb[t] = 4 * kPairs;
  }
  for (int t = 2; t < 4; ++t) {
    c.rows[t] = kPairs;
    c.colsb[t] = static_cast<uint16_t>(4 * tokens);
  }
  for (int t = 4; t < 8; ++t) {
    c.rows[t] = static_cast<uint8_t>(rows);
    c.colsb[t] = static_cast<uint16_t>(4 * tokens);
  }
  _tile_loadconfig(&c);
}

int64_t k_tiles(int64_t k) { return (k + kDepth - 1) / kDepth; }

// Tokens in the block of 16 that starts at m0 (the last block may have fewer).
int block_width(int m, int m0) { return m - m0 < kTokens ? m - m0 : kTokens; }

// Tokens m0.. of x in B tiles: block (token block, K-tile) holds 16 k-pairs x `width` tokens (16, or what
// the last block has), so m = 1 packs to x itself (a K-tile's 16 pairs in a row).
int64_t b_block(int m, int64_t kts, int m0, int64_t kt) {
  return static_cast<int64_t>(m0) * kts * kDepth + kt * kDepth * block_width(m, m0);
}

}  // namespace

int64_t pack_bf16_amx(const uint16_t* x, int m, int64_t k, uint16_t* packed) {
  const int64_t kts = k_tiles(k);
  const int64_t size = static_cast<int64_t>(m) * kts * kDepth;
  if (packed == nullptr) return size;
  if (k % kDepth != 0) std::memset(packed, 0, static_cast<size_t>(size) * sizeof(uint16_t));   // the K tail
  // block (m0, kt)[p][t][e] = x[m0 + t][kt * 32 + 2p + e]
  for (int i = 0; i < m; ++i) {
    const int m0 = i / kTokens * kTokens, t = i - m0;
    const int width = block_width(m, m0);
    for (int64_t c = 0; c < k; ++c) {
      const int64_t kt = c / kDepth, p = (c % kDepth) / 2, e = c % 2;
      packed[b_block(m, kts, m0, kt) + (p * width + t) * 2 + e] = x[i * k + c];
    }
  }
  return size;
}

void dot_tile_bf16_amx(const uint16_t* xp, int m, int64_t k, const void* const* w_rows, int nr, float* out,
                       int64_t ldo) {
  const uint16_t* const* w = reinterpret_cast<const uint16_t* const*>(w_rows);
  const int64_t kts = k_tiles(k), full = k / kDepth;
  bool strided = true;   // rows equally spaced k apart load as one tile; others are copied per K-tile
  for (int j = 1; j < nr; ++j) strided = strided && w[j] == w[0] + j * k;
  alignas(64) uint16_t tail[kMaxRows][kDepth];
  alignas(64) uint16_t rows[kMaxRows][kDepth];
  if (kts > full) {
    std::memset(tail, 0, sizeof tail);
    for (int j = 0; j < nr; ++j)
      std::memcpy(tail[j], w[j] + full * kDepth, static_cast<size_t>(k - full * kDepth) * sizeof(uint16_t));
  }
  alignas(64) float c[4][kMaxRows][kTokens];
  for (int m0 = 0; m0 < m; m0 += kTokens) {
    const int tokens = block_width(m, m0);
    configure(nr, tokens);
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
    for (int64_t kt = 0; kt < kts; ++kt) {
      const void* a = tail;
      int64_t stride = sizeof tail[0];
      if (kt < full && strided) {
        a = w[0] + kt * kDepth;
        stride = k * static_cast<int64_t>(sizeof(uint16_t));
      } else if (kt < full) {
        for (int j = 0; j < nr; ++j) std::memcpy(rows[j], w[j] + kt * kDepth, sizeof rows[0]);
        a = rows;
        stride = sizeof rows[0];
      }
      const void* bt = xp + b_block(m, kts, m0, kt);
      const int64_t bstride = 4 * tokens;
      switch (kt & 3) {   // tile numbers are immediates
        case 0:
          _tile_loadd(0, a, stride);
          _tile_loadd(2, bt, bstride);
          _tile_dpbf16ps(4, 0, 2);
          break;
        case 1:
          _tile_loadd(1, a, stride);
          _tile_loadd(3, bt, bstride);
          _tile_dpbf16ps(5, 1, 3);
          break;
        case 2:
          _tile_loadd(0, a, stride);
          _tile_loadd(2, bt, bstride);
          _tile_dpbf16ps(6, 0, 2);
          break;
        default:
          _tile_loadd(1, a, stride);
          _tile_loadd(3, bt, bstride);
          _tile_dpbf16ps(7, 1, 3);
          break;
      }
    }
    _tile_stored(4, c[0], sizeof c[0][0]);
    _tile_stored(5, c[1], sizeof c[1][0]);
    _tile_stored(6, c[2], sizeof c[2][0]);
    _tile_stored(7, c[3], sizeof c[3][0]);
    for (int j = 0; j < nr; ++j)
      for (int t = 0; t < tokens; ++t)
        out[(m0 + t) * ldo + j] = (c[0][j][t] + c[1][j][t]) + (c[2][j][t] + c[3][j][t]);
  }
}

namespace {

#ifndef TD_AMX_EMULATED
bool tile_data_permitted() {
  constexpr int kGetPerm = 0x1022, kReqPerm = 0x1023, kTileData = 18;   // ARCH_*_XCOMP_PERM, XFEATURE_XTILEDATA
  if (syscall(SYS_arch_prctl, kReqPerm, kTileData) != 0) return false;
  unsigned long granted = 0;
  return syscall(SYS_arch_prctl, kGetPerm, &granted) == 0 && (granted >> kTileData & 1) != 0;
}
#endif

// A 19 x 70 product (two token blocks, a partial K-tile, rows 8 + 8 + 3) against plain fp32 sums; each row
// of x alone, and the weight rows given in reverse order (not one strided tile), against the batch, bit for
// bit.
std::string self_test() {
  constexpr int m = 19, n = 19;
  constexpr int64_t k = 70;
  uint16_t x[m * k], wt[n * k];
  for (int i = 0; i < m * k; ++i) x[i] = f32_to_bf16(static_cast<float>((i * 37 % 23) - 11) / 8.0f);
  for (int i = 0; i < n * k; ++i) wt[i] = f32_to_bf16(static_cast<float>((i * 53 % 29) - 14) / 16.0f);
  uint16_t packed[m * 3 * kDepth], one[3 * kDepth];
  if (pack_bf16_amx(x, m, k, nullptr) != m * 3 * kDepth) return "self-test: packed size";
  pack_bf16_amx(x, m, k, packed);
  float got[m * n], alone[n];
  for (int r0 = 0; r0 < n; r0 += kMaxRows) {
    const int nr = n - r0 < kMaxRows ? n - r0 : kMaxRows;
    const void* rows[kMaxRows];
    for (int j = 0; j < nr; ++j) rows[j] = wt + (r0 + j) * k;
    dot_tile_bf16_amx(packed, m, k, rows, nr, got + r0, n);
  }
  for (int i = 0; i < m; ++i) {
    pack_bf16_amx(x + i * k, 1, k, one);
    for (int r0 = 0; r0 < n; r0 += kMaxRows) {
      const int nr = n - r0 < kMaxRows ? n - r0 : kMaxRows;
      const void* rows[kMaxRows];
      for (int j = 0; j < nr; ++j) rows[j] = wt + (r0 + nr - 1 - j) * k;
      float reversed[kMaxRows];
      dot_tile_bf16_amx(one, 1, k, rows, nr, reversed, kMaxRows);
      for (int j = 0; j < nr; ++j) alone[r0 + j] = reversed[nr - 1 - j];
    }
    for (int j = 0; j < n; ++j) {
      double want = 0, mag = 0;
      for (int64_t c = 0; c < k; ++c) {
        const double p = static_cast<double>(bf16_to_f32(x[i * k + c])) * bf16_to_f32(wt[j * k + c]);
        want += p;
        mag += std::fabs(p);
      }
      if (std::memcmp(&alone[j], &got[i * n + j], sizeof(float)) != 0) return "self-test: a row depends on its batch";
      if (!(std::fabs(got[i * n + j] - want) <= 1e-5 * mag + 1e-30)) return "self-test: wrong products";
    }
  }
  _tile_release();
  return "";
}

}  // namespace

const std::string& amx_bf16_status() {
  static const std::string status = [] {
#ifdef TD_AMX_EMULATED
    const std::string prefix = "emulated";
#else
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16"))) return std::string("no amx_bf16");
    if (!tile_data_permitted()) return std::string("the kernel refused the AMX tile state (arch_prctl)");
    const std::string prefix = "ok";
#endif
    const std::string failed = self_test();
    return failed.empty() ? prefix : failed;
  }();
  return status;
}

}  // namespace td::cpu
