// nvcuda::wmma on the emulator. Every lane's fragment holds the whole tile (row-major, whatever the layout
// parameter), so element-wise code over frag.x[0..num_elements) sees all of it; load, store and mma are
// collectives of the whole warp that run once for the warp. They check what CUDA requires and a GPU would
// not report: all 32 lanes take part, with the same pointer, leading dimension and layout; the pointer is
// 256-bit aligned; ldm is a multiple of 16 bytes; and (mma, store) every lane holds the same fragment.
// Products are exact and accumulate in fp32 in k order: tensor-core rounding is not reproduced.
#pragma once
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include "emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}

namespace detail {
template <class Use, int M, int N, int K> struct Dims;
template <int M, int N, int K> struct Dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct Dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct Dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };
template <class T> struct Storage { using type = T; };
template <> struct Storage<precision::tf32> { using type = float; };
template <class L> constexpr int layout_code() { return std::is_same_v<L, col_major> ? mem_col_major : mem_row_major; }

template <int M, int N, int K, class T>
constexpr bool valid_shape() {
  if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, signed char> ||
                std::is_same_v<T, unsigned char>)
    return (M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16);
  else if constexpr (std::is_same_v<T, precision::tf32>)
    return M == 16 && N == 16 && K == 8;
  else if constexpr (std::is_same_v<T, double>)
    return M == 8 && N == 8 && K == 4;
  else
    return true;   // accumulator element types: checked through the operand fragments
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
  static_assert(detail::valid_shape<M, N, K, T>(), "this WMMA shape / element type is not supported by CUDA");

 public:
  using element_type = T;
  using storage_element_type = typename detail::Storage<T>::type;
  static constexpr int rows = detail::Dims<Use, M, N, K>::rows;
  static constexpr int cols = detail::Dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  storage_element_type x[num_elements];
};

template <class Frag, class V>
inline void fill_fragment(Frag& f, const V& v) {
  for (int i = 0; i < Frag::num_elements; ++i) f.x[i] = static_cast<typename Frag::storage_element_type>(v);
}

namespace detail {

struct MemArgs {
  void* frag;
  size_t frag_bytes;
  const void* ptr;
  unsigned ldm;
  int layout;
  int rows, cols;
  size_t elem;   // bytes per element in memory
  void (*copy)(void* frag, const void* mem, unsigned ldm, int layout, int rows, int cols, bool to_frag);
};

[[noreturn]] inline void misuse(const char* op, const std::string& what) {
  throw std::runtime_error(std::string("wmma::") + op + ": " + what);
}

inline void check_alignment(const char* op, const void* p, unsigned ldm, size_t elem) {
  char buf[160];
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    std::snprintf(buf, sizeof buf, "pointer %p is not 256-bit (32-byte) aligned", p);
    misuse(op, buf);
  }
  if ((ldm * elem) % 16 != 0) {
    std::snprintf(buf, sizeof buf, "ldm %u is not a multiple of 16 bytes (%zu-byte elements: a multiple of %zu)", ldm,
                  elem, 16 / elem);
    misuse(op, buf);
  }
}

inline void check_uniform(const char* op, void* const* lane_args, int lanes) {
  const MemArgs* a0 = static_cast<const MemArgs*>(lane_args[0]);
  for (int l = 1; l < lanes; ++l) {
    const MemArgs* a = static_cast<const MemArgs*>(lane_args[l]);
    if (a->ptr != a0->ptr || a->ldm != a0->ldm || a->layout != a0->layout) {
      char buf[200];
      std::snprintf(buf, sizeof buf, "lane %d passes (%p, ldm %u) where lane 0 passes (%p, ldm %u): the warp must agree",
                    l, a->ptr, a->ldm, a0->ptr, a0->ldm);
      misuse(op, buf);
    }
  }
  check_alignment(op, a0->ptr, a0->ldm, a0->elem);
}

inline void check_same_fragments(const char* op, const char* which, void* const* frags, size_t bytes, int lanes) {
  for (int l = 1; l < lanes; ++l)
    if (std::memcmp(frags[l], frags[0], bytes) != 0)
      misuse(op, std::string("lane ") + std::to_string(l) + " holds a different " + which +
                     " fragment than lane 0 (the emulator gives each lane the whole tile; lane-dependent edits of "
                     "fragment elements cannot be emulated)");
}

inline void load_collective(void* const* lane_args, int lanes) {
  check_uniform("load_matrix_sync", lane_args, lanes);
  const MemArgs* a0 = static_cast<const MemArgs*>(lane_args[0]);
  a0->copy(a0->frag, a0->ptr, a0->ldm, a0->layout, a0->rows, a0->cols, true);
  for (int l = 1; l < lanes; ++l) std::memcpy(static_cast<const MemArgs*>(lane_args[l])->frag, a0->frag, a0->frag_bytes);
}

inline void store_collective(void* const* lane_args, int lanes) {
  check_uniform("store_matrix_sync", lane_args, lanes);
  void* frags[32];
  for (int l = 0; l < lanes; ++l) frags[l] = static_cast<const MemArgs*>(lane_args[l])->frag;
  const MemArgs* a0 = static_cast<const MemArgs*>(lane_args[0]);
  check_same_fragments("store_matrix_sync", "accumulator", frags, a0->frag_bytes, lanes);
  a0->copy(a0->frag, a0->ptr, a0->ldm, a0->layout, a0->rows, a0->cols, false);
}

