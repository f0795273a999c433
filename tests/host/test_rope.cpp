// RoPE (include/kvq/core/rope.hpp) against first principles: sincos_exact against long-double sinl/cosl, the
// Llama-3.1 frequency table against a second implementation written from transformers' formula, apply_rope against
// a long-double rotation, and the properties attention relies on (norm kept, inverse undoes it, position 0 is the
// identity, q.k depends only on the distance). The device tests check that the GPU gives these same bits.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "../support/policy_fixtures.hpp"
#include "kvq/core/rope.hpp"

using namespace kvq;

namespace {

constexpr double unit_roundoff_double = 0x1p-53;
constexpr double unit_roundoff_float = 0x1p-24;

// Where long double is double (MSVC, some Arm ABIs) the reference itself is off by up to an ulp.
constexpr double reference_slack = std::numeric_limits<long double>::digits > 53 ? 0.0 : 2 * unit_roundoff_double;

// The absolute bound the header's error analysis gives for |angle| <= 2^40: two half-ulp roundings of a result in
// [0, 1], plus the reduction error and the rounding of r^2 carried through the polynomial tails.
constexpr double sincos_bound = 2 * unit_roundoff_double + reference_slack;

std::uint64_t bits_of(double value) {
  std::uint64_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

std::uint32_t bits_of(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// Largest error of sincos_exact over a set of angles, and where it happened.
struct WorstError {
  double error = 0.0;
  double angle = 0.0;
  void record(double candidate, double at) {
    if (candidate > error) {
      error = candidate;
      angle = at;
    }
  }
};

struct SincosErrors {
  WorstError sine, cosine;
  void measure(double angle) {
    double sine_value, cosine_value;
    sincos_exact(angle, &sine_value, &cosine_value);
    const long double exact = angle;
    sine.record(static_cast<double>(std::fabs(sine_value - std::sin(exact))), angle);
    cosine.record(static_cast<double>(std::fabs(cosine_value - std::cos(exact))), angle);
  }
};

// Reports the measured bound (the figure quoted in rope.hpp) and checks it against the derived one.
void check_sincos_errors(const SincosErrors& errors, const std::string& range) {
  MESSAGE(range << ": worst |error| sine " << errors.sine.error / unit_roundoff_double << " * 2^-53, cosine "
                << errors.cosine.error / unit_roundoff_double << " * 2^-53");
  INFO(range << ": worst sine error " << errors.sine.error << " at angle " << errors.sine.angle
             << ", worst cosine error " << errors.cosine.error << " at angle " << errors.cosine.angle);
  CHECK(errors.sine.error <= sincos_bound);
  CHECK(errors.cosine.error <= sincos_bound);
}

// The double nearest k * pi/2 (the long-double product is off by far less than the double's half ulp).
double nearest_multiple_of_half_pi(std::int64_t k) {
  return static_cast<double>(static_cast<long double>(k) * (std::numbers::pi_v<long double> / 2));
}

// ---- the table, written a second time straight from transformers' _compute_llama3_parameters ----------------
template <int HeadDim>
std::vector<double> reference_inverse_frequencies(const RopeConfig& config) {
  std::vector<double> result;
  for (int i = 0; i < HeadDim / 2; ++i) {
    double frequency = std::pow(static_cast<double>(config.theta), -2.0 * i / HeadDim);
    if (config.scaling == RopeScaling::llama3) {
      const double wavelength = 2 * std::numbers::pi / frequency;
      const double low_freq_wavelength = config.original_max_position / static_cast<double>(config.low_freq_factor);
      const double high_freq_wavelength = config.original_max_position / static_cast<double>(config.high_freq_factor);
      if (wavelength > low_freq_wavelength) {
        frequency /= config.factor;
      } else if (!(wavelength < high_freq_wavelength)) {
        const double smooth = (config.original_max_position / wavelength - config.low_freq_factor) /
                              (static_cast<double>(config.high_freq_factor) - config.low_freq_factor);
        frequency *= (1 - smooth) / config.factor + smooth;
      }
    }
    result.push_back(frequency);
  }
  return result;
}

// The same in float32, the way transformers computes it; kvq's double table must agree to float precision.
template <int HeadDim>
std::vector<float> float32_inverse_frequencies(const RopeConfig& config) {
  std::vector<float> result;
  for (int i = 0; i < HeadDim / 2; ++i) {
    float frequency = 1.0f / std::pow(config.theta, static_cast<float>(2 * i) / HeadDim);
    if (config.scaling == RopeScaling::llama3) {
      const float wavelength = 2 * std::numbers::pi_v<float> / frequency;
      const float original = static_cast<float>(config.original_max_position);
      if (wavelength > original / config.low_freq_factor) {
        frequency = frequency / config.factor;
      } else if (!(wavelength < original / config.high_freq_factor)) {
        const float smooth =
            (original / wavelength - config.low_freq_factor) / (config.high_freq_factor - config.low_freq_factor);
        frequency = (1 - smooth) * frequency / config.factor + smooth * frequency;
      }
    }
    result.push_back(frequency);
  }
  return result;
}

constexpr RopeConfig llama31_8b = testing::llama31_8b_rope;

// ---- apply_rope helpers ----------------------------------------------------------------------------------------
int first_of_pair(int pair, RopeStyle style) { return style == RopeStyle::interleaved ? 2 * pair : pair; }
int second_of_pair(int pair, int head_dim, RopeStyle style) {
  return style == RopeStyle::interleaved ? 2 * pair + 1 : pair + head_dim / 2;
}

// Head vectors like real keys: N(0, 1) times a per-vector scale over six decades.
std::vector<float> random_vector(std::mt19937& rng, int head_dim) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> decade(-3.0f, 3.0f);
  const float scale = std::pow(10.0f, decade(rng));
  std::vector<float> x(head_dim);
  for (float& value : x) {
    do value = normal(rng) * scale;
    while (value == 0.0f);  // keeps the bitwise identity checks free of signed-zero cases
  }
  return x;
}

double norm_of(const std::vector<float>& x) {
  double sum = 0;
  for (float value : x) sum += static_cast<double>(value) * value;
  return std::sqrt(sum);
}

template <int HeadDim>
std::vector<float> roped(std::vector<float> x, std::int64_t position, const RopeTable<HeadDim>& table,
                         RopeStyle style) {
  apply_rope<HeadDim>(x.data(), position, table, style);
  return x;
}

// The rotation in long double with long-double sine and cosine of the unrounded angle position * frequency.
template <int HeadDim>
std::vector<long double> reference_rope(const std::vector<float>& x, long double position,
                                        const RopeTable<HeadDim>& table, RopeStyle style) {
  std::vector<long double> result(x.begin(), x.end());
  for (int pair = 0; pair < HeadDim / 2; ++pair) {
    const long double angle = position * table.inverse_frequency[pair];
    const int first = first_of_pair(pair, style), second = second_of_pair(pair, HeadDim, style);
    const long double a = x[first], b = x[second];
    result[first] = a * std::cos(angle) - b * std::sin(angle);
    result[second] = a * std::sin(angle) + b * std::cos(angle);
  }
  return result;
}

template <int HeadDim>
void check_rope_against_reference(const RopeTable<HeadDim>& table, RopeStyle style, std::uint32_t seed) {
  CAPTURE(HeadDim);
  CAPTURE(static_cast<int>(style));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int64_t> random_position(0, std::int64_t{1} << 20);
  std::vector<std::int64_t> positions = {0, 1, 2, 8191, 8192, 131071, std::int64_t{1} << 20, -7,
                                         std::int64_t{2147483647}};
  for (int i = 0; i < 300; ++i) positions.push_back(random_position(rng));

  double worst_relative_to_norm = 0;
  for (std::int64_t position : positions) {
    CAPTURE(position);
    const auto x = random_vector(rng, HeadDim);
    const auto got = roped<HeadDim>(x, position, table, style);
    const auto expected = reference_rope<HeadDim>(x, static_cast<long double>(position), table, style);

    // Per pair: cosine and sine rounded to float (one rounding each), two rounded products and one rounded sum,
    // at most 3.01 * 2^-24 * (|a| + |b|); plus the double rounding of the angle, 2^-53 * |angle| rad.
    double error_squared = 0;
    for (int pair = 0; pair < HeadDim / 2; ++pair) {
      const int first = first_of_pair(pair, style), second = second_of_pair(pair, HeadDim, style);
      const double magnitude = std::fabs(x[first]) + std::fabs(x[second]);
      const double angle = std::fabs(static_cast<double>(position) * table.inverse_frequency[pair]);
      const double bound = (3.01 * unit_roundoff_float + angle * unit_roundoff_double) * magnitude;
      for (int channel : {first, second}) {
        const double error = static_cast<double>(std::fabs(got[channel] - expected[channel]));
        error_squared += error * error;
        if (!(error <= bound)) {
          CAPTURE(pair);
          CAPTURE(channel);
          CHECK(error <= bound);
        }
      }
    }
    worst_relative_to_norm = std::max(worst_relative_to_norm, std::sqrt(error_squared) / norm_of(x));
  }
  INFO("worst |rope(x) - exact| / |x| = " << worst_relative_to_norm);
  CHECK(worst_relative_to_norm <= 1e-6);
}

template <int HeadDim>
void check_rope_properties(const RopeTable<HeadDim>& table, RopeStyle style, std::uint32_t seed) {
  CAPTURE(HeadDim);
  CAPTURE(static_cast<int>(style));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int64_t> random_position(0, std::int64_t{1} << 20);
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t position = random_position(rng);
    CAPTURE(position);
    const auto x = random_vector(rng, HeadDim);
    const auto rotated = roped<HeadDim>(x, position, table, style);

    // A rotation keeps the norm; the float cosine/sine pair has norm 1 within 2^-24 and each output carries
    // three roundings, so the norm moves by well under 8 * 2^-24.
    CHECK(std::fabs(norm_of(rotated) / norm_of(x) - 1.0) <= 8 * unit_roundoff_float);

    // The inverse rotation uses the same rounded cosine and sine, so it undoes the rotation up to the roundings
    // of both passes and |cos^2 + sin^2 - 1| of the float pair.
    auto recovered = rotated;
    apply_inverse_rope<HeadDim>(recovered.data(), position, table, style);
    for (int pair = 0; pair < HeadDim / 2; ++pair) {
      const int first = first_of_pair(pair, style), second = second_of_pair(pair, HeadDim, style);
      const double bound = 12 * unit_roundoff_float * (std::fabs(x[first]) + std::fabs(x[second]));
      CHECK(std::fabs(static_cast<double>(recovered[first]) - x[first]) <= bound);
      CHECK(std::fabs(static_cast<double>(recovered[second]) - x[second]) <= bound);
    }

    // Position 0: cosine 1 and sine 0 exactly, so every value comes back unchanged.
    const auto at_zero = roped<HeadDim>(x, 0, table, style);
    CHECK(std::memcmp(at_zero.data(), x.data(), x.size() * sizeof(float)) == 0);
  }
}

// rope(q, m) . rope(k, n) must depend on m - n only: shifting both positions keeps the score, and the score is that
// of q rotated by m - n against the unrotated k.
template <int HeadDim>
void check_relative_position(const RopeTable<HeadDim>& table, RopeStyle style, std::uint32_t seed) {
  CAPTURE(HeadDim);
  CAPTURE(static_cast<int>(style));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int64_t> random_position(0, std::int64_t{1} << 17);
  std::uniform_int_distribution<std::int64_t> random_shift(1, std::int64_t{1} << 20);
  const auto dot = [](const auto& a, const auto& b) {
    long double sum = 0;
    for (std::size_t i = 0; i < a.size(); ++i) sum += static_cast<long double>(a[i]) * b[i];
    return static_cast<double>(sum);
  };
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t query_position = random_position(rng), key_position = random_position(rng);
    const std::int64_t shift = random_shift(rng);
    CAPTURE(query_position);
    CAPTURE(key_position);
    CAPTURE(shift);
    const auto query = random_vector(rng, HeadDim), key = random_vector(rng, HeadDim);
    const double score = dot(roped<HeadDim>(query, query_position, table, style),
                             roped<HeadDim>(key, key_position, table, style));
    const double shifted = dot(roped<HeadDim>(query, query_position + shift, table, style),
                               roped<HeadDim>(key, key_position + shift, table, style));
    const double exact = dot(reference_rope<HeadDim>(query, static_cast<long double>(query_position - key_position),
                                                     table, style),
                             key);
    // Each value of a rotated vector is within 3.01 * 2^-24 * (|a| + |b|) of exact, so the vector is within
    // 6.02 * 2^-24 of exact in norm (|a| + |b| <= sqrt(2) * pair norm, two values a pair), and the score within
    // 2 * 6.02 * 2^-24 * |q| |k|; the double rounding of the angles adds less than 1e-9 of that.
    const double tolerance = 13 * unit_roundoff_float * norm_of(query) * norm_of(key);
    CHECK(std::fabs(score - exact) <= tolerance);
    CHECK(std::fabs(shifted - exact) <= tolerance);
  }
}

