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

// Per offset j in a query group, batched over KV heads g (query head g * group + j): column-major
// S^T (length x queries) = K_g (read transposed: d x length, ld kv_heads * d)^T . Q_h (d x queries, ld q_heads * d).
void Blas::attention_scores(const f16* query, const f16* keys, int q_heads, int kv_heads, int head_dim,
                            std::int64_t queries, std::int64_t length, float scale, float* scores) const {
  const int group = q_heads / kv_heads;
  const float beta = 0.0f;
  for (int j = 0; j < group; ++j)
    check_blas(cublasGemmStridedBatchedEx(
                   as_handle(handle_), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(length), static_cast<int>(queries),
                   head_dim, &scale, keys, CUDA_R_16F, kv_heads * head_dim, head_dim, query + j * head_dim, CUDA_R_16F,
                   q_heads * head_dim, static_cast<long long>(group) * head_dim, &beta, scores + j * queries * length,
                   CUDA_R_32F, static_cast<int>(length), static_cast<long long>(group) * queries * length, kv_heads,
                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "attention scores");
}

// Column-major O_h^T (d x queries, ld q_heads * d) = V_g (d x length, ld kv_heads * d) . P_h^T (length x queries).
void Blas::attention_values(const f16* probabilities, const f16* values, int q_heads, int kv_heads, int head_dim,
                            std::int64_t queries, std::int64_t length, f16* out) const {
  const int group = q_heads / kv_heads;
  const float alpha = 1.0f, beta = 0.0f;
  for (int j = 0; j < group; ++j)
    check_blas(
        cublasGemmStridedBatchedEx(as_handle(handle_), CUBLAS_OP_N, CUBLAS_OP_N, head_dim, static_cast<int>(queries),
                                   static_cast<int>(length), &alpha, values, CUDA_R_16F, kv_heads * head_dim, head_dim,
                                   probabilities + j * queries * length, CUDA_R_16F, static_cast<int>(length),
                                   static_cast<long long>(group) * queries * length, &beta, out + j * head_dim,
                                   CUDA_R_16F, q_heads * head_dim, static_cast<long long>(group) * head_dim, kv_heads,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "attention values");
}

}  // namespace kvq::llama::gpu
