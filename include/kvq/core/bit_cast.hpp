// std::bit_cast is not usable in device code with every toolchain; this one is.
#pragma once

#include <cstring>
#include <type_traits>

#include "kvq/core/macros.hpp"

namespace kvq::detail {

template <class To, class From>
KVQ_HOST_DEVICE KVQ_INLINE To bit_cast(const From& from) noexcept {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of equal size");
  static_assert(std::is_trivially_copyable_v<To> && std::is_trivially_copyable_v<From>);
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

}  // namespace kvq::detail