// Half-split and interleaved are the same rotation of permuted channels: the pair (i, i + d/2) of one is the pair
// (2i, 2i + 1) of the other. The arithmetic per pair is identical, so the bits must be too.
template <int HeadDim>
void check_styles_are_permutations(const RopeTable<HeadDim>& table, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int64_t> random_position(0, std::int64_t{1} << 20);
  for (int trial = 0; trial < 50; ++trial) {
    const std::int64_t position = random_position(rng);
    CAPTURE(position);
    const auto half_split = random_vector(rng, HeadDim);
    std::vector<float> interleaved(HeadDim);
    for (int pair = 0; pair < HeadDim / 2; ++pair) {
      interleaved[2 * pair] = half_split[pair];
      interleaved[2 * pair + 1] = half_split[pair + HeadDim / 2];
    }
    const auto half_split_out = roped<HeadDim>(half_split, position, table, RopeStyle::half_split);
    const auto interleaved_out = roped<HeadDim>(interleaved, position, table, RopeStyle::interleaved);
    for (int pair = 0; pair < HeadDim / 2; ++pair) {
      CHECK(bits_of(interleaved_out[2 * pair]) == bits_of(half_split_out[pair]));
      CHECK(bits_of(interleaved_out[2 * pair + 1]) == bits_of(half_split_out[pair + HeadDim / 2]));
    }
  }
}

