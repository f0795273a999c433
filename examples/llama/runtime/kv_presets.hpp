// The KV cache formats `--kv` offers: kvq's named presets (kvq/cache/presets.hpp). The cache of a run holds the
// `--kv` preset (tier 0) and fp16 and int8 for per-layer overrides (`--kv nuq4 --kv-layer 0=fp16`, the usual "first
// and last layers at higher precision"); the per-layer choice is CacheConfig::layer_tier, a runtime map. Only
// these: a cache flushes its fp16 window in units that suit all of its tiers, so a list of every preset would
// make every cache flush 128 tokens at a time (nuq's per-channel key groups) and keep up to 127 tokens in fp16.
// kv_layout() (names -> tiers and cache settings) and dispatch_kv_cache() (runtime head_dim and preset -> the
// cache's compile-time types) are what the rest of the example calls.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvq/cache/presets.hpp"

namespace kvq::llama {

// What a layer holds: the `--kv` preset, or one of the two override formats.
enum class LayerFormat { preset, fp16, int8 };

namespace detail {
template <class List, class Tier>
struct AppendTier;
template <class... Tiers, class Tier>
struct AppendTier<LayerTiers<Tiers...>, Tier> {  // a cache's tiers are distinct types: append only a new one
  using type = std::conditional_t<(std::is_same_v<Tiers, Tier> || ...), LayerTiers<Tiers...>, LayerTiers<Tiers..., Tier>>;
};
template <class List, class Tier>
struct TierIndex;
template <class... Tiers, class Tier>
struct TierIndex<LayerTiers<Tiers...>, Tier> {
  static constexpr int value = [] {
    int index = 0, found = -1;
    ((found = found < 0 && std::is_same_v<Tiers, Tier> ? index : found, ++index), ...);
    return found;
  }();
};
}  // namespace detail

template <KVPreset Preset>
using ExampleTiers = typename detail::AppendTier<
    typename detail::AppendTier<LayerTiers<typename Preset::Tier>,
                                typename presets::Fp16<Preset::Tier::KeyPolicy::head_dim>::Tier>::type,
    typename presets::Int8<Preset::Tier::KeyPolicy::head_dim>::Tier>::type;

// The tier of a layer format in ExampleTiers<Preset> (the preset is tier 0; fp16 or int8 as the preset is that tier).
template <KVPreset Preset>
constexpr int tier_of(LayerFormat format) {
  using Tiers = ExampleTiers<Preset>;
  constexpr int d = Preset::Tier::KeyPolicy::head_dim;
  switch (format) {
    case LayerFormat::preset: return 0;
    case LayerFormat::fp16: return detail::TierIndex<Tiers, typename presets::Fp16<d>::Tier>::value;
    case LayerFormat::int8: return detail::TierIndex<Tiers, typename presets::Int8<d>::Tier>::value;
  }
  return -1;
}

// The format of every layer and the cache-level settings, which are the `--kv` preset's (sinks, window, keys
// before or after RoPE; they apply to the override layers too, which is harmless for fp16 and int8).
struct KvLayout {
  std::vector<LayerFormat> layers;
  PresetSettings settings;
};

// `preset` for every layer, then each (layer, override) with override "fp16", "int8" or the preset itself.
// kvq::Error(invalid_argument) for an unknown preset (listing the known ones), another override, or a layer out of
// range.
KvLayout kv_layout(int layers, std::string_view preset, const std::vector<std::pair<int, std::string>>& overrides);

std::string kv_preset_list();  // "fp16, int8, fp8-e4m3, ..."

// Calls visitor.template operator()<Preset, ExampleTiers<Preset>>() for the built-in preset called `preset` at
// `head_dim` (kvq::visit_preset: an unknown name or head_dim is a kvq::Error listing what exists).
template <class Visitor>
decltype(auto) dispatch_kv_cache(int head_dim, std::string_view preset, Visitor&& visitor) {
  return visit_preset(preset, head_dim, [&]<class Preset>() -> decltype(auto) {
    return visitor.template operator()<Preset, ExampleTiers<Preset>>();
  });
}

}  // namespace kvq::llama
