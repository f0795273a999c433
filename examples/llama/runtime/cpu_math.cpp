#include "runtime/cpu_math.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

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

void causal_attention(const float* query, const float* keys, const float* values, std::int64_t first,
                      std::int64_t count, int q_heads, int first_head, int group, int head_dim, float* out) {
  const std::int64_t length = first + count, rows = std::int64_t{group} * count;
  const auto d = static_cast<std::size_t>(head_dim);
  // Rows r = g * count + i: query head first_head + g of token i.
  std::vector<float> gathered(static_cast<std::size_t>(rows) * d), scores(static_cast<std::size_t>(rows * length)),
      result(gathered.size());
  for (int g = 0; g < group; ++g)
    for (std::int64_t i = 0; i < count; ++i)
      std::copy_n(query + (i * q_heads + first_head + g) * head_dim, head_dim,
                  gathered.data() + (g * count + i) * head_dim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(length), head_dim,
              scale, gathered.data(), head_dim, keys, head_dim, 0.0f, scores.data(), static_cast<int>(length));
  for (std::int64_t r = 0; r < rows; ++r) {
    float* row = scores.data() + r * length;
    const std::int64_t visible = first + r % count + 1;
    const float top = *std::max_element(row, row + visible);
    double total = 0;
    for (std::int64_t t = 0; t < visible; ++t) total += row[t] = std::exp(row[t] - top);
    const auto inverse = static_cast<float>(1.0 / total);
    for (std::int64_t t = 0; t < visible; ++t) row[t] *= inverse;
    std::fill(row + visible, row + length, 0.0f);  // the causal mask
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows), head_dim, static_cast<int>(length),
              1.0f, scores.data(), static_cast<int>(length), values, head_dim, 0.0f, result.data(), head_dim);
  for (int g = 0; g < group; ++g)
    for (std::int64_t i = 0; i < count; ++i)
      std::copy_n(result.data() + (g * count + i) * head_dim, head_dim,
                  out + (i * q_heads + first_head + g) * head_dim);
}

void swiglu(float* gate, const float* up, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace kvq::llama
