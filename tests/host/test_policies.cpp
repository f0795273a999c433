// Every built-in policy, typed: round trips stay inside the bound derived from the policy's math, on fresh
// random data with heavy-tailed outlier channels; edge sizes; constant groups; NaN/Inf behaviour.
#include <doctest/doctest.h>

#include <cstring>
#include <limits>

#include "../support/policy_fixtures.hpp"

using namespace kvq;
using namespace kvq::testing;

namespace {

template <class P>
struct Quantized {
  TensorShape shape;
  std::vector<std::uint8_t> codes, meta;
  QuantizeReport report;
};

template <class P>
Quantized<P> quantize_host(const std::vector<f16>& input, const TensorShape& shape, const typename P::Params& params,
                           NonFinitePolicy non_finite = NonFinitePolicy::reject, std::uint8_t fill = 0xAB) {
  const QuantizedTensorLayout<P> layout{shape};
  Quantized<P> q{shape, std::vector<std::uint8_t>(layout.code_bytes(), fill), std::vector<std::uint8_t>(layout.meta_bytes(), fill), {}};
  q.report = quantize_tensor<P, f16>(input, shape, q.codes, q.meta, params, non_finite);
  return q;
}

// Runs the policy's bound oracle over every block of a quantized tensor.
template <class P>
std::vector<BoundFailure> check_tensor(const std::vector<f16>& input, const Quantized<P>& q, const typename P::Params& params) {
  const QuantizedTensorLayout<P> layout{q.shape};
  std::vector<BoundFailure> failures;
  std::vector<float> tile(P::tokens_per_block * P::head_dim);
  for (std::int64_t tb = 0; tb < layout.token_blocks(); ++tb)
    for (int h = 0; h < q.shape.heads; ++h) {
      const int rows = layout.rows_in(tb);
      std::fill(tile.begin(), tile.end(), 0.0f);
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < P::head_dim; ++c)
          tile[r * P::head_dim + c] = to_float(input[((tb * P::tokens_per_block + r) * q.shape.heads + h) * P::head_dim + c]);
      BoundOracle<P>::check(tile.data(), rows, layout.block(q.codes.data(), q.meta.data(), tb * q.shape.heads + h), params, failures);
    }
  return failures;
}

template <class P>
void require_no_failures(const std::vector<BoundFailure>& failures) {
  for (std::size_t i = 0; i < failures.size() && i < 5; ++i) INFO(failures[i].what);
  CHECK(failures.empty());
}

}  // namespace

TEST_CASE_TEMPLATE("round trip stays within the policy's derived error bound", P, KVQ_TEST_POLICIES) {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  HostArrays arrays;
  const auto params = ParamsBuilder<P>::build(arrays, seed);
  // Edge token counts: 1, around the per-channel block size (32) and a longer run.
  for (std::int64_t tokens : {1, 31, 32, 33, 64, 257}) {
    CAPTURE(tokens);
    const TensorShape shape{tokens, 3, P::head_dim};
    const auto input = make_input(shape, seed + static_cast<std::uint32_t>(tokens));
    const auto q = quantize_host<P>(input, shape, params);
    CHECK(q.report.poisoned_groups == 0);
    require_no_failures<P>(check_tensor<P>(input, q, params));
  }
}

TEST_CASE_TEMPLATE("every byte of the storage is written, deterministically", P, KVQ_TEST_POLICIES) {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  HostArrays arrays;
  const auto params = ParamsBuilder<P>::build(arrays, seed);
  const TensorShape shape{33, 2, P::head_dim};  // a partial per-channel block too
  const auto input = make_input(shape, seed);
  const auto a = quantize_host<P>(input, shape, params, NonFinitePolicy::reject, 0x00);
  const auto b = quantize_host<P>(input, shape, params, NonFinitePolicy::reject, 0xFF);
  CHECK(a.codes == b.codes);
  CHECK(a.meta == b.meta);
}

