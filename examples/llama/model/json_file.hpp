// Reading a JSON file (config.json, tokenizer.json, a safetensors index) into nlohmann::json, with errors that
// name the file; and typed lookups whose errors name the file and the key.
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "kvq/core/error.hpp"

namespace kvq::llama {

inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream stream(path, std::ios::binary);
  require(stream.good(), ErrorCode::io_error, path.string() + ": cannot open");
  std::ostringstream text;
  text << stream.rdbuf();
  try {
    return nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorCode::io_error, path.string() + ": not valid JSON: " + e.what());
  }
}

// object[key] converted to T; missing or of another type: kvq::Error(io_error) naming file and key.
template <class T>
T json_value(const nlohmann::json& object, const std::string& key, const std::filesystem::path& file) {
  require(object.is_object() && object.contains(key), ErrorCode::io_error, file.string() + ": missing key " + key);
  try {
    return object.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorCode::io_error,
                file.string() + ": key " + key + " has the wrong type (" + object.at(key).type_name() + ")");
  }
}

template <class T>
T json_value_or(const nlohmann::json& object, const std::string& key, T fallback, const std::filesystem::path& file) {
  if (!object.is_object() || !object.contains(key) || object.at(key).is_null()) return fallback;
  return json_value<T>(object, key, file);
}

}  // namespace kvq::llama