template <int HeadDim>
void check_apply_rope(std::uint32_t seed) {
  const RopeConfig llama3_unscaled{};  // theta 500000, no scaling (Llama-3 8B/70B)
  RopeConfig llama2{};
  llama2.theta = 10000.0f;
  const RopeConfig configs[] = {llama3_unscaled, llama31_8b, llama2};
  for (const RopeConfig& config : configs) {
    CAPTURE(config.theta);
    CAPTURE(static_cast<int>(config.scaling));
    const auto table = make_rope_table<HeadDim>(config);
    for (RopeStyle style : {RopeStyle::half_split, RopeStyle::interleaved}) {
      check_rope_against_reference<HeadDim>(table, style, seed);
      check_rope_properties<HeadDim>(table, style, seed + 1);
      check_relative_position<HeadDim>(table, style, seed + 2);
    }
    check_styles_are_permutations<HeadDim>(table, seed + 3);
  }
}

// The message of the kvq::Error a config is rejected with; empty when it is accepted.
std::string rejection_of(const RopeConfig& config) {
  try {
    (void)make_rope_table<128>(config);
  } catch (const Error& error) {
    CHECK(error.code() == ErrorCode::invalid_argument);
    return error.what();
  }
  return {};
}

}  // namespace

static_assert(std::is_trivially_copyable_v<RopeTable<128>> && std::is_standard_layout_v<RopeTable<128>>);
static_assert(sizeof(RopeTable<128>) == 64 * sizeof(double));

