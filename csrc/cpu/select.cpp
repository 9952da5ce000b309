// The sampler head: token choice + softmax confidence per row, fused with the LM head, plus the small
// decode-loop ops (commit selection, speculative acceptance).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"
#include "cpu/cpu_backend.h"
#include "cpu/product.h"

namespace td::cpu {
namespace {

// Running statistics of one row over a range of vocabulary ids, mergeable across ranges.
struct RowStats {
  float max = -INFINITY;       // max logit (for the softmax)
  double sum = 0.0;            // sum exp(logit - max)
  double best_key = -INFINITY; // selection key of the best id so far (logit, or logit/T + gumbel)
  float best_logit = 0.0f;
  int best = -1;

  void add(float l, int id, const SelectParams& sp, int row) {
    if (l > max) {
      sum = sum * std::exp(static_cast<double>(max) - l) + 1.0;
      max = l;
    } else {
      sum += std::exp(static_cast<double>(l) - max);
    }
    if (id == sp.exclude_id) return;
    double key = l;
    if (sp.temperature > 0.0f) key = static_cast<double>(l) / sp.temperature + gumbel(sp.seed, sp.stream, row, id);
    if (best < 0 || key > best_key) { best = id; best_key = key; best_logit = l; }   // strict: lowest id wins ties
  }

  // `later` covers ids after this range's.
  void merge(const RowStats& later) {
    if (later.max > max) {
      sum = sum * std::exp(static_cast<double>(max) - later.max) + later.sum;
      max = later.max;
    } else if (later.max > -INFINITY) {
      sum += later.sum * std::exp(static_cast<double>(later.max) - max);
    }
    if (later.best >= 0 && (best < 0 || later.best_key > best_key)) {
      best = later.best; best_key = later.best_key; best_logit = later.best_logit;
    }
  }

  float confidence() const { return static_cast<float>(std::exp(static_cast<double>(best_logit) - max) / sum); }
};

void check_select(const SelectParams& sp, int vocab) {
  TD_CHECK(sp.temperature >= 0.0f && std::isfinite(sp.temperature), "[select] temperature must be >= 0, got ",
           sp.temperature);
  TD_CHECK(vocab > 1 || sp.exclude_id != 0, "[select] every token id is excluded");
}

}  // namespace

void CpuBackend::select(const float* logits, int n, int vocab, const SelectParams& sp, int32_t* idx, float* conf) {
  check_select(sp, vocab);
#pragma omp parallel for schedule(static) num_threads(region_threads()) if (static_cast<int64_t>(n) * vocab >= (1 << 16))
  for (int r = 0; r < n; ++r) {
    RowStats s;
    const float* l = logits + static_cast<int64_t>(r) * vocab;
    for (int v = 0; v < vocab; ++v) s.add(l[v], v, sp, r);
    idx[r] = s.best;
    conf[r] = s.confidence();
  }
  for (int r = 0; r < n; ++r) TD_CHECK(idx[r] >= 0, "[select] row ", r, " holds no comparable (non-NaN) logit");
}

void CpuBackend::head_select(const float* x, int n, const WeightView& head, const SelectParams& sp, int32_t* idx,
                             float* conf) {
  const int vocab = static_cast<int>(head.rows);
  const int64_t k = head.cols;
  check_select(sp, vocab);
  const ProductInput in(x, n, head);
  constexpr int kRows = 4;
  // Each thread scans a contiguous vocabulary range (so merging in thread order keeps "lowest id wins").
  const bool parallel = static_cast<double>(n) * vocab * k >= (1 << 20);
  const int threads = parallel ? std::max(1, region_threads()) : 1;
  std::vector<RowStats> partial(static_cast<size_t>(threads) * n);
#pragma omp parallel num_threads(threads) if (parallel)
  {
    const int t = omp_thread_id();
    const int nt = omp_team_size();
    const int64_t blocks = (vocab + kRows - 1) / kRows;
    const int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
    std::vector<float> tile(static_cast<size_t>(n) * kRows);
    RowStats* mine = partial.data() + static_cast<size_t>(t) * n;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRows;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, vocab - r0));
      in.tile(head, r0, nr, tile.data(), kRows);
      for (int r = 0; r < n; ++r)
        for (int j = 0; j < nr; ++j) mine[r].add(tile[r * kRows + j], static_cast<int>(r0 + j), sp, r);
    }
  }
  for (int r = 0; r < n; ++r) {
    RowStats s = partial[r];
    for (int t = 1; t < threads; ++t) s.merge(partial[static_cast<size_t>(t) * n + r]);
    TD_CHECK(s.best >= 0, "[head_select] row ", r, " holds no comparable (non-NaN) logit");
    idx[r] = s.best;
    conf[r] = s.confidence();
  }
}

int CpuBackend::select_commits(const float* conf, const uint8_t* masked, int L, float threshold, int k,
                               uint8_t* commit) {
  std::vector<int> order;
  for (int i = 0; i < L; ++i) {
    commit[i] = 0;
    if (masked[i]) order.push_back(i);
  }
  if (order.empty()) return 0;
  // Most confident first; the lower slot first among equals.
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return conf[a] > conf[b]; });
  int count = 0;
  if (k < 0) {
    commit[order[0]] = 1;
    count = 1;
    for (size_t j = 1; j < order.size(); ++j)
      if (conf[order[j]] >= threshold) { commit[order[j]] = 1; ++count; }
  } else {
    for (int j = 0; j < k && j < static_cast<int>(order.size()); ++j) { commit[order[j]] = 1; ++count; }
  }
  return count;
}

int CpuBackend::accept_length(const int32_t* draft, const int32_t* target, int L) {
  int c = 0;
  while (c < L - 1 && target[c] == draft[c + 1]) ++c;
  return c;
}

}  // namespace td::cpu
