// CUDA failures enter kvq's one error model: every runtime call and launch is checked and becomes kvq::Error.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kvq/core/error.hpp"

namespace kvq::cuda {

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw Error(ErrorCode::cuda_error, std::string(what) + ": " + cudaGetErrorName(status) + " (" +
                                           cudaGetErrorString(status) + ")");
}

// After a kernel launch: catches bad launch configurations without synchronising.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace kvq::cuda
