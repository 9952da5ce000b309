// CUDA's vector types (float4, uint4, ...), __half and __nv_bfloat16 as plain host types.
//
// Layout and alignment follow CUDA's vector_types.h (float4 and uint4 are 16-byte aligned, float2 8), so
// the vectorised loads of the kernels have the same alignment requirements here as on a GPU.
// Conversions round to nearest even, as __float2half / __float2bfloat16 do; NaN becomes the canonical NaN.
#pragma once
#include <cstdint>
#include <cstring>

// ---- vector types ----
#define TD_EMU_VEC1(T, N, A) struct alignas(A) N##1 { T x; };
#define TD_EMU_VEC2(T, N, A) struct alignas(A) N##2 { T x, y; };
#define TD_EMU_VEC3(T, N) struct N##3 { T x, y, z; };
#define TD_EMU_VEC4(T, N, A) struct alignas(A) N##4 { T x, y, z, w; };
#define TD_EMU_VECS(T, N, A1, A2, A4)                                                                         \
  TD_EMU_VEC1(T, N, A1) TD_EMU_VEC2(T, N, A2) TD_EMU_VEC3(T, N) TD_EMU_VEC4(T, N, A4)                         \
  inline N##1 make_##N##1(T x) { return N##1{x}; }                                                         \
  inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }                                                 \
  inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }                                         \
  inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }

TD_EMU_VECS(signed char, char, 1, 2, 4)
TD_EMU_VECS(unsigned char, uchar, 1, 2, 4)
TD_EMU_VECS(short, short, 2, 4, 8)
TD_EMU_VECS(unsigned short, ushort, 2, 4, 8)
TD_EMU_VECS(int, int, 4, 8, 16)
TD_EMU_VECS(unsigned int, uint, 4, 8, 16)
TD_EMU_VECS(long long, longlong, 8, 16, 16)
TD_EMU_VECS(unsigned long long, ulonglong, 8, 16, 16)
TD_EMU_VECS(float, float, 4, 8, 16)
TD_EMU_VECS(double, double, 8, 16, 16)
#undef TD_EMU_VEC1
#undef TD_EMU_VEC2
#undef TD_EMU_VEC3
#undef TD_EMU_VEC4
#undef TD_EMU_VECS

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

namespace td_emu {

inline uint32_t f2u(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float u2f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u = f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;            // NaN -> canonical NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t h) { return u2f(static_cast<uint32_t>(h) << 16); }

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return u2f(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return u2f(sign | ((exp + 112u) << 23) | (man << 13));
  // zero or subnormal: man * 2^-24, exact in float
  const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
  return sign ? -v : v;
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = f2u(f);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return 0x7fff;                                        // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);        // inf, or rounds past 65504
  if (ax < 0x38800000u) {                                                      // below the smallest normal
    if (ax < 0x33000000u) return static_cast<uint16_t>(sign);                 // rounds to zero
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (ax >> 13) - (112u << 10);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// A 16-bit float type: bits plus conversions. Arithmetic goes through float and rounds once, which gives
// the correctly rounded result for + - * / of two 16-bit values (float has more than 2p + 2 bits).
template <uint16_t (*ToBits)(float), float (*FromBits)(uint16_t)>
struct Float16Base {
  uint16_t __x;
  Float16Base() = default;
  Float16Base(float f) : __x(ToBits(f)) {}
  Float16Base(double f) : __x(ToBits(static_cast<float>(f))) {}
  Float16Base(int v) : __x(ToBits(static_cast<float>(v))) {}
  operator float() const { return FromBits(__x); }
};

}  // namespace td_emu

struct __half : td_emu::Float16Base<td_emu::float_to_half_bits, td_emu::half_bits_to_float> {
  using Float16Base::Float16Base;
  __half() = default;
};
struct __nv_bfloat16 : td_emu::Float16Base<td_emu::float_to_bf16_bits, td_emu::bf16_bits_to_float> {
  using Float16Base::Float16Base;
  __nv_bfloat16() = default;
};
using half = __half;
using nv_bfloat16 = __nv_bfloat16;
struct __half_raw { unsigned short x; };
struct __nv_bfloat16_raw { unsigned short x; };
struct alignas(4) __half2 { __half x, y; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
using half2 = __half2;
using nv_bfloat162 = __nv_bfloat162;

#define TD_EMU_F16_OPS(T)                                                                                   \
  inline T operator+(const T& a, const T& b) { return T(float(a) + float(b)); }                             \
  inline T operator-(const T& a, const T& b) { return T(float(a) - float(b)); }                             \
  inline T operator*(const T& a, const T& b) { return T(float(a) * float(b)); }                             \
  inline T operator/(const T& a, const T& b) { return T(float(a) / float(b)); }                             \
  inline T operator-(const T& a) { T r = a; r.__x ^= 0x8000u; return r; }                                  \
  inline T& operator+=(T& a, const T& b) { return a = a + b; }                                              \
  inline T& operator-=(T& a, const T& b) { return a = a - b; }                                              \
  inline T& operator*=(T& a, const T& b) { return a = a * b; }                                              \
  inline T& operator/=(T& a, const T& b) { return a = a / b; }                                              \
  inline bool operator==(const T& a, const T& b) { return float(a) == float(b); }                           \
  inline bool operator!=(const T& a, const T& b) { return float(a) != float(b); }                           \
  inline bool operator<(const T& a, const T& b) { return float(a) < float(b); }                             \
  inline bool operator>(const T& a, const T& b) { return float(a) > float(b); }                             \
  inline bool operator<=(const T& a, const T& b) { return float(a) <= float(b); }                           \
  inline bool operator>=(const T& a, const T& b) { return float(a) >= float(b); }
TD_EMU_F16_OPS(__half)
TD_EMU_F16_OPS(__nv_bfloat16)
#undef TD_EMU_F16_OPS

// ---- conversions (cuda_fp16.h / cuda_bf16.h) ----
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __short_as_half(short s) { return __ushort_as_half(static_cast<unsigned short>(s)); }
inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
inline float2 __half22float2(__half2 h) { return float2{float(h.x), float(h.y)}; }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hsub(__half a, __half b) { return a - b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hfma(__half a, __half b, __half c) { return __half(float(a) * float(b) + float(c)); }
inline __half __hneg(__half a) { return -a; }
inline __half __habs(__half a) { a.__x &= 0x7fffu; return a; }
inline __half __hmax(__half a, __half b) { return float(a) >= float(b) ? a : b; }
inline __half __hmin(__half a, __half b) { return float(a) <= float(b) ? a : b; }

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 h; h.__x = u; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float a) { return __floats2bfloat162_rn(a, a); }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{float(h.x), float(h.y)}; }
inline float __low2float(__nv_bfloat162 h) { return float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return float(h.y); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162{a, b}; }
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return a + b; }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return a * b; }
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __nv_bfloat16(float(a) * float(b) + float(c));
}
inline __nv_bfloat16 __hmax(__nv_bfloat16 a, __nv_bfloat16 b) { return float(a) >= float(b) ? a : b; }
inline __nv_bfloat16 __hmin(__nv_bfloat16 a, __nv_bfloat16 b) { return float(a) <= float(b) ? a : b; }