TEST_CASE_TEMPLATE("dequantize_tensor matches the per-element dequantize and undoes rotation", P, KVQ_TEST_POLICIES) {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  HostArrays arrays;
  const auto params = ParamsBuilder<P>::build(arrays, seed);
  const TensorShape shape{40, 2, P::head_dim};
  const auto input = make_input(shape, seed);
  const auto q = quantize_host<P>(input, shape, params);
  std::vector<float> stored(shape.elements()), original(shape.elements());
  dequantize_tensor<P, float>(q.codes, q.meta, shape, stored, params, Domain::stored);
  dequantize_tensor<P, float>(q.codes, q.meta, shape, original, params, Domain::original);
  const QuantizedTensorLayout<P> layout{shape};
  double error_original = 0, error_stored_vs_rotated = 0;
  for (std::int64_t t = 0; t < shape.tokens; ++t)
    for (int h = 0; h < shape.heads; ++h) {
      const std::size_t base = (t * shape.heads + h) * P::head_dim;
      float direct[P::head_dim];
      P::dequantize(layout.block(q.codes.data(), q.meta.data(), t / P::tokens_per_block * shape.heads + h),
                    static_cast<int>(t % P::tokens_per_block), 0, P::head_dim, direct, params);
      for (int c = 0; c < P::head_dim; ++c) REQUIRE(std::memcmp(&direct[c], &stored[base + c], 4) == 0);
      // Orthogonal rotation: the original-domain error has the same norm as the stored-domain error.
      float rotated[P::head_dim];
      for (int c = 0; c < P::head_dim; ++c) rotated[c] = to_float(input[base + c]);
      if constexpr (P::rotated) rotate_vector<P::head_dim>(rotated, params.seed);
      for (int c = 0; c < P::head_dim; ++c) {
        error_original += std::pow(double(original[base + c]) - to_float(input[base + c]), 2);
        error_stored_vs_rotated += std::pow(double(stored[base + c]) - rotated[c], 2);
      }
    }
  CHECK(std::sqrt(error_original) == doctest::Approx(std::sqrt(error_stored_vs_rotated)).epsilon(1e-3));
  if constexpr (!P::rotated) CHECK(original == stored);
}

TEST_CASE_TEMPLATE("constant groups give finite scales and no division by zero", P, KVQ_TEST_POLICIES) {
  HostArrays arrays;
  const auto params = ParamsBuilder<P>::build(arrays, fresh_seed());
  // 0.1 is not an fp16 value, so the zero point cannot equal it exactly; 0 and -2.5 are.
  for (float value : {0.0f, -2.5f, to_float(to_f16(0.1f)), 1000.0f}) {
    CAPTURE(value);
    const TensorShape shape{32, 1, P::head_dim};
    std::vector<f16> input(shape.elements(), to_f16(value));
    const auto q = quantize_host<P>(input, shape, params);
    CHECK(q.report.poisoned_groups == 0);
    std::vector<float> output(shape.elements());
    dequantize_tensor<P, float>(q.codes, q.meta, shape, output, params);
    for (float x : output) REQUIRE(std::isfinite(x));
    require_no_failures<P>(check_tensor<P>(input, q, params));
  }
}

