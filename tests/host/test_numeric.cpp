// Software float conversions against first principles: nearest representable value, ties to even, saturation,
// and the directed rounding used for scales; the Walsh-Hadamard rotation against an explicit matrix product.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "../support/policy_fixtures.hpp"

using namespace kvq;

namespace {

float bits_to_float(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Floats spread over every exponent, with random mantissas; includes exact halfway points.
std::vector<float> probe_floats(std::uint32_t seed, int count) {
  std::mt19937 rng(seed);
  std::vector<float> values;
  for (int i = 0; i < count; ++i) {
    std::uint32_t bits = rng();
    if (i % 4 == 0) bits &= 0xFFFFE000u;                 // binary16 halfway candidates
    if (i % 4 == 1) bits &= 0xFFFF8000u;                 // bfloat16 halfway candidates
    if ((bits & 0x7F800000u) == 0x7F800000u) continue;   // NaN/Inf tested separately
    values.push_back(bits_to_float(bits));
  }
  return values;
}

// Checks that `stored` is a nearest neighbour of x among its representable neighbours, ties to even.
template <class Decode, class Step>
void check_nearest_even(float x, std::uint16_t stored, Decode decode, Step step_up, Step step_down) {
  const double value = decode(stored);
  const double error = std::fabs(double(x) - value);
  for (std::uint16_t neighbour : {step_up(stored), step_down(stored)}) {
    const double other = decode(neighbour);
    if (std::isnan(other) || std::isinf(other)) continue;
    const double other_error = std::fabs(double(x) - other);
    REQUIRE(error <= other_error);
    if (error == other_error && !std::isinf(value)) REQUIRE((stored & 1u) == 0);  // tie: even mantissa
  }
}

}  // namespace

TEST_CASE("fp16: every finite bit pattern round-trips, NaN is canonical") {
  for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const float value = to_float(f16{static_cast<std::uint16_t>(bits)});
    if (std::isnan(value)) {
      REQUIRE(to_f16(value).bits == 0x7FFFu);
      continue;
    }
    REQUIRE(to_f16(value).bits == bits);
  }
}

TEST_CASE("fp16 and bf16: software rounding is nearest-even with overflow to Inf") {
  const std::uint32_t seed = kvq::testing::fresh_seed();
  INFO("seed " << seed);
  auto up = [](std::uint16_t b) { return detail::next_up_bits16(b); };
  auto down = [](std::uint16_t b) { return detail::next_down_bits16(b); };
  for (float x : probe_floats(seed, 200000)) {
    CAPTURE(x);
    const f16 h = to_f16(x);
    if (std::fabs(x) >= 65520.0f) {
      REQUIRE(std::isinf(to_float(h)));
    } else {
      check_nearest_even(x, h.bits, [](std::uint16_t b) { return double(to_float(f16{b})); }, +up, +down);
    }
    const bf16 b = to_bf16(x);
    if (!std::isinf(to_float(b)))
      check_nearest_even(x, b.bits, [](std::uint16_t v) { return double(to_float(bf16{v})); }, +up, +down);
  }
  CHECK(to_f16(65504.0f).bits == 0x7BFFu);
  CHECK(to_f16(65519.0f).bits == 0x7BFFu);
  CHECK(to_f16(65520.0f).bits == 0x7C00u);
  CHECK(to_f16(std::ldexp(1.0f, -25)).bits == 0x0000u);   // halfway to the smallest subnormal: ties to even (0)
  CHECK(to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)).bits == 0x0001u);
  CHECK(to_bf16(bits_to_float(0x7FC00001u)).bits == 0x7FFFu);
}

