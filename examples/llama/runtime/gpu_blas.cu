#include <cublas_v2.h>

#include <string>

#include "kvq/core/error.hpp"
#include "runtime/gpu_blas.hpp"

namespace kvq::llama::gpu {
namespace {

void check_blas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorCode::cuda_error, std::string("cuBLAS ") + what + ": " + cublasGetStatusName(status) + " (" +
                                           cublasGetStatusString(status) + ")");
}

cublasHandle_t as_handle(void* handle) { return static_cast<cublasHandle_t>(handle); }

}  // namespace

Blas::Blas(cudaStream_t stream, void* workspace, std::int64_t workspace_bytes) {
  cublasHandle_t handle = nullptr;
  check_blas(cublasCreate(&handle), "create");
  handle_ = handle;
  try {
    check_blas(cublasSetStream(handle, stream), "set stream");
    check_blas(cublasSetWorkspace(handle, workspace, static_cast<std::size_t>(workspace_bytes)), "set workspace");
  } catch (...) {
    cublasDestroy(handle);
    throw;
  }
}

Blas::~Blas() { cublasDestroy(as_handle(handle_)); }

// Row-major Y[T][R] = W[R][C] X[T][C]^T is column-major Y^T (R x T) = op(W) X^T with W read transposed.
void Blas::project(const f16* weight, std::int64_t rows, std::int64_t columns, const f16* in, std::int64_t tokens,
                   float* out, float beta) const {
  const float alpha = 1.0f;
  check_blas(cublasGemmEx(as_handle(handle_), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows),
                          static_cast<int>(tokens), static_cast<int>(columns), &alpha, weight, CUDA_R_16F,
                          static_cast<int>(columns), in, CUDA_R_16F, static_cast<int>(columns), &beta, out, CUDA_R_32F,
                          static_cast<int>(rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "projection");
}

}  // namespace kvq::llama::gpu
