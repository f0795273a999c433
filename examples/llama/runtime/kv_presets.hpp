// The KV cache formats `--kv` offers: kvq's named presets (kvq/cache/presets.hpp). The cache of a run holds the
// `--kv` preset (tier 0) and fp16 and int8 for per-layer overrides (`--kv nuq4 --kv-layer 0=fp16`, the usual "first
// and last layers at higher precision"); the per-layer choice is CacheConfig::layer_tier, a runtime map. Only
// these: a cache flushes its fp16 window in units that suit all of its tiers, so a list of every preset would
// make every cache flush 128 tokens at a time (nuq's per-channel key groups) and keep up to 127 tokens in fp16.
// kv_layout() (names -> tiers and cache settings) and dispatch_kv_cache() (runtime head_dim and preset -> the
// cache's compile-time types) are what the rest of the example calls.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvq/cache/cache_config.hpp"
#include "kvq/cache/page_layout.hpp"
#include "kvq/cache/presets.hpp"
#include "runtime/backend.hpp"

namespace kvq::llama {

// What a layer holds: the `--kv` preset, or one of the two override formats.
enum class LayerFormat { preset, fp16, int8 };

namespace detail {
template <class List, class Tier>
struct AppendTier;
template <class... Tiers, class Tier>
struct AppendTier<LayerTiers<Tiers...>, Tier> {  // a cache's tiers are distinct types: append only a new one
  using type =
      std::conditional_t<(std::is_same_v<Tiers, Tier> || ...), LayerTiers<Tiers...>, LayerTiers<Tiers..., Tier>>;
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
    case LayerFormat::preset:
      return 0;
    case LayerFormat::fp16:
      return detail::TierIndex<Tiers, typename presets::Fp16<d>::Tier>::value;
    case LayerFormat::int8:
      return detail::TierIndex<Tiers, typename presets::Int8<d>::Tier>::value;
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

// The same for one compile-time head_dim, so that a translation unit instantiates the caches of one head_dim only
// (the GPU backend compiles its two head_dims in separate files; nvcc is slow).
template <int HeadDim, class Visitor>
decltype(auto) dispatch_kv_cache_at(std::string_view preset, Visitor&& visitor) {
  return BuiltinPresets<HeadDim>::visit(preset, [&]<class Preset>() -> decltype(auto) {
    return visitor.template operator()<Preset, ExampleTiers<Preset>>();
  });
}

// The cache of a run, the same for every backend: the model's layers, KV heads and RoPE, one sequence of
// options.max_tokens, the preset's sinks, window and key position (at least the options' sinks and window), and
// each layer's tier in ExampleTiers<Preset> from the --kv preset and the --kv-layer overrides.
template <KVPreset Preset>
CacheConfig example_cache_config(const LlamaConfig& c, const KvCacheOptions& options) {
  const KvLayout layout = kv_layout(c.layers, options.preset, options.layer_presets);
  CacheConfig config;
  config.layers = c.layers;
  config.kv_heads = c.kv_heads;
  config.max_sequences = 1;
  config.max_tokens_per_sequence = options.max_tokens;
  config.page_tokens = options.page_tokens;
  config.sink_tokens = std::max(options.sink_tokens, layout.settings.sink_tokens);
  config.window_tokens = std::max(options.window_tokens, layout.settings.window_tokens);
  config.key_position = layout.settings.key_position;
  config.rope = c.rope;
  for (const LayerFormat format : layout.layers) config.layer_tier.push_back(tier_of<Preset>(format));
  return config;
}

// The format and the quantized bytes per token of a cache whose layer l has tier layer_tier[l] of
// ExampleTiers<Preset> ("int8 x30", "q4_0 x28, fp16 x2"); allocated_bytes and tokens are the caller's.
template <KVPreset Preset>
KvCacheReport kv_cache_format(const std::vector<int>& layer_tier, int page_tokens, int kv_heads) {
  using Tiers = ExampleTiers<Preset>;
  KvCacheReport report;
  std::vector<int> layers_per_tier(Tiers::count, 0);
  for (const int tier : layer_tier) {
    ++layers_per_tier[static_cast<std::size_t>(tier)];
    report.bytes_per_token += Tiers::visit(
        tier, [&]<class Tier>() { return TierPageLayout<Tier>::bytes_per_quantized_token(page_tokens, kv_heads); });
  }
  for (int tier = 0; tier < Tiers::count; ++tier) {
    if (layers_per_tier[static_cast<std::size_t>(tier)] == 0) continue;
    const std::string_view name = tier == tier_of<Preset>(LayerFormat::preset) ? Preset::name
                                  : tier == tier_of<Preset>(LayerFormat::fp16) ? std::string_view("fp16")
                                                                               : std::string_view("int8");
    report.format += (report.format.empty() ? "" : ", ") + std::string(name) + " x" +
                     std::to_string(layers_per_tier[static_cast<std::size_t>(tier)]);
  }
  return report;
}

}  // namespace kvq::llama
