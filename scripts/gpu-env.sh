# Sourced by the GPU-machine scripts (gpu-check.sh, gpu-attention.sh), from the repository root: the results
# folder `out` ($OUT, or build/gpu-results), `configure_args` for CMake and the library path for offline Debian
# packages ($KVQ_DEPS_PREFIX=DIR/usr, unpacked by shared/tools/offline-deps.sh), and `status` = 0.
out=${OUT:-build/gpu-results}
mkdir -p "$out"
configure_args=()
if [[ -n "${KVQ_DEPS_PREFIX:-}" ]]; then
  prefix=$(realpath "$KVQ_DEPS_PREFIX")
  configure_args+=("-DCMAKE_PREFIX_PATH=$prefix")
  export LD_LIBRARY_PATH="$prefix/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
status=0
