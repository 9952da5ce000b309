#define TD_SUFFIX avx2
#define TD_VEC_BYTES 32
#include "cpu/simd_kernels.inc"
