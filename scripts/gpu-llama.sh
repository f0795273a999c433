#!/usr/bin/env bash
# On a GPU machine, in one go: build kvq_llama with its GPU backend (gpu preset), run the GPU backend's tests
# (the tiny random model against the CPU backend; SmolLM2 as well when its file is there), a SmolLM2 generation on
# the GPU when the file is there, and synthetic Llama-3-8B runs that fill the cache to 32K tokens. Results go to
# $OUT (or build/gpu-results).
#   KVQ_DEPS_PREFIX=DIR/usr     offline Debian packages unpacked by shared/tools/offline-deps.sh (doctest, fmt,
#                               and for the example nlohmann-json3-dev libpcre2-dev libopenblas-dev with runtimes)
#   KVQ_SMOLLM2_GGUF=PATH       SmolLM2-135M-Instruct.Q4_1.gguf (default ~/.cache/kvq/...; skipped if absent)
#   KVQ_SYNTHETIC="llama3-8b"   synthetic models;  KVQ_SYNTHETIC_PRESETS="fp16 q4_0"   their --kv presets
#   KVQ_CONTEXT=32768  KVQ_CHUNK=1024  KVQ_DECODE=64   the synthetic runs' prompt, chunk and decode tokens
#   KVQ_CONTEXTS="4096 32768"   several prompts (overrides KVQ_CONTEXT)
#   KVQ_BUDGET_RUNS=1           also the 24 GiB claim: llama3-8b at 131072 tokens, --mem-budget 24GiB, q4_0 and fp16
#   KVQ_GPU_TESTS=0             skip the GPU backend tests (tiny model, SmolLM2)
#   KVQ_PREBUILT=DIR            kvq_llama and kvq_llama_gpu_tests built elsewhere for sm_90a (with
#                               -DBUILD_SHARED_LIBS=ON: libkvq_llama_gpu.so beside them): used when they start here,
#                               else the build step runs
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu-env.sh
bin=./build/gpu/examples/llama
smollm2=${KVQ_SMOLLM2_GGUF:-$HOME/.cache/kvq/SmolLM2-135M-Instruct.Q4_1.gguf}

step "GPU"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
if [[ -n "${KVQ_PREBUILT:-}" ]] && LD_LIBRARY_PATH="$KVQ_PREBUILT:$LD_LIBRARY_PATH" "$KVQ_PREBUILT/kvq_llama" --help >/dev/null &&
  LD_LIBRARY_PATH="$KVQ_PREBUILT:$LD_LIBRARY_PATH" "$KVQ_PREBUILT/kvq_llama_gpu_tests" --list-test-suites >/dev/null; then
  step "prebuilt binaries in $KVQ_PREBUILT start here; no build"
  bin=$KVQ_PREBUILT
  export LD_LIBRARY_PATH="$KVQ_PREBUILT:$LD_LIBRARY_PATH"
else
  step "configure"
  cmake --preset gpu "${configure_args[@]}" -DKVQ_BUILD_BENCHMARKS=OFF >"$out/configure.log" 2>&1 ||
    { tail -30 "$out/configure.log"; exit 1; }
  grep -E "kvq_llama|skipping" "$out/configure.log"
  step "build"
  cmake --build --preset gpu -j "$(nproc)" --target kvq_llama kvq_llama_gpu_tests >"$out/build.log" 2>&1 ||
    { grep -E "error" -A3 "$out/build.log" | head -60; exit 1; }
fi

if [[ "${KVQ_GPU_TESTS:-1}" == 1 ]]; then
step "GPU backend tests (tiny model, memory plan)"
"$bin/kvq_llama_gpu_tests" --test-suite=gpu,gpu_plan 2>&1 | tee "$out/tests_gpu.txt" | grep -E "MESSAGE|worst|chunk vs|ERROR|FAILED|Status|test cases" -A1
grep -q "Status: SUCCESS" "$out/tests_gpu.txt" || status=1
if [[ -f "$smollm2" ]]; then
  step "GPU backend tests (SmolLM2)"
  KVQ_SMOLLM2_GGUF="$smollm2" "$bin/kvq_llama_gpu_tests" --test-suite=gpu_smollm2 2>&1 | tee "$out/tests_smollm2.txt" | tail -12
  grep -q "Status: SUCCESS" "$out/tests_smollm2.txt" || status=1
  step "SmolLM2 generation, int8 KV"
  "$bin/kvq_llama" --backend gpu --model "$smollm2" --kv int8 --tokens 32 2>&1 | tee "$out/smollm2_int8.txt" | tail -14
else
  step "SmolLM2 not at $smollm2: its tests and generation skipped"
fi
fi

for model in ${KVQ_SYNTHETIC:-llama3-8b}; do
  for context in ${KVQ_CONTEXTS:-${KVQ_CONTEXT:-32768}}; do
    for preset in ${KVQ_SYNTHETIC_PRESETS:-fp16 q4_0}; do
      step "synthetic $model, --kv $preset, --context $context"
      "$bin/kvq_llama" --synthetic "$model" --context "$context" --chunk "${KVQ_CHUNK:-1024}" \
        --tokens "${KVQ_DECODE:-64}" --kv "$preset" >"$out/synthetic_${model}_${context}_$preset.txt" 2>&1 || status=1
      grep -E "tokens/s|GPU memory:|KV cache|error" "$out/synthetic_${model}_${context}_$preset.txt" | tail -6
    done
  done
done
if [[ "${KVQ_BUDGET_RUNS:-0}" == 1 ]]; then
  for preset in q4_0 fp16; do
    step "24 GiB claim: synthetic llama3-8b, --context 131072, --kv $preset, --mem-budget 24GiB"
    "$bin/kvq_llama" --synthetic llama3-8b --context 131072 --chunk "${KVQ_CHUNK:-1024}" --tokens 16 --kv "$preset" \
      --mem-budget 24GiB >"$out/budget24_$preset.txt" 2>&1
    echo "exit code $? (q4_0: 0 = ran; fp16: 1 = refused)"
    grep -E "tokens/s|GPU memory|total|budget|refus|error" "$out/budget24_$preset.txt" | tail -8
  done
fi
step "synthetic llama3-70b against --mem-budget 80GiB (a refusal is the expected outcome)"
"$bin/kvq_llama" --synthetic llama3-70b --context 32768 --mem-budget 80GiB >"$out/refusal_70b.txt" 2>&1
echo "exit code $? (1 = refused)"; tail -12 "$out/refusal_70b.txt"
exit $status