TEST_CASE("sincos_exact is within 2 * 2^-53 of long-double sin/cos") {
  const std::uint32_t seed = kvq::testing::fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);

  SincosErrors rope_range;  // RoPE angles: up to position 2^20 times frequency 1, with margin
  std::uniform_real_distribution<double> up_to_two_million(0.0, 2e6);
  for (int i = 0; i < 2'000'000; ++i) rope_range.measure(up_to_two_million(rng));
  check_sincos_errors(rope_range, "[0, 2e6]");

  SincosErrors other_ranges;
  std::uniform_real_distribution<double> negative(-2e6, 0.0), small(-4.0, 4.0), huge(-0x1p40, 0x1p40);
  std::uniform_real_distribution<double> exponent(-1000.0, 0.0);
  for (int i = 0; i < 200'000; ++i) {
    other_ranges.measure(negative(rng));
    other_ranges.measure(small(rng));
    other_ranges.measure(huge(rng));
    other_ranges.measure(std::exp2(exponent(rng)));  // tiny angles down to 2^-1000
  }
  check_sincos_errors(other_ranges, "[-2e6, 0], [-4, 4], [-2^40, 2^40], [2^-1000, 1]");
}

TEST_CASE("sincos_exact near multiples of pi/2, at zero, and outside its range") {
  const std::uint32_t seed = kvq::testing::fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);

  double sine, cosine;
  sincos_exact(0.0, &sine, &cosine);
  CHECK(sine == 0.0);
  CHECK(cosine == 1.0);
  sincos_exact(-0.0, &sine, &cosine);
  CHECK(sine == 0.0);
  CHECK(cosine == 1.0);

  // The doubles next to k * pi/2 for k up to 1.3e6 (angles up to 2e6), the first 1000 k and random ones, with
  // two neighbours on each side: there sine or cosine cancels to as little as 1e-16 or less, and the three-part
  // reduction must keep its relative accuracy (measured: under 2 * 2^-53).
  std::uniform_int_distribution<std::int64_t> random_k(1, 1'273'239);
  double worst_relative = 0, worst_at = 0;
  SincosErrors absolute;
  for (int i = 0; i < 200'000; ++i) {
    const std::int64_t k = i < 1000 ? i + 1 : random_k(rng);
    double angle = nearest_multiple_of_half_pi(k);
    angle = std::nextafter(std::nextafter(angle, 0.0), 0.0);
    for (int step = 0; step < 5; ++step, angle = std::nextafter(angle, 1e300)) {
      sincos_exact(angle, &sine, &cosine);
      const long double exact_small = k % 2 ? std::cos(static_cast<long double>(angle))
                                            : std::sin(static_cast<long double>(angle));
      const double small = k % 2 ? cosine : sine;
      const double relative = static_cast<double>(std::fabs((small - exact_small) / exact_small));
      if (relative > worst_relative) {
        worst_relative = relative;
        worst_at = angle;
      }
      absolute.measure(angle);
      absolute.measure(-angle);
    }
  }
  INFO("worst relative error " << worst_relative << " at " << worst_at);
  MESSAGE("near multiples of pi/2: worst relative error " << worst_relative / unit_roundoff_double << " * 2^-53");
  CHECK(worst_relative <= 4 * unit_roundoff_double + reference_slack);
  check_sincos_errors(absolute, "next to k*pi/2");

  // sin is odd and cos even, bit for bit, for any nonzero angle.
  std::uniform_real_distribution<double> up_to_two_million(0.0, 2e6);
  for (int i = 0; i < 10'000; ++i) {
    const double angle = up_to_two_million(rng);
    double negative_sine, negative_cosine;
    sincos_exact(angle, &sine, &cosine);
    sincos_exact(-angle, &negative_sine, &negative_cosine);
    REQUIRE(bits_of(negative_sine) == bits_of(-sine));
    REQUIRE(bits_of(negative_cosine) == bits_of(cosine));
  }

  // NaN, infinities and angles past 2^50 give the one quiet NaN.
  for (double outside : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                         -std::numeric_limits<double>::infinity(), 0x1p50 * (1 + 0x1p-52), -1e17, 1e300}) {
    CAPTURE(outside);
    sincos_exact(outside, &sine, &cosine);
    CHECK(bits_of(sine) == 0x7FF8000000000000ull);
    CHECK(bits_of(cosine) == 0x7FF8000000000000ull);
  }
  sincos_exact(0x1p50, &sine, &cosine);  // the largest accepted angle is still accurate
  CHECK(std::fabs(sine - std::sin(static_cast<long double>(0x1p50))) <= sincos_bound);
  CHECK(std::fabs(cosine - std::cos(static_cast<long double>(0x1p50))) <= sincos_bound);
}

