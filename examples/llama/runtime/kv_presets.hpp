// The KV cache formats `--kv` offers, as kvq tiers. Another branch adds named presets to the library
// (kvq/presets.hpp); until it lands, the few this example needs are defined here, and the two functions below are
// the only things the rest of the example calls: kv_layer_tiers() (names -> tier per layer) and
// dispatch_kv_tiers() (runtime head_dim -> the cache's compile-time LayerTiers). Swapping in the library's
// presets means replacing this header and kv_presets.cpp.
//
// Every format is one Tier of a single LayerTiers list, so one cache type serves any mix of formats across
// layers (`--kv int8 --kv-layer 0=fp16`): the per-layer choice is CacheConfig::layer_tier, a runtime map.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvq/cache/layer_tiers.hpp"
#include "kvq/core/error.hpp"
#include "kvq/quant/fp16.hpp"
#include "kvq/quant/uniform.hpp"

namespace kvq::llama {

// 8-bit asymmetric codes, one fp16 scale and zero per token and head (8 + 32/head_dim bits per element).
template <int HeadDim>
using Int8PerToken = UniformPolicy<UniformConfig{.bits = 8, .group_size = HeadDim, .head_dim = HeadDim}>;

template <int HeadDim>
using ExampleTiers = LayerTiers<Tier<Fp16Policy<HeadDim>, Fp16Policy<HeadDim>>,       // 0: fp16
                                Tier<Int8PerToken<HeadDim>, Int8PerToken<HeadDim>>>;  // 1: int8

struct KvPreset {
  std::string_view name;
  int tier;  // index into ExampleTiers
  std::string_view description;
};
inline constexpr std::array<KvPreset, 2> kv_presets = {{
    {"fp16", 0, "keys and values in fp16 (the baseline)"},
    {"int8", 1, "keys and values in 8-bit codes, fp16 scale and zero per token and head"},
}};

// head_dim values the cache is compiled for (kvq policies fix head_dim at compile time): the one list.
using SupportedHeadDims = std::integer_sequence<int, 64, 128>;

// The tier of every layer: `preset` everywhere, then each (layer, preset) override. kvq::Error(invalid_argument)
// for an unknown name (listing the known ones) or a layer out of range.
std::vector<int> kv_layer_tiers(int layers, std::string_view preset,
                                const std::vector<std::pair<int, std::string>>& overrides);
std::string kv_preset_list();  // "fp16, int8"

namespace detail {

template <int... HeadDims>
std::string head_dim_list(std::integer_sequence<int, HeadDims...>) {
  std::string list;
  ((list += (list.empty() ? "" : ", ") + std::to_string(HeadDims)), ...);
  return list;
}

template <int First, int... Rest, class Visitor>
decltype(auto) dispatch_head_dim(int head_dim, Visitor& visitor) {
  if constexpr (sizeof...(Rest) == 0) {
    return visitor.template operator()<ExampleTiers<First>>();
  } else {
    if (head_dim == First) return visitor.template operator()<ExampleTiers<First>>();
    return dispatch_head_dim<Rest...>(head_dim, visitor);
  }
}

template <int... HeadDims, class Visitor>
decltype(auto) dispatch_head_dim(std::integer_sequence<int, HeadDims...>, int head_dim, Visitor& visitor) {
  require(((head_dim == HeadDims) || ...), ErrorCode::invalid_argument,
          "KV cache: head_dim " + std::to_string(head_dim) + " is not one this example is compiled for (" +
              head_dim_list(SupportedHeadDims{}) + ")");
  return dispatch_head_dim<HeadDims...>(head_dim, visitor);
}

}  // namespace detail

// Calls visitor.template operator()<ExampleTiers<D>>() for head_dim == D, D one of SupportedHeadDims.
template <class Visitor>
decltype(auto) dispatch_kv_tiers(int head_dim, Visitor&& visitor) {
  return detail::dispatch_head_dim(SupportedHeadDims{}, head_dim, visitor);
}

}  // namespace kvq::llama
