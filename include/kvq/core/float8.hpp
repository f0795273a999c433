// FP8 formats E4M3 ("fn": no infinities, max 448) and E5M2 (max 57344), encoded with round-to-nearest-even and
// saturation to the largest finite value (Hopper's cvt.rn.satfinite). The host path is a software encoder that
// gives the same bits as the hardware for every non-NaN input; NaN encodes as 0x7F in both formats.
#pragma once

#include <cmath>
#include <cstdint>

#include "kvq/core/bit_cast.hpp"
#include "kvq/core/macros.hpp"

#if defined(__CUDACC__)
#include <cuda_fp8.h>
#endif

namespace kvq {

enum class Fp8Format { e4m3, e5m2 };

template <Fp8Format Format>
struct Fp8Traits;

template <>
struct Fp8Traits<Fp8Format::e4m3> {
  static constexpr int exponent_bits = 4;
  static constexpr int mantissa_bits = 3;
  static constexpr int min_normal_exponent = -6;  // 2^-6
  static constexpr float max_finite = 448.0f;
  static constexpr std::uint8_t max_finite_code = 0x7E;
  static constexpr const char* name = "e4m3";
};

template <>
struct Fp8Traits<Fp8Format::e5m2> {
  static constexpr int exponent_bits = 5;
  static constexpr int mantissa_bits = 2;
  static constexpr int min_normal_exponent = -14;  // 2^-14
  static constexpr float max_finite = 57344.0f;
  static constexpr std::uint8_t max_finite_code = 0x7B;
  static constexpr const char* name = "e5m2";
};

namespace detail {

// Minifloat codes are monotone in magnitude, and within one binade (or the subnormal range) linear in the value;
// so the code is (binade offset) + round(value / quantum), where a carry into the next binade is still correct.
template <Fp8Format Format>
KVQ_HOST_DEVICE KVQ_INLINE std::uint8_t float_to_fp8_software(float value) noexcept {
  using Traits = Fp8Traits<Format>;
  const std::uint32_t x = bit_cast<std::uint32_t>(value);
  const std::uint8_t sign = static_cast<std::uint8_t>((x >> 24) & 0x80u);
  const std::uint32_t magnitude_bits = x & 0x7FFFFFFFu;
  if (magnitude_bits > 0x7F800000u) return 0x7F;
  const float magnitude = bit_cast<float>(magnitude_bits);
  if (magnitude >= Traits::max_finite) return static_cast<std::uint8_t>(sign | Traits::max_finite_code);
  constexpr int mantissa_bits = Traits::mantissa_bits;
  const int exponent = static_cast<int>(magnitude_bits >> 23) - 127;  // floor(log2) for normal floats
  const int binade = exponent < Traits::min_normal_exponent ? Traits::min_normal_exponent : exponent;
  // value / 2^(binade - mantissa_bits) is exact (power-of-two scaling within float range); then round half even.
  const float scaled = ldexpf(magnitude, mantissa_bits - binade);
  const std::uint32_t steps = static_cast<std::uint32_t>(rintf(scaled));
  std::uint32_t code;
  if (exponent < Traits::min_normal_exponent) {
    code = steps;  // subnormal codes are the step count itself; 2^mantissa_bits is the smallest normal
  } else {
    const std::uint32_t biased = static_cast<std::uint32_t>(binade - Traits::min_normal_exponent + 1);
    code = (biased << mantissa_bits) + (steps - (1u << mantissa_bits));
  }
  return static_cast<std::uint8_t>(sign | code);
}

template <Fp8Format Format>
KVQ_HOST_DEVICE KVQ_INLINE float fp8_to_float_software(std::uint8_t code) noexcept {
  using Traits = Fp8Traits<Format>;
  constexpr int mantissa_bits = Traits::mantissa_bits;
  const bool negative = (code & 0x80u) != 0;
  const std::uint32_t magnitude = code & 0x7Fu;
  if constexpr (Format == Fp8Format::e4m3) {
    if (magnitude == 0x7F) return bit_cast<float>(0x7FFFFFFFu);
  } else {
    if (magnitude > 0x7C) return bit_cast<float>(0x7FFFFFFFu);
    if (magnitude == 0x7C) return negative ? -bit_cast<float>(0x7F800000u) : bit_cast<float>(0x7F800000u);
  }
  const std::uint32_t biased = magnitude >> mantissa_bits;
  const std::uint32_t mantissa = magnitude & ((1u << mantissa_bits) - 1u);
  float result;
  if (biased == 0) {
    result = ldexpf(static_cast<float>(mantissa), Traits::min_normal_exponent - mantissa_bits);
  } else {
    const int exponent = static_cast<int>(biased) - 1 + Traits::min_normal_exponent;
    result = ldexpf(static_cast<float>(mantissa + (1u << mantissa_bits)), exponent - mantissa_bits);
  }
  return negative ? -result : result;
}

}  // namespace detail

template <Fp8Format Format>
KVQ_HOST_DEVICE KVQ_INLINE std::uint8_t float_to_fp8(float value) noexcept {
#if KVQ_IS_DEVICE_CODE
  return static_cast<std::uint8_t>(__nv_cvt_float_to_fp8(
      value, __NV_SATFINITE, Format == Fp8Format::e4m3 ? __NV_E4M3 : __NV_E5M2));
#else
  return detail::float_to_fp8_software<Format>(value);
#endif
}

template <Fp8Format Format>
KVQ_HOST_DEVICE KVQ_INLINE float fp8_to_float(std::uint8_t code) noexcept {
  return detail::fp8_to_float_software<Format>(code);
}

}  // namespace kvq
