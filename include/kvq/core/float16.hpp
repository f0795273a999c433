// 16-bit float storage types (IEEE binary16 and bfloat16) with conversions that give the same bits on host
// and device: the host path is a software round-to-nearest-even, the device path uses the hardware convert.
// Both map every NaN to the canonical NaN 0x7FFF, as the hardware does.
#pragma once

#include <cmath>
#include <cstdint>

#include "kvq/core/bit_cast.hpp"
#include "kvq/core/macros.hpp"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace kvq {

// Storage-only wrappers: kvq never does arithmetic in 16 bits, it converts to float.
struct f16 {
  std::uint16_t bits;
};
struct bf16 {
  std::uint16_t bits;
};

namespace detail {

KVQ_HOST_DEVICE KVQ_INLINE std::uint16_t float_to_f16_bits_software(float value) noexcept {
  const std::uint32_t x = bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t magnitude = x & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return 0x7FFFu;                           // NaN
  if (magnitude >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to Inf
  const std::uint32_t exponent = magnitude >> 23;
  if (exponent < 113) {  // below 2^-14: a binary16 subnormal or zero
    if (exponent < 102) return static_cast<std::uint16_t>(sign);  // below 2^-25: rounds to zero
    const std::uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126 - exponent;  // 14..24
    std::uint32_t result = mantissa >> shift;
    const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (result & 1u))) ++result;
    return static_cast<std::uint16_t>(sign | result);
  }
  std::uint32_t result = ((exponent - 112) << 10) | ((magnitude & 0x7FFFFFu) >> 13);
  const std::uint32_t remainder = magnitude & 0x1FFFu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) ++result;  // carry may reach Inf: correct
  return static_cast<std::uint16_t>(sign | result);
}

KVQ_HOST_DEVICE KVQ_INLINE float f16_bits_to_float_software(std::uint16_t bits) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  std::uint32_t exponent = (bits >> 10) & 0x1Fu;
  std::uint32_t mantissa = bits & 0x3FFu;
  std::uint32_t result;
  if (exponent == 0x1F) {
    result = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent == 0) {
    if (mantissa == 0) {
      result = sign;
    } else {  // subnormal: normalise
      exponent = 113;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --exponent;
      }
      result = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
    }
  } else {
    result = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  return bit_cast<float>(result);
}

KVQ_HOST_DEVICE KVQ_INLINE std::uint16_t float_to_bf16_bits_software(float value) noexcept {
  const std::uint32_t x = bit_cast<std::uint32_t>(value);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFFu;
  const std::uint32_t rounding = 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

}  // namespace detail

KVQ_HOST_DEVICE KVQ_INLINE f16 to_f16(float value) noexcept {
#if KVQ_IS_DEVICE_CODE
  return f16{__half_as_ushort(__float2half_rn(value))};
#else
  return f16{detail::float_to_f16_bits_software(value)};
#endif
}

KVQ_HOST_DEVICE KVQ_INLINE float to_float(f16 value) noexcept {
#if KVQ_IS_DEVICE_CODE
  return __half2float(__ushort_as_half(value.bits));
#else
  return detail::f16_bits_to_float_software(value.bits);
#endif
}

KVQ_HOST_DEVICE KVQ_INLINE bf16 to_bf16(float value) noexcept {
#if KVQ_IS_DEVICE_CODE
  return bf16{__bfloat16_as_ushort(__float2bfloat16_rn(value))};
#else
  return bf16{detail::float_to_bf16_bits_software(value)};
#endif
}

KVQ_HOST_DEVICE KVQ_INLINE float to_float(bf16 value) noexcept {
  return detail::bit_cast<float>(static_cast<std::uint32_t>(value.bits) << 16);
}

KVQ_HOST_DEVICE KVQ_INLINE float to_float(float value) noexcept { return value; }

// fp16 of a finite value, clamped to +-65504 instead of overflowing to Inf; NaN and Inf stay as they are. For
// storage that must not turn finite input (say a bf16 value, or a key rotated by RoPE) into Inf.
KVQ_HOST_DEVICE KVQ_INLINE f16 to_f16_saturating(float value) noexcept {
  constexpr float largest = 65504.0f;
  if (value > largest && value < INFINITY) return to_f16(largest);
  if (value < -largest && value > -INFINITY) return to_f16(-largest);
  return to_f16(value);
}

}  // namespace kvq
