"""The software AMX tiles of csrc/amx_emu/ (on which CI runs the amx_bf16 kernels without AMX) against the
instruction's definition: TDPBF16PS results on random bf16 data, computed here in numpy in the same order,
and every misuse the hardware faults on aborting with a message. Compiled with the host compiler."""

import os
import shutil
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "amx_emu", "amx_emu.h")

PROGRAM = r"""
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <string>
struct alignas(64) Cfg { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; };
int main(int argc, char** argv) {
  const std::string what = argv[1];
  int M = 3, P = 5, N = 7;                 // A: M x P pairs, B: P x N, C: M x N
  Cfg c;
  std::memset(&c, 0, sizeof c);
  c.palette = 1;
  c.rows[0] = M; c.colsb[0] = 4 * P;
  c.rows[1] = P; c.colsb[1] = 4 * N;
  c.rows[2] = M; c.colsb[2] = 4 * N;
  if (what == "rows17") c.rows[3] = 17, c.colsb[3] = 4;
  if (what == "colsb_no_rows") c.colsb[3] = 4;
  if (what == "tile8") c.rows[8] = 1, c.colsb[8] = 4;
  if (what == "reserved") c.res[3] = 1;
  if (what == "shape_c_rows") c.rows[2] = M + 1;
  if (what == "shape_c_cols") c.colsb[2] = 4 * (N - 1);
  if (what == "shape_k") c.rows[1] = P + 1;
  uint16_t a[16 * 32], b[16 * 32];
  float out[16 * 16];
  std::memset(out, 0, sizeof out);
  for (int i = 0; i < 16 * 32; ++i) {
    unsigned v;
    if (std::scanf("%x", &v) != 1) return 3;
    a[i] = (uint16_t)v;
  }
  for (int i = 0; i < 16 * 32; ++i) {
    unsigned v;
    if (std::scanf("%x", &v) != 1) return 3;
    b[i] = (uint16_t)v;
  }
  if (what != "unconfigured") _tile_loadconfig(&c);
  _tile_loadd(0, a, 64);
  _tile_loadd(1, b, 64);
  if (what == "zero_unset") _tile_zero(5);
  _tile_zero(2);
  if (what == "same_tiles") _tile_dpbf16ps(2, 0, 0);
  _tile_dpbf16ps(2, 0, 1);
  _tile_dpbf16ps(2, 0, 1);                 // twice: C accumulates
  _tile_stored(2, out, 64);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) std::printf("%a\n", out[m * 16 + n]);
  _tile_release();
  return 0;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    assert cxx, "no C++ compiler to build the AMX emulator test"
    d = tmp_path_factory.mktemp("amx")
    src, exe = d / "t.cpp", d / "t"
    src.write_text(PROGRAM)
    subprocess.run([cxx, "-std=c++17", "-O1", "-include", HEADER, str(src), "-o", str(exe)], check=True)
    return str(exe)


def bf16(x):
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)   # truncation: exact bf16 values


def run(program, what, a_bits, b_bits):
    data = " ".join(f"{v:x}" for v in np.concatenate([a_bits.ravel(), b_bits.ravel()]))
    return subprocess.run([program, what], input=data, capture_output=True, text=True, timeout=60)


def test_dpbf16ps_is_the_instruction(program):
    rng = np.random.default_rng(3)
    a_bits = bf16(rng.standard_normal((16, 32)))
    b_bits = bf16(rng.standard_normal((16, 32)))
    out = run(program, "ok", a_bits, b_bits)
    assert out.returncode == 0, out.stderr
    got = np.array([float.fromhex(v) for v in out.stdout.split()], np.float32).reshape(16, 16)
    M, P, N = 3, 5, 7
    a = (a_bits.astype(np.uint32) << 16).view(np.float32)
    b = (b_bits.astype(np.uint32) << 16).view(np.float32)
    want = np.zeros((16, 16), np.float32)
    for _ in range(2):
        for m in range(M):
            for n in range(N):
                acc = want[m, n]
                for p in range(P):        # C[m][n] += A[m][2p] B[p][2n], then += A[m][2p+1] B[p][2n+1]
                    acc = np.float32(acc + a[m, 2 * p] * b[p, 2 * n])
                    acc = np.float32(acc + a[m, 2 * p + 1] * b[p, 2 * n + 1])
                want[m, n] = acc
    np.testing.assert_array_equal(got, want)   # rows / columns past the configured shape stay zero


@pytest.mark.parametrize("what, message", [
    ("unconfigured", "before LDTILECFG"), ("rows17", "more than 16 rows"), ("colsb_no_rows", "both zero or both set"),
    ("tile8", "8 tiles"), ("reserved", "reserved"), ("shape_c_rows", "C rows != A rows"),
    ("shape_c_cols", "C colsb != B colsb"), ("shape_k", "A colsb / 4 != B rows"), ("zero_unset", "not configured"),
    ("same_tiles", "distinct tiles")])
def test_misuse_aborts(program, what, message):
    zeros = np.zeros((16, 32), np.uint16)
    out = run(program, what, zeros, zeros)
    assert out.returncode != 0 and message in out.stderr, (out.returncode, out.stderr)
