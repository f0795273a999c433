// Rotary position embedding (RoPE) for Llama-3 queries and keys, the same bits on host and device.
//
// A cache that stores keys after RoPE, and an attention kernel that rotates queries on the GPU, must agree with
// the host reference bit for bit, or host and device tests of everything downstream can only compare within a
// tolerance. Library sin/cos are not the same function on host (glibc) and device (CUDA's libdevice), so this
// header brings its own sine and cosine built only from operations that IEEE 754 rounds exactly once and that
// both sides implement identically: double +, -, *, fused multiply-add, rint and floor.
//
// Pieces:
//   RopeConfig         theta, pair layout, Llama-3.1 frequency scaling.
//   RopeTable<d>       the d/2 inverse frequencies, built on the host in double (make_rope_table), trivially
//                      copyable so kernels take it by value.
//   sincos_exact       sine and cosine of a double, identical on host and device.
//   apply_rope         rotates one head vector of d floats for one position; apply_inverse_rope undoes it.
//
// Precision: angles are double (position * inverse frequency), so an angle of 10^6 rad is off by at most 6e-11 rad;
// only the final rotation is float. Hugging Face transformers and vLLM compute inverse frequencies and angles in
// float32, whose angle error reaches 4e-3 rad at position 10^5; kvq is not bit-compatible with them and does not
// try to be -- it is consistent with itself on both sides, which is what a cache of rotated keys needs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include "kvq/core/error.hpp"
#include "kvq/core/float_ops.hpp"
#include "kvq/core/macros.hpp"

