#!/usr/bin/env bash
# The first thing to run on a lent GPU (about 6-8 minutes on an H100/H200): build echo._C with its CUDA kernels for
# this device, run every `gpu` test and tests/ops + tests/engine (the op tests cover the CUDA and Triton backends
# on a GPU), then the GPU benchmarks (bench_gpu.py: 7B-shaped decode at batch 1/8/64 vs the HBM roofline, Triton
# store_kv vs copy bandwidth, CUDA vs CPU log-mel, the engine on each backend, the engine vs the transformers loop
# at batch 8). Every figure goes to one results file named for the device; full logs beside it (.log).
#
# Without a CUDA device (or with --dry-run) it runs green on a CPU: the build and the test suites are skipped,
# saying so, and the benchmark script runs its --smoke mode (tiny shapes) so that its code paths are checked.
#
# Usage: benchmarks/gpu/run.sh [--dry-run] [--results FILE]
set -uo pipefail
cd "$(dirname "$0")/../.."
export TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}

dry=0
results=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --results) results="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (use --dry-run, --results FILE)" >&2; exit 2 ;;
  esac
  shift
done

start=$SECONDS
device=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" 2>/dev/null) \
  || { echo "run.sh: python cannot import torch" >&2; exit 1; }
gpu=1
if [ "$device" = cpu ] || [ $dry -eq 1 ]; then gpu=0; fi
slug=$(echo "$device" | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
results=${results:-benchmarks/gpu/results-${slug}-$(date -u +%Y%m%dT%H%M).txt}
mkdir -p "$(dirname "$results")"
: > "$results"
: > "$results.log"
failed=()

say() { echo "$*" | tee -a "$results"; }
# step NAME CMD...: runs CMD with its output in the log, its last line and timing in the results file
step() {
  local name=$1 t=$SECONDS rc
  shift
  say "== $name"
  "$@" >> "$results.log" 2>&1
  rc=$?
  say "   $(tail -n 1 "$results.log")"
  say "   rc $rc, $((SECONDS - t)) s"
  [ $rc -eq 0 ] || failed+=("$name")
}

say "# echo GPU check on: $device ($(date -u +%FT%TZ))"
say "$($PY benchmarks/machine.py)"

# 1. build echo._C with CUDA for this device, into src/echo, which then comes first on the path (on the CPU the
#    installed echo, or the caller's PYTHONPATH, is used as it is)
if [ $gpu -eq 1 ]; then
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  [ -e src/echo/triton_kernels ] || ln -s ../../triton_kernels src/echo/triton_kernels  # as the wheel maps it
  if command -v nvcc >/dev/null 2>&1; then
    build=build/gpu-check
    step "build echo._C with CUDA (native arch)" bash -c "
      cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release -DECHO_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=native \
            -Dpybind11_DIR=\$($PY -m pybind11 --cmakedir) &&
      cmake --build $build -j \$(nproc) && cp $build/_C*.so src/echo/ &&
      $PY -c 'import echo._C as C, sys; sys.exit(0 if C.has_cuda() else \"echo._C has no CUDA kernels\"); ' &&
      echo 'echo._C built with CUDA kernels'"
  else
    say "== build: skipped, nvcc not found (the CUDA backend will be unavailable; its tests skip)"
  fi
else
  say "== build: skipped (no CUDA device or --dry-run); using the echo._C already in src/echo if any"
fi

# 2. tests on the GPU: every test marked gpu, then the op and engine suites (ops run each backend x device pair)
if [ $gpu -eq 1 ]; then
  export TRITON_INTERPRET=0  # real Triton on the GPU (the test conftest defaults it to 1 for CPU machines)
  step "pytest -m gpu (every test marked gpu)" $PY -m pytest tests -m gpu -q -p no:cacheprovider
  step "pytest tests/ops tests/engine (CUDA, Triton, C++ and torch backends)" \
    $PY -m pytest tests/ops tests/engine -q -p no:cacheprovider
else
  say "== tests: skipped, they need a CUDA device (CI runs tests/ on the CPU)"
fi

# 3. GPU benchmarks (smoke mode on the CPU: tiny shapes, the code paths only)
if [ $gpu -eq 1 ]; then
  step "GPU benchmarks (bench_gpu.py)" $PY benchmarks/gpu/bench_gpu.py --results "$results.bench"
else
  step "benchmark script, smoke mode (tiny shapes on the CPU; GPU figures skipped)" \
    $PY benchmarks/gpu/bench_gpu.py --results "$results.bench" --smoke
fi
if [ -f "$results.bench" ]; then cat "$results.bench" >> "$results"; rm -f "$results.bench"; fi

say ""
say "total $((SECONDS - start)) s; failed: ${failed[*]:-none}"
say "results: $results (full output: $results.log)"
[ ${#failed[@]} -eq 0 ]
