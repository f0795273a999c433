// The host tensor API's contract: clear errors for every kind of bad argument, nothing written on error,
// empty and one-token tensors.
#include <doctest/doctest.h>

#include <string>

#include "../support/policy_fixtures.hpp"

using namespace kvq;
using namespace kvq::testing;

namespace {
template <class Call>
std::string error_of(Call call, ErrorCode expected) {
  try {
    call();
  } catch (const Error& error) {
    CHECK(error.code() == expected);
    return error.what();
  }
  FAIL("expected kvq::Error");
  return {};
}
}  // namespace

TEST_CASE("wrong shapes and buffer sizes are refused with a message naming the problem") {
  using P = Int4Token;
  const TensorShape shape{10, 2, 128};
  const QuantizedTensorLayout<P> layout{shape};
  auto input = make_input(shape, fresh_seed());
  std::vector<std::uint8_t> codes(layout.code_bytes(), 0x11), meta(layout.meta_bytes(), 0x11);

  auto message = error_of([&] { quantize_tensor<P, f16>(input, {10, 2, 64}, codes, meta, {}); }, ErrorCode::invalid_argument);
  CHECK(message.find("head_dim 64 does not match the policy's head_dim 128") != std::string::npos);
  message = error_of([&] { quantize_tensor<P, f16>(input, {-1, 2, 128}, codes, meta, {}); }, ErrorCode::invalid_argument);
  CHECK(message.find("tokens must be >= 0") != std::string::npos);
  message = error_of([&] { quantize_tensor<P, f16>(input, {10, 0, 128}, codes, meta, {}); }, ErrorCode::invalid_argument);
  CHECK(message.find("heads must be > 0") != std::string::npos);
  message = error_of([&] { quantize_tensor<P, f16>(std::span(input).first(100), shape, codes, meta, {}); },
                     ErrorCode::invalid_argument);
  CHECK(message.find("input holds 100") != std::string::npos);
  message = error_of([&] { quantize_tensor<P, f16>(input, shape, std::span(codes).first(8), meta, {}); },
                     ErrorCode::invalid_argument);
  CHECK(message.find("codes buffer") != std::string::npos);
  message = error_of([&] { quantize_tensor<P, f16>(input, {std::int64_t{1} << 60, 2, 128}, codes, meta, {}); },
                     ErrorCode::invalid_argument);
  CHECK(message.find("too large") != std::string::npos);
  for (auto b : codes) REQUIRE(b == 0x11);
  for (auto b : meta) REQUIRE(b == 0x11);

  std::vector<float> output(shape.elements());
  message = error_of([&] { dequantize_tensor<P, float>(codes, std::span(meta).first(3), shape, output, {}); },
                     ErrorCode::invalid_argument);
  CHECK(message.find("meta buffer") != std::string::npos);
}

TEST_CASE("empty tensors are a no-op and one token works") {
  using P = Int2Channel;
  const TensorShape empty{0, 8, 128};
  const QuantizedTensorLayout<P> layout{empty};
  CHECK(layout.code_bytes() == 0);
  CHECK(quantize_tensor<P, f16>({}, empty, {}, {}, {}).poisoned_groups == 0);
  std::vector<float> none;
  dequantize_tensor<P, float>({}, {}, empty, none, {});

  const TensorShape one{1, 8, 128};
  const QuantizedTensorLayout<P> one_layout{one};
  CHECK(one_layout.blocks() == 8);  // a per-channel block of 32 tokens holding one
  auto input = make_input(one, fresh_seed());
  std::vector<std::uint8_t> codes(one_layout.code_bytes()), meta(one_layout.meta_bytes());
  quantize_tensor<P, f16>(input, one, codes, meta, {});
  std::vector<f16> output(one.elements());
  dequantize_tensor<P, f16>(codes, meta, one, output, {});
  // One token per channel group: zero = x rounded down, so x is recovered to fp16 precision.
  for (std::size_t i = 0; i < output.size(); ++i) CHECK(to_float(output[i]) == doctest::Approx(to_float(input[i])).epsilon(2e-3));
}