TEST_CASE("rope table: base frequencies and Llama-3.1-8B scaling") {
  const auto unscaled = make_rope_table<128>(RopeConfig{});
  CHECK(unscaled.inverse_frequency[0] == 1.0);
  // 500000^(-2/128), the double nearest the exact value (200-bit mpmath), reached within an ulp by pow.
  CHECK(std::fabs(unscaled.inverse_frequency[1] - 0x1.a115829457fbep-1) <= 0x1p-53);
  CHECK(std::fabs(unscaled.inverse_frequency[1] - std::pow(500000.0, -2.0 / 128)) <= 0x1p-53);

  const auto scaled = make_rope_table<128>(llama31_8b);
  const auto expected = reference_inverse_frequencies<128>(llama31_8b);
  const auto float32 = float32_inverse_frequencies<128>(llama31_8b);
  int kept = 0, divided = 0, smoothed = 0;
  for (int i = 0; i < 64; ++i) {
    CAPTURE(i);
    // The second implementation rounds differently (pow of a negative exponent, the smooth blend factored out).
    CHECK(std::fabs(scaled.inverse_frequency[i] - expected[i]) <= 8 * unit_roundoff_double * expected[i]);
    // transformers' float32 arithmetic: the same formula to float precision (the blend amplifies the rounding of
    // the wavelength by up to 8x in the middle band).
    const double float32_tolerance = 64 * unit_roundoff_float * scaled.inverse_frequency[i];
    CHECK(std::fabs(scaled.inverse_frequency[i] - float32[i]) <= float32_tolerance);
    const double base = unscaled.inverse_frequency[i];
    if (scaled.inverse_frequency[i] == base) {
      ++kept;
      CHECK(i <= 28);  // wavelength 2 pi 500000^(i/64) < 8192/4 exactly for i <= 28
    } else if (scaled.inverse_frequency[i] == base / 8) {
      ++divided;
      CHECK(i >= 35);  // wavelength > 8192 from i = 35 on
    } else {
      ++smoothed;
      CHECK(scaled.inverse_frequency[i] > base / 8);
      CHECK(scaled.inverse_frequency[i] < base);
    }
  }
  CHECK(kept == 29);
  CHECK(divided == 29);
  CHECK(smoothed == 6);
  CHECK(scaled.inverse_frequency[0] == 1.0);  // the highest frequency is unchanged
  CHECK(scaled.inverse_frequency[63] == unscaled.inverse_frequency[63] / 8);  // the lowest is divided by 8
  CHECK(std::fabs(scaled.inverse_frequency[63] - 0x1.4985fec80a8cbp-22) <= 2 * 0x1p-53 * 0x1p-21);
  // The frequencies still decrease monotonically through the blended band.
  for (int i = 1; i < 64; ++i) CHECK(scaled.inverse_frequency[i] < scaled.inverse_frequency[i - 1]);
}

