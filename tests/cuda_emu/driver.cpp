// Runs one op of the CUDA backend (built from csrc/cuda/, possibly a mutated copy, against the emulator)
// on fixed random inputs and checks it against a float64 loop: `driver OP`. Exit status: 0 right answer,
// 3 wrong answer (a line says how wrong), 2 the emulator reported a fault.
//
// The bound is deliberately loose (these runs look for broken kernels, not for the last ulp; the parity
// tests in tests/test_cuda.py hold the precise rule).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/dtype.h"
#include "cuda_api.h"

using namespace td;

namespace {

std::vector<float> randn(size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

struct Dev {
  Backend& be;
  void* p;
  size_t bytes;
  Dev(Backend& b, size_t n) : be(b), p(b.alloc(n)), bytes(n) {}
  ~Dev() { be.free(p); }
  template <class T>
  void put(const std::vector<T>& v) { be.upload(p, v.data(), v.size() * sizeof(T)); }
  std::vector<float> get_f32() {
    std::vector<float> v(bytes / 4);
    be.download(v.data(), p, bytes);
    return v;
  }
  float* f() { return static_cast<float*>(p); }
};

int verdict(const std::vector<float>& got, const std::vector<double>& want, double bound) {
  double worst = 0, scale = 1e-30;
  for (size_t i = 0; i < want.size(); ++i) scale = std::fmax(scale, std::fabs(want[i]));
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::isfinite(got[i]) ? std::fabs(got[i] - want[i]) / scale : INFINITY;
    worst = std::fmax(worst, e);
  }
  if (worst <= bound) {
    std::printf("right (error %.3g)\n", worst);
    return 0;
  }
  std::printf("wrong answer: error %.3g > %.3g\n", worst, bound);
  return 3;
}

int run_rms_norm(Backend& be) {
  const int n = 5, dim = 1000;
  const auto x = randn(n * dim, 1), w = randn(dim, 2);
  Dev dx(be, x.size() * 4), dw(be, w.size() * 4), dout(be, x.size() * 4);
  dx.put(x);
  dw.put(w);
  be.rms_norm(dx.f(), WeightView{dw.p, DType::F32, 1, dim}, n, dim, 1e-5f, dout.f());
  std::vector<double> want(x.size());
  for (int i = 0; i < n; ++i) {
    double ss = 0;
    for (int j = 0; j < dim; ++j) ss += static_cast<double>(x[i * dim + j]) * x[i * dim + j];
    const double r = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int j = 0; j < dim; ++j) want[i * dim + j] = x[i * dim + j] * r * w[j];
  }
  return verdict(dout.get_f32(), want, 1e-5);
}

int run_swiglu(Backend& be) {
  const int n = 1000;   // not a multiple of the block size
  const auto g = randn(n, 3), u = randn(n, 4);
  Dev dg(be, n * 4), du(be, n * 4), dout(be, n * 4);
  dg.put(g);
  du.put(u);
  be.swiglu(dg.f(), du.f(), n, dout.f());
  std::vector<double> want(n);
  for (int i = 0; i < n; ++i) want[i] = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
  return verdict(dout.get_f32(), want, 1e-5);
}

