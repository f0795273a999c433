# Sourced by the GPU-machine scripts (gpu-check.sh, gpu-attention.sh, gpu-llama.sh, gpu-eval.sh), from the
# repository root: the results folder `out` ($OUT, or build/gpu-results), `configure_args` for CMake, the library
# path for offline Debian packages ($KVQ_DEPS_PREFIX=DIR/usr, unpacked by shared/tools/offline-deps.sh; OpenBLAS's
# pthread directory included), `step` (a timed heading in the log) and `status` = 0.
out=${OUT:-build/gpu-results}
mkdir -p "$out"
configure_args=()
if [[ -n "${KVQ_DEPS_PREFIX:-}" ]]; then
  prefix=$(realpath "$KVQ_DEPS_PREFIX")
  configure_args+=("-DCMAKE_PREFIX_PATH=$prefix")
  export LD_LIBRARY_PATH="$prefix/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu/openblas-pthread:${LD_LIBRARY_PATH:-}"
fi
step() { echo "== $* ($(date -u +%H:%M:%S))"; }
status=0
