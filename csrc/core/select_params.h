// How a token is chosen from a row of logits, shared by every backend's fused head and the Python loops.
//
// temperature 0: argmax (first index on ties). temperature > 0: Gumbel-max, argmax of
// logits / temperature + g with g = -ln(-ln(u)) and u drawn from a counter-based hash of
// (seed, stream, row, token id): reproducible, independent of threads and backends, and a fresh draw for
// every (stream, row). The confidence is always softmax(logits)[choice] over the unscaled logits.
// exclude_id (>= 0) is never chosen (the mask token), but keeps its softmax mass.
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define TD_HD __host__ __device__ __forceinline__
#else
#define TD_HD inline
#endif

namespace td {

struct SelectParams {
  int exclude_id = -1;
  float temperature = 0.0f;
  uint64_t seed = 0;
  uint64_t stream = 0;   // e.g. the forward counter of a generate loop
};

TD_HD uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in the open interval (0, 1), 53 random bits.
TD_HD double uniform01(uint64_t seed, uint64_t stream, uint64_t row, uint64_t col) {
  uint64_t h = mix64(seed ^ mix64(stream ^ mix64(row ^ mix64(col))));
  return (static_cast<double>(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// A standard normal draw (Box-Muller) from the hash of (seed, index): for random weights.
TD_HD float normal_from_hash(uint64_t seed, uint64_t index) {
  const double u1 = uniform01(seed, 0x6e6f726dull, index, 0);
  const double u2 = uniform01(seed, 0x6e6f726dull, index, 1);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

TD_HD double gumbel(uint64_t seed, uint64_t stream, uint64_t row, uint64_t col) {
  return -std::log(-std::log(uniform01(seed, stream, row, col)));
}

}  // namespace td
