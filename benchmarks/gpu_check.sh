#!/usr/bin/env bash
# The one-run GPU check: build with CUDA, run every test with CUDA required, run the GPU benchmarks that
# exist so far, and leave logs in OUTDIR. Usage: benchmarks/gpu_check.sh OUTDIR
set -uo pipefail
OUT=${1:-${OUT:-/tmp/tridecode-gpu}}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
status=0
{
  echo "== machine"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  python3 --version; nvcc --version | tail -1
  git rev-parse HEAD 2>/dev/null || true
} 2>&1 | tee "$OUT/machine.txt"

echo "== build (TRIDECODE_CUDA=ON)"
if ! TRIDECODE_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -v . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
python3 -c "import tridecode, sys; print('cuda compiled', tridecode.cuda_compiled(), 'available', tridecode.cuda_available()); sys.exit(0 if tridecode.cuda_available() else 1)" \
  || { echo "CUDA backend not usable"; exit 1; }

echo "== tests (TRIDECODE_REQUIRE_CUDA=1)"
TRIDECODE_REQUIRE_CUDA=1 python3 -m pytest -x -q tests 2>&1 | tee "$OUT/tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== benchmarks"
for b in benchmarks/bench_cuda.py; do
  [ -f "$b" ] || { echo "($b not present yet)"; continue; }
  python3 "$b" --csv "$OUT/$(basename "$b" .py).csv" 2>&1 | tee "$OUT/$(basename "$b" .py).log" || status=1
done
echo "== done (status $status)"
exit $status