namespace kvq {

// Which channels of a head form the pairs that rotate together.
enum class RopeStyle {
  half_split,   // Hugging Face rotate_half / GPT-NeoX: pair i is (i, i + d/2)
  interleaved,  // Meta's original code / GGUF llama.cpp "normal" mode: pair i is (2i, 2i + 1)
};

// How inverse frequencies are adjusted for contexts longer than the training context.
enum class RopeScaling {
  none,    // inverse_frequency[i] = theta^(-2i/d)
  llama3,  // Llama-3.1 "rope_type": "llama3", as transformers' _compute_llama3_parameters (see make_rope_table)
};

struct RopeConfig {
  float theta = 500000.0f;                    // base of the frequencies ("rope_theta"): Llama-3 500000, Llama-2 10000
  RopeStyle style = RopeStyle::half_split;    // pair layout; the table does not depend on it, apply_rope takes it
  RopeScaling scaling = RopeScaling::none;    // Llama-3.1/3.2/3.3 checkpoints use llama3
  float factor = 8.0f;                        // llama3: low frequencies are divided by this (3.2 1B/3B: 32)
  float low_freq_factor = 1.0f;               // llama3: wavelengths above original/low_freq_factor are scaled fully
  float high_freq_factor = 4.0f;              // llama3: wavelengths below original/high_freq_factor are kept
  int original_max_position = 8192;           // llama3: training context ("original_max_position_embeddings")
};

// The d/2 inverse frequencies of one model, in double so that angles (position * frequency) keep 53 bits.
// Trivially copyable (a plain array) so that a kernel can take it by value: 512 bytes for d = 128.
template <int HeadDim>
struct RopeTable {
  static_assert(HeadDim > 0 && HeadDim % 2 == 0, "kvq: RoPE needs a positive, even head_dim");
  static constexpr int head_dim = HeadDim;
  static constexpr int pairs = HeadDim / 2;
  double inverse_frequency[HeadDim / 2];
};

namespace detail {

// Double arithmetic rounded once per operation on both sides. nvcc would contract a*b+c into an FMA (and a host
// compiler for plain x86-64 would not), so the device uses the _rn intrinsics, which are never contracted; where
// a fused operation is meant it is spelled out as fma, which is correctly rounded in glibc and on the GPU.
KVQ_HOST_DEVICE KVQ_INLINE double double_mul_rn(double a, double b) noexcept {
#if KVQ_IS_DEVICE_CODE
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

KVQ_HOST_DEVICE KVQ_INLINE double double_fma_rn(double a, double b, double c) noexcept {
#if KVQ_IS_DEVICE_CODE
  return ::fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Nearest integer, ties to even (the default rounding mode, which kvq never changes); exact.
KVQ_HOST_DEVICE KVQ_INLINE double double_rint(double value) noexcept {
#if KVQ_IS_DEVICE_CODE
  return ::rint(value);
#else
  return std::rint(value);
#endif
}

// Largest integer not above the value; exact.
KVQ_HOST_DEVICE KVQ_INLINE double double_floor(double value) noexcept {
#if KVQ_IS_DEVICE_CODE
  return ::floor(value);
#else
  return std::floor(value);
#endif
}

// The one quiet NaN sincos_exact returns outside its range, so that even NaN has the same bits on both sides
// (x86 would produce a negative NaN from inf - inf, the GPU a positive one).
KVQ_HOST_DEVICE KVQ_INLINE double double_quiet_nan() noexcept {
  const std::uint64_t bits = 0x7FF8000000000000ull;
  double value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// pi/2 split into three doubles (high + middle + low = pi/2 within 6e-50): high is the double nearest pi/2,
// middle the double nearest pi/2 - high, low the double nearest what is still left.
inline constexpr double pi_over_two_high = 0x1.921fb54442d18p+0;
inline constexpr double pi_over_two_middle = 0x1.1a62633145c07p-54;
inline constexpr double pi_over_two_low = -0x1.f1976b7ed8fbcp-110;
inline constexpr double two_over_pi = 0x1.45f306dc9c883p-1;  // the double nearest 2/pi

// Largest |angle| sincos_exact reduces. Up to here angle * 2/pi is off by at most 0.12 after rounding, so the
// quadrant count k is the nearest one or one off and |r| stays below pi/4 + 0.2, where the polynomials are still
// accurate; from 2^52 on k can be off by many and the result is meaningless (|sin| > 1000 was seen near 1e17),
// so such angles give NaN instead.
inline constexpr double sincos_largest_angle = 0x1p50;

// Taylor coefficients (-1)^k / n!, each the double nearest the rational: n! is exact in a double for n <= 18, so
// the quotients below are single correctly rounded divisions, and the literals are checked against them.
// Truncation after r^17 (sine) and r^16 (cosine) leaves at most 8.4e-20 and 2.0e-18 for |r| <= pi/4.
inline constexpr double sine_coefficient_3 = -0x1.5555555555555p-3;
inline constexpr double sine_coefficient_5 = 0x1.1111111111111p-7;
inline constexpr double sine_coefficient_7 = -0x1.a01a01a01a01ap-13;
inline constexpr double sine_coefficient_9 = 0x1.71de3a556c734p-19;
inline constexpr double sine_coefficient_11 = -0x1.ae64567f544e4p-26;
inline constexpr double sine_coefficient_13 = 0x1.6124613a86d09p-33;
inline constexpr double sine_coefficient_15 = -0x1.ae7f3e733b81fp-41;
inline constexpr double sine_coefficient_17 = 0x1.952c77030ad4ap-49;
inline constexpr double cosine_coefficient_2 = -0x1.0000000000000p-1;
inline constexpr double cosine_coefficient_4 = 0x1.5555555555555p-5;
inline constexpr double cosine_coefficient_6 = -0x1.6c16c16c16c17p-10;
inline constexpr double cosine_coefficient_8 = 0x1.a01a01a01a01ap-16;
inline constexpr double cosine_coefficient_10 = -0x1.27e4fb7789f5cp-22;
inline constexpr double cosine_coefficient_12 = 0x1.1eed8eff8d898p-29;
inline constexpr double cosine_coefficient_14 = -0x1.93974a8c07c9dp-37;
inline constexpr double cosine_coefficient_16 = 0x1.ae7f3e733b81fp-45;

static_assert(-sine_coefficient_3 == 1.0 / 6.0 && sine_coefficient_5 == 1.0 / 120.0 &&
                  -sine_coefficient_7 == 1.0 / 5040.0 && sine_coefficient_9 == 1.0 / 362880.0 &&
                  -sine_coefficient_11 == 1.0 / 39916800.0 && sine_coefficient_13 == 1.0 / 6227020800.0 &&
                  -sine_coefficient_15 == 1.0 / 1307674368000.0 && sine_coefficient_17 == 1.0 / 355687428096000.0,
              "kvq: sine coefficients must be the doubles nearest 1/n!");
static_assert(-cosine_coefficient_2 == 1.0 / 2.0 && cosine_coefficient_4 == 1.0 / 24.0 &&
                  -cosine_coefficient_6 == 1.0 / 720.0 && cosine_coefficient_8 == 1.0 / 40320.0 &&
                  -cosine_coefficient_10 == 1.0 / 3628800.0 && cosine_coefficient_12 == 1.0 / 479001600.0 &&
                  -cosine_coefficient_14 == 1.0 / 87178291200.0 && cosine_coefficient_16 == 1.0 / 20922789888000.0,
              "kvq: cosine coefficients must be the doubles nearest 1/n!");

}  // namespace detail

// Sine and cosine of `angle`, the same bits on host and device.
//
// Method: k = rint(angle * 2/pi); r = angle - k*pi/2 by Cody-Waite reduction with the three-part pi/2 above.
// The first fma is exact: where k != 0, angle and k*high are both multiples of 2^-53 and differ by less than 1,
// so the difference fits in 53 bits, and r keeps the accuracy of the split constant rather than that of one double.
// Then Taylor polynomials in r^2 evaluated by Horner's rule with fma on [-pi/4, pi/4]; k mod 4 picks (sin r, cos r),
// (cos r, -sin r), (-sin r, -cos r) or (-cos r, sin r). For x != 0, sincos_exact(-x) is exactly (-sin, cos) of
// sincos_exact(x) (rint, fma and the polynomials are odd or even bit for bit); sin(-0) comes out as +0.
//
// Accuracy, against long-double sinl/cosl (themselves within 3e-20 of 200-bit mpmath): the largest absolute error
// seen in 2e7 random angles in [0, 2e6] was 1.19 * 2^-53 = 1.32e-16, the same up to 2^40; the error analysis
// (two half-ulp roundings plus the propagated reduction error) gives under 2 * 2^-53, which the tests assert.
// Between 2^40 and 2^50, where |r| can pass pi/4, the cosine error grew to 1.64 * 2^-53.
// Near the zeros of sine and cosine (doubles next to k*pi/2, k up to 1.3e6) the relative error was at most
// 1.97 * 2^-53 (the tests allow 4): the three-part reduction keeps r accurate even when it cancels to 1e-16.
// Range: |angle| <= 2^50 (sincos_largest_angle). RoPE angles are position * inverse frequency <= position, so any
// position below 2^50 is inside. NaN, infinite or larger angles give a quiet NaN (the same bits on both sides).
KVQ_HOST_DEVICE KVQ_INLINE void sincos_exact(double angle, double* sine, double* cosine) noexcept {
  using namespace detail;
  const double magnitude = angle < 0.0 ? -angle : angle;
  if (!(magnitude <= sincos_largest_angle)) {  // also NaN, for which every comparison is false
    *sine = double_quiet_nan();
    *cosine = double_quiet_nan();
    return;
  }

  const double quadrants = double_rint(double_mul_rn(angle, two_over_pi));
  double reduced = double_fma_rn(-quadrants, pi_over_two_high, angle);  // exact, see above
  reduced = double_fma_rn(-quadrants, pi_over_two_middle, reduced);
  reduced = double_fma_rn(-quadrants, pi_over_two_low, reduced);

  const double square = double_mul_rn(reduced, reduced);
  double sine_tail = sine_coefficient_17;
  sine_tail = double_fma_rn(sine_tail, square, sine_coefficient_15);
  sine_tail = double_fma_rn(sine_tail, square, sine_coefficient_13);
  sine_tail = double_fma_rn(sine_tail, square, sine_coefficient_11);
  sine_tail = double_fma_rn(sine_tail, square, sine_coefficient_9);
  sine_tail = double_fma_rn(sine_tail, square, sine_coefficient_7);
  sine_tail = double_fma_rn(sine_tail, square, sine_coefficient_5);
  sine_tail = double_fma_rn(sine_tail, square, sine_coefficient_3);
  // r + r^3 * tail: the leading r is added last, in one rounding, so small arguments keep full relative accuracy.
  const double sine_of_reduced = double_fma_rn(double_mul_rn(reduced, square), sine_tail, reduced);

  double cosine_tail = cosine_coefficient_16;
  cosine_tail = double_fma_rn(cosine_tail, square, cosine_coefficient_14);
  cosine_tail = double_fma_rn(cosine_tail, square, cosine_coefficient_12);
  cosine_tail = double_fma_rn(cosine_tail, square, cosine_coefficient_10);
  cosine_tail = double_fma_rn(cosine_tail, square, cosine_coefficient_8);
  cosine_tail = double_fma_rn(cosine_tail, square, cosine_coefficient_6);
  cosine_tail = double_fma_rn(cosine_tail, square, cosine_coefficient_4);
  cosine_tail = double_fma_rn(cosine_tail, square, cosine_coefficient_2);
  const double cosine_of_reduced = double_fma_rn(square, cosine_tail, 1.0);

  // k mod 4 in [0, 4), computed in double so that no angle, however large, overflows an integer conversion:
  // k/4 is exact (a power of two), floor is exact, and k - 4*floor(k/4) is a small integer, exact in the fma.
  const double quadrant = double_fma_rn(-4.0, double_floor(double_mul_rn(quadrants, 0.25)), quadrants);
  if (quadrant == 0.0) {
    *sine = sine_of_reduced;
    *cosine = cosine_of_reduced;
  } else if (quadrant == 1.0) {
    *sine = cosine_of_reduced;
    *cosine = -sine_of_reduced;
  } else if (quadrant == 2.0) {
    *sine = -sine_of_reduced;
    *cosine = -cosine_of_reduced;
  } else {
    *sine = -cosine_of_reduced;
    *cosine = sine_of_reduced;
  }
}

namespace detail {

// Rotates every pair of a head vector by +angle (inverse = false) or -angle (inverse = true). The angle is
// double(position) * inverse_frequency[i] in one double rounding; cosine and sine are rounded to float and the
// rotation is done in float with one rounding per operation, never contracted, so both sides agree bit for bit.
// On the host that last part rests on kvq's usual assumption (docs/policies.md): a host build that contracts
// a*b - c*d (GCC with -mfma or -march=native, even in -std=c++20) gives other bits here. sincos_exact has no
// product that feeds an addition, so it is the same under any contraction setting.
template <int HeadDim, bool Inverse>
KVQ_HOST_DEVICE KVQ_INLINE void rotate_pairs(float* x, std::int64_t position, const RopeTable<HeadDim>& table,
                                             RopeStyle style) noexcept {
  const double position_as_double = static_cast<double>(position);  // exact for |position| < 2^53
  const bool interleaved = style == RopeStyle::interleaved;
  for (int pair = 0; pair < HeadDim / 2; ++pair) {
    double sine, cosine;
    sincos_exact(double_mul_rn(position_as_double, table.inverse_frequency[pair]), &sine, &cosine);
    const float sine_float = static_cast<float>(sine);  // round to nearest on both sides (cvt.rn.f32.f64)
    const float cosine_float = static_cast<float>(cosine);
    const int first = interleaved ? 2 * pair : pair;
    const int second = interleaved ? 2 * pair + 1 : pair + HeadDim / 2;
    const float a = x[first], b = x[second];
    if constexpr (!Inverse) {
      x[first] = sub_rn(mul_rn(a, cosine_float), mul_rn(b, sine_float));
      x[second] = add_rn(mul_rn(a, sine_float), mul_rn(b, cosine_float));
    } else {
      // The rotation by -angle with the same rounded cosine and sine: sin(-t) = -sin(t) exactly here.
      x[first] = add_rn(mul_rn(a, cosine_float), mul_rn(b, sine_float));
      x[second] = sub_rn(mul_rn(b, cosine_float), mul_rn(a, sine_float));
    }
  }
}

}  // namespace detail

// Applies RoPE in place to one head vector `x` (HeadDim floats) of the token at `position`: each pair (a, b) of
// `style` and frequency i becomes (a cos t - b sin t, a sin t + b cos t) with t = position * inverse_frequency[i].
// Position 0 leaves every value unchanged (a signed zero may change sign). An angle beyond sincos_exact's range
// (|t| > 2^50, so a position of 2^50 or more) makes its pair NaN. Any style other than interleaved is treated as
// half_split (device code cannot throw; make_rope_table rejects invalid styles in the config).
template <int HeadDim>
KVQ_HOST_DEVICE KVQ_INLINE void apply_rope(float* x, std::int64_t position, const RopeTable<HeadDim>& table,
                                           RopeStyle style) noexcept {
  detail::rotate_pairs<HeadDim, false>(x, position, table, style);
}

// Undoes apply_rope (rotation by -t with the same rounded cosine and sine): recovers the input to within a few
// float roundings, for consumers that need un-rotated keys back from a cache of rotated ones.
template <int HeadDim>
KVQ_HOST_DEVICE KVQ_INLINE void apply_inverse_rope(float* x, std::int64_t position, const RopeTable<HeadDim>& table,
                                                   RopeStyle style) noexcept {
  detail::rotate_pairs<HeadDim, true>(x, position, table, style);
}

namespace detail {

inline std::string rope_config_value(double value) {
  std::ostringstream text;
  text.precision(9);
  text << value;
  return text.str();
}

// Host only: every field is checked, also the llama3 ones when scaling is none, so that whether a config is
// valid does not depend on a switch that may be flipped later.
inline void validate_rope_config(const RopeConfig& config) {
  const auto finite = [](float value) { return std::isfinite(value); };
  require(finite(config.theta) && config.theta > 1.0f, ErrorCode::invalid_argument,
          "RopeConfig::theta must be finite and greater than 1, got " + rope_config_value(config.theta));
  require(config.style == RopeStyle::half_split || config.style == RopeStyle::interleaved,
          ErrorCode::invalid_argument,
          "RopeConfig::style must be half_split or interleaved, got " +
              std::to_string(static_cast<int>(config.style)));
  require(config.scaling == RopeScaling::none || config.scaling == RopeScaling::llama3, ErrorCode::invalid_argument,
          "RopeConfig::scaling must be none or llama3, got " + std::to_string(static_cast<int>(config.scaling)));
  require(finite(config.factor) && config.factor >= 1.0f, ErrorCode::invalid_argument,
          "RopeConfig::factor must be finite and at least 1, got " + rope_config_value(config.factor));
  require(finite(config.low_freq_factor) && config.low_freq_factor > 0.0f, ErrorCode::invalid_argument,
          "RopeConfig::low_freq_factor must be finite and greater than 0, got " +
              rope_config_value(config.low_freq_factor));
  require(finite(config.high_freq_factor) && config.high_freq_factor > config.low_freq_factor,
          ErrorCode::invalid_argument,
          "RopeConfig::high_freq_factor must be finite and greater than low_freq_factor (" +
              rope_config_value(config.low_freq_factor) + "), got " + rope_config_value(config.high_freq_factor));
  require(config.original_max_position > 0, ErrorCode::invalid_argument,
          "RopeConfig::original_max_position must be greater than 0, got " +
              std::to_string(config.original_max_position));
}

}  // namespace detail

// Builds the inverse frequencies on the host, in double: base[i] = 1 / theta^(2i/d), and with llama3 scaling,
// exactly the case analysis of transformers' _compute_llama3_parameters (which works in float32):
//   wavelength = 2 pi / base[i]
//   wavelength < original / high_freq_factor:  base[i]                 (high frequencies are kept)
//   wavelength > original / low_freq_factor:   base[i] / factor        (low frequencies are interpolated)
//   otherwise, smooth = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor):
//                                              (1 - smooth) * base[i] / factor + smooth * base[i]
// Throws kvq::Error(invalid_argument) naming the field for an invalid config. The table is made once per model
// on the host only, so its arithmetic need not match the device; what the device sees is the table's bits.
template <int HeadDim>
[[nodiscard]] inline RopeTable<HeadDim> make_rope_table(const RopeConfig& config) {
  detail::validate_rope_config(config);
  const double pi = 3.141592653589793238462643383279502884;
  const double theta = config.theta, factor = config.factor;
  const double low_freq_factor = config.low_freq_factor, high_freq_factor = config.high_freq_factor;
  const double original = static_cast<double>(config.original_max_position);
  const double low_freq_wavelength = original / low_freq_factor;
  const double high_freq_wavelength = original / high_freq_factor;

  RopeTable<HeadDim> table{};
  for (int pair = 0; pair < HeadDim / 2; ++pair) {
    const double exponent = static_cast<double>(2 * pair) / static_cast<double>(HeadDim);
    const double base = 1.0 / std::pow(theta, exponent);
    double scaled = base;
    if (config.scaling == RopeScaling::llama3) {
      const double wavelength = 2.0 * pi / base;
      if (wavelength < high_freq_wavelength) {
        scaled = base;
      } else if (wavelength > low_freq_wavelength) {
        scaled = base / factor;
      } else {
        const double smooth = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor);
        scaled = (1.0 - smooth) * base / factor + smooth * base;
      }
    }
    table.inverse_frequency[pair] = scaled;
  }
  return table;
}

}  // namespace kvq
