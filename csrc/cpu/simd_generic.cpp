#define TD_SUFFIX generic
#define TD_VEC_BYTES 32
#include "cpu/simd_kernels.inc"
