// The GPU backend's matrix products through cuBLAS: fp16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F), fp32
// or fp16 results. Row-major names here, mapped onto cuBLAS's column-major calls in gpu_blas.cu. The handle works
// on one stream with a workspace the caller allocated (cublasSetWorkspace), so cuBLAS allocates nothing itself.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kvq/core/float16.hpp"

namespace kvq::llama::gpu {

class Blas {
 public:
  Blas(cudaStream_t stream, void* workspace, std::int64_t workspace_bytes);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // out[t][r] = beta * out[t][r] + sum_c weight[r][c] * in[t][c]: weight [rows][columns], in [tokens][columns]
  // (fp16), out [tokens][rows] (fp32). beta = 1 adds the product to out: the residual add of a block.
  void project(const f16* weight, std::int64_t rows, std::int64_t columns, const f16* in, std::int64_t tokens,
               float* out, float beta) const;

 private:
  void* handle_ = nullptr;  // cublasHandle_t, kept out of this header
};

}  // namespace kvq::llama::gpu
