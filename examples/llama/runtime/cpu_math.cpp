#include "runtime/cpu_math.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace kvq::llama {
namespace {

// exp(x) for the softmax's x - max <= 0 (finite), within about 2 ulp of expf (Cephes' polynomial), written as plain
// arithmetic so that the loop calling it vectorizes: libm's expf is one call per element, and at long context the
// softmax of a prefill chunk is a large share of the step. Below -87 the power of two is held at 2^-126 instead of
// clamping x (a float max is control flow to the vectorizer): the result stays ~1e-38, nothing next to the 1 that
// the row's maximum contributes.
inline float exp_nonpositive(float x) {
  constexpr float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const float shifted = x * 1.44269504088896341f + round_magic;
  const float n = shifted - round_magic;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  std::int32_t shifted_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
  std::int32_t magic_bits;
  std::memcpy(&magic_bits, &round_magic, sizeof magic_bits);
  std::int32_t exponent = shifted_bits - magic_bits;  // n as an integer
  exponent = exponent < -126 ? -126 : exponent;
  const std::int32_t scale_bits = (exponent + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

}  // namespace

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
                      std::int64_t count, int q_heads, int first_head, int group, int head_dim, float* out,
                      float* importance) {
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
    for (std::int64_t t = 0; t < visible; ++t) row[t] = exp_nonpositive(row[t] - top);
    double total = 0;
    for (std::int64_t t = 0; t < visible; ++t) total += row[t];
    const auto inverse = static_cast<float>(1.0 / total);
    for (std::int64_t t = 0; t < visible; ++t) row[t] *= inverse;
    std::fill(row + visible, row + length, 0.0f);  // the causal mask
  }
  if (importance != nullptr)
    for (std::int64_t t = 0; t < length; ++t) {
      double sum = 0;
      for (std::int64_t r = 0; r < rows; ++r) sum += scores[static_cast<std::size_t>(r * length + t)];
      importance[t] += static_cast<float>(sum);
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
