// Float arithmetic that rounds once per operation on host and device alike. nvcc fuses a*b+c into an FMA by
// default while a host compiler for plain x86-64 does not; quantization must give the same bits on both sides,
// so its arithmetic goes through these helpers (device: the _rn intrinsics, which are never contracted).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kvq/core/macros.hpp"

namespace kvq::detail {

KVQ_HOST_DEVICE KVQ_INLINE float mul_rn(float a, float b) noexcept {
#if KVQ_IS_DEVICE_CODE
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

KVQ_HOST_DEVICE KVQ_INLINE float add_rn(float a, float b) noexcept {
#if KVQ_IS_DEVICE_CODE
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

KVQ_HOST_DEVICE KVQ_INLINE float sub_rn(float a, float b) noexcept {
#if KVQ_IS_DEVICE_CODE
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// IEEE division even under --use_fast_math.
KVQ_HOST_DEVICE KVQ_INLINE float div_rn(float a, float b) noexcept {
#if KVQ_IS_DEVICE_CODE
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// A single rounding of a*b+c, the same on both sides (glibc's fmaf is correctly rounded).
KVQ_HOST_DEVICE KVQ_INLINE float fma_rn(float a, float b, float c) noexcept { return fmaf(a, b, c); }

// Not NaN and not +-Inf; a bit test, so it does not depend on -ffast-math or the device math library.
KVQ_HOST_DEVICE KVQ_INLINE bool is_finite(float value) noexcept {
  std::uint32_t bits;
  memcpy(&bits, &value, sizeof(bits));
  return (bits & 0x7F800000u) != 0x7F800000u;
}

template <class T>
KVQ_HOST_DEVICE KVQ_INLINE constexpr T min_of(T a, T b) noexcept {
  return b < a ? b : a;
}
template <class T>
KVQ_HOST_DEVICE KVQ_INLINE constexpr T max_of(T a, T b) noexcept {
  return a < b ? b : a;
}

}  // namespace kvq::detail
