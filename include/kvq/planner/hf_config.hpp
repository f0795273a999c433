// A model's shape from its Hugging Face config.json (LlamaConfig field names), for the memory planner.
// Needs nlohmann/json (Debian: nlohmann-json3-dev; CMake: find_package(nlohmann_json), target
// nlohmann_json::nlohmann_json) -- the only kvq header that does; kvq.hpp does not include it.
//
// Fields read (a missing required field, a value of the wrong JSON type or out of range is a kvq::Error naming
// the file and the field):
//   required  num_hidden_layers, hidden_size, intermediate_size, num_attention_heads, vocab_size,
//             max_position_embeddings (integers)
//   optional  num_key_value_heads (default num_attention_heads, as in LlamaConfig),
//             head_dim (default hidden_size / num_attention_heads, which must then divide exactly),
//             tie_word_embeddings (boolean, default false, as in LlamaConfig),
//             model_type / _name_or_path (only for the name)
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>

#include <nlohmann/json.hpp>

#include "kvq/core/error.hpp"
#include "kvq/planner/model_shape.hpp"

namespace kvq {

namespace detail {

inline std::int64_t config_integer(const nlohmann::json& config, const char* field, std::int64_t low, std::int64_t high,
                                   const std::string& source) {
  const auto it = config.find(field);
  require(it != config.end(), ErrorCode::io_error, source + ": missing field \"" + field + "\"");
  require(it->is_number_integer(), ErrorCode::io_error,
          source + ": field \"" + field + "\" must be an integer, got " + it->type_name() + " " + it->dump());
  // Unsigned values above 2^63 do not survive get<int64_t>; range-check them as the absurd sizes they are.
  require(!it->is_number_unsigned() || it->get<std::uint64_t>() <= static_cast<std::uint64_t>(high), ErrorCode::io_error,
          source + ": field \"" + field + "\" must be in [" + std::to_string(low) + ", " + std::to_string(high) +
              "], got " + it->dump());
  const auto value = it->get<std::int64_t>();
  require(value >= low && value <= high, ErrorCode::io_error,
          source + ": field \"" + field + "\" must be in [" + std::to_string(low) + ", " + std::to_string(high) +
              "], got " + std::to_string(value));
  return value;
}

inline bool config_boolean(const nlohmann::json& config, const char* field, bool fallback, const std::string& source) {
  const auto it = config.find(field);
  if (it == config.end() || it->is_null()) return fallback;
  require(it->is_boolean(), ErrorCode::io_error,
          source + ": field \"" + field + "\" must be true or false, got " + it->type_name() + " " + it->dump());
  return it->get<bool>();
}

}  // namespace detail

// `source` names the text in messages (the file path).
[[nodiscard]] inline ModelShape parse_hf_config(std::string_view text, const std::string& source) {
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& error) {
    throw Error(ErrorCode::io_error, source + ": not valid JSON (" + error.what() + ")");
  }
  require(config.is_object(), ErrorCode::io_error, source + ": expected a JSON object, got " + std::string(config.type_name()));

  using L = ModelLimits;
  ModelShape m;
  m.layers = static_cast<int>(detail::config_integer(config, "num_hidden_layers", 1, L::max_layers, source));
  m.hidden = static_cast<int>(detail::config_integer(config, "hidden_size", 1, L::max_hidden, source));
  m.intermediate = static_cast<int>(detail::config_integer(config, "intermediate_size", 1, L::max_intermediate, source));
  m.query_heads = static_cast<int>(detail::config_integer(config, "num_attention_heads", 1, L::max_heads, source));
  m.kv_heads = config.contains("num_key_value_heads")
                   ? static_cast<int>(detail::config_integer(config, "num_key_value_heads", 1, m.query_heads, source))
                   : m.query_heads;
  if (config.contains("head_dim") && !config["head_dim"].is_null()) {
    m.head_dim = static_cast<int>(detail::config_integer(config, "head_dim", 1, L::max_head_dim, source));
  } else {
    require(m.hidden % m.query_heads == 0, ErrorCode::io_error,
            source + ": no \"head_dim\" and hidden_size " + std::to_string(m.hidden) +
                " is not a multiple of num_attention_heads " + std::to_string(m.query_heads));
    m.head_dim = m.hidden / m.query_heads;
  }
  m.vocab = static_cast<int>(detail::config_integer(config, "vocab_size", 1, L::max_vocab, source));
  m.tied_embeddings = detail::config_boolean(config, "tie_word_embeddings", false, source);
  m.max_context = detail::config_integer(config, "max_position_embeddings", 1, L::max_context, source);

  m.name = source;
  for (const char* field : {"_name_or_path", "model_type"}) {
    const auto it = config.find(field);
    if (it != config.end() && it->is_string() && !it->get<std::string>().empty()) {
      m.name = it->get<std::string>() + " (" + source + ")";
      break;
    }
  }
  validate_model_shape(m, source, ErrorCode::io_error);  // what no single field shows: heads that do not divide
  return m;
}

[[nodiscard]] inline ModelShape read_hf_config(const std::filesystem::path& path) {
  std::error_code status;
  require(std::filesystem::is_regular_file(path, status), ErrorCode::io_error,
          "config.json " + path.string() + ": no such file");
  std::ifstream file(path, std::ios::binary);
  require(file.good(), ErrorCode::io_error, "config.json " + path.string() + ": cannot be opened");
  std::ostringstream text;
  text << file.rdbuf();
  require(!file.bad(), ErrorCode::io_error, "config.json " + path.string() + ": read failed");
  return parse_hf_config(text.str(), "config.json " + path.string());
}

}  // namespace kvq