// Element copy between a fragment (row-major tile) and memory in the given layout.
template <class S, class MemT>
void copy_tile(void* frag, const void* mem, unsigned ldm, int layout, int rows, int cols, bool to_frag) {
  S* f = static_cast<S*>(frag);
  MemT* m = static_cast<MemT*>(const_cast<void*>(mem));
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const size_t off = layout == mem_row_major ? static_cast<size_t>(r) * ldm + c : static_cast<size_t>(c) * ldm + r;
      if (to_frag)
        f[r * cols + c] = static_cast<S>(m[off]);
      else
        m[off] = static_cast<MemT>(f[r * cols + c]);
    }
}

struct MmaArgs {
  void* d;
  const void* a;
  const void* b;
  const void* c;
  size_t d_bytes, a_bytes, b_bytes, c_bytes;
  void (*compute)(void* d, const void* a, const void* b, const void* c);
};

inline void mma_collective(void* const* lane_args, int lanes) {
  void* fa[32];
  void* fb[32];
  void* fc[32];
  for (int l = 0; l < lanes; ++l) {
    const MmaArgs* m = static_cast<const MmaArgs*>(lane_args[l]);
    fa[l] = const_cast<void*>(m->a);
    fb[l] = const_cast<void*>(m->b);
    fc[l] = const_cast<void*>(m->c);
  }
  const MmaArgs* m0 = static_cast<const MmaArgs*>(lane_args[0]);
  check_same_fragments("mma_sync", "A", fa, m0->a_bytes, lanes);
  check_same_fragments("mma_sync", "B", fb, m0->b_bytes, lanes);
  check_same_fragments("mma_sync", "C", fc, m0->c_bytes, lanes);
  m0->compute(m0->d, m0->a, m0->b, m0->c);   // d may alias c: compute() works on a copy
  for (int l = 1; l < lanes; ++l) std::memcpy(static_cast<const MmaArgs*>(lane_args[l])->d, m0->d, m0->d_bytes);
}

template <class FD, class FA, class FB, class FC>
void mma_compute(void* d, const void* a, const void* b, const void* c) {
  constexpr int M = FA::rows, K = FA::cols, N = FB::cols;
  const FA& A = *static_cast<const FA*>(a);
  const FB& B = *static_cast<const FB*>(b);
  const FC& C = *static_cast<const FC*>(c);
  using Acc = std::conditional_t<std::is_integral_v<typename FD::storage_element_type>, long long,
                                 std::conditional_t<std::is_same_v<typename FD::storage_element_type, double>, double, float>>;
  typename FD::storage_element_type out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      Acc s = static_cast<Acc>(C.x[i * N + j]);
      for (int k = 0; k < K; ++k) s += static_cast<Acc>(A.x[i * K + k]) * static_cast<Acc>(B.x[k * N + j]);
      out[i * N + j] = static_cast<typename FD::storage_element_type>(s);
    }
  std::memcpy(static_cast<FD*>(d)->x, out, sizeof out);
}

}  // namespace detail

template <class Use, int M, int N, int K, class T, class L, class MemT>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const MemT* p, unsigned ldm,
                             TD_EMU_CALLER_ARGS) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulator loads take a layout_t argument");
  using F = fragment<Use, M, N, K, T, L>;
  detail::MemArgs args{&f, sizeof f, p, ldm, detail::layout_code<L>(), F::rows, F::cols, sizeof(MemT),
                       &detail::copy_tile<typename F::storage_element_type, MemT>};
  ::td_emu::warp_collective(::td_emu::Site{td_file_, td_line_}, "wmma::load_matrix_sync", &detail::load_collective, &args);
}

template <int M, int N, int K, class T, class MemT>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const MemT* p, unsigned ldm, layout_t layout,
                             TD_EMU_CALLER_ARGS) {
  using F = fragment<accumulator, M, N, K, T>;
  detail::MemArgs args{&f, sizeof f, p, ldm, static_cast<int>(layout), F::rows, F::cols, sizeof(MemT),
                       &detail::copy_tile<typename F::storage_element_type, MemT>};
  ::td_emu::warp_collective(::td_emu::Site{td_file_, td_line_}, "wmma::load_matrix_sync", &detail::load_collective, &args);
}

template <int M, int N, int K, class T, class MemT>
inline void store_matrix_sync(MemT* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout,
                              TD_EMU_CALLER_ARGS) {
  using F = fragment<accumulator, M, N, K, T>;
  detail::MemArgs args{const_cast<F*>(&f), sizeof f, p, ldm, static_cast<int>(layout), F::rows, F::cols, sizeof(MemT),
                       &detail::copy_tile<typename F::storage_element_type, MemT>};
  ::td_emu::warp_collective(::td_emu::Site{td_file_, td_line_}, "wmma::store_matrix_sync", &detail::store_collective, &args);
}

template <class FD, class FA, class FB, class FC>
inline void mma_sync(FD& d, const FA& a, const FB& b, const FC& c, bool satf = false,
                     TD_EMU_CALLER_ARGS) {
  static_assert(FA::rows == FD::rows && FB::cols == FD::cols && FA::cols == FB::rows, "mma_sync: fragment shapes disagree");
  (void)satf;
  detail::MmaArgs args{&d, &a, &b, &c, sizeof d, sizeof a, sizeof b, sizeof c, &detail::mma_compute<FD, FA, FB, FC>};
  ::td_emu::warp_collective(::td_emu::Site{td_file_, td_line_}, "wmma::mma_sync", &detail::mma_collective, &args);
}

inline float __float_to_tf32(float f) {
  // round to nearest, 10 mantissa bits (what the tensor cores read of an fp32 operand)
  uint32_t u = td_emu::f2u(f);
  if ((u & 0x7fffffffu) < 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  return td_emu::u2f(u);
}

}  // namespace wmma
}  // namespace nvcuda