int run_matmul_tc(Backend& be) {
  const int m = 80, n = 72, k = 96;   // over 64 rows with bf16 weights: the tensor-core path
  const auto x = randn(m * k, 5), wf = randn(n * k, 6);
  std::vector<uint16_t> w(wf.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = f32_to_bf16(wf[i]);
  Dev dx(be, x.size() * 4), dw(be, w.size() * 2), dout(be, static_cast<size_t>(m) * n * 4);
  dx.put(x);
  dw.put(w);
  be.matmul(dx.f(), m, WeightView{dw.p, DType::BF16, n, k}, dout.f());
  std::vector<double> want(static_cast<size_t>(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int t = 0; t < k; ++t) s += static_cast<double>(x[i * k + t]) * bf16_to_f32(w[j * k + t]);
      want[i * n + j] = s;
    }
  return verdict(dout.get_f32(), want, 2e-2);   // x is rounded to bf16 on this path
}

// The skinny tensor-core path with split-k (few weight rows, long k), twice with different inputs: the
// second product needs the tickets the first left behind reset.
int run_matmul_skinny(Backend& be) {
  const int m = 5, n = 40, k = 4096;
  const auto wf = randn(n * k, 10);
  std::vector<uint16_t> w(wf.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = f32_to_bf16(wf[i]);
  Dev dw(be, w.size() * 2), dx(be, static_cast<size_t>(m) * k * 4), dout(be, static_cast<size_t>(m) * n * 4);
  dw.put(w);
  int worst = 0;
  for (unsigned trial = 0; trial < 2; ++trial) {
    const auto x = randn(m * k, 11 + trial);
    dx.put(x);
    be.matmul(dx.f(), m, WeightView{dw.p, DType::BF16, n, k}, dout.f());
    std::vector<double> want(static_cast<size_t>(m) * n);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double s = 0;
        for (int t = 0; t < k; ++t) s += static_cast<double>(bf16_to_f32(f32_to_bf16(x[i * k + t]))) * bf16_to_f32(w[j * k + t]);
        want[i * n + j] = s;
      }
    worst = std::max(worst, verdict(dout.get_f32(), want, 1e-4));
  }
  return worst;
}

// bf16: a bf16 cache (the tensor-core kernel), against float64 on the stored values, with a bound that
// admits its bf16 rounding of q and of the probabilities.
int run_attention(Backend& be, bool bf16) {
  const int n = 3, T = 2600, H = 4, G = 2, d = 32;   // two key chunks: the merge runs
  auto q = randn(n * H * d, 7), k = randn(T * G * d, 8), v = randn(T * G * d, 9);
  Dev dq(be, q.size() * 4), dk(be, k.size() * 4), dv(be, v.size() * 4), dout(be, q.size() * 4);
  dq.put(q);
  if (bf16) {
    std::vector<uint16_t> k16(k.size()), v16(v.size());
    for (size_t i = 0; i < k.size(); ++i) {
      k[i] = bf16_to_f32(k16[i] = f32_to_bf16(k[i]));
      v[i] = bf16_to_f32(v16[i] = f32_to_bf16(v[i]));
    }
    dk.put(k16);
    dv.put(v16);
  } else {
    dk.put(k);
    dv.put(v);
  }
  AttentionParams p;
  p.kv_dtype = bf16 ? DType::BF16 : DType::F32;
  p.q = dq.f();
  p.k = dk.f();
  p.v = dv.f();
  p.out = dout.f();
  p.n_q = n;
  p.kv_len = T;
  p.heads = H;
  p.kv_heads = G;
  p.head_dim = d;
  p.kv_token_stride = G * d;
  p.kv_head_stride = d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.causal = true;
  be.attention(p);
  std::vector<double> want(q.size());
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < H; ++h) {
      const int g = h / (H / G), visible = T - n + i + 1;
      std::vector<double> s(visible);
      double mx = -INFINITY, sum = 0;
      for (int j = 0; j < visible; ++j) {
        double dot = 0;
        for (int e = 0; e < d; ++e) dot += static_cast<double>(q[(i * H + h) * d + e]) * k[(j * G + g) * d + e];
        s[j] = dot * p.scale;
        mx = std::fmax(mx, s[j]);
      }
      for (int j = 0; j < visible; ++j) sum += (s[j] = std::exp(s[j] - mx));
      for (int e = 0; e < d; ++e) {
        double a = 0;
        for (int j = 0; j < visible; ++j) a += s[j] * v[(j * G + g) * d + e];
        want[(i * H + h) * d + e] = a / sum;
      }
    }
  return verdict(dout.get_f32(), want, bf16 ? 1e-2 : 1e-5);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string op = argc > 1 ? argv[1] : "";
  try {
    Backend& be = td::cuda::backend();
    if (op == "rms_norm") return run_rms_norm(be);
    if (op == "swiglu") return run_swiglu(be);
    if (op == "matmul_tc") return run_matmul_tc(be);
    if (op == "matmul_skinny") return run_matmul_skinny(be);
    if (op == "attention") return run_attention(be, false);
    if (op == "attention_bf16") return run_attention(be, true);
    std::printf("usage: driver rms_norm|swiglu|matmul_tc|matmul_skinny|attention|attention_bf16\n");
    return 1;
  } catch (const std::exception& e) {
    std::printf("FAULT: %s\n", e.what());
    return 2;
  }
}
