// kvq_policy_report: what each built-in quantization policy costs and what it loses, on CPU.
// Quantizes a synthetic Llama-3-shaped K tensor (8 KV heads, head_dim 128, N(0,1) channels plus heavy-tailed
// outlier channels, as real keys have) with every built-in policy through the host reference, and prints exact
// bits per element, bytes per token for one layer's K, the round-trip error, and the error of attention logits
// q.k for random queries (the quantity attention actually consumes).
//   usage: kvq_policy_report [--quick] [--tokens N] [--seed S]
#include <fmt/core.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvq/kvq.hpp"

namespace {

using namespace kvq;

constexpr int head_dim = 128;
constexpr int kv_heads = 8;

struct Data {
  TensorShape shape;
  std::vector<f16> keys;
  std::vector<float> queries;  // one query per head
};

Data make_data(std::int64_t tokens, std::uint32_t seed) {
  Data data{{tokens, kv_heads, head_dim}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::student_t_distribution<float> heavy(3.0f);
  data.keys.resize(static_cast<std::size_t>(data.shape.elements()));
  for (std::int64_t t = 0; t < tokens; ++t)
    for (int h = 0; h < kv_heads; ++h)
      for (int c = 0; c < head_dim; ++c) {
        const bool outlier_channel = c == 17 || c == 90;
        data.keys[(t * kv_heads + h) * head_dim + c] = to_f16(outlier_channel ? 15.0f * heavy(rng) : normal(rng));
      }
  data.queries.resize(kv_heads * head_dim);
  for (float& q : data.queries) q = normal(rng);
  return data;
}

struct Row {
  std::string name;
  double bits_per_element;
  double rms_error, max_error, logit_rms_error, logit_rms;
};

template <QuantizationPolicy P>
Row measure(const std::string& name, const Data& data, const typename P::Params& params) {
  const QuantizedTensorLayout<P> layout{data.shape};
  std::vector<std::uint8_t> codes(layout.code_bytes()), meta(layout.meta_bytes());
  quantize_tensor<P, f16>(data.keys, data.shape, codes, meta, params);
  std::vector<float> restored(data.keys.size());
  dequantize_tensor<P, float>(codes, meta, data.shape, restored, params);

  double squared = 0, worst = 0, logit_squared = 0, logit_reference = 0;
  for (std::int64_t t = 0; t < data.shape.tokens; ++t)
    for (int h = 0; h < kv_heads; ++h) {
      double exact = 0, approximate = 0;
      for (int c = 0; c < head_dim; ++c) {
        const std::size_t i = (t * kv_heads + h) * head_dim + c;
        const double x = to_float(data.keys[i]);
        const double e = restored[i] - x;
        squared += e * e;
        worst = std::max(worst, std::fabs(e));
        exact += data.queries[h * head_dim + c] * x;
        approximate += data.queries[h * head_dim + c] * restored[i];
      }
      logit_squared += (approximate - exact) * (approximate - exact);
      logit_reference += exact * exact;
    }
  const double n = static_cast<double>(data.keys.size());
  const double rows = static_cast<double>(data.shape.tokens * kv_heads);
  return {name, P::bits_per_element, std::sqrt(squared / n), worst, std::sqrt(logit_squared / rows),
          std::sqrt(logit_reference / rows)};
}

// A codebook tuned to N(0,1) data normalised to [-1, 1]: Gaussian quantiles, as a calibration would find.
std::vector<float> normal_quantile_codebook(int count) {
  std::vector<float> book(count);
  for (int k = 0; k < count; ++k) {
    const double p = (k + 0.5) / count;
    // Inverse normal CDF by bisection on erfc (no special library needed).
    double low = -6, high = 6;
    for (int i = 0; i < 80; ++i) {
      const double mid = (low + high) / 2;
      (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? low : high) = mid;
    }
    book[k] = static_cast<float>(low);
  }
  const float edge = std::fabs(book[0]);
  for (float& c : book) c /= edge;
  return book;
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t tokens = 4096;
  std::uint32_t seed = 2026;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      tokens = 256;
    } else if (arg == "--tokens" && i + 1 < argc) {
      tokens = std::strtoll(argv[++i], nullptr, 10);
    } else if (arg == "--seed" && i + 1 < argc) {
      seed = static_cast<std::uint32_t>(std::strtoul(argv[++i], nullptr, 10));
    } else {
      fmt::print(stderr, "usage: {} [--quick] [--tokens N] [--seed S]\n", argv[0]);
      return 2;
    }
  }
  if (tokens <= 0) {
    fmt::print(stderr, "kvq_policy_report: --tokens must be positive\n");
    return 2;
  }
  try {
    const Data data = make_data(tokens, seed);
    const auto book4 = normal_quantile_codebook(16), book3 = normal_quantile_codebook(8), book2 = normal_quantile_codebook(4);
    constexpr UniformConfig int4_token{.bits = 4, .group_size = 32, .head_dim = head_dim};
    using Int4Token = UniformPolicy<int4_token>;
    using Nuq3 = CodebookPolicy<CodebookConfig{.bits = 3, .group_size = 128, .head_dim = head_dim, .axis = Axis::per_channel}>;

    std::vector<Row> rows;
    rows.push_back(measure<UniformPolicy<UniformConfig{.bits = 8, .group_size = 128, .head_dim = head_dim}>>("int8 per-token g128", data, {}));
    rows.push_back(measure<Fp8Policy<Fp8Config{.format = Fp8Format::e4m3, .head_dim = head_dim}>>("fp8 e4m3 per-token scale", data, {}));
    rows.push_back(measure<Fp8Policy<Fp8Config{.format = Fp8Format::e5m2, .head_dim = head_dim}>>("fp8 e5m2 per-token scale", data, {}));
    rows.push_back(measure<UniformPolicy<UniformConfig{.bits = 4, .group_size = 32, .head_dim = head_dim, .symmetric = true}>>(
        "int4 per-token g32 symmetric (q4_0-like)", data, {}));
    rows.push_back(measure<Int4Token>("int4 per-token g32 asymmetric", data, {}));
    rows.push_back(measure<UniformPolicy<UniformConfig{.bits = 4, .group_size = 32, .head_dim = head_dim, .axis = Axis::per_channel}>>(
        "int4 per-channel g32 (KIVI keys)", data, {}));
    rows.push_back(measure<OutlierPolicy<Int4Token, OutlierConfig{.capacity = 2}>>("int4 g32 + 2 fp16 outliers/token", data, {}));
    rows.push_back(measure<RotatedPolicy<Int4Token>>("int4 g32 rotated (Hadamard)", data, {}));
    rows.push_back(measure<CodebookPolicy<CodebookConfig{.bits = 4, .group_size = 128, .head_dim = head_dim, .axis = Axis::per_channel}>>(
        "nuq4 per-channel g128", data, {book4.data()}));
    rows.push_back(measure<UniformPolicy<UniformConfig{.bits = 3, .group_size = 32, .head_dim = head_dim, .axis = Axis::per_channel}>>(
        "int3 per-channel g32", data, {}));
    rows.push_back(measure<Nuq3>("nuq3 per-channel g128", data, {book3.data()}));
    rows.push_back(measure<OutlierPolicy<Nuq3, OutlierConfig{.capacity = 2}>>("nuq3 g128 + 2 outliers/token", data, {{book3.data()}}));
    rows.push_back(measure<UniformPolicy<UniformConfig{.bits = 2, .group_size = 32, .head_dim = head_dim, .axis = Axis::per_channel}>>(
        "int2 per-channel g32 (KIVI-2 keys)", data, {}));
    rows.push_back(measure<UniformPolicy<UniformConfig{.bits = 2, .group_size = 32, .head_dim = head_dim}>>("int2 per-token g32", data, {}));
    rows.push_back(measure<RotatedPolicy<CodebookPolicy<CodebookConfig{.bits = 2, .group_size = 32, .head_dim = head_dim}>>>(
        "nuq2 g32 rotated", data, {{book2.data()}}));

    fmt::print("kvq policy report: synthetic keys, {} tokens x {} KV heads x head_dim {} (2 heavy-tailed outlier channels), seed {}\n",
               tokens, kv_heads, head_dim, seed);
    fmt::print("fp16 reference: 16.000 bits/element, {} bytes/token/layer for K\n\n", kv_heads * head_dim * 2);
    fmt::print("{:<44} {:>9} {:>12} {:>10} {:>10} {:>14}\n", "policy", "bits/elem", "bytes/token", "rms err", "max err",
               "logit rel err");
    for (const Row& row : rows)
      fmt::print("{:<44} {:>9.3f} {:>12.1f} {:>10.4f} {:>10.4f} {:>14.5f}\n", row.name, row.bits_per_element,
                 row.bits_per_element * kv_heads * head_dim / 8, row.rms_error, row.max_error,
                 row.logit_rms_error / row.logit_rms);
  } catch (const kvq::Error& error) {
    fmt::print(stderr, "{}\n", error.what());
    return 1;
  }
  return 0;
}
