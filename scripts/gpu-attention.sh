#!/usr/bin/env bash
# On a GPU machine, in one go: build what the attention kernels need (gpu preset), run their GPU tests and the
# decode and prefill benchmarks against PyTorch SDPA. Results go to $OUT (or build/gpu-results); the table is printed last.
#   KVQ_DEPS_PREFIX=DIR/usr      offline Debian packages unpacked by shared/tools/offline-deps.sh
#   KVQ_BENCH_FILTER=REGEX       benchmark subset (default: the issue's formats at 4K, 32K, 128K and 512K)
#   KVQ_BENCH_REPETITIONS=N      repetitions per benchmark (default 1)
#   KVQ_STEPS="build quick bench tests"   which steps to run, in this order (also: importance, ibench, prefill,
#                                pbench, sanitize, profile)
#   KVQ_TARGETS="..."            what the build step builds (default: device tests, attention benchmarks, host tests)
#   KVQ_PREFILL_FILTER=REGEX     prefill benchmark subset (default: all of benchmarks/bench_prefill.cu)
#   KVQ_PROFILE="int2_g64 ..."   formats the profile step runs Nsight Compute on (batch 1, 128K tokens)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu-env.sh
filter=${KVQ_BENCH_FILTER:-'(fp16|int8_g128|int4_g64|int2_g64)/batch:(1|8)/context:(4096|32768|131072|524288)/'}
tests=./build/gpu/tests/kvq_device_tests

for s in ${KVQ_STEPS:-build quick bench tests}; do
  case $s in
    build)
      step "GPU"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
      step "configure"; cmake --preset gpu "${configure_args[@]}" >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
      step "build"
      cmake --build --preset gpu -j "$(nproc)" --target ${KVQ_TARGETS:-kvq_device_tests kvq_bench_attention kvq_bench_prefill kvq_host_tests} \
        >"$out/build.log" 2>&1 || { grep -E "error" -A3 "$out/build.log" | head -60; exit 1; } ;;
    quick)  # the tensor-core kernel's cases without the 128K ones
      step "quick tests"; "$tests" -tc='tensor-core*,device planner*' -tce='*128K*' 2>&1 | tee "$out/tests_quick.txt" | tail -15
      grep -q "Status: SUCCESS" "$out/tests_quick.txt" || status=1 ;;
    bench)
      step "benchmark"
      python3 scripts/bench-attention.py ./build/gpu/benchmarks/kvq_bench_attention "$out/attention" --filter="$filter" \
        --repetitions="${KVQ_BENCH_REPETITIONS:-1}" >"$out/bench.txt" 2>&1 || status=1 ;;
    importance)
      step "importance tests"; "$tests" -tc='importance*' 2>&1 | tee "$out/tests_importance.txt" | tail -15
      grep -q "Status: SUCCESS" "$out/tests_importance.txt" || status=1 ;;
    ibench)  # decode with and without importance bookkeeping, the issue's formats at 32K and 128K
      step "importance benchmark"
      python3 scripts/bench-attention.py ./build/gpu/benchmarks/kvq_bench_attention "$out/importance" \
        --filter="${KVQ_IBENCH_FILTER:-(attention|importance)/(fp16|int8_g128|int4_g64|int2_g64|kivi2_window128)/batch:(1|8)/context:(32768|131072)/}" \
        --repetitions="${KVQ_BENCH_REPETITIONS:-3}" >"$out/ibench.txt" 2>&1 || status=1
      tail -24 "$out/ibench.txt" ;;
    prefill)
      step "prefill tests"; "$tests" -tc='prefill attention*' 2>&1 | tee "$out/tests_prefill.txt" | tail -15
      grep -q "Status: SUCCESS" "$out/tests_prefill.txt" || status=1 ;;
    pbench)
      step "prefill benchmark"
      python3 scripts/bench-prefill.py ./build/gpu/benchmarks/kvq_bench_prefill "$out/prefill" \
        --filter="${KVQ_PREFILL_FILTER:-.}" >"$out/pbench.txt" 2>&1 || status=1
      tail -25 "$out/pbench.txt" ;;
    tests)
      step "host planner tests"; ./build/gpu/tests/kvq_host_tests -tc='plan_decode*' 2>&1 | tail -3
      step "attention tests"; "$tests" -tc='decode attention*,dequantize_range*,*128K*' 2>&1 | tee "$out/tests_attention.txt" | tail -15
      grep -q "Status: SUCCESS" "$out/tests_attention.txt" || status=1 ;;
    profile)  # one launch of the tensor-core kernel per format: throughput, warp stalls, hottest instructions
      for format in ${KVQ_PROFILE:-int2_g64 int4_g64}; do
        step "ncu $format"
        ncu --clock-control none -k regex:decode_attention_mma -c 1 --section SpeedOfLight --section WarpStateStats \
          --section SchedulerStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
          --section SourceCounters ./build/gpu/benchmarks/kvq_bench_attention \
          --benchmark_filter="attention/$format/batch:1/context:131072/" --benchmark_min_time=0.01 >"$out/ncu_$format.txt" 2>&1
        grep -E "Duration|Issued Ipc|Eligible Warps|Active Warps Per|Stall|Warp Cycles Per Issued|DRAM Throughput|Registers Per|Achieved Occupancy" \
          "$out/ncu_$format.txt" | head -30
      done ;;
    sanitize)
      for tool in memcheck racecheck; do
        step "compute-sanitizer $tool"
        timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 99 "$tests" \
          -tc="${KVQ_SANITIZE_CASES:-tensor-core*,device planner*,decode attention: lengths*,decode attention: sinks*,decode attention: bf16*,decode attention: one plan*,decode attention: empty*,importance*,prefill attention*}" \
          -tce='*128K*' \
          >"$out/sanitizer_$tool.txt" 2>&1 || { echo "compute-sanitizer $tool failed"; status=1; }
        tail -3 "$out/sanitizer_$tool.txt"
      done ;;
  esac
done
[[ -f "$out/bench.txt" ]] && { step "table"; tail -40 "$out/bench.txt"; }
exit $status
