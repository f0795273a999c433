// Published models the memory planner knows by name, with the hyper-parameters of their Hugging Face config.json
// files (num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim
// or hidden_size / num_attention_heads, vocab_size, tie_word_embeddings, max_position_embeddings).
#pragma once

#include <algorithm>
#include <array>
#include <cctype>
#include <string>
#include <string_view>

#include "kvq/core/error.hpp"
#include "kvq/planner/model_shape.hpp"

namespace kvq {

// Parameter counts as published: 8.03B, 8.03B, 70.6B, 406B, 1.24B, 3.21B, 135M (tests recompute them).
inline const std::array<ModelShape, 7>& published_models() {
  static const std::array<ModelShape, 7> models{{
      // name             layers hidden intermediate q   kv  d    vocab   tied   max context
      {"Llama-3-8B",      32,    4096,  14336,       32, 8,  128, 128256, false, 8192},
      {"Llama-3.1-8B",    32,    4096,  14336,       32, 8,  128, 128256, false, 131072},
      {"Llama-3-70B",     80,    8192,  28672,       64, 8,  128, 128256, false, 8192},
      {"Llama-3.1-405B",  126,   16384, 53248,       128, 8, 128, 128256, false, 131072},
      {"Llama-3.2-1B",    16,    2048,  8192,        32, 8,  64,  128256, true,  131072},
      {"Llama-3.2-3B",    28,    3072,  8192,        24, 8,  128, 128256, true,  131072},
      {"SmolLM2-135M",    30,    576,   1536,        9,  3,  64,  49152,  true,  8192},
  }};
  return models;
}

inline std::string published_model_names() {
  std::string result;
  for (const ModelShape& m : published_models()) result += (result.empty() ? "" : ", ") + m.name;
  return result;
}

// Case-insensitive lookup; unknown names are a kvq::Error listing the known ones.
inline const ModelShape& published_model(std::string_view name) {
  auto same = [](std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
             return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
  };
  for (const ModelShape& m : published_models())
    if (same(m.name, name)) return m;
  throw Error(ErrorCode::invalid_argument,
              "unknown model \"" + std::string(name) + "\"; known models: " + published_model_names());
}

}  // namespace kvq
