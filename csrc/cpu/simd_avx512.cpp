#define TD_SUFFIX avx512
#define TD_VEC_BYTES 64
#include "cpu/simd_kernels.inc"
