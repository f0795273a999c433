#!/usr/bin/env bash
# Installs kvq's build/test dependencies on Debian/Ubuntu (idempotent).
#
#   cmake (>= 3.25), ninja-build, g++ (C++20), doctest-dev (tests),
#   libfmt-dev (examples), libbenchmark-dev (benchmarks),
#   nlohmann-json3-dev (config.json in the memory planner, the kvq_llama example and their tests),
#   gnuplot-nox (kvq_plan --plot, tested by CI), libpcre2-dev and libopenblas-dev (the kvq_llama example).
#
# Runs apt-get only when something is missing and we are root (no sudo is
# used). CUDA (nvcc >= 13) is not installed here; its presence is reported.
set -euo pipefail

PACKAGES=(cmake ninja-build g++ doctest-dev libfmt-dev libbenchmark-dev nlohmann-json3-dev gnuplot-nox libpcre2-dev
          libopenblas-dev)
MIN_CMAKE=3.25

die() { echo "install-deps: ERROR: $*" >&2; exit 1; }
note() { echo "install-deps: $*"; }

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
else
  # Not a dpkg system: only check the tools; libraries are the user's business
  # (point CMAKE_PREFIX_PATH at doctest/fmt/benchmark).
  for t in cmake ninja c++; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
fi

if ((${#missing[@]})); then
  note "missing: ${missing[*]}"
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed (no network? see README for offline CMAKE_PREFIX_PATH builds)"
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" \
      || die "apt-get install ${PACKAGES[*]} failed"
  elif command -v apt-get >/dev/null 2>&1; then
    die "not root; install them with: sudo apt-get install ${PACKAGES[*]}"
  else
    die "no apt-get; install the equivalents of: ${PACKAGES[*]} (or set CMAKE_PREFIX_PATH to them)"
  fi
else
  note "all packages present: ${PACKAGES[*]}"
fi

# --- verify the tools -----------------------------------------------------
command -v cmake >/dev/null 2>&1 || die "cmake not found after installation"
command -v ninja >/dev/null 2>&1 || die "ninja not found after installation"
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || die "no C++ compiler (g++) found"

cmake_version=$(cmake --version | head -n1 | awk '{print $3}')
if [[ "$(printf '%s\n%s\n' "$MIN_CMAKE" "$cmake_version" | sort -V | head -n1)" != "$MIN_CMAKE" ]]; then
  die "cmake $cmake_version is too old; kvq's presets need cmake >= $MIN_CMAKE"
fi
note "cmake $cmake_version, ninja $(ninja --version), $(c++ --version 2>/dev/null | head -n1 || g++ --version | head -n1)"

# --- CUDA -------------------------------------------------------------------
nvcc_bin=$(command -v nvcc 2>/dev/null || true)
if [[ -z "$nvcc_bin" && -x /usr/local/cuda/bin/nvcc ]]; then
  nvcc_bin=/usr/local/cuda/bin/nvcc
fi
if [[ -n "$nvcc_bin" ]]; then
  nvcc_version=$("$nvcc_bin" --version | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | head -n1)
  note "nvcc $nvcc_version at $nvcc_bin"
  if [[ -n "$nvcc_version" && "${nvcc_version%%.*}" -lt 13 ]]; then
    note "NOTE: kvq's device code needs CUDA >= 13; use the preset 'host-nocuda' or install CUDA 13."
  fi
else
  note "NOTE: nvcc not found (PATH or /usr/local/cuda/bin). The presets host, ci and gpu need CUDA >= 13;"
  note "      on this machine use: cmake --preset host-nocuda && cmake --build --preset host-nocuda && ctest --preset host-nocuda"
fi
note "done"
