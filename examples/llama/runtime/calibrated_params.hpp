// A codebook preset's parameters with one layer's calibrated centroids (kv_calibration.hpp), shared by the CPU and
// GPU backends so that both run a calibrated preset on the same codebooks. Host code without fmt: the GPU backend's
// nvcc translation units include it.
#pragma once

#include <string>

#include "kvq/core/error.hpp"
#include "model/llama_model.hpp"
#include "runtime/kv_calibration.hpp"
#include "runtime/kv_presets.hpp"

namespace kvq::llama {

// `params` with layer `layer`'s key and value centroids pointing into `calibration` (which must outlive them: the
// CPU cache keeps the pointers; the GPU backend copies the centroids to the device). A preset without codebooks
// cannot take a calibration: kvq::Error rather than silently running the defaults.
template <KVPreset Preset>
TierParams<typename Preset::Tier> calibrated_params(TierParams<typename Preset::Tier> params,
                                                    const KvCalibration& calibration, int layer,
                                                    const LlamaConfig& config) {
  if constexpr (requires { params.key.inner.centroids; params.value.inner.centroids; }) {
    using Key = typename Preset::Tier::KeyPolicy::InnerPolicy;
    using Value = typename Preset::Tier::ValuePolicy::InnerPolicy;
    static_assert(Key::centroid_count == Value::centroid_count, "kvq_llama: key and value codebooks of one size");
    static_assert(Key::centroid_sets == 1 && Value::centroid_sets == 1,
                  "kvq_llama: the calibration file holds one codebook per layer, not one per channel");
    int bits = 0;
    while ((1 << bits) < Key::centroid_count) ++bits;
    const auto& layers = calibration.codebooks_for(bits, config.layers, config.head_dim, std::string(Preset::name));
    const LayerCodebooks& codebooks = layers[static_cast<std::size_t>(layer)];
    require(static_cast<int>(codebooks.key.size()) == Key::centroid_count &&
                static_cast<int>(codebooks.value.size()) == Value::centroid_count,
            ErrorCode::invalid_argument,
            "calibration: layer " + std::to_string(layer) + " codebooks do not hold " +
                std::to_string(Key::centroid_count) + " centroids each");
    params.key.inner.centroids = codebooks.key.data();
    params.value.inner.centroids = codebooks.value.data();
    return params;
  } else {
    throw Error(ErrorCode::invalid_argument, "KV preset " + std::string(Preset::name) +
                                                 " has no codebooks to calibrate (only the nuq presets take a "
                                                 "calibration file)");
  }
}

}  // namespace kvq::llama
