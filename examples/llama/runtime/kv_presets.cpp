#include "runtime/kv_presets.hpp"

namespace kvq::llama {

std::string kv_preset_list() {
  std::string names;
  for (const KvPreset& preset : kv_presets) names += (names.empty() ? "" : ", ") + std::string(preset.name);
  return names;
}

namespace {
int preset_tier(std::string_view name) {
  for (const KvPreset& preset : kv_presets)
    if (preset.name == name) return preset.tier;
  throw Error(ErrorCode::invalid_argument,
              "--kv: unknown KV format \"" + std::string(name) + "\" (known: " + kv_preset_list() + ")");
}
}  // namespace

std::vector<int> kv_layer_tiers(int layers, std::string_view preset,
                                const std::vector<std::pair<int, std::string>>& overrides) {
  std::vector<int> tiers(static_cast<std::size_t>(layers), preset_tier(preset));
  for (const auto& [layer, name] : overrides) {
    require(layer >= 0 && layer < layers, ErrorCode::invalid_argument,
            "--kv-layer: layer " + std::to_string(layer) + " is outside [0, " + std::to_string(layers) + ")");
    tiers[static_cast<std::size_t>(layer)] = preset_tier(name);
  }
  return tiers;
}

}  // namespace kvq::llama