TEST_CASE_TEMPLATE("NaN and Inf: rejected by default, poison only their own group on request", P, KVQ_TEST_POLICIES) {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  HostArrays arrays;
  const auto params = ParamsBuilder<P>::build(arrays, seed);
  const TensorShape shape{64, 2, P::head_dim};
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    CAPTURE(bad);
    auto input = make_input(shape, seed);
    const std::int64_t token = 37;
    const int head = 1, channel = 5;
    input[(token * shape.heads + head) * P::head_dim + channel] = to_f16(bad);

    // reject: a clear error naming the element, and nothing written.
    const QuantizedTensorLayout<P> layout{shape};
    std::vector<std::uint8_t> codes(layout.code_bytes(), 0x5A), meta(layout.meta_bytes(), 0x5A);
    try {
      quantize_tensor<P, f16>(input, shape, codes, meta, params);
      FAIL("expected kvq::Error");
    } catch (const Error& error) {
      CHECK(error.code() == ErrorCode::non_finite_input);
      CHECK(std::string(error.what()).find("token 37, head 1, channel 5") != std::string::npos);
    }
    CHECK(std::all_of(codes.begin(), codes.end(), [](std::uint8_t b) { return b == 0x5A; }));
    CHECK(std::all_of(meta.begin(), meta.end(), [](std::uint8_t b) { return b == 0x5A; }));

    // poison: the bad element's group reads back as NaN, every other element stays finite.
    const auto q = quantize_host<P>(input, shape, params, NonFinitePolicy::poison);
    CHECK(q.report.poisoned_groups >= 1);
    std::vector<float> output(shape.elements());
    dequantize_tensor<P, float>(q.codes, q.meta, shape, output, params, Domain::stored);
    const std::size_t bad_index = (token * shape.heads + head) * P::head_dim + channel;
    std::int64_t nan_count = 0;
    for (float x : output) nan_count += std::isnan(x) ? 1 : 0;
    if constexpr (requires { P::config.normalize; } && !requires { typename P::InnerPolicy; }) {
      if constexpr (!P::config.normalize) {
        // A raw codebook has no metadata to mark the group: the input is reported, the element reads as a centroid.
        CHECK(nan_count == 0);
        continue;
      }
    }
    CHECK(std::isnan(output[bad_index]));
    // Poisoned elements stay within the bad element's block and head.
    for (std::size_t i = 0; i < output.size(); ++i) {
      if (!std::isnan(output[i])) continue;
      const std::int64_t t = static_cast<std::int64_t>(i) / (shape.heads * P::head_dim);
      const int h = static_cast<int>(i / P::head_dim % shape.heads);
      REQUIRE(h == head);
      REQUIRE(t / P::tokens_per_block == token / P::tokens_per_block);
    }
    CHECK(nan_count <= P::tokens_per_block * P::head_dim);
  }
}

TEST_CASE("bits per element count every byte of metadata") {
  CHECK(Int4Token::bits_per_element == 5.0);           // 4 + (16 + 16) / 32
  CHECK(Int4TokenSymBf16::bits_per_element == 4.25);   // 4 + 16 / 64
  CHECK(Int8Token::bits_per_element == 8.25);          // 8 + 32 / 128
  CHECK(Int3TokenSym::bits_per_element == 3.5);        // 3 + 16 / 32
  CHECK(Int2Channel::bits_per_element == 3.0);         // 2 + 32 / 32 tokens per channel
  CHECK(Int2TokenF32::bits_per_element == 2.5);        // 2 + 64 / 128
  CHECK(Fp8E4m3::bits_per_element == 8.125);           // 8 + 16 / 128
  CHECK(Fp8E5m2F32::bits_per_element == 8.5);          // 8 + 32 / 64
  CHECK(Nuq4Token::bits_per_element == 5.0);           // 4 + (16 + 16) / 32
  CHECK(Nuq2Raw::bits_per_element == 2.0);             // codebook shared per layer, not per token
  CHECK(OutliersInt4::bits_per_element == 5.5);        // 5 + 2 slots x 32 bits / 128
  CHECK(RotatedInt4::bits_per_element == Int4Token::bits_per_element);
  CHECK(Int4Token::code_bytes_per_block == 64);
  CHECK(Int2Channel::code_bytes_per_block == 32 * 128 / 4);
  CHECK(Int3Channel::meta_bytes_per_block == 64 * 2 * 2);
}

TEST_CASE("rounding: an int4 group maps its extremes to the end codes exactly") {
  // Values on the exact grid zero + k*scale with fp16-representable scale and zero round-trip exactly.
  using P = Int4Token;
  std::vector<f16> input(P::head_dim);
  for (int c = 0; c < P::head_dim; ++c) input[c] = to_f16(-1.0f + 0.25f * static_cast<float>(c % 16));
  const TensorShape shape{1, 1, P::head_dim};
  const auto q = quantize_host<P>(input, shape, {});
  std::vector<float> output(P::head_dim);
  dequantize_tensor<P, float>(q.codes, q.meta, shape, output, {});
  for (int c = 0; c < P::head_dim; ++c) CHECK(output[c] == to_float(input[c]));
}
