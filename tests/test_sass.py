"""SASS gates: the compiled sm_90a and sm_80 code of the CUDA kernels keeps what each was designed for.

Read with `cuobjdump -sass` / `-res-usage` (the `nvidia-cuda-cuobjdump` and `nvidia-cuda-nvdisasm` wheels of
the dev extra) from the built module. A gate fails when a kernel loses an instruction it was designed
around (tensor-core HMMA in the tensor-core matmuls and block attention, 128-bit weight loads in the vectorised skinny matmul),
spills to local memory, or needs more registers than its occupancy target. Runs wherever the CUDA
backend is compiled for a GPU (CI compiles it with nvcc); skipped in builds without it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

import tridecode
from tridecode import _C

ARCHS = ("sm_80", "sm_90a")

# (demangled-name pattern, SASS opcode patterns that must appear, register limit). The register limit is the
# occupancy target: 256-thread blocks at two or more blocks per SM (128 registers), 128-thread blocks at four.
GATES = [
    (r"tc_matmul_kernel\(", [r"\bHMMA\.16816\.F32\.BF16\b", r"\bLDG\.E\.128"], 128),
    (r"skinny_matmul_vec_kernel<\(td::DType\)0>", [r"\bLDG\.E\.128"], 128),
    (r"skinny_matmul_vec_kernel<\(td::DType\)1>", [r"\bLDG\.E\.128"], 128),
    # weight streaming, x in fp32 or (bf16 activations) bf16
    (r"tc_skinny_kernel<\d+, \d+, float>\(", [r"\bHMMA\.16816\.F32\.BF16\b", r"\bLDG\.E\.128"], 128),
    (r"tc_skinny_kernel<\d+, \d+, __nv_bfloat16>\(", [r"\bHMMA\.16816\.F32\.BF16\b", r"\bLDG\.E\.128"], 128),
    (r"skinny_matmul_kernel<\(td::DType\)\d>", [], 128),
    (r"attention_tile_kernel<\d+, float>", [r"\bLDG\.E\.128"], 128),          # K/V tiles, 16-byte loads
    (r"attention_tile_kernel<\d+, __nv_bfloat16>", [r"\bLDG\.E\.128"], 128),
    # the bf16 cache on the tensor cores: S = Q K^T and P V as bf16 HMMA, K/V tiles with 16-byte loads
    (r"attention_mma_kernel\(", [r"\bHMMA\.16816\.F32\.BF16\b", r"\bLDG\.E\.128"], 128),
    (r"attention_merge_kernel\(", [], 64),
    (r"select_split_kernel\(", [], 128),
]
# Kernels allowed to use local memory: the benchmark-only random fill (its normal draw keeps a small array).
LOCAL_ALLOWED = (r"fill_random_kernel\(",)


def _tool(name: str) -> str | None:
    """cuobjdump / nvdisasm from PATH or from the NVIDIA wheels in this interpreter's site-packages."""
    found = shutil.which(name)
    if found:
        return found
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path}:
        for sub in ("nvidia/cu13/bin", "nvidia/cuda_cuobjdump/bin", "nvidia/cuda_nvdisasm/bin"):
            p = os.path.join(base, sub, name)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
    return None


def _demangle(names: list[str]) -> list[str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return names
    p = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True, check=True)
    return p.stdout.splitlines()


def parse_sass(text: str) -> dict[str, list[str]]:
    """Function name (mangled) -> its instruction opcodes (with modifiers), from `cuobjdump -sass` output."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = m.group(1)
            out[current] = []
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and current is not None:
            out[current].append(m.group(1))
    return out


def parse_resources(text: str) -> dict[str, dict[str, int]]:
    """Function name (mangled) -> REG, STACK, LOCAL, SHARED, from `cuobjdump -res-usage` output."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):\s*$", line)
        if m:
            current = m.group(1)
            continue
        if current is not None and "REG:" in line:
            out[current] = {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", line)}
            current = None
    return out


def check(sass: dict[str, list[str]], res: dict[str, dict[str, int]]) -> list[str]:
    """The gate violations of one architecture's code (empty: every gate holds)."""
    names = sorted(set(sass) | set(res))
    readable = dict(zip(names, _demangle(names)))
    problems = []
    for pattern, needs, max_reg in GATES:
        hits = [n for n in names if re.search(pattern, readable[n])]
        if not hits:
            problems.append(f"no compiled kernel matches {pattern!r}")
        for n in hits:
            ops = " ".join(sass.get(n, []))
            for need in needs:
                if not re.search(need, ops):
                    problems.append(f"{readable[n]}: no {need} instruction")
            reg = res.get(n, {}).get("REG")
            if reg is None or reg > max_reg:
                problems.append(f"{readable[n]}: {reg} registers (target at most {max_reg})")
    for n in names:
        if any(re.search(p, readable[n]) for p in LOCAL_ALLOWED):
            continue
        r = res.get(n, {})
        spills = [op for op in sass.get(n, []) if op.startswith(("LDL", "STL"))]
        if r.get("STACK", 0) or r.get("LOCAL", 0) or spills:
            problems.append(f"{readable[n]}: local memory (stack {r.get('STACK')}, local {r.get('LOCAL')}, "
                            f"{len(spills)} LDL/STL)")
    return problems


def _dump(kind: str, arch: str) -> str:
    cuobjdump = _tool("cuobjdump")
    nvdisasm = _tool("nvdisasm")
    assert cuobjdump and nvdisasm, ("cuobjdump and nvdisasm are needed for the SASS gates: "
                                    "pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm (the dev extra has them)")
    env = dict(os.environ, PATH=os.path.dirname(nvdisasm) + os.pathsep + os.environ.get("PATH", ""))
    p = subprocess.run([cuobjdump, kind, "-arch", arch, _C.__file__], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _needs_gpu_code():
    if not tridecode.cuda_compiled() or tridecode.cuda_emulated():
        pytest.skip("this build has no GPU code (the CUDA backend is compiled only where nvcc is found)")


@pytest.mark.parametrize("arch", ARCHS)
def test_the_hot_kernels_keep_their_design(arch):
    _needs_gpu_code()
    sass = parse_sass(_dump("-sass", arch))
    res = parse_resources(_dump("-res-usage", arch))
    assert sass, f"no {arch} code in {_C.__file__}"
    problems = check(sass, res)
    assert not problems, f"{arch}:\n" + "\n".join(problems)


SAMPLE_SASS = """
        Function : _ZN2td4cuda12_GLOBAL__N_116tc_matmul_kernelEPKfilPK13__nv_bfloat16lPf
        /*0000*/                   LDG.E.U16.CONSTANT R2, desc[UR4][R2.64] ;    /* 0x000000 */
        /*0010*/               @P0 STL.64 [R1], R4 ;                             /* 0x000000 */
        /*0020*/                   EXIT ;                                         /* 0x000000 */
"""
SAMPLE_RES = """
 Function _ZN2td4cuda12_GLOBAL__N_116tc_matmul_kernelEPKfilPK13__nv_bfloat16lPf:
  REG:200 STACK:16 SHARED:0 LOCAL:0 CONSTANT[0]:400
"""


def test_the_gates_catch_a_kernel_that_lost_its_design():
    """The checker itself, on a tensor-core matmul that lost its HMMA, spills and needs 200 registers."""
    problems = check(parse_sass(SAMPLE_SASS), parse_resources(SAMPLE_RES))
    text = "\n".join(problems)
    assert "no \\bHMMA" in text and "200 registers" in text and "local memory" in text, text
    assert "no compiled kernel matches 'skinny_matmul_kernel" in text
