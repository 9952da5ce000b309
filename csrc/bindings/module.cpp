// pybind11 glue only: argument conversion, buffer checks, GIL release. No model logic here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/model.h"
#include "cpu/cpu_backend.h"
#include "cpu/simd_kernels.h"
#include "cuda_api.h"

namespace py = pybind11;
using namespace td;

namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IdArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

DType dtype_from_code(int code) {
  TD_CHECK(code >= 0 && code <= 2, "[bindings] unknown dtype code ", code);
  return static_cast<DType>(code);
}

constexpr int kInt8Code = 3;

// A 1-D or 2-D C-contiguous buffer in a stored dtype -> WeightView (rows = 1 for vectors).
WeightView weight_view(const py::array& a, int code, const std::string& what) {
  const DType t = dtype_from_code(code);
  TD_CHECK(a.itemsize() == dtype_size(t), "[bindings] ", what, ": element size ", a.itemsize(),
           " does not match dtype ", dtype_name(t));
  TD_CHECK(a.flags() & py::array::c_style, "[bindings] ", what, " must be C-contiguous");
  TD_CHECK(a.ndim() == 1 || a.ndim() == 2, "[bindings] ", what, " must be 1-D or 2-D, got ", a.ndim(), "-D");
  WeightView w;
  w.data = a.data();
  w.dtype = t;
  w.rows = a.ndim() == 2 ? a.shape(0) : 1;
  w.cols = a.ndim() == 2 ? a.shape(1) : a.shape(0);
  return w;
}

// An int8 weight [rows, cols] with its bf16 group scales [rows, ceil(cols / 32)] (kept alive by the caller).
WeightView int8_view(const py::array& q, const py::array& scales, const std::string& what) {
  TD_CHECK(py::isinstance<py::array_t<int8_t>>(q) && q.ndim() == 2 && (q.flags() & py::array::c_style),
           "[bindings] ", what, ": int8 weights must be a C-contiguous 2-D int8 array");
  WeightView w;
  w.data = q.data();
  w.dtype = DType::I8;
  w.rows = q.shape(0);
  w.cols = q.shape(1);
  TD_CHECK(py::isinstance<py::array_t<uint16_t>>(scales) && scales.ndim() == 2 && scales.shape(0) == w.rows &&
               scales.shape(1) == w.groups() && (scales.flags() & py::array::c_style),
           "[bindings] ", what, ": int8 scales must be C-contiguous bf16 bits (uint16) [", w.rows, ", ", w.groups(),
           "]");
  w.scales = static_cast<const uint16_t*>(scales.data());
  return w;
}

RopeParams rope_from(const py::dict& c) {
  RopeParams r;
  r.inv_freq = c["inv_freq"].cast<std::vector<float>>();
  r.attention_factor = c["attention_factor"].cast<float>();
  r.qscale_beta = c["qscale_beta"].cast<float>();
  r.qscale_length = c["qscale_length"].cast<int64_t>();
  return r;
}

// Owns the Python buffers the weight views point into, so they outlive the native model.
Backend& backend_for(const std::string& device) {
  if (device == "cpu") return cpu_backend();
  if (device == "cuda") return td::cuda::backend();
  throw Error("[model] unknown device '" + device + "' (use 'cpu' or 'cuda')");
}

ModelConfig config_from(const py::dict& cfg) {
  ModelConfig c;
  c.hidden = cfg["hidden"].cast<int>();
  c.layers = cfg["layers"].cast<int>();
  c.heads = cfg["heads"].cast<int>();
  c.kv_heads = cfg["kv_heads"].cast<int>();
  c.head_dim = cfg["head_dim"].cast<int>();
  c.intermediate = cfg["intermediate"].cast<int>();
  c.vocab = cfg["vocab"].cast<int>();
  c.rms_eps = cfg["rms_eps"].cast<float>();
  c.rope = rope_from(cfg);
  if (cfg.contains("kv_dtype")) c.kv_dtype = dtype_from_code(cfg["kv_dtype"].cast<int>());
  if (cfg.contains("compute_f32")) c.compute_f32 = cfg["compute_f32"].cast<bool>();
  c.validate();
  return c;
}

class PyModel {
 public:
  // Random weights made directly in the backend's memory (no checkpoint): for benchmarks.
  static PyModel random(const py::dict& cfg, int dtype_code, int capacity, const std::string& device,
                        uint64_t seed) {
    ModelConfig c = config_from(cfg);
    const DType t = dtype_from_code(dtype_code);
    auto shape = [&](int64_t rows, int64_t cols) { WeightView w; w.dtype = t; w.rows = rows; w.cols = cols; return w; };
    ModelWeights w;
    w.embed = shape(c.vocab, c.hidden);
    w.final_norm = shape(1, c.hidden);
    w.head = shape(c.vocab, c.hidden);
    for (int i = 0; i < c.layers; ++i) {
      LayerWeights L;
      L.in_norm = shape(1, c.hidden);
      L.post_norm = shape(1, c.hidden);
      L.q = shape(c.q_dim(), c.hidden);
      L.k = shape(c.kv_dim(), c.hidden);
      L.v = shape(c.kv_dim(), c.hidden);
      L.o = shape(c.hidden, c.q_dim());
      L.gate = shape(c.intermediate, c.hidden);
      L.up = shape(c.intermediate, c.hidden);
      L.down = shape(c.hidden, c.intermediate);
      w.layers.push_back(L);
    }
    PyModel m;
    Backend& be = backend_for(device);
    m.model_ = std::make_unique<Model>(std::move(c), std::move(w), capacity, be, true, seed);
    m.init_outputs();
    return m;
  }

