#include "runtime/kv_presets.hpp"

namespace kvq::llama {

std::string kv_preset_list() { return BuiltinPresets<128>::joined_names(); }

KvLayout kv_layout(int layers, std::string_view preset, const std::vector<std::pair<int, std::string>>& overrides) {
  using Presets = BuiltinPresets<128>;  // names and settings are the same for every head_dim
  KvLayout layout;
  layout.settings = Presets::visit(preset, []<class P>() { return P::settings; });
  layout.layers.assign(static_cast<std::size_t>(layers), LayerFormat::preset);
  for (const auto& [layer, name] : overrides) {
    require(layer >= 0 && layer < layers, ErrorCode::invalid_argument,
            "--kv-layer: layer " + std::to_string(layer) + " is outside [0, " + std::to_string(layers) + ")");
    require(name == preset || name == "fp16" || name == "int8", ErrorCode::invalid_argument,
            "--kv-layer: layer " + std::to_string(layer) + " asks for \"" + name + "\"; an override is fp16, int8 or " +
                "the --kv preset (\"" + std::string(preset) + "\")");
    layout.layers[static_cast<std::size_t>(layer)] =
        name == preset ? LayerFormat::preset : name == "fp16" ? LayerFormat::fp16 : LayerFormat::int8;
  }
  return layout;
}

}  // namespace kvq::llama
