#!/usr/bin/env bash
# On a GPU machine: build with the `gpu` preset, run every test (GPU ones included), the benchmarks, and
# compute-sanitizer (memcheck, racecheck) over the device tests. Results go to $OUT (or build/gpu-results).
#   KVQ_DEPS_PREFIX=DIR/usr  for offline Debian packages unpacked by shared/tools/offline-deps.sh
#   KVQ_BENCH_FILTER=REGEX   to run a subset of the benchmarks
#   KVQ_BENCHES="..."        which benchmarks (default: quantize cache attention; attention needs PyTorch)
#   KVQ_SANITIZER_EXCLUDE=.. doctest test-case patterns left out of the compute-sanitizer runs (slow cases)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu-env.sh

step "GPU"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
step "configure"; cmake --preset gpu "${configure_args[@]}" >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
step "build"; cmake --build --preset gpu -j "$(nproc)" >"$out/build.log" 2>&1 || { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
step "ctest"; ctest --preset gpu --output-on-failure 2>&1 | tee "$out/ctest.txt" | tail -25 || status=1
grep -q "100% tests passed" "$out/ctest.txt" || status=1

for bench in ${KVQ_BENCHES:-quantize cache attention}; do
  step "benchmark $bench"
  if [[ $bench == attention ]]; then  # with PyTorch SDPA as the baseline, in the same script
    python3 scripts/bench-attention.py ./build/gpu/benchmarks/kvq_bench_attention "$out/attention" \
      --filter="${KVQ_BENCH_FILTER:-.}" --repetitions="${KVQ_BENCH_REPETITIONS:-3}" | tail -80 || status=1
    continue
  fi
  ./build/gpu/benchmarks/kvq_bench_$bench --benchmark_min_time=0.1 --benchmark_filter="${KVQ_BENCH_FILTER:-.}" \
    --benchmark_out="$out/bench_$bench.json" --benchmark_out_format=json >"$out/bench_$bench.txt" 2>&1 || status=1
  grep -E "^(GPU|fp16 copy|[a-z_0-9]+/)" "$out/bench_$bench.txt" | sed -E 's/ +/ /g' | cut -c1-160
done

# The exhaustive 2^32-float converter test is skipped under the sanitizers (it has no memory traffic to check).
for tool in memcheck racecheck; do
  step "compute-sanitizer $tool"
  timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 99 ./build/gpu/tests/kvq_device_tests -tce="*2^32*${KVQ_SANITIZER_EXCLUDE:+,$KVQ_SANITIZER_EXCLUDE}" \
    >"$out/sanitizer_$tool.txt" 2>&1
  rc=$?
  tail -4 "$out/sanitizer_$tool.txt"
  [[ $rc -eq 0 ]] || { echo "compute-sanitizer $tool: exit $rc"; status=1; }
done
exit $status