  PyModel(const py::dict& cfg, const py::dict& weights, int capacity, const std::string& device) {
    ModelConfig c = config_from(cfg);
    auto get = [&](const std::string& name) {
      TD_CHECK(weights.contains(name), "[model] weight ", name, " is missing");
      py::tuple t = weights[py::str(name)].cast<py::tuple>();
      py::array a = t[0].cast<py::array>();
      owners_.push_back(a);
      if (t[1].cast<int>() == kInt8Code) {   // (q, 3, group scales)
        TD_CHECK(t.size() == 3, "[model] int8 weight ", name, " needs (q, code, scales)");
        py::array sc = t[2].cast<py::array>();
        owners_.push_back(sc);
        return int8_view(a, sc, name);
      }
      return weight_view(a, t[1].cast<int>(), name);
    };
    ModelWeights w;
    w.embed = get("embed");
    w.final_norm = get("final_norm");
    w.head = get("head");
    for (int i = 0; i < c.layers; ++i) {
      const std::string p = "layers." + std::to_string(i) + ".";
      LayerWeights L;
      L.in_norm = get(p + "in_norm");
      L.q = get(p + "q");
      L.k = get(p + "k");
      L.v = get(p + "v");
      L.o = get(p + "o");
      L.post_norm = get(p + "post_norm");
      L.gate = get(p + "gate");
      L.up = get(p + "up");
      L.down = get(p + "down");
      w.layers.push_back(L);
    }
    Backend& be = backend_for(device);
    model_ = std::make_unique<Model>(std::move(c), std::move(w), capacity, be);
    // A device model holds its own copy: the host views (memory maps) may go.
    if (be.is_device()) owners_.clear();
    init_outputs();
  }

  void init_outputs() {
    Backend& be = model_->backend();
    out_logits_ = Buffer(be);
    out_idx_ = Buffer(be);
    out_conf_ = Buffer(be);
    if (be.is_device()) {   // as the model itself: chunks of up to kReservedRows tokens allocate nothing
      const size_t rows = Model::kReservedRows;
      out_logits_.reserve(rows * model_->config().vocab * sizeof(float));
      out_idx_.reserve(rows * sizeof(int32_t));
      out_conf_.reserve(rows * sizeof(float));
    }
  }

  py::array_t<float> forward(const IdArray& ids, int64_t start_pos, bool causal, bool write_cache, int logits_from,
                             bool use_lora) {
    const int n = chunk_len(ids, logits_from);
    const size_t rows = n - logits_from, vocab = model_->config().vocab;
    py::array_t<float> logits({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(vocab)});
    float* host = logits.mutable_data();
    Backend& be = model_->backend();
    run(ids, n, start_pos, causal, write_cache, logits_from, use_lora, [&](ForwardOutput& out) {
      out.logits = be.is_device() ? out_logits_.as<float>(rows * vocab) : host;
    }, [&](const ForwardOutput& out) {
      if (be.is_device()) be.download(host, out.logits, rows * vocab * sizeof(float));
    });
    return logits;
  }

  // Logits written straight into backend memory at out_ptr ([rows, vocab] fp32, e.g. a cupy array).
  void forward_into(const IdArray& ids, int64_t start_pos, bool causal, bool write_cache, int logits_from,
                    bool use_lora, uintptr_t out_ptr) {
    const int n = chunk_len(ids, logits_from);
    TD_CHECK(out_ptr != 0, "[forward] null output pointer");
    run(ids, n, start_pos, causal, write_cache, logits_from, use_lora,
        [&](ForwardOutput& out) { out.logits = reinterpret_cast<float*>(out_ptr); }, [](const ForwardOutput&) {});
  }

  // The fused sampler head: (token ids [rows], confidences [rows]) instead of logits.
  py::tuple forward_select(const IdArray& ids, int64_t start_pos, bool causal, bool write_cache, int logits_from,
                           bool use_lora, int exclude_id, float temperature, uint64_t seed, uint64_t stream) {
    const int n = chunk_len(ids, logits_from);
    const size_t rows = n - logits_from;
    py::array_t<int32_t> idx(rows);
    py::array_t<float> conf(rows);
    int32_t* host_idx = idx.mutable_data();
    float* host_conf = conf.mutable_data();
    Backend& be = model_->backend();
    run(ids, n, start_pos, causal, write_cache, logits_from, use_lora, [&](ForwardOutput& out) {
      out.idx = be.is_device() ? out_idx_.as<int32_t>(rows) : host_idx;
      out.conf = be.is_device() ? out_conf_.as<float>(rows) : host_conf;
      out.select = SelectParams{exclude_id, temperature, seed, stream};
    }, [&](const ForwardOutput& out) {
      if (be.is_device()) {   // the only host traffic of a generate-loop forward: a few ids and confidences
        be.download(host_idx, out.idx, rows * sizeof(int32_t));
        be.download(host_conf, out.conf, rows * sizeof(float));
      }
    });
    return py::make_tuple(idx, conf);
  }