TEST_CASE("apply_rope against a long-double rotation, and its properties, head_dim 128") {
  const std::uint32_t seed = kvq::testing::fresh_seed();
  INFO("seed " << seed);
  check_apply_rope<128>(seed);
}

TEST_CASE("apply_rope against a long-double rotation, and its properties, head_dim 64") {
  const std::uint32_t seed = kvq::testing::fresh_seed();
  INFO("seed " << seed);
  check_apply_rope<64>(seed);
}

TEST_CASE("invalid rope configs are rejected with the field named") {
  CHECK(rejection_of(RopeConfig{}).empty());
  CHECK(rejection_of(llama31_8b).empty());
  RopeConfig factor_one = llama31_8b;
  factor_one.factor = 1.0f;  // the boundary is allowed: no interpolation
  CHECK(rejection_of(factor_one).empty());

  const float nan = std::numeric_limits<float>::quiet_NaN(), infinity = std::numeric_limits<float>::infinity();
  struct Case {
    const char* field;
    RopeConfig config;
  };
  std::vector<Case> cases;
  const auto with = [&](const char* field, auto change) {
    RopeConfig config = llama31_8b;
    change(config);
    cases.push_back({field, config});
  };
  for (float theta : {1.0f, 0.5f, 0.0f, -10000.0f, nan, infinity})
    with("RopeConfig::theta", [=](RopeConfig& c) { c.theta = theta; });
  with("RopeConfig::style", [](RopeConfig& c) { c.style = static_cast<RopeStyle>(7); });
  with("RopeConfig::scaling", [](RopeConfig& c) { c.scaling = static_cast<RopeScaling>(-1); });
  for (float factor : {0.5f, 0.0f, -8.0f, nan, infinity})
    with("RopeConfig::factor", [=](RopeConfig& c) { c.factor = factor; });
  for (float low : {0.0f, -1.0f, nan, infinity})
    with("RopeConfig::low_freq_factor", [=](RopeConfig& c) { c.low_freq_factor = low; });
  for (float high : {1.0f, 0.5f, nan, infinity})
    with("RopeConfig::high_freq_factor", [=](RopeConfig& c) { c.high_freq_factor = high; });
  for (int original : {0, -8192})
    with("RopeConfig::original_max_position", [=](RopeConfig& c) { c.original_max_position = original; });
  // The llama3 fields are checked whatever the scaling, so validity does not change when scaling is switched on.
  with("RopeConfig::factor", [](RopeConfig& c) {
    c.scaling = RopeScaling::none;
    c.factor = 0.0f;
  });

  for (const Case& rejected : cases) {
    const std::string message = rejection_of(rejected.config);
    CAPTURE(message);
    CAPTURE(rejected.field);
    CHECK(message.find(rejected.field) != std::string::npos);
  }
}
