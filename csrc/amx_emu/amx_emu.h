// A software model of the AMX tile instructions the CPU kernels use, for machines without AMX: a build with
// TRIDECODE_AMX=EMU compiles csrc/cpu/simd_amx.cpp with this header forced in first (-include), so its
// _tile_* calls land here and the AMX kernel set runs (slowly) on any x86 CPU, for its parity tests.
//
// Per thread, like the hardware: a 64-byte palette-1 configuration and eight tiles of up to 16 rows x 64
// bytes. LDTILECFG checks the configuration and zeroes the tiles; a load or store moves `rows` rows of
// `colsb` bytes at the given stride (the rest of a loaded row is zero); TDPBF16PS checks the shapes the
// instruction requires (C rows = A rows, C colsb = B colsb, A colsb / 4 = B rows) and, for each element,
// adds the two bf16 products of each k-pair in order, each rounded to fp32. Any misuse aborts with a
// message: a kernel that would fault on the hardware fails its test here.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace td_amx_emu {

struct State {
  bool configured = false;
  uint8_t rows[8] = {};
  uint16_t colsb[8] = {};
  alignas(64) uint8_t tile[8][16][64] = {};
};

inline State& state() {
  static thread_local State s;
  return s;
}

[[noreturn]] inline void fail(const char* what, int t) {
  std::fprintf(stderr, "amx emulator: %s (tile %d)\n", what, t);
  std::abort();
}

inline void check_tile(int t) {
  if (t < 0 || t > 7) fail("no such tile", t);
  if (!state().configured) fail("tile used before LDTILECFG", t);
  if (state().rows[t] == 0 || state().colsb[t] == 0) fail("tile not configured", t);
}

inline void loadconfig(const void* p) {
  const uint8_t* c = static_cast<const uint8_t*>(p);
  State& s = state();
  if (c[0] == 0) {   // palette 0: the initial state
    s = State{};
    return;
  }
  if (c[0] != 1) fail("palette other than 1", -1);
  if (c[1] != 0) fail("start_row must be 0", -1);
  for (int i = 2; i < 16; ++i)
    if (c[i] != 0) fail("reserved configuration bytes must be 0", -1);
  for (int t = 0; t < 16; ++t) {
    uint16_t cb;
    std::memcpy(&cb, c + 16 + 2 * t, sizeof cb);
    const uint8_t r = c[48 + t];
    if (t >= 8 && (cb != 0 || r != 0)) fail("palette 1 has 8 tiles", t);
    if (t < 8) {
      if (r > 16 || cb > 64) fail("more than 16 rows or 64 bytes a row", t);
      if ((r == 0) != (cb == 0)) fail("rows and colsb must be both zero or both set", t);
      s.rows[t] = r;
      s.colsb[t] = cb;
    }
  }
  std::memset(s.tile, 0, sizeof s.tile);
  s.configured = true;
}

inline void release() { state() = State{}; }

inline void zero(int t) {
  check_tile(t);
  std::memset(state().tile[t], 0, sizeof state().tile[t]);
}

inline void loadd(int t, const void* base, long stride) {
  check_tile(t);
  State& s = state();
  std::memset(s.tile[t], 0, sizeof s.tile[t]);
  for (int r = 0; r < s.rows[t]; ++r)
    std::memcpy(s.tile[t][r], static_cast<const uint8_t*>(base) + r * stride, s.colsb[t]);
}

inline void stored(int t, void* base, long stride) {
  check_tile(t);
  const State& s = state();
  for (int r = 0; r < s.rows[t]; ++r) std::memcpy(static_cast<uint8_t*>(base) + r * stride, s.tile[t][r], s.colsb[t]);
}

inline float bf16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline void dpbf16ps(int c, int a, int b) {
  check_tile(c);
  check_tile(a);
  check_tile(b);
  if (c == a || c == b || a == b) fail("TDPBF16PS operands must be distinct tiles", c);
  State& s = state();
  if (s.rows[c] != s.rows[a]) fail("C rows != A rows", c);
  if (s.colsb[c] != s.colsb[b]) fail("C colsb != B colsb", c);
  if (s.colsb[a] % 4 != 0 || s.colsb[a] / 4 != s.rows[b]) fail("A colsb / 4 != B rows", a);
  if (s.colsb[c] % 4 != 0) fail("C colsb not a multiple of 4", c);
  for (int m = 0; m < s.rows[c]; ++m)
    for (int n = 0; n < s.colsb[c] / 4; ++n) {
      float acc;
      std::memcpy(&acc, s.tile[c][m] + 4 * n, sizeof acc);
      for (int k = 0; k < s.colsb[a] / 4; ++k) {
        acc += bf16(s.tile[a][m] + 4 * k) * bf16(s.tile[b][k] + 4 * n);
        acc += bf16(s.tile[a][m] + 4 * k + 2) * bf16(s.tile[b][k] + 4 * n + 2);
      }
      std::memcpy(s.tile[c][m] + 4 * n, &acc, sizeof acc);
    }
}

}  // namespace td_amx_emu

#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbf16ps
#define _tile_loadconfig(p) td_amx_emu::loadconfig(p)
#define _tile_release() td_amx_emu::release()
#define _tile_zero(t) td_amx_emu::zero(t)
#define _tile_loadd(t, base, stride) td_amx_emu::loadd(t, base, stride)
#define _tile_stored(t, base, stride) td_amx_emu::stored(t, base, stride)
#define _tile_dpbf16ps(c, a, b) td_amx_emu::dpbf16ps(c, a, b)