  void set_lora(const py::list& a, const py::list& b, float scale) {
    std::vector<WeightView> av, bv;
    for (size_t i = 0; i < a.size(); ++i) {
      py::tuple ta = a[i].cast<py::tuple>(), tb = b[i].cast<py::tuple>();
      py::array aa = ta[0].cast<py::array>(), bb = tb[0].cast<py::array>();
      av.push_back(weight_view(aa, ta[1].cast<int>(), "lora_A"));
      bv.push_back(weight_view(bb, tb[1].cast<int>(), "lora_B"));
      lora_owners_.push_back(aa);
      lora_owners_.push_back(bb);
    }
    TD_CHECK(a.size() == b.size(), "[lora] ", a.size(), " A matrices but ", b.size(), " B matrices");
    std::lock_guard<std::mutex> lock(*mutex_);   // with the GIL: no holder of the mutex waits for it
    model_->set_lora(av, bv, scale);
    if (av.empty()) lora_owners_.clear();
  }
  bool has_lora() const { return model_->has_lora(); }

  // Runs fn under the model's mutex with the GIL released: one native call at a time per model, whatever
  // Python thread makes it (the GIL is dropped before waiting, so waiting never blocks other threads, and
  // the mutex is released before the GIL is taken back).
  template <class Fn>
  auto locked(Fn&& fn) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(*mutex_);
    return fn();
  }

  int cache_length() {
    return locked([&] { return model_->cache().length(); });
  }
  int64_t backend_bytes() {
    return locked([&] { return model_->backend_bytes(); });
  }
  std::string device() const { return model_->backend().is_device() ? "cuda" : "cpu"; }
  int capacity() const { return model_->cache().capacity(); }
  int64_t cache_bytes() const { return model_->cache().bytes(); }
  std::string cache_dtype() const { return dtype_name(model_->cache().dtype()); }
  bool graphs() const { return model_->graphs(); }
  void set_graphs(bool on) { model_->set_graphs(on); }
  int graph_count() const { return model_->graph_count(); }
  bool bf16_activations() const { return model_->bf16_activations(); }
  void set_bf16_activations(bool on) { model_->set_bf16_activations(on); }
  void reset() {
    locked([&] { model_->cache().reset(); });
  }
  void crop(int64_t n) {
    TD_CHECK(n >= 0 && n <= INT32_MAX, "[kv_cache] cannot crop to ", n, " tokens");
    locked([&] { model_->cache().crop(static_cast<int>(n)); });
  }
  void append_random_cache(int64_t n, uint64_t seed) {
    TD_CHECK(n >= 0 && n <= INT32_MAX, "[kv_cache] cannot append ", n, " tokens");
    locked([&] { model_->cache().append_random(static_cast<int>(n), seed); });
  }

 private:
  int chunk_len(const IdArray& ids, int& logits_from) const {
    TD_CHECK(ids.ndim() == 1, "[forward] token ids must be 1-D, got ", ids.ndim(), "-D");
    const int n = static_cast<int>(ids.shape(0));
    TD_CHECK(n > 0, "[forward] the chunk is empty");
    if (logits_from < 0) logits_from += n;
    TD_CHECK(logits_from >= 0 && logits_from < n, "[forward] logits_from outside the chunk");
    return n;
  }

  // One forward under the model's mutex: place() points the outputs (into the model's device buffers,
  // which the mutex guards, or host memory), fetch() copies device outputs out before the mutex goes.
  template <class Place, class Fetch>
  void run(const IdArray& ids, int n, int64_t start_pos, bool causal, bool write_cache, int logits_from,
           bool use_lora, Place&& place, Fetch&& fetch) {
    const int32_t* idp = ids.data();
    locked([&] {
      ForwardOutput out;
      place(out);
      const int64_t start = start_pos < 0 ? model_->cache().length() : start_pos;
      model_->forward(idp, n, start, causal ? AttnMode::Causal : AttnMode::Bidirectional, write_cache,
                      logits_from, out, use_lora);
      fetch(out);
    });
  }

  PyModel() = default;
  std::unique_ptr<std::mutex> mutex_ = std::make_unique<std::mutex>();
  std::vector<py::array> owners_, lora_owners_;
  std::unique_ptr<Model> model_;
  Buffer out_logits_, out_idx_, out_conf_;   // device outputs before download (device backends only)
};

