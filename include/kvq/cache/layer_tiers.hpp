// Which key and value policies each layer uses. A cache is built for a fixed list of tiers (pairs of key and
// value policies, e.g. 8-bit for the first and last layers and 4-bit elsewhere) and a runtime map from layer to
// tier. Runtime -> compile-time dispatch happens here and nowhere else.
#pragma once

#include <cstddef>
#include <string>
#include <tuple>
#include <utility>

#include "kvq/core/error.hpp"
#include "kvq/quant/concept.hpp"

namespace kvq {

template <QuantizationPolicy Key, QuantizationPolicy Value>
struct Tier {
  using KeyPolicy = Key;
  using ValuePolicy = Value;
  static_assert(Key::head_dim == Value::head_dim, "kvq: key and value policies of a tier must share head_dim");
};

template <class... Tiers>
struct LayerTiers {
  static_assert(sizeof...(Tiers) >= 1, "kvq: a cache needs at least one tier");
  static constexpr int count = static_cast<int>(sizeof...(Tiers));
  using First = std::tuple_element_t<0, std::tuple<Tiers...>>;
  static constexpr int head_dim = First::KeyPolicy::head_dim;
  static_assert(((Tiers::KeyPolicy::head_dim == head_dim) && ...), "kvq: every tier must share head_dim");

  // Tokens that must be quantized together: every policy's block size divides it.
  static constexpr int flush_tokens = [] {
    int result = 1;
    auto fold = [&](int tokens) {
      int a = result, b = tokens;
      while (b != 0) {
        const int t = a % b;
        a = b;
        b = t;
      }
      result = result / a * tokens;
    };
    (fold(Tiers::KeyPolicy::tokens_per_block), ...);
    (fold(Tiers::ValuePolicy::tokens_per_block), ...);
    return result;
  }();

  // Calls visitor.template operator()<Tier>() for tier `index`.
  template <class Visitor>
  static decltype(auto) visit(int index, Visitor&& visitor) {
    require(index >= 0 && index < count, ErrorCode::invalid_argument,
            "tier index " + std::to_string(index) + " is outside [0, " + std::to_string(count) + ")");
    return visit_from<0, Tiers...>(index, std::forward<Visitor>(visitor));
  }

 private:
  template <int I, class Head, class... Rest, class Visitor>
  static decltype(auto) visit_from(int index, Visitor&& visitor) {
    if constexpr (sizeof...(Rest) == 0) {
      return visitor.template operator()<Head>();
    } else {
      if (index == I) return visitor.template operator()<Head>();
      return visit_from<I + 1, Rest...>(index, std::forward<Visitor>(visitor));
    }
  }
};

}  // namespace kvq
