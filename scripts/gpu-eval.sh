#!/usr/bin/env bash
# On a GPU machine, in one go: build the quality harness with the GPU backend (gpu preset, no benchmarks), run the
# GPU backend's tests (the tiny model against the CPU backend and against its own token-by-token decode, and
# SmolLM2 when its file is there), then kvq_eval --backend gpu over a text for a list of presets. Results go to
# $OUT (or build/gpu-results); the table is printed last. docs/quality.md says what the numbers mean.
#   KVQ_DEPS_PREFIX=DIR/usr     offline Debian packages (shared/tools/offline-deps.sh DIR nlohmann-json3-dev
#                               libpcre2-dev libopenblas-dev ...), as for scripts/gpu-llama.sh
#   KVQ_SMOLLM2_GGUF=PATH       SmolLM2-135M-Instruct.Q4_1.gguf (default ~/.cache/kvq/...); without it only the
#                               tiny-model tests run
#   KVQ_TEXT=PATH               the text to score (default ../shared/data/wikitext-2-raw-test.txt); KVQ_LABEL its name
#   KVQ_PRESETS="int8 q4_0 ..." presets (default: every preset of docs/quality.md's tables, calibrated ones included)
#   KVQ_CALIBRATION=PATH        codebooks of the ":cal" presets (default: the committed SmolLM2 calibration from Moby-Dick)
#   KVQ_WINDOW=512 KVQ_STRIDE=256 KVQ_WINDOWS=0 KVQ_CHUNK=256   kvq_eval's windows (0 = every window) and step size
#   KVQ_STEPS="build tests eval"  which steps to run, in this order
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/gpu-env.sh
bin=./build/gpu/examples/llama
smollm2=${KVQ_SMOLLM2_GGUF:-$HOME/.cache/kvq/SmolLM2-135M-Instruct.Q4_1.gguf}
text=${KVQ_TEXT:-../shared/data/wikitext-2-raw-test.txt}
presets=${KVQ_PRESETS:-"int8 fp8-e4m3 q4_0 kivi-4 kivi-2 nuq4 nuq3 nuq2 rot4 rot3 nuq4:cal nuq3:cal nuq2:cal"}
calibration=${KVQ_CALIBRATION:-examples/llama/calibration/smollm2-135m-moby-dick.kvqcal}

for s in ${KVQ_STEPS:-build tests eval}; do
  case $s in
    build)
      step "GPU"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
      step "configure"
      cmake --preset gpu "${configure_args[@]}" -DKVQ_BUILD_BENCHMARKS=OFF >"$out/configure.log" 2>&1 ||
        { tail -30 "$out/configure.log"; exit 1; }
      step "build"
      cmake --build --preset gpu -j "$(nproc)" --target kvq_llama_gpu_tests kvq_eval >"$out/build.log" 2>&1 ||
        { grep -E "error" -A3 "$out/build.log" | head -60; exit 1; } ;;
    tests)
      step "GPU backend tests (tiny model, memory plan)"
      "$bin/kvq_llama_gpu_tests" --test-suite=gpu,gpu_plan 2>&1 | tee "$out/tests_gpu.txt" |
        grep -E "MESSAGE|worst|scored|ERROR|FAILED|Status|test cases" -A1
      grep -q "Status: SUCCESS" "$out/tests_gpu.txt" || status=1
      if [[ -f "$smollm2" ]]; then
        step "GPU backend tests (SmolLM2)"
        KVQ_SMOLLM2_GGUF="$smollm2" "$bin/kvq_llama_gpu_tests" --test-suite=gpu_smollm2 2>&1 |
          tee "$out/tests_smollm2.txt" | tail -8
        grep -q "Status: SUCCESS" "$out/tests_smollm2.txt" || status=1
      fi ;;
    eval)
      [[ -f "$smollm2" ]] || { step "SmolLM2 not at $smollm2: no evaluation"; status=1; continue; }
      [[ -f "$text" ]] || { step "no text at $text: no evaluation"; status=1; continue; }
      step "kvq_eval --backend gpu on $text: $presets"
      "$bin/kvq_eval" --backend gpu --model "$smollm2" --text "$text" --label "${KVQ_LABEL:-$(basename "$text")}" \
        --presets "${presets// /,}" --calibration "$calibration" \
        --window "${KVQ_WINDOW:-512}" --stride "${KVQ_STRIDE:-256}" --windows "${KVQ_WINDOWS:-0}" \
        --chunk "${KVQ_CHUNK:-256}" --no-plot --out "$out/eval" >"$out/eval.txt" 2>&1 || status=1
      tail -25 "$out/eval.txt" ;;
  esac
done
exit $status