TEST_CASE("fp8: every code round-trips and encoding is nearest-even with saturation") {
  auto run = [](auto format_tag) {
    constexpr Fp8Format format = decltype(format_tag)::value;
    using Traits = Fp8Traits<format>;
    for (int code = 0; code < 256; ++code) {
      const float value = fp8_to_float<format>(static_cast<std::uint8_t>(code));
      if (std::isnan(value) || std::isinf(value)) continue;
      REQUIRE(float_to_fp8<format>(value) == code);
    }
    CHECK(fp8_to_float<format>(Traits::max_finite_code) == Traits::max_finite);
    CHECK(float_to_fp8<format>(1e30f) == Traits::max_finite_code);
    CHECK(float_to_fp8<format>(-INFINITY) == (0x80 | Traits::max_finite_code));
    CHECK(float_to_fp8<format>(NAN) == 0x7F);
    // Nearest-even against the full list of representable values.
    std::vector<double> grid;
    for (int code = 0; code < 128; ++code) {
      const float v = fp8_to_float<format>(static_cast<std::uint8_t>(code));
      if (std::isfinite(v)) grid.push_back(v);
    }
    std::mt19937 rng(kvq::testing::fresh_seed());
    std::uniform_real_distribution<float> exponent(-20.0f, 17.0f);
    for (int i = 0; i < 100000; ++i) {
      const float x = std::ldexp(1.0f + (rng() % 4096) / 4096.0f, static_cast<int>(exponent(rng)));
      const std::uint8_t code = float_to_fp8<format>(x);
      const double value = fp8_to_float<format>(code);
      if (x >= Traits::max_finite) {
        REQUIRE(code == Traits::max_finite_code);
        continue;
      }
      for (double g : grid) {
        REQUIRE(std::fabs(value - x) <= std::fabs(g - x));
        if (std::fabs(value - x) == std::fabs(g - x) && g != value) REQUIRE((code & 1) == 0);
      }
      REQUIRE(float_to_fp8<format>(-x) == (code | 0x80));
    }
  };
  run(std::integral_constant<Fp8Format, Fp8Format::e4m3>{});
  run(std::integral_constant<Fp8Format, Fp8Format::e5m2>{});
}

TEST_CASE("scale storage rounds up and zero points down, by at most one step") {
  std::mt19937 rng(kvq::testing::fresh_seed());
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  for (int i = 0; i < 100000; ++i) {
    const float x = std::ldexp(mantissa(rng), static_cast<int>(rng() % 40) - 30) * ((rng() & 1) ? 1.0f : -1.0f);
    using H = ScaleStorage<ScaleType::f16>;
    using B = ScaleStorage<ScaleType::bf16>;
    const float up = H::decode(H::round_up(x)), down = H::decode(H::round_down(x));
    REQUIRE(up >= x);
    REQUIRE(down <= x);
    REQUIRE(to_float(f16{detail::next_down_bits16(H::round_up(x).bits)}) < x);
    REQUIRE(to_float(f16{detail::next_up_bits16(H::round_down(x).bits)}) > x);
    REQUIRE(B::decode(B::round_up(x)) >= x);
    REQUIRE(B::decode(B::round_down(x)) <= x);
  }
}

TEST_CASE("rotation equals H * diag(signs) / sqrt(d) and is inverted exactly up to rounding") {
  std::mt19937 rng(kvq::testing::fresh_seed());
  std::normal_distribution<float> normal;
  auto run = [&](auto dim_tag) {
    constexpr int d = decltype(dim_tag)::value;
    const std::uint32_t seed = rng();
    float x[d], y[d];
    for (int i = 0; i < d; ++i) y[i] = x[i] = normal(rng);
    rotate_vector<d>(y, seed);
    int negatives = 0;
    for (int i = 0; i < d; ++i) {
      double expected = 0;
      for (int j = 0; j < d; ++j) {
        const double hadamard = (__builtin_popcount(static_cast<unsigned>(i & j)) % 2) ? -1.0 : 1.0;
        expected += hadamard * (rotation_sign_negative(seed, j) ? -x[j] : x[j]);
      }
      expected /= std::sqrt(double(d));
      REQUIRE(std::fabs(y[i] - expected) <= 1e-5);
      negatives += rotation_sign_negative(seed, i) ? 1 : 0;
    }
    CHECK(negatives > d / 4);  // the signs are mixed, not constant
    CHECK(negatives < 3 * d / 4);
    unrotate_vector<d>(y, seed);
    for (int i = 0; i < d; ++i) REQUIRE(std::fabs(y[i] - x[i]) <= 1e-5);
  };
  run(std::integral_constant<int, 64>{});
  run(std::integral_constant<int, 128>{});
}
