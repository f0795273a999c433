#include "runtime/cpu_math.hpp"

#include <cblas.h>

#include <cmath>

namespace kvq::llama {

void project(const Matrix& weight, const float* in, std::int64_t tokens, float* out) {
  const auto rows = static_cast<int>(weight.rows), columns = static_cast<int>(weight.columns);
  if (tokens == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, columns, 1.0f, weight.values.data(), columns, in, 1, 0.0f, out, 1);
    return;
  }
  // [tokens][columns] x [rows][columns]^T = [tokens][rows]
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(tokens), rows, columns, 1.0f, in, columns,
              weight.values.data(), columns, 0.0f, out, rows);
}

void rms_norm(const float* in, const float* weight, std::int64_t tokens, int width, float epsilon, float* out) {
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float* x = in + t * width;
    double squares = 0;
    for (int i = 0; i < width; ++i) squares += static_cast<double>(x[i]) * x[i];
    const auto scale = static_cast<float>(1.0 / std::sqrt(squares / width + epsilon));
    for (int i = 0; i < width; ++i) out[t * width + i] = x[i] * scale * weight[i];
  }
}

void swiglu(float* gate, const float* up, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace kvq::llama
