"""The CUDA emulator (csrc/cuda_emu/) on its own: built here from the sources with the host compiler, so
these tests run in every build of the package.

- tests/cuda_emu/cases.cu: CUDA semantics (indices, shuffles, votes, barriers, shared memory, WMMA,
  conversions, atomics, runtime errors) checked against CUDA's documented behaviour, and kernels that are
  wrong in one way each, which the emulator must refuse with a message naming the kernel and line.
- Mutation tests: copies of the real kernels in csrc/cuda/ with one bug injected each (an off-by-one bound,
  a missing __syncthreads, a shuffle by half a warp, an undersized shared array, a bad WMMA leading
  dimension), built against the emulator and run through tests/cuda_emu/driver.cpp: every one is caught,
  and the unmutated kernels pass the same runs."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from checkpoints import f32_to_bf16_bits

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")
EMU = os.path.join(CSRC, "cuda_emu")
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
RUNTIME = [os.path.join(EMU, f) for f in ("fiber.cpp", "scheduler.cpp", "runtime.cpp", "graph.cpp", "traffic.cpp")]
KERNELS = sorted(f for f in os.listdir(os.path.join(CSRC, "cuda")) if f.endswith(".cu"))
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer"]
# Kernel sources get the access instrumentation that counts traffic (as in the package's EMU build), except
# under AddressSanitizer, which cannot share a build with it.
TRAFFIC_FLAGS = ["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0"]


def _flags(include: str, asan: bool) -> list[str]:
    return (["-std=c++17", "-O1", "-fno-strict-aliasing", "-w", f"-I{include}", f"-I{os.path.join(EMU, 'include')}",
             f"-I{CSRC}"] + (ASAN_FLAGS if asan else []))


def _compile(jobs: list[tuple[str, str]], include: str, asan: bool, kernels: bool = False) -> None:
    assert CXX, "a C++ compiler is needed to build the emulator tests"
    extra = TRAFFIC_FLAGS if kernels and not asan else []

    def one(job):
        src, obj = job
        p = subprocess.run([CXX, *_flags(include, asan), *extra, "-c", src, "-o", obj], capture_output=True, text=True)
        assert p.returncode == 0, f"compiling {src}:\n{p.stderr[-3000:]}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(one, jobs))


def _rewrite(outdir: str, sources: list[str]) -> None:
    p = subprocess.run([sys.executable, os.path.join(EMU, "rewrite.py"), outdir, *sources], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def _link(exe: str, objs: list[str], asan: bool) -> str:
    p = subprocess.run([CXX, *objs, "-o", exe, "-lpthread", *(ASAN_FLAGS if asan else [])], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return exe


class Builds:
    """Objects compiled once per session (plain and with AddressSanitizer), linked per executable."""

    def __init__(self, root: str):
        self.root = root
        self.runtime: dict[bool, list[str]] = {}
        self.kernels: dict[bool, dict[str, str]] = {}

    def _dir(self, name: str) -> str:
        d = os.path.join(self.root, name)
        os.makedirs(d, exist_ok=True)
        return d

    def runtime_objs(self, asan: bool) -> list[str]:
        if asan not in self.runtime:
            d = self._dir(f"runtime-{asan}")
            jobs = [(s, os.path.join(d, os.path.basename(s) + ".o")) for s in RUNTIME]
            _compile(jobs, d, asan)
            self.runtime[asan] = [o for _, o in jobs]
        return self.runtime[asan]

    def kernel_objs(self, asan: bool) -> dict[str, str]:
        """csrc/cuda/*.cu, rewritten and compiled, plus the driver: name -> object."""
        if asan not in self.kernels:
            d = self._dir(f"kernels-{asan}")
            src = os.path.join(d, "cuda")
            _rewrite(src, [os.path.join(CSRC, "cuda", k) for k in KERNELS] +
                     [os.path.join(CSRC, "cuda", f) for f in os.listdir(os.path.join(CSRC, "cuda")) if f.endswith(".cuh")])
            jobs = [(os.path.join(src, k[:-3] + ".cpp"), os.path.join(d, k + ".o")) for k in KERNELS]
            jobs.append((os.path.join(HERE, "cuda_emu", "driver.cpp"), os.path.join(d, "driver.o")))
            _compile(jobs, d, asan, kernels=True)
            self.kernels[asan] = {os.path.basename(o)[:-2]: o for _, o in jobs}
        return self.kernels[asan]

    def cases(self, asan: bool) -> str:
        d = self._dir(f"cases-{asan}")
        exe = os.path.join(d, "cases")
        if not os.path.exists(exe):
            _rewrite(d, [os.path.join(HERE, "cuda_emu", "cases.cu")])
            _compile([(os.path.join(d, "cases.cpp"), os.path.join(d, "cases.o"))], d, asan, kernels=True)
            _link(exe, [os.path.join(d, "cases.o"), *self.runtime_objs(asan)], asan)
        return exe

    def driver(self, asan: bool, mutant: tuple[str, str, str] | None = None, name: str = "plain") -> str:
        objs = dict(self.kernel_objs(asan))
        d = self._dir(f"driver-{name}-{asan}")
        if mutant is not None:
            file, old, new = mutant
            with open(os.path.join(CSRC, "cuda", file), encoding="utf-8") as f:
                text = f.read()
            assert text.count(old) == 1, f"the mutation target is not unique in {file}: {old!r}"
            src = os.path.join(d, "src", "cuda")
            os.makedirs(src, exist_ok=True)
            with open(os.path.join(src, file), "w", encoding="utf-8") as f:
                f.write(text.replace(old, new))
            _rewrite(os.path.join(d, "cuda"), [os.path.join(src, file)])
            # The mutated file's includes resolve to the unmutated rewritten headers.
            inc = os.path.join(self.root, f"kernels-{asan}")
            obj = os.path.join(d, file + ".o")
            extra = [] if asan else TRAFFIC_FLAGS
            p = subprocess.run([CXX, *_flags(inc, asan), *extra, "-c", os.path.join(d, "cuda", file[:-3] + ".cpp"), "-o", obj],
                               capture_output=True, text=True)
            assert p.returncode == 0, p.stderr[-3000:]
            objs[file] = obj
        return _link(os.path.join(d, "driver"), [*objs.values(), *self.runtime_objs(asan)], asan)


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    return Builds(str(tmp_path_factory.mktemp("cuda_emu")))


def run(exe: str, *args: str, stdin: str | None = None, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", **env)
    e.pop("LD_PRELOAD", None)
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, timeout=300, env=e)


def passes(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0 and "PASS" in p.stdout, p.stdout + p.stderr


# ---- semantics ----

@pytest.mark.parametrize("case", ["indices", "votes", "barrier_reductions", "shared", "wmma", "atomics"])
def test_semantics(builds, case):
    passes(run(builds.cases(False), case))


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_shuffles_follow_cuda(builds, order):
    p = run(builds.cases(False), "shuffles", TD_CUDA_EMU_ORDER=order)
    passes(p)
    rows = np.array([list(map(int, line.split())) for line in p.stdout.splitlines()[:8]])
    lane, warp = np.arange(64) % 32, np.arange(64) // 32
    v = lane * 10 + warp

    def of(src_lane):
        return src_lane * 10 + warp

    seg8, seg16 = lane & ~7, lane & ~15
    np.testing.assert_array_equal(rows[0], of(np.full(64, 5)))
    np.testing.assert_array_equal(rows[1], of(seg8 + ((lane + 1) & 7)))
    np.testing.assert_array_equal(rows[2], np.where(lane < 3, v, of(lane - 3)))
    np.testing.assert_array_equal(rows[3], np.where((lane & 15) + 3 >= 16, v, of(lane + 3)))
    np.testing.assert_array_equal(rows[4], of(lane ^ 1))
    # width 16: lanes 0-15 would read a later segment and keep their own value; 16-31 read an earlier one
    np.testing.assert_array_equal(rows[5], np.where((lane ^ 16) >= seg16 + 16, v, of(lane ^ 16)))
    np.testing.assert_array_equal(rows[6], 4960 + 32 * warp)
    np.testing.assert_array_equal(rows[7], np.where(lane == 31, 2 * v + 1, 2 * of(np.minimum(lane + 1, 31)) + 1))


def test_conversions_round_to_nearest_even(builds):
    special = np.array([0.0, -0.0, 1.0, 65504.0, 65520.0, 1e-8, 6e-8, 3.0e-5, np.inf, -np.inf, np.nan,
                        1.00390625, 1.01171875, 3.3895314e38, 1e-45], np.float32)
    x = np.concatenate([special, np.random.default_rng(0).standard_normal(300).astype(np.float32) * 100])
    p = run(builds.cases(False), "conversions", stdin=" ".join(f"{b:08x}" for b in x.view(np.uint32)))
    passes(p)
    out = np.array([[int(t, 16) for t in line.split()] for line in p.stdout.splitlines()[:len(x)]], np.uint32)
    finite = np.isfinite(x) | np.isinf(x)
    want_bf = f32_to_bf16_bits(x).astype(np.uint32)
    with np.errstate(over="ignore"):
        want_h = x.astype(np.float16).view(np.uint16).astype(np.uint32)
    np.testing.assert_array_equal(out[finite, 0], want_bf[finite])
    np.testing.assert_array_equal(out[finite, 1], want_h[finite])
    assert (out[~finite, 0] & 0x7fff > 0x7f80).all() and (out[~finite, 1] & 0x7fff > 0x7c00).all()   # NaN stays NaN
    back_bf = (out[:, 0] << 16).view(np.float32)
    np.testing.assert_array_equal(out[finite, 2], back_bf[finite].view(np.uint32))
    np.testing.assert_array_equal(out[finite, 3], out[finite, 1].astype(np.uint16).view(np.float16).astype(np.float32).view(np.uint32))


def test_dynamic_shared_memory_and_its_limit(builds):
    p = run(builds.cases(False), "dynamic_shared")
    passes(p)
    assert "other_dynamic_kernel" in p.stdout and "cudaFuncSetAttribute" in p.stdout


def test_invalid_launches_are_launch_errors(builds):
    p = run(builds.cases(False), "bad_config")
    passes(p)
    assert "invalid configuration argument" in p.stdout and "index_kernel" in p.stdout and "1025 threads" in p.stdout
    assert "65536" in p.stdout


def test_copies_and_frees_are_checked_against_allocations(builds):
    p = run(builds.cases(False), "memcpy_bounds")
    passes(p)
    assert "runs past the end" in p.stdout


def test_stream_capture_records_and_graphs_replay(builds):
    p = run(builds.cases(False), "graph")
    passes(p)
    for what in ("malloc", "memcpy", "synchronize"):
        assert f"{what}: operation not permitted when stream is capturing" in p.stdout, p.stdout
    assert "legacy launch:" in p.stdout and "add_from_kernel" in p.stdout and "outside the graph" in p.stdout


def test_a_graph_replayed_after_its_buffer_was_freed_is_a_fault(builds):
    p = run(builds.cases(False), "stale_graph")
    assert p.returncode == 2 and "add_from_kernel" in p.stdout and "not device memory" in p.stdout, p.stdout + p.stderr


def test_device_memory_is_configurable(builds):
    p = run(builds.cases(False), "out_of_memory", TD_CUDA_EMU_MEMORY="64M")
    passes(p)
    assert "of 67108864 bytes" in p.stdout


def test_reverse_order_exposes_a_race_the_forward_order_hides(builds):
    fwd = run(builds.cases(False), "race")
    rev = run(builds.cases(False), "race", TD_CUDA_EMU_ORDER="reverse")
    passes(fwd)
    passes(rev)
    assert fwd.stdout.startswith("right") and rev.stdout.startswith("wrong")


def test_traffic_counts_what_the_threads_request(builds):
    """The byte counts of traffic_kernel and traffic_wmma_kernel, worked out from their source (cases.cu):
    global memory only, a broadcast value once per thread, a WMMA tile once per warp, nothing when off."""
    p = run(builds.cases(False), "traffic")
    passes(p)
    rows = [line.split() for line in p.stdout.splitlines() if line.startswith("traffic")]
    loads = 64 * 4 + 64 * 4 + 64 * 16          # own element, element 0, the 16-byte __ldg
    stores = 64 * 4 + 16                        # own element, thread 0's float4
    assert rows == [["traffic_kernel", str(loads), str(stores)],
                    ["traffic_wmma_kernel", str(16 * 16 * 2), str(16 * 16 * 4)],
                    ["traffic_kernel", "uncounted"]], p.stdout


def test_malformed_settings_are_refused(builds):
    p = run(builds.cases(False), "indices", TD_CUDA_EMU_ORDER="sideways")
    assert p.returncode != 0 and "TD_CUDA_EMU_ORDER=sideways" in p.stdout + p.stderr


# ---- faults: each kernel is wrong in one way; the emulator stops it and says where and why ----

FAULTS = {
    "exit_before_barrier": ("exit_before_barrier_kernel", "is reached by 40 of 64 threads"),
    "two_barriers": ("two_barriers_kernel", "a barrier in divergent code"),
    "half_warp_shuffle": ("half_warp_shuffle_kernel", "divergent warp"),
    "shuffle_from_exited": ("shuffle_from_exited_kernel", "reads lane 16, which has exited"),
    "mask_without_self": ("mask_without_self_kernel", "the mask 0x00000001 does not include the calling lane"),
    "wmma_bad_ldm": ("wmma_ldm_kernel", "ldm 12 is not a multiple of 16 bytes"),
    "wmma_misaligned": ("wmma_ldm_kernel", "is not 256-bit (32-byte) aligned"),
    "wmma_lanes_disagree": ("wmma_ldm_kernel", "the warp must agree"),
    "wmma_partial_warp": ("wmma_ldm_kernel", "needs a full warp of 32 threads"),
    "big_static_shared": ("big_static_shared_kernel", "over the 49152-byte limit"),
    "misaligned_ldg": ("misaligned_ldg_kernel", "not 16-byte aligned"),
    "launch_bounds": ("bounded_kernel", "more than its __launch_bounds__(64)"),
    "nested_launch": ("child_kernel", "dynamic parallelism is not emulated"),
    "host_pointer_argument": ("index_kernel", "is not device memory"),
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_faults_name_the_kernel_and_the_problem(builds, case):
    kernel, what = FAULTS[case]
    for order in ("forward", "reverse"):
        p = run(builds.cases(False), case, TD_CUDA_EMU_ORDER=order)
        assert p.returncode == 2, p.stdout + p.stderr
        assert "FAULT: [cuda-emu]" in p.stdout and kernel in p.stdout and what in p.stdout, p.stdout
        assert "cases.cu:" in p.stdout   # the source line


@pytest.mark.parametrize("case,kind", [("oob_global", "heap-buffer-overflow"), ("oob_shared", "global-buffer-overflow")])
def test_address_sanitizer_sees_out_of_bounds_accesses(builds, case, kind):
    p = run(builds.cases(True), case)
    assert p.returncode != 0 and f"AddressSanitizer: {kind}" in p.stderr, p.stdout + p.stderr[-2000:]


# ---- mutation tests on the real kernels ----

MUTANTS = {
    "off-by-one bound": ("elementwise.cu", "  if (i < n) {\n    const float x = g[i];", "  if (i <= n) {\n    const float x = g[i];",
                         "swiglu", True, "AddressSanitizer: heap-buffer-overflow"),
    "missing __syncthreads in a reduction": ("elementwise.cu", "part[threadIdx.x >> 5] = v;\n  __syncthreads();",
                                             "part[threadIdx.x >> 5] = v;\n", "rms_norm", False, "wrong answer"),
    "shuffle by half a warp": ("elementwise.cu", "  if (threadIdx.x < 32) {\n    float t", "  if (threadIdx.x < 16) {\n    float t",
                               "rms_norm", False, "divergent warp"),
    "undersized shared array": ("elementwise.cu", "__shared__ float part[kThreads / 32];", "__shared__ float part[kThreads / 64];",
                                "rms_norm", True, "AddressSanitizer: global-buffer-overflow"),
    "bad WMMA leading dimension": ("matmul_tc.cu", "constexpr int kPad = 8;", "constexpr int kPad = 4;", "matmul_tc", False,
                                   "is not a multiple of 16 bytes"),
    "split-KV partials merged without rescaling": (
        "attention.cu", "const float v = base[s * (2 + d) + 2 + e] * ms[s];", "const float v = base[s * (2 + d) + 2 + e];",
        "attention", False, "wrong answer"),
    "K/V tile not reloaded per tile": (
        "attention.cu", "    stage_tile<T>(p, kv_len, kb, vb, t0, vec, s, sm);",
        "    if (t0 == k_begin) stage_tile<T>(p, kv_len, kb, vb, t0, vec, s, sm);",
        "attention", False, "wrong answer"),
    "tensor-core attention output not rescaled": (
        "attention.cu", "      so[r * L.ldo + e] *= cs[r];", "", "attention_bf16", False, "wrong answer"),
    "tensor-core attention scores read before they are complete": (
        "attention.cu", "      wmma::store_matrix_sync(ss + 16 * rf * L.lds + 16 * kf, acc, L.lds, wmma::mem_row_major);\n    }\n    __syncthreads();",
        "      wmma::store_matrix_sync(ss + 16 * rf * L.lds + 16 * kf, acc, L.lds, wmma::mem_row_major);\n    }\n",
        "attention_bf16", False, "wrong answer"),
    "split-k ticket not reset": (
        "matmul_tc.cu", "  if (threadIdx.x == 0) tickets[blockIdx.x] = 0;", "", "matmul_skinny", False, "wrong answer"),
}


@pytest.mark.parametrize("op,asan", [("rms_norm", False), ("swiglu", False), ("matmul_tc", False), ("matmul_skinny", False),
                                     ("attention", False), ("attention_bf16", False), ("rms_norm", True),
                                     ("swiglu", True)])
def test_the_real_kernels_pass_the_driver(builds, op, asan):
    p = run(builds.driver(asan), op)
    assert p.returncode == 0 and p.stdout.startswith("right"), p.stdout + p.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_injected_kernel_bugs_are_caught(builds, name):
    file, old, new, op, asan, caught = MUTANTS[name]
    exe = builds.driver(asan, (file, old, new), name.replace(" ", "-").replace("_", ""))
    p = run(exe, op)
    assert p.returncode != 0 and caught in p.stdout + p.stderr, p.stdout + p.stderr[-2000:]


# ---- the rewriting build step ----

def _rewriter():
    import importlib.util
    spec = importlib.util.spec_from_file_location("td_emu_rewrite", os.path.join(EMU, "rewrite.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.rewrite


def test_rewrite_turns_launches_into_calls_and_keeps_lines():
    rewrite = _rewriter()
    src = ('  // k<<<1, 1>>>(x) in a comment stays\n'
           '  const char* s = "k<<<1, 1>>>(x)";\n'
           '  ns::kern<T, std::pair<int, int>><<<dim3(a, b), 128, smem,\n'
           '      stream>>>(p, q,\n'
           '                r);\n'
           '  plain<<<n, 32>>>();\n')
    out = rewrite(src)
    assert out.count("\n") == src.count("\n")
    assert '// k<<<1, 1>>>(x) in a comment stays' in out and '"k<<<1, 1>>>(x)"' in out
    assert ('::td_emu::Launch("ns::kern<T, std::pair<int, int>>", __PRETTY_FUNCTION__, __FILE__, __LINE__, '
            'dim3(a, b), 128, smem,\n      stream).run(ns::kern<T, std::pair<int, int>>, p, q,\n                r)') in out
    assert '::td_emu::Launch("plain", __PRETTY_FUNCTION__, __FILE__, __LINE__, n, 32).run(plain)' in out


def test_rewrite_notes_shared_arrays_and_launch_bounds():
    rewrite = _rewriter()
    src = ('__global__ void __launch_bounds__(kThreads, 2) k(float* x) {\n'
           '  __shared__ __align__(32) float a[4][8], b[kN];\n'
           '  extern __shared__ __align__(16) unsigned char dyn[];\n'
           '}\n')
    out = rewrite(src)
    assert out.count("\n") == src.count("\n")
    assert "{ ::td_emu::check_launch_bounds(static_cast<unsigned long long>(kThreads), TD_EMU_SITE);" in out
    assert "(static_cast<void*>(&a), sizeof(a), TD_EMU_SITE);" in out
    assert "(static_cast<void*>(&b), sizeof(b), TD_EMU_SITE);" in out
    assert "unsigned char* const dyn = static_cast<unsigned char*>(::td_emu::dynamic_shared());" in out
    with pytest.raises(SyntaxError):
        rewrite("(*fp)<<<1, 1>>>();\n")
