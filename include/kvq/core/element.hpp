// Tensor element types kvq reads and writes: float, fp16 (kvq::f16, layout-compatible with __half) and bf16
// (kvq::bf16, layout-compatible with __nv_bfloat16).
#pragma once

#include <concepts>

#include "kvq/core/float16.hpp"
#include "kvq/core/macros.hpp"

namespace kvq {

template <class T>
concept TensorElement = std::same_as<T, float> || std::same_as<T, f16> || std::same_as<T, bf16>;

template <TensorElement T>
KVQ_HOST_DEVICE KVQ_INLINE T from_float(float value) noexcept {
  if constexpr (std::same_as<T, f16>) {
    return to_f16(value);
  } else if constexpr (std::same_as<T, bf16>) {
    return to_bf16(value);
  } else {
    return value;
  }
}

}  // namespace kvq