// Runs fn(idx, conf) without the GIL over fresh [n] outputs and returns them as a tuple.
template <class Fn>
py::tuple idx_conf(int n, Fn&& fn) {
  py::array_t<int32_t> idx(n);
  py::array_t<float> conf(n);
  int32_t* ip = idx.mutable_data();
  float* cp = conf.mutable_data();
  {
    py::gil_scoped_release r;
    fn(ip, cp);
  }
  return py::make_tuple(idx, conf);
}

// The CUDA backend for one op called from Python, with its shared-state mutex held for the whole
// expression (a temporary: `CudaCall().be.attention(p)`), so ops from other threads cannot interleave.
struct CudaCall {
  Backend& be = td::cuda::backend();
  std::unique_lock<std::mutex> lock =
      be.shared_state_mutex() ? std::unique_lock<std::mutex>(*be.shared_state_mutex()) : std::unique_lock<std::mutex>();
};

void check_rows(const py::array& a, int64_t cols, const char* op, const char* what) {
  TD_CHECK(a.ndim() == 2, "[", op, "] ", what, " must be 2-D, got ", a.ndim(), "-D");
  TD_CHECK(a.shape(1) == cols, "[", op, "] ", what, " has ", a.shape(1), " columns, expected ", cols);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tridecode native core";
  // OutOfMemory first: pybind picks the most recently registered matching translator.
  py::register_exception<td::Error>(m, "TridecodeError", PyExc_ValueError);
  py::register_exception<td::OutOfMemory>(m, "OutOfMemoryError", PyExc_MemoryError);

  m.def("cuda_compiled", &td::cuda::compiled);
  m.def("cuda_device_count", &td::cuda::device_count);
  m.def("cuda_device_name", &td::cuda::device_name);
  m.def("cuda_emulated", &td::cuda::emulated);
  // The CUDA emulator of TRIDECODE_CUDA=EMU builds (csrc/cuda_emu/): settings and the launch log.
  py::module_ emu = m.def_submodule("cuda_emu", "settings and launch log of the CUDA emulator (EMU builds)");
  emu.def("settings", [] {
    py::dict d;
    for (const auto& [k, v] : td::cuda::emu_settings()) d[py::str(k)] = v;
    return d;
  });
  emu.def("configure", [](const py::kwargs& kw) {
    for (const auto& item : kw) td::cuda::emu_configure(item.first.cast<std::string>(), item.second.cast<int64_t>());
  });
  emu.def("counters", [] {
    py::dict d;
    for (const auto& [k, v] : td::cuda::emu_counters()) d[py::str(k)] = v;
    return d;
  }, "running totals: graph_launches, graph_kernels (kernels their replays ran), eager_kernels");
  emu.def("take_launches", [] {
    py::list out;
    for (const auto& r : td::cuda::emu_take_launches()) {
      py::object traffic = py::none();
      if (r.counted) traffic = py::make_tuple(r.load_bytes, r.store_bytes);
      out.append(py::make_tuple(r.kernel, r.template_args, py::make_tuple(r.grid[0], r.grid[1], r.grid[2]),
                                py::make_tuple(r.block[0], r.block[1], r.block[2]), r.dynamic_shared, r.static_shared,
                                r.seconds, traffic));
    }
    return out;
  }, "(kernel, template_args, grid, block, dynamic_shared, static_shared, seconds, traffic) of each launch since "
     "the last call; traffic: (load_bytes, store_bytes) of global memory as the threads request it, when "
     "count_traffic is on, else None");
  m.def("cpu_isa", [] { return std::string(td::cpu::simd().isa); });
  m.def("cpu_paths", [] {
    const auto& k = td::cpu::simd();
    py::dict d;
    d["kernels"] = k.isa;
    d["bf16"] = k.bf16_path;
    d["int8"] = k.int8_path;
    d["amx"] = td::cpu::amx_availability();
    return d;
  }, "the CPU kernel set in use, what bf16 and int8 products run on, and whether AMX tiles may run here");
  m.def("cpu_kernel_sets", &td::cpu::available_kernels, "the kernel sets this CPU can run, weakest first");
  m.def("use_cpu_kernels", &td::cpu::use_kernels, py::arg("name"),
        "switches every later CPU product to a kernel set of cpu_kernel_sets() (for parity tests)");
  m.def("num_threads", [] { return omp_get_max_threads(); });
  m.def("cpu_region_threads", &td::cpu::region_threads,
        "threads the CPU backend's next large parallel region uses: 1 while the CPUs are oversubscribed");
  m.def("set_num_threads", [](int n) {
    TD_CHECK(n > 0, "[set_num_threads] need at least one thread, got ", n);
    omp_set_num_threads(n);
  });

  py::class_<PyModel>(m, "Model")
      .def(py::init<const py::dict&, const py::dict&, int, const std::string&>(), py::arg("config"),
           py::arg("weights"), py::arg("capacity"), py::arg("device") = "cpu")
      .def_static("random", &PyModel::random, py::arg("config"), py::arg("dtype"), py::arg("capacity"),
                  py::arg("device"), py::arg("seed") = 0)
      .def("forward_into", &PyModel::forward_into, py::arg("ids"), py::arg("start_pos"), py::arg("causal"),
           py::arg("write_cache"), py::arg("logits_from"), py::arg("use_lora"), py::arg("out_ptr"))
      .def_property_readonly("backend_bytes", &PyModel::backend_bytes)
      .def_property_readonly("device", &PyModel::device)
      .def("forward", &PyModel::forward, py::arg("ids"), py::arg("start_pos"), py::arg("causal"),
           py::arg("write_cache"), py::arg("logits_from"), py::arg("use_lora") = false)
      .def("forward_select", &PyModel::forward_select, py::arg("ids"), py::arg("start_pos"), py::arg("causal"),
           py::arg("write_cache"), py::arg("logits_from"), py::arg("use_lora"), py::arg("exclude_id"),
           py::arg("temperature"), py::arg("seed"), py::arg("stream"))
      .def("set_lora", &PyModel::set_lora, py::arg("a"), py::arg("b"), py::arg("scale"))
      .def_property_readonly("has_lora", &PyModel::has_lora)
      .def_property_readonly("cache_length", &PyModel::cache_length)
      .def_property_readonly("capacity", &PyModel::capacity)
      .def_property_readonly("cache_bytes", &PyModel::cache_bytes)
      .def_property_readonly("cache_dtype", &PyModel::cache_dtype)
      .def_property("graphs", &PyModel::graphs, &PyModel::set_graphs)
      .def_property_readonly("graph_count", &PyModel::graph_count)
      .def_property("bf16_activations", &PyModel::bf16_activations, &PyModel::set_bf16_activations)
      .def("reset", &PyModel::reset)
      .def("crop", &PyModel::crop)
      .def("append_random_cache", &PyModel::append_random_cache, py::arg("n"), py::arg("seed") = 0);

  // ---- single ops on numpy arrays (fp32 activations; weights in a stored dtype code) ----
  m.def("rms_norm", [](F32Array x, py::array w, int wcode, float eps) {
    check_rows(x, x.ndim() == 2 ? x.shape(1) : -1, "rms_norm", "x");
    WeightView wv = weight_view(w, wcode, "w");
    TD_CHECK(wv.rows == 1 && wv.cols == x.shape(1), "[rms_norm] w has ", wv.rows * wv.cols,
             " elements, expected ", x.shape(1));
    TD_CHECK(eps > 0.0f, "[rms_norm] eps must be positive, got ", eps);
    py::array_t<float> out({x.shape(0), x.shape(1)});
    const int n = static_cast<int>(x.shape(0)), dim = static_cast<int>(x.shape(1));
    const float* xp = x.data();
    float* op = out.mutable_data();
    py::gil_scoped_release r;
    cpu_backend().rms_norm(xp, wv, n, dim, eps, op);
    return out;
  });
  m.def("matmul", [](F32Array x, py::array w, int wcode, bool round_input, py::object scales) {
    WeightView wv = wcode == kInt8Code ? int8_view(w, scales.cast<py::array>(), "w") : weight_view(w, wcode, "w");
    wv.round_input = round_input && wv.dtype == DType::BF16;
    TD_CHECK(w.ndim() == 2, "[matmul] w must be 2-D [n, k]");
    check_rows(x, wv.cols, "matmul", "x");
    TD_CHECK(x.shape(0) > 0, "[matmul] x has no rows");
    py::array_t<float> out({x.shape(0), static_cast<py::ssize_t>(wv.rows)});
    const int m = static_cast<int>(x.shape(0));
    const float* xp = x.data();
    float* op = out.mutable_data();
    py::gil_scoped_release r;
    cpu_backend().matmul(xp, m, wv, op);
    return out;
  }, py::arg("x"), py::arg("w"), py::arg("wcode"), py::arg("round_input") = false, py::arg("scales") = py::none());
  m.def("rope", [](F32Array x, py::array_t<int64_t, py::array::c_style | py::array::forcecast> positions,
                   const py::dict& rope_cfg, bool is_query) {
    TD_CHECK(x.ndim() == 3, "[rope] x must be [n, heads, head_dim], got ", x.ndim(), "-D");
    TD_CHECK(positions.ndim() == 1 && positions.shape(0) == x.shape(0), "[rope] positions must be [n] with n = ",
             x.shape(0));
    RopeParams rp = rope_from(rope_cfg);
    TD_CHECK(static_cast<py::ssize_t>(rp.inv_freq.size()) * 2 == x.shape(2), "[rope] head_dim ", x.shape(2),
             " does not match ", rp.inv_freq.size(), " inverse frequencies");
    py::array_t<float> out({x.shape(0), x.shape(1), x.shape(2)});
    std::copy(x.data(), x.data() + x.size(), out.mutable_data());
    float* op = out.mutable_data();
    const int64_t* pp = positions.data();
    const int n = static_cast<int>(x.shape(0)), h = static_cast<int>(x.shape(1)), d = static_cast<int>(x.shape(2));
    py::gil_scoped_release r;
    cpu_backend().rope(op, n, h, d, pp, rp, is_query);
    return out;
  });
  m.def("attention", [](F32Array q, F32Array k, F32Array v, bool causal, float scale) {
    TD_CHECK(q.ndim() == 3 && k.ndim() == 3 && v.ndim() == 3,
             "[attention] q, k, v must be 3-D ([n, heads, d], [T, kv_heads, d])");
    TD_CHECK(k.shape(0) == v.shape(0) && k.shape(1) == v.shape(1) && k.shape(2) == v.shape(2),
             "[attention] k and v shapes differ");
    TD_CHECK(q.shape(2) == k.shape(2), "[attention] q head_dim ", q.shape(2), " != k head_dim ", k.shape(2));
    TD_CHECK(k.shape(0) >= q.shape(0) && q.shape(0) > 0, "[attention] need 0 < n_q <= kv_len, got n_q ",
             q.shape(0), ", kv_len ", k.shape(0));
    TD_CHECK(k.shape(1) > 0 && q.shape(1) % k.shape(1) == 0, "[attention] query heads ", q.shape(1),
             " not a multiple of kv heads ", k.shape(1));
    AttentionParams p;
    py::array_t<float> out({q.shape(0), q.shape(1), q.shape(2)});
    p.q = q.data(); p.k = k.data(); p.v = v.data(); p.out = out.mutable_data();
    p.n_q = static_cast<int>(q.shape(0)); p.kv_len = static_cast<int>(k.shape(0));
    p.heads = static_cast<int>(q.shape(1)); p.kv_heads = static_cast<int>(k.shape(1));
    p.head_dim = static_cast<int>(q.shape(2));
    p.kv_token_stride = k.shape(1) * k.shape(2); p.kv_head_stride = k.shape(2);
    p.scale = scale; p.causal = causal;
    py::gil_scoped_release r;
    cpu_backend().attention(p);
    return out;
  });
  m.def("swiglu", [](F32Array gate, F32Array up) {
    TD_CHECK(gate.size() == up.size(), "[swiglu] gate and up sizes differ: ", gate.size(), " vs ", up.size());
    py::array out(py::dtype::of<float>(), std::vector<py::ssize_t>(gate.shape(), gate.shape() + gate.ndim()));
    float* op = static_cast<float*>(out.mutable_data());
    const float* gp = gate.data();
    const float* upp = up.data();
    const int64_t n = gate.size();
    py::gil_scoped_release r;
    cpu_backend().swiglu(gp, upp, n, op);
    return out;
  });
  m.def("select", [](F32Array logits, int exclude_id, float temperature, uint64_t seed, uint64_t stream) {
    TD_CHECK(logits.ndim() == 2 && logits.shape(1) > 0, "[select] logits must be [n, vocab]");
    const int n = static_cast<int>(logits.shape(0)), vocab = static_cast<int>(logits.shape(1));
    TD_CHECK(exclude_id < vocab, "[select] exclude_id ", exclude_id, " outside the vocabulary");
    const float* lp = logits.data();
    return idx_conf(n, [&](int32_t* ip, float* cp) {
      cpu_backend().select(lp, n, vocab, SelectParams{exclude_id, temperature, seed, stream}, ip, cp);
    });
  });
  m.def("head_select", [](F32Array x, py::array w, int wcode, int exclude_id, float temperature, uint64_t seed,
                          uint64_t stream) {
    WeightView wv = weight_view(w, wcode, "head");
    TD_CHECK(w.ndim() == 2, "[head_select] head must be 2-D [vocab, hidden]");
    check_rows(x, wv.cols, "head_select", "x");
    TD_CHECK(x.shape(0) > 0, "[head_select] x has no rows");
    TD_CHECK(exclude_id < wv.rows, "[head_select] exclude_id ", exclude_id, " outside the vocabulary");
    const int n = static_cast<int>(x.shape(0));
    const float* xp = x.data();
    return idx_conf(n, [&](int32_t* ip, float* cp) {
      cpu_backend().head_select(xp, n, wv, SelectParams{exclude_id, temperature, seed, stream}, ip, cp);
    });
  });
  m.def("select_commits", [](F32Array conf, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> masked,
                             float threshold, int k) {
    TD_CHECK(conf.ndim() == 1 && masked.ndim() == 1 && conf.shape(0) == masked.shape(0),
             "[select_commits] conf and masked must be 1-D of the same length");
    const int L = static_cast<int>(conf.shape(0));
    py::array_t<uint8_t> commit(L);
    cpu_backend().select_commits(conf.data(), masked.data(), L, threshold, k, commit.mutable_data());
    return commit;
  });
  m.def("accept_length", [](py::array_t<int32_t, py::array::c_style | py::array::forcecast> draft,
                            py::array_t<int32_t, py::array::c_style | py::array::forcecast> target) {
    TD_CHECK(draft.ndim() == 1 && target.ndim() == 1 && draft.shape(0) == target.shape(0) && draft.shape(0) > 0,
             "[accept_length] draft and target must be 1-D of the same non-zero length");
    return cpu_backend().accept_length(draft.data(), target.data(), static_cast<int>(draft.shape(0)));
  });
  // ---- CUDA ops on raw device pointers (arrays from cupy / __cuda_array_interface__ / DLPack, or
  //      DeviceBuffer staging). Shapes are validated by tridecode.ops; pointers are trusted here. ----
  py::module_ cu = m.def_submodule("cuda_raw", "CUDA backend ops on raw device pointers");
  auto fptr = [](uintptr_t p) { return reinterpret_cast<float*>(p); };
  auto wview = [](uintptr_t p, int code, int64_t rows, int64_t cols) {
    WeightView w;
    w.data = reinterpret_cast<const void*>(p);
    w.dtype = dtype_from_code(code);
    w.rows = rows;
    w.cols = cols;
    return w;
  };
  cu.def("rms_norm", [=](uintptr_t x, uintptr_t w, int code, uintptr_t out, int n, int dim, float eps) {
    CudaCall().be.rms_norm(fptr(x), wview(w, code, 1, dim), n, dim, eps, fptr(out));
  });
  cu.def("matmul", [=](uintptr_t x, int m, uintptr_t w, int code, int64_t n, int64_t k, uintptr_t out) {
    CudaCall().be.matmul(fptr(x), m, wview(w, code, n, k), fptr(out));
  });
  cu.def("rope", [=](uintptr_t x, int n, int heads, int head_dim, uintptr_t positions, const py::dict& rope_cfg,
                     bool is_query) {
    CudaCall().be.rope(fptr(x), n, heads, head_dim, reinterpret_cast<const int64_t*>(positions),
                             rope_from(rope_cfg), is_query);
  });
  cu.def("attention", [=](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, int n_q, int kv_len, int heads,
                          int kv_heads, int head_dim, bool causal, float scale, int kv_code, uintptr_t cached_ptr,
                          int out_code) {
    AttentionParams p;
    p.q = fptr(q); p.k = reinterpret_cast<const void*>(k); p.v = reinterpret_cast<const void*>(v); p.out = fptr(out);
    p.kv_dtype = dtype_from_code(kv_code);
    p.n_q = n_q; p.kv_len = kv_len; p.heads = heads; p.kv_heads = kv_heads; p.head_dim = head_dim;
    p.kv_token_stride = static_cast<int64_t>(kv_heads) * head_dim; p.kv_head_stride = head_dim;
    p.scale = scale; p.causal = causal;
    p.cached = reinterpret_cast<const int32_t*>(cached_ptr);
    p.out_dtype = dtype_from_code(out_code);
    CudaCall().be.attention(p);
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("n_q"), py::arg("kv_len"), py::arg("heads"),
     py::arg("kv_heads"), py::arg("head_dim"), py::arg("causal"), py::arg("scale"), py::arg("kv_code") = 0,
     py::arg("cached_ptr") = 0, py::arg("out_code") = 0);
  cu.def("swiglu", [=](uintptr_t g, uintptr_t u, uintptr_t out, int64_t n, bool bf16_out) {
    if (bf16_out) CudaCall().be.swiglu_bf16(fptr(g), fptr(u), n, reinterpret_cast<uint16_t*>(out));
    else CudaCall().be.swiglu(fptr(g), fptr(u), n, fptr(out));
  }, py::arg("g"), py::arg("u"), py::arg("out"), py::arg("n"), py::arg("bf16_out") = false);
  cu.def("rms_norm_bf16", [=](uintptr_t x, uintptr_t y, uintptr_t w, int code, uintptr_t out, int n, int dim, float eps) {
    CudaCall().be.rms_norm_bf16(fptr(x), y ? fptr(y) : nullptr, wview(w, code, 1, dim), n, dim, eps,
                                reinterpret_cast<uint16_t*>(out));
  });
  cu.def("matmul_bf16", [=](uintptr_t x, int m, uintptr_t w, int code, int64_t rows, int64_t cols, uintptr_t out) {
    const int64_t r[1] = {rows};
    float* const o[1] = {fptr(out)};
    CudaCall().be.matmul_bf16(reinterpret_cast<const uint16_t*>(x), m, wview(w, code, rows, cols), 1, r, o);
  });
  cu.def("select", [=](uintptr_t logits, int n, int vocab, int exclude_id, float temperature, uint64_t seed,
                       uint64_t stream, uintptr_t idx, uintptr_t conf) {
    CudaCall().be.select(fptr(logits), n, vocab, SelectParams{exclude_id, temperature, seed, stream},
                               reinterpret_cast<int32_t*>(idx), fptr(conf));
  });
  cu.def("head_select", [=](uintptr_t x, int n, uintptr_t w, int code, int64_t vocab, int64_t hidden, int exclude_id,
                            float temperature, uint64_t seed, uint64_t stream, uintptr_t idx, uintptr_t conf) {
    CudaCall().be.head_select(fptr(x), n, wview(w, code, vocab, hidden),
                                    SelectParams{exclude_id, temperature, seed, stream},
                                    reinterpret_cast<int32_t*>(idx), fptr(conf));
  });
  cu.def("select_commits", [=](uintptr_t conf, uintptr_t masked, int L, float threshold, int k, uintptr_t commit) {
    return CudaCall().be.select_commits(fptr(conf), reinterpret_cast<const uint8_t*>(masked), L, threshold,
                                              k, reinterpret_cast<uint8_t*>(commit));
  });
  cu.def("accept_length", [=](uintptr_t draft, uintptr_t target, int L) {
    return CudaCall().be.accept_length(reinterpret_cast<const int32_t*>(draft),
                                             reinterpret_cast<const int32_t*>(target), L);
  });
  cu.def("kv_write", [=](uintptr_t cache, uintptr_t chunk, int n, int kv_heads, int head_dim, int64_t row0,
                         int64_t head_stride, int cache_code) {
    CudaCall().be.kv_write(reinterpret_cast<void*>(cache), dtype_from_code(cache_code), fptr(chunk), n, kv_heads,
                           head_dim, row0, head_stride);
  }, py::arg("cache"), py::arg("chunk"), py::arg("n"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("row0"),
     py::arg("head_stride"), py::arg("cache_code") = 0);
  cu.def("embed", [=](uintptr_t table, int code, int64_t rows, int64_t cols, uintptr_t ids, int n, uintptr_t out) {
    CudaCall().be.embed(wview(table, code, rows, cols), reinterpret_cast<const int32_t*>(ids), n, fptr(out));
  });
  cu.def("add_rms_norm", [=](uintptr_t x, uintptr_t y, uintptr_t w, int code, uintptr_t out, int n, int dim,
                             float eps) {
    CudaCall().be.add_rms_norm(fptr(x), fptr(y), wview(w, code, 1, dim), n, dim, eps, fptr(out));
  });
  cu.def("rope_kv_append", [=](uintptr_t q, uintptr_t k, uintptr_t v, int n, int heads, int kv_heads, int head_dim,
                               uintptr_t positions, const py::dict& rope_cfg, uintptr_t cache_k, uintptr_t cache_v,
                               int64_t row0, int64_t head_stride, int cache_code, uintptr_t row0_ptr) {
    CudaCall().be.rope_kv_append(fptr(q), fptr(k), fptr(v), n, heads, kv_heads, head_dim,
                                 reinterpret_cast<const int64_t*>(positions), rope_from(rope_cfg),
                                 reinterpret_cast<void*>(cache_k), reinterpret_cast<void*>(cache_v),
                                 dtype_from_code(cache_code), row0, head_stride,
                                 reinterpret_cast<const int32_t*>(row0_ptr));
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n"), py::arg("heads"), py::arg("kv_heads"),
     py::arg("head_dim"), py::arg("positions"), py::arg("rope_cfg"), py::arg("cache_k"), py::arg("cache_v"),
     py::arg("row0"), py::arg("head_stride"), py::arg("cache_code") = 0, py::arg("row0_ptr") = 0);
  cu.def("synchronize", &td::cuda::synchronize);
  cu.def("memory_info", [] {
    auto [free_b, total_b] = td::cuda::memory_info();
    return py::make_tuple(free_b, total_b);
  });
  cu.def("allocation_counts", [] {
    auto [allocs, frees] = td::cuda::allocation_counts();
    return py::make_tuple(allocs, frees);
  });

  // A device allocation with host copies in and out: staging for numpy inputs and guard-byte checks.
  py::class_<Buffer>(m, "DeviceBuffer")
      .def(py::init([](size_t bytes) {
             auto b = std::make_unique<Buffer>(td::cuda::backend());
             b->reserve(bytes);
             return b;
           }),
           py::arg("nbytes"))
      .def_property_readonly("ptr", [](const Buffer& b) { return reinterpret_cast<uintptr_t>(b.get()); })
      .def_property_readonly("nbytes", &Buffer::capacity)
      .def("upload", [](Buffer& b, py::array a, size_t offset) {
             TD_CHECK(a.flags() & py::array::c_style, "[DeviceBuffer] the array must be C-contiguous");
             TD_CHECK(offset + a.nbytes() <= b.capacity(), "[DeviceBuffer] upload of ", a.nbytes(), " bytes at ",
                      offset, " exceeds the buffer (", b.capacity(), " bytes)");
             td::cuda::backend().upload(static_cast<char*>(b.get()) + offset, a.data(), a.nbytes());
           },
           py::arg("array"), py::arg("offset") = 0)
      .def("download", [](Buffer& b, py::array a, size_t offset) {
             TD_CHECK(a.flags() & py::array::c_style, "[DeviceBuffer] the array must be C-contiguous");
             TD_CHECK(a.writeable(), "[DeviceBuffer] the array must be writeable");
             TD_CHECK(offset + a.nbytes() <= b.capacity(), "[DeviceBuffer] download of ", a.nbytes(),
                      " bytes at ", offset, " exceeds the buffer (", b.capacity(), " bytes)");
             td::cuda::backend().download(a.mutable_data(), static_cast<const char*>(b.get()) + offset, a.nbytes());
           },
           py::arg("array"), py::arg("offset") = 0);

}
