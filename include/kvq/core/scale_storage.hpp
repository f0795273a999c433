// How a policy stores its per-group scales and zero points. Scales are rounded UP into the storage type and
// zero points DOWN, so every input of the group stays inside the representable range [zero, zero + scale*levels]
// and the rounding error bound |x - x_hat| <= scale/2 holds with the scale actually stored.
#pragma once

#include <cstdint>
#include <limits>

#include "kvq/core/bit_cast.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/macros.hpp"

namespace kvq {

enum class ScaleType { f16, bf16, f32 };

template <ScaleType Type>
struct ScaleStorage;

namespace detail {
// Next representable 16-bit value towards +Inf / -Inf (bit patterns are sign-magnitude).
KVQ_HOST_DEVICE KVQ_INLINE std::uint16_t next_up_bits16(std::uint16_t bits) noexcept {
  if (bits == 0x8000u) return 0x0001u;
  return (bits & 0x8000u) ? static_cast<std::uint16_t>(bits - 1u) : static_cast<std::uint16_t>(bits + 1u);
}
KVQ_HOST_DEVICE KVQ_INLINE std::uint16_t next_down_bits16(std::uint16_t bits) noexcept {
  if (bits == 0x0000u) return 0x8001u;
  return (bits & 0x8000u) ? static_cast<std::uint16_t>(bits + 1u) : static_cast<std::uint16_t>(bits - 1u);
}

template <class Storage, class Encode>
KVQ_HOST_DEVICE KVQ_INLINE Storage round_directed16(float value, bool upward, Encode encode) noexcept {
  Storage stored = encode(value);
  const float back = to_float(stored);
  if (value == value && back == back) {  // NaN stays NaN
    if (upward && back < value) stored.bits = next_up_bits16(stored.bits);
    if (!upward && back > value) stored.bits = next_down_bits16(stored.bits);
  }
  return stored;
}
}  // namespace detail

template <>
struct ScaleStorage<ScaleType::f16> {
  using type = f16;
  static constexpr int bytes = 2;
  KVQ_HOST_DEVICE static type round_up(float v) noexcept {
    return detail::round_directed16<f16>(v, true, [](float x) { return to_f16(x); });
  }
  KVQ_HOST_DEVICE static type round_down(float v) noexcept {
    return detail::round_directed16<f16>(v, false, [](float x) { return to_f16(x); });
  }
  KVQ_HOST_DEVICE static type nearest(float v) noexcept { return to_f16(v); }
  KVQ_HOST_DEVICE static type nan() noexcept { return f16{0x7FFFu}; }
  KVQ_HOST_DEVICE static float decode(type v) noexcept { return to_float(v); }
};

template <>
struct ScaleStorage<ScaleType::bf16> {
  using type = bf16;
  static constexpr int bytes = 2;
  KVQ_HOST_DEVICE static type round_up(float v) noexcept {
    return detail::round_directed16<bf16>(v, true, [](float x) { return to_bf16(x); });
  }
  KVQ_HOST_DEVICE static type round_down(float v) noexcept {
    return detail::round_directed16<bf16>(v, false, [](float x) { return to_bf16(x); });
  }
  KVQ_HOST_DEVICE static type nearest(float v) noexcept { return to_bf16(v); }
  KVQ_HOST_DEVICE static type nan() noexcept { return bf16{0x7FFFu}; }
  KVQ_HOST_DEVICE static float decode(type v) noexcept { return to_float(v); }
};

template <>
struct ScaleStorage<ScaleType::f32> {
  using type = float;
  static constexpr int bytes = 4;
  KVQ_HOST_DEVICE static type round_up(float v) noexcept { return v; }
  KVQ_HOST_DEVICE static type round_down(float v) noexcept { return v; }
  KVQ_HOST_DEVICE static type nearest(float v) noexcept { return v; }
  KVQ_HOST_DEVICE static type nan() noexcept { return detail::bit_cast<float>(0x7FC00000u); }
  KVQ_HOST_DEVICE static float decode(type v) noexcept { return v; }
};

// Unaligned-safe loads and stores of metadata fields inside a block's byte record.
template <class T>
KVQ_HOST_DEVICE KVQ_INLINE T load_field(const std::uint8_t* base, int index) noexcept {
  T value;
  memcpy(&value, base + static_cast<long>(index) * static_cast<long>(sizeof(T)), sizeof(T));
  return value;
}
template <class T>
KVQ_HOST_DEVICE KVQ_INLINE void store_field(std::uint8_t* base, int index, T value) noexcept {
  memcpy(base + static_cast<long>(index) * static_cast<long>(sizeof(T)), &value, sizeof(T));
}

}  // namespace kvq
