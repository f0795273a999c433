#include "tokenizer/tokenizer_sources.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "model/gguf_file.hpp"
#include "model/json_file.hpp"

namespace kvq::llama {
namespace {

using nlohmann::json;

// Token types of tokenizer.ggml.token_type (llama.cpp's llama_token_type).
constexpr std::int64_t token_type_control = 3;
constexpr std::int64_t token_type_user_defined = 4;

// Tokens that end an assistant turn in the chat formats this example knows; they stop generation when present.
constexpr const char* end_of_turn_names[] = {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"};

void add_end_of_turn_tokens(TokenizerSpec& spec) {
  for (const char* name : end_of_turn_names)
    for (TokenId id : spec.special_ids)
      if (spec.tokens[static_cast<std::size_t>(id)] == name &&
          std::find(spec.end_of_turn_ids.begin(), spec.end_of_turn_ids.end(), id) == spec.end_of_turn_ids.end())
        spec.end_of_turn_ids.push_back(id);
}

std::pair<std::string, std::string> split_merge(const std::string& merge, const std::string& file, std::size_t rank) {
  const std::size_t space = merge.find(' ');
  if (space == std::string::npos || space == 0 || space + 1 >= merge.size())  // not require(): runs per merge
    throw Error(ErrorCode::io_error,
                fmt::format("{}: merge {} (\"{}\") is not two tokens separated by a space", file, rank, merge));
  return {merge.substr(0, space), merge.substr(space + 1)};
}

// The pre_tokenizer tree of a tokenizer.json flattened into patterns; sets byte_level when a ByteLevel step is seen.
void read_pre_tokenizer(const json& node, const std::filesystem::path& file, TokenizerSpec& spec, bool& byte_level) {
  if (node.is_null()) return;
  const auto type = json_value<std::string>(node, "type", file);
  if (type == "Sequence") {
    const auto& steps = node.contains("pretokenizers") ? node["pretokenizers"] : json::array();
    for (const json& step : steps) read_pre_tokenizer(step, file, spec, byte_level);
  } else if (type == "Split") {
    const json& pattern = node.contains("pattern") ? node["pattern"] : json();
    const auto behavior = json_value_or<std::string>(node, "behavior", "Isolated", file);
    require(behavior == "Isolated" && !json_value_or<bool>(node, "invert", false, file), ErrorCode::io_error,
            file.string() + ": Split pre-tokenizer with behavior " + behavior + " (or invert) is not supported");
    if (pattern.contains("Regex")) {
      spec.pre_tokenizer_patterns.push_back(json_value<std::string>(pattern, "Regex", file));
    } else if (pattern.contains("String")) {
      spec.pre_tokenizer_patterns.push_back("\\Q" + json_value<std::string>(pattern, "String", file) + "\\E");
    } else {
      throw Error(ErrorCode::io_error, file.string() + ": Split pre-tokenizer without a Regex or String pattern");
    }
  } else if (type == "Digits") {
    spec.pre_tokenizer_patterns.emplace_back(json_value_or<bool>(node, "individual_digits", false, file) ? R"(\p{N})"
                                                                                                         : R"(\p{N}+)");
  } else if (type == "ByteLevel") {
    byte_level = true;
    if (json_value_or<bool>(node, "add_prefix_space", false, file)) spec.add_prefix_space = true;
    if (json_value_or<bool>(node, "use_regex", true, file)) spec.pre_tokenizer_patterns.emplace_back(gpt2_pattern);
  } else {
    throw Error(ErrorCode::io_error, file.string() + ": pre-tokenizer type " + type +
                                         " is not supported (Sequence, Split, Digits, ByteLevel are)");
  }
}

// The first special token of a TemplateProcessing "single" template, looked up in `post_processor` (possibly
// inside a Sequence): the bos the post-processor adds.
std::optional<std::string> template_bos(const json& node) {
  if (!node.is_object() || !node.contains("type")) return std::nullopt;
  if (node["type"] == "Sequence" && node.contains("processors")) {
    for (const json& child : node["processors"])
      if (auto bos = template_bos(child)) return bos;
    return std::nullopt;
  }
  if (node["type"] != "TemplateProcessing" || !node.contains("single") || !node["single"].is_array() ||
      node["single"].empty())
    return std::nullopt;
  const json& first = node["single"][0];
  if (first.contains("SpecialToken") && first["SpecialToken"].contains("id") && first["SpecialToken"]["id"].is_string())
    return first["SpecialToken"]["id"].get<std::string>();
  return std::nullopt;
}

// "bos_token": "<s>" or {"content": "<s>", ...} in tokenizer_config.json.
std::optional<std::string> config_token(const json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return std::nullopt;
  const json& value = config[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  return std::nullopt;
}

std::optional<TokenId> id_of(const TokenizerSpec& spec, const std::string& text) {
  for (std::size_t id = 0; id < spec.tokens.size(); ++id)
    if (spec.tokens[id] == text) return static_cast<TokenId>(id);
  return std::nullopt;
}

}  // namespace

TokenizerSpec tokenizer_from_gguf(const GgufFile& file) {
  TokenizerSpec spec;
  spec.source = file.path();
  const std::string model = file.string("tokenizer.ggml.model");
  require(
      model == "gpt2", ErrorCode::io_error,
      fmt::format("{}: tokenizer.ggml.model is \"{}\"; only \"gpt2\" (byte-level BPE, as Llama-3 uses) is supported",
                  file.path(), model));
  spec.tokens = file.string_array("tokenizer.ggml.tokens");
  const auto merges = file.string_array("tokenizer.ggml.merges");
  spec.merges.reserve(merges.size());
  for (std::size_t rank = 0; rank < merges.size(); ++rank)
    spec.merges.push_back(split_merge(merges[rank], file.path(), rank));
  if (file.find("tokenizer.ggml.token_type") != nullptr) {
    const auto types = file.integer_array("tokenizer.ggml.token_type");
    require(types.size() == spec.tokens.size(), ErrorCode::io_error,
            fmt::format("{}: tokenizer.ggml.token_type has {} entries for {} tokens", file.path(), types.size(),
                        spec.tokens.size()));
    for (std::size_t id = 0; id < types.size(); ++id)
      if (types[id] == token_type_control || types[id] == token_type_user_defined)
        spec.special_ids.push_back(static_cast<TokenId>(id));
  }
  const std::string pre = file.optional_string("tokenizer.ggml.pre").value_or("default");
  if (pre == "llama-bpe" || pre == "llama3") {
    spec.pre_tokenizer_patterns = {std::string(llama3_pattern)};
    spec.ignore_merges = true;
  } else if (pre == "smollm") {
    spec.pre_tokenizer_patterns = {std::string(digits_pattern), std::string(gpt2_pattern)};
  } else if (pre == "gpt2" || pre == "gpt-2" || pre == "default") {
    spec.pre_tokenizer_patterns = {std::string(gpt2_pattern)};
  } else {
    throw Error(ErrorCode::io_error, fmt::format("{}: tokenizer.ggml.pre \"{}\" is not supported (llama-bpe, llama3, "
                                                 "smollm, gpt2, default are)",
                                                 file.path(), pre));
  }
  spec.add_prefix_space = file.optional_boolean("tokenizer.ggml.add_space_prefix").value_or(false);
  auto id = [&](const char* key) -> std::optional<TokenId> {
    if (const auto value = file.optional_integer(key)) {
      require(*value >= 0 && *value <= std::numeric_limits<TokenId>::max(), ErrorCode::io_error,
              fmt::format("{}: {} = {} is not a token id", file.path(), key, *value));
      return static_cast<TokenId>(*value);
    }
    return std::nullopt;
  };
  spec.bos_id = id("tokenizer.ggml.bos_token_id");
  spec.eos_id = id("tokenizer.ggml.eos_token_id");
  if (const auto eot = id("tokenizer.ggml.eot_token_id")) spec.end_of_turn_ids.push_back(*eot);
  // Llama-3 always starts with <|begin_of_text|>; files converted from it say so, older ones may not.
  spec.add_bos = file.optional_boolean("tokenizer.ggml.add_bos_token").value_or(spec.ignore_merges) && spec.bos_id;
  spec.chat_template = file.optional_string("tokenizer.chat_template").value_or("");
  add_end_of_turn_tokens(spec);
  return spec;
}

namespace {

TokenizerSpec read_tokenizer_json(const std::filesystem::path& tokenizer_json,
                                  const std::optional<std::filesystem::path>& tokenizer_config) {
  const std::filesystem::path& file = tokenizer_json;
  const json root = read_json_file(file);
  require(root.is_object(), ErrorCode::io_error, file.string() + ": not a JSON object");
  TokenizerSpec spec;
  spec.source = file.string();
  const json& model = root.contains("model") ? root["model"] : json();
  const auto model_type = json_value_or<std::string>(model, "type", "BPE", file);
  require(model_type == "BPE", ErrorCode::io_error,
          file.string() + ": model type " + model_type + " is not supported (BPE is)");
  require(!json_value_or<bool>(model, "byte_fallback", false, file), ErrorCode::io_error,
          file.string() + ": BPE with byte_fallback (SentencePiece style) is not supported");
  require(root.value("normalizer", json()).is_null(), ErrorCode::io_error,
          file.string() + ": tokenizers with a normalizer are not supported (Llama-3 and SmolLM have none)");
  spec.ignore_merges = json_value_or<bool>(model, "ignore_merges", false, file);

  const json& vocab = model.contains("vocab") ? model["vocab"] : json();
  require(vocab.is_object() && !vocab.empty(), ErrorCode::io_error, file.string() + ": missing key model.vocab");
  // Ids may leave gaps; 2^24 keeps a corrupted id from asking for gigabytes.
  constexpr std::int64_t max_id = std::int64_t{1} << 24;
  auto place = [&](std::int64_t id, const std::string& text) {
    require(id >= 0 && id < max_id, ErrorCode::io_error,
            fmt::format("{}: token \"{}\" has id {}", file.string(), text, id));
    if (spec.tokens.size() <= static_cast<std::size_t>(id)) spec.tokens.resize(static_cast<std::size_t>(id) + 1);
    spec.tokens[static_cast<std::size_t>(id)] = text;
  };
  for (const auto& [text, id] : vocab.items()) {
    require(id.is_number_integer(), ErrorCode::io_error,
            file.string() + ": model.vocab[\"" + text + "\"] is not an integer");
    place(id.get<std::int64_t>(), text);
  }
  const json& merges = model.contains("merges") ? model["merges"] : json::array();
  require(merges.is_array(), ErrorCode::io_error, file.string() + ": model.merges is not an array");
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const json& merge = merges[rank];
    if (merge.is_string()) {
      spec.merges.push_back(split_merge(merge.get<std::string>(), file.string(), rank));
    } else {
      // tokenizers >= 0.20 writes merges as [left, right] pairs.
      require(merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string(),
              ErrorCode::io_error,
              fmt::format("{}: merge {} is neither \"left right\" nor [left, right]", file.string(), rank));
      spec.merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    }
  }
  if (root.contains("added_tokens")) {
    for (const json& added : root["added_tokens"]) {
      const auto id = json_value<std::int64_t>(added, "id", file);
      const auto content = json_value<std::string>(added, "content", file);
      require(!content.empty(), ErrorCode::io_error, fmt::format("{}: added token {} is empty", file.string(), id));
      place(id, content);
      spec.special_ids.push_back(static_cast<TokenId>(id));
    }
  }

  bool byte_level = false;
  read_pre_tokenizer(root.value("pre_tokenizer", json()), file, spec, byte_level);
  const json decoder = root.value("decoder", json());
  if (decoder.is_object() && decoder.value("type", "") == "ByteLevel") byte_level = true;
  require(byte_level, ErrorCode::io_error, file.string() + ": not a byte-level BPE tokenizer (no ByteLevel step)");

  json config;
  if (tokenizer_config && std::filesystem::exists(*tokenizer_config)) config = read_json_file(*tokenizer_config);
  const auto bos_text = config_token(config, "bos_token");
  const auto eos_text = config_token(config, "eos_token");
  const auto template_bos_text = template_bos(root.value("post_processor", json()));
  if (template_bos_text)
    spec.bos_id = id_of(spec, *template_bos_text);
  else if (bos_text)
    spec.bos_id = id_of(spec, *bos_text);
  if (eos_text) spec.eos_id = id_of(spec, *eos_text);
  spec.add_bos = template_bos_text.has_value() && spec.bos_id.has_value();
  if (config.is_object() && config.contains("add_bos_token") && config["add_bos_token"].is_boolean())
    spec.add_bos = config["add_bos_token"].get<bool>() && spec.bos_id.has_value();
  if (config.is_object() && config.contains("chat_template")) {
    const json& chat = config["chat_template"];
    if (chat.is_string()) {
      spec.chat_template = chat.get<std::string>();
    } else if (chat.is_array()) {  // [{"name": "default", "template": "..."}, ...]
      for (const json& entry : chat)
        if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template"))
          spec.chat_template = entry["template"].get<std::string>();
    }
  }
  add_end_of_turn_tokens(spec);
  return spec;
}

}  // namespace

TokenizerSpec tokenizer_from_json(const std::filesystem::path& tokenizer_json,
                                  const std::optional<std::filesystem::path>& tokenizer_config) {
  try {
    return read_tokenizer_json(tokenizer_json, tokenizer_config);
  } catch (const nlohmann::json::exception& e) {
    // A value of an unexpected JSON type somewhere the checks above do not look: still the file's fault.
    throw Error(ErrorCode::io_error, tokenizer_json.string() + ": unexpected content: " + e.what());
  }
}

}  // namespace kvq::llama
