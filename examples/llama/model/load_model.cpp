// Loading Llama weights from GGUF and from Hugging Face safetensors.
//
// RoPE pair layout. Hugging Face Llama checkpoints rotate channel i of a head with channel i + d/2
// (rotate_half, RopeStyle::half_split). llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute)
// reorders the rows of attn_q and attn_k inside each head so that llama.cpp can rotate adjacent pairs instead:
// GGUF row 2i + j of a head is Hugging Face row i + j * d/2 (j = 0, 1). The rows are left as the file has them and
// the rotation follows the file: RopeStyle::interleaved for GGUF, half_split for Hugging Face. Both give the same
// attention: q.k is a sum over channels, unchanged when q and k have their channels permuted the same way, and
// values and the output projection are not permuted. (The test "GGUF and safetensors give the same logits"
// writes one random model both ways, GGUF rows permuted as the converter does, and compares.)
//
// Llama-3.1 frequency scaling. config.json gives rope_scaling {rope_type: "llama3", factor, low_freq_factor,
// high_freq_factor, original_max_position_embeddings}, which is kvq::RopeConfig's llama3 scaling. The converter
// does not write those numbers to GGUF; it stores the per-frequency divisors as a tensor, rope_freqs.weight. kvq's
// RoPE (which the cache also uses for keys) takes the parameters, not a table, so the divisors are matched against
// Llama-3.1's parameters (low 1, high 4, original context 8192, factor = the largest divisor) and a file whose
// divisors are something else is refused.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>

#include "model/gguf_file.hpp"
#include "model/json_file.hpp"
#include "model/llama_model.hpp"
#include "model/safetensors_file.hpp"
#include "tokenizer/tokenizer_sources.hpp"

namespace kvq::llama {
namespace {

using nlohmann::json;

// How to fetch one tensor as float: `shape` is {rows, columns} for matrices ({n} for vectors), rows slowest.
using TensorReader = std::function<std::vector<float>(const std::string& name, const std::vector<std::int64_t>& shape)>;

struct TensorNames {
  std::function<std::string(int layer, const char* part)> layer;
  std::string embedding, output_norm, output;
};

Matrix read_matrix(const TensorReader& read, const std::string& name, std::int64_t rows, std::int64_t columns) {
  return Matrix{rows, columns, read(name, {rows, columns})};
}

LlamaWeights read_weights(const LlamaConfig& c, const TensorReader& read, const TensorNames& names, bool has_output) {
  LlamaWeights w;
  const std::int64_t q_width = std::int64_t{c.q_heads} * c.head_dim, kv_width = std::int64_t{c.kv_heads} * c.head_dim;
  w.embedding = read_matrix(read, names.embedding, c.vocabulary, c.hidden);
  // Layer by layer, so that a corrupted layer count fails at the first missing tensor rather than allocating first.
  for (int layer = 0; layer < c.layers; ++layer) {
    LayerWeights& l = w.layers.emplace_back();
    l.attention_norm = read(names.layer(layer, "attention_norm"), {c.hidden});
    l.query = read_matrix(read, names.layer(layer, "query"), q_width, c.hidden);
    l.key = read_matrix(read, names.layer(layer, "key"), kv_width, c.hidden);
    l.value = read_matrix(read, names.layer(layer, "value"), kv_width, c.hidden);
    l.output = read_matrix(read, names.layer(layer, "output"), c.hidden, q_width);
    l.ffn_norm = read(names.layer(layer, "ffn_norm"), {c.hidden});
    l.gate = read_matrix(read, names.layer(layer, "gate"), c.ffn, c.hidden);
    l.up = read_matrix(read, names.layer(layer, "up"), c.ffn, c.hidden);
    l.down = read_matrix(read, names.layer(layer, "down"), c.hidden, c.ffn);
  }
  w.output_norm = read(names.output_norm, {c.hidden});
  if (has_output) w.output = read_matrix(read, names.output, c.vocabulary, c.hidden);
  return w;
}

int to_int(std::int64_t value, const std::string& file, const char* key) {
  require(value > 0 && value <= (std::int64_t{1} << 30), ErrorCode::io_error,
          fmt::format("{}: {} = {} is not a usable size", file, key, value));
  return static_cast<int>(value);
}

// Llama-3.1's scaling as the per-frequency divisors the GGUF converter writes (its own float32 arithmetic).
std::vector<float> llama3_divisors(const RopeConfig& rope, int head_dim) {
  std::vector<float> divisors;
  const float pi = 3.14159265358979f;
  for (int i = 0; i < head_dim / 2; ++i) {
    const float frequency = 1.0f / std::pow(rope.theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
    const float wavelength = 2.0f * pi / frequency;
    const float low_wavelength = static_cast<float>(rope.original_max_position) / rope.low_freq_factor;
    const float high_wavelength = static_cast<float>(rope.original_max_position) / rope.high_freq_factor;
    if (wavelength < high_wavelength) {
      divisors.push_back(1.0f);
    } else if (wavelength > low_wavelength) {
      divisors.push_back(rope.factor);
    } else {
      const float smooth = (static_cast<float>(rope.original_max_position) / wavelength - rope.low_freq_factor) /
                           (rope.high_freq_factor - rope.low_freq_factor);
      divisors.push_back(1.0f / ((1.0f - smooth) / rope.factor + smooth));
    }
  }
  return divisors;
}

void read_gguf_rope_scaling(const GgufFile& file, LlamaConfig& c) {
  if (const auto type = file.optional_string("llama.rope.scaling.type"); type && *type != "none") {
    throw Error(ErrorCode::io_error, fmt::format("{}: llama.rope.scaling.type \"{}\" is not supported (kvq's RoPE has "
                                                 "no scaling or Llama-3.1's llama3 scaling)",
                                                 file.path(), *type));
  }
  if (file.find_tensor("rope_freqs.weight") == nullptr) return;
  const std::vector<float> divisors = file.read_float("rope_freqs.weight", {c.head_dim / 2});
  RopeConfig scaled = c.rope;
  scaled.scaling = RopeScaling::llama3;
  scaled.factor = *std::max_element(divisors.begin(), divisors.end());
  scaled.low_freq_factor = 1.0f;
  scaled.high_freq_factor = 4.0f;
  scaled.original_max_position = 8192;
  const std::vector<float> expected = llama3_divisors(scaled, c.head_dim);
  for (std::size_t i = 0; i < divisors.size(); ++i)
    require(
        std::fabs(divisors[i] - expected[i]) <= 1e-4f * expected[i], ErrorCode::io_error,
        fmt::format("{}: rope_freqs.weight[{}] = {} is not Llama-3.1's llama3 scaling with factor {} (expected {}); "
                    "kvq's RoPE cannot express it",
                    file.path(), i, divisors[i], scaled.factor, expected[i]));
  c.rope = scaled;
}

}  // namespace

void validate_config(const LlamaConfig& c, const std::string& source) {
  auto positive = [&](int value, const char* name) {
    require(value > 0, ErrorCode::io_error, fmt::format("{}: {} must be positive, got {}", source, name, value));
  };
  positive(c.layers, "the layer count");
  positive(c.hidden, "the embedding width");
  positive(c.ffn, "the MLP width");
  positive(c.q_heads, "the query head count");
  positive(c.kv_heads, "the KV head count");
  positive(c.head_dim, "head_dim");
  positive(c.vocabulary, "the vocabulary size");
  require(c.q_heads % c.kv_heads == 0, ErrorCode::io_error,
          fmt::format("{}: {} query heads are not a multiple of {} KV heads", source, c.q_heads, c.kv_heads));
  require(c.head_dim % 2 == 0, ErrorCode::io_error, fmt::format("{}: head_dim {} is odd", source, c.head_dim));
  require(std::isfinite(c.rms_epsilon) && c.rms_epsilon > 0, ErrorCode::io_error,
          fmt::format("{}: RMSNorm epsilon {} is not positive", source, c.rms_epsilon));
  try {
    detail::validate_rope_config(c.rope);
  } catch (const Error& e) {
    throw Error(ErrorCode::io_error, source + ": " + e.what());
  }
}

namespace {

// The hyper-parameters of an open GGUF file, from its llama.* metadata (and the tokenizer's token count), checked.
LlamaConfig gguf_config(const GgufFile& file, TokenizerSpec* tokenizer_out) {
  const std::string& name = file.path();
  const std::string architecture = file.string("general.architecture");
  require(architecture == "llama", ErrorCode::io_error,
          fmt::format("{}: general.architecture is \"{}\"; this example runs \"llama\" models", name, architecture));
  LlamaConfig c;
  c.layers = to_int(file.integer("llama.block_count"), name, "llama.block_count");
  c.hidden = to_int(file.integer("llama.embedding_length"), name, "llama.embedding_length");
  c.ffn = to_int(file.integer("llama.feed_forward_length"), name, "llama.feed_forward_length");
  c.q_heads = to_int(file.integer("llama.attention.head_count"), name, "llama.attention.head_count");
  c.kv_heads = to_int(file.optional_integer("llama.attention.head_count_kv").value_or(c.q_heads), name,
                      "llama.attention.head_count_kv");
  c.head_dim = to_int(file.optional_integer("llama.attention.key_length").value_or(c.hidden / c.q_heads), name,
                      "llama.attention.key_length");
  if (const auto value_length = file.optional_integer("llama.attention.value_length"))
    require(*value_length == c.head_dim, ErrorCode::io_error,
            fmt::format("{}: llama.attention.value_length {} differs from the key length {}", name, *value_length,
                        c.head_dim));
  if (const auto rope_dims = file.optional_integer("llama.rope.dimension_count"))
    require(*rope_dims == c.head_dim, ErrorCode::io_error,
            fmt::format("{}: llama.rope.dimension_count {} is not head_dim {}; partial rotary embeddings are not "
                        "supported",
                        name, *rope_dims, c.head_dim));
  c.rms_epsilon = static_cast<float>(file.number("llama.attention.layer_norm_rms_epsilon"));
  c.context_length = file.optional_integer("llama.context_length").value_or(0);
  c.rope.theta = static_cast<float>(file.optional_number("llama.rope.freq_base").value_or(10000.0));
  c.rope.style = RopeStyle::interleaved;  // rows permuted by the converter; see the top of this file
  c.rope.scaling = RopeScaling::none;

  TokenizerSpec tokenizer = tokenizer_from_gguf(file);
  c.vocabulary =
      to_int(file.optional_integer("llama.vocab_size").value_or(static_cast<std::int64_t>(tokenizer.tokens.size())),
             name, "llama.vocab_size");
  require(tokenizer.tokens.size() <= static_cast<std::size_t>(c.vocabulary), ErrorCode::io_error,
          fmt::format("{}: the tokenizer has {} tokens for a vocabulary of {}", name, tokenizer.tokens.size(),
                      c.vocabulary));
  c.tied_embeddings = file.find_tensor("output.weight") == nullptr;
  validate_config(c, name);
  read_gguf_rope_scaling(file, c);
  if (tokenizer_out != nullptr) *tokenizer_out = std::move(tokenizer);
  return c;
}

}  // namespace

LlamaConfig read_gguf_config(const std::filesystem::path& path) {
  const GgufFile file(path.string());
  return gguf_config(file, nullptr);
}

LlamaModel load_gguf_model(const std::filesystem::path& path) {
  const GgufFile file(path.string());
  const std::string& name = file.path();
  TokenizerSpec tokenizer;
  const LlamaConfig c = gguf_config(file, &tokenizer);

  static const std::map<std::string, std::string> gguf_parts = {{"attention_norm", "attn_norm"},
                                                                {"query", "attn_q"},
                                                                {"key", "attn_k"},
                                                                {"value", "attn_v"},
                                                                {"output", "attn_output"},
                                                                {"ffn_norm", "ffn_norm"},
                                                                {"gate", "ffn_gate"},
                                                                {"up", "ffn_up"},
                                                                {"down", "ffn_down"}};
  TensorNames names{
      [](int layer, const char* part) { return fmt::format("blk.{}.{}.weight", layer, gguf_parts.at(part)); },
      "token_embd.weight", "output_norm.weight", "output.weight"};
  // GGUF dims run fastest first: a [rows][columns] matrix is dims {columns, rows}.
  const TensorReader read = [&](const std::string& tensor, const std::vector<std::int64_t>& shape) {
    return file.read_float(tensor, std::vector<std::int64_t>(shape.rbegin(), shape.rend()));
  };
  LlamaModel model{c, read_weights(c, read, names, !c.tied_embeddings), Tokenizer(std::move(tokenizer)), name, ""};
  std::map<std::string, int> type_counts;
  for (const GgufTensorInfo& info : file.tensors()) ++type_counts[ggml_type_name(info.type)];
  std::string types;
  for (const auto& [type, count] : type_counts)
    types += fmt::format("{}{} x{}", types.empty() ? "" : ", ", type, count);
  model.description = fmt::format("GGUF v{}, tensors: {}", file.version(), types);
  return model;
}

namespace {

LlamaModel read_hugging_face_model(const std::filesystem::path& directory) {
  const std::filesystem::path config_path = directory / "config.json";
  const json config = read_json_file(config_path);
  require(config.is_object(), ErrorCode::io_error, config_path.string() + ": not a JSON object");
  const auto model_type = json_value_or<std::string>(config, "model_type", "", config_path);
  require(
      model_type == "llama", ErrorCode::io_error,
      fmt::format("{}: model_type is \"{}\"; this example runs \"llama\" models", config_path.string(), model_type));
  require(!json_value_or<bool>(config, "attention_bias", false, config_path) &&
              !json_value_or<bool>(config, "mlp_bias", false, config_path),
          ErrorCode::io_error, config_path.string() + ": attention or MLP biases are not supported (Llama-3 has none)");
  LlamaConfig c;
  const std::string name = config_path.string();
  auto size = [&](const char* key) { return to_int(json_value<std::int64_t>(config, key, config_path), name, key); };
  c.layers = size("num_hidden_layers");
  c.hidden = size("hidden_size");
  c.ffn = size("intermediate_size");
  c.q_heads = size("num_attention_heads");
  c.kv_heads = to_int(json_value_or<std::int64_t>(config, "num_key_value_heads", c.q_heads, config_path), name,
                      "num_key_value_heads");
  c.head_dim =
      to_int(json_value_or<std::int64_t>(config, "head_dim", c.hidden / c.q_heads, config_path), name, "head_dim");
  c.vocabulary = size("vocab_size");
  c.rms_epsilon = static_cast<float>(json_value_or<double>(config, "rms_norm_eps", 1e-6, config_path));
  c.context_length = json_value_or<std::int64_t>(config, "max_position_embeddings", 0, config_path);
  c.tied_embeddings = json_value_or<bool>(config, "tie_word_embeddings", false, config_path);
  c.rope.theta = static_cast<float>(json_value_or<double>(config, "rope_theta", 10000.0, config_path));
  c.rope.style = RopeStyle::half_split;
  c.rope.scaling = RopeScaling::none;
  if (config.contains("rope_scaling") && !config["rope_scaling"].is_null()) {
    const json& scaling = config["rope_scaling"];
    const auto type = json_value_or<std::string>(
        scaling, "rope_type", json_value_or<std::string>(scaling, "type", "", config_path), config_path);
    require(type == "llama3" || type == "default", ErrorCode::io_error,
            fmt::format("{}: rope_scaling type \"{}\" is not supported (llama3 is)", name, type));
    if (type == "llama3") {
      c.rope.scaling = RopeScaling::llama3;
      c.rope.factor = static_cast<float>(json_value<double>(scaling, "factor", config_path));
      c.rope.low_freq_factor = static_cast<float>(json_value<double>(scaling, "low_freq_factor", config_path));
      c.rope.high_freq_factor = static_cast<float>(json_value<double>(scaling, "high_freq_factor", config_path));
      c.rope.original_max_position =
          to_int(json_value<std::int64_t>(scaling, "original_max_position_embeddings", config_path), name,
                 "rope_scaling.original_max_position_embeddings");
    }
  }
  validate_config(c, name);

  TokenizerSpec tokenizer = tokenizer_from_json(directory / "tokenizer.json", directory / "tokenizer_config.json");
  // config.json's eos_token_id (one id, or a list for Llama-3.1 instruct) are all reasons to stop.
  if (config.contains("eos_token_id")) {
    const json& eos = config["eos_token_id"];
    for (const json& id : eos.is_array() ? eos : json::array({eos}))
      if (id.is_number_integer()) {
        const auto value = id.get<TokenId>();
        if (!tokenizer.eos_id) tokenizer.eos_id = value;
        tokenizer.end_of_turn_ids.push_back(value);
      }
  }
  if (config.contains("bos_token_id") && config["bos_token_id"].is_number_integer() && !tokenizer.bos_id)
    tokenizer.bos_id = config["bos_token_id"].get<TokenId>();
  require(static_cast<std::size_t>(c.vocabulary) >= tokenizer.tokens.size(), ErrorCode::io_error,
          fmt::format("{}: vocab_size {} is smaller than the tokenizer's {} tokens", name, c.vocabulary,
                      tokenizer.tokens.size()));

  // The shards: one model.safetensors, or the files an index maps tensor names to.
  std::map<std::string, std::unique_ptr<SafetensorsFile>> shards;
  std::map<std::string, std::string> shard_of;
  const std::filesystem::path index_path = directory / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path)) {
    const json index = read_json_file(index_path);
    require(index.contains("weight_map") && index["weight_map"].is_object(), ErrorCode::io_error,
            index_path.string() + ": missing key weight_map");
    for (const auto& [tensor, shard] : index["weight_map"].items()) {
      require(shard.is_string(), ErrorCode::io_error,
              index_path.string() + ": weight_map[\"" + tensor + "\"] is not a file name");
      const auto file = shard.get<std::string>();
      require(file.find('/') == std::string::npos && file.find("..") == std::string::npos, ErrorCode::io_error,
              index_path.string() + ": shard \"" + file + "\" is not a file in the checkpoint directory");
      shard_of[tensor] = file;
    }
  } else {
    require(std::filesystem::exists(directory / "model.safetensors"), ErrorCode::io_error,
            directory.string() + ": no model.safetensors or model.safetensors.index.json");
  }
  auto shard_for = [&](const std::string& tensor) -> const SafetensorsFile& {
    std::string file = "model.safetensors";
    if (!shard_of.empty()) {
      const auto it = shard_of.find(tensor);
      require(it != shard_of.end(), ErrorCode::io_error,
              fmt::format("{}: missing tensor {}", index_path.string(), tensor));
      file = it->second;
    }
    auto& shard = shards[file];
    if (!shard) shard = std::make_unique<SafetensorsFile>((directory / file).string());
    return *shard;
  };
  static const std::map<std::string, std::string> hf_parts = {{"attention_norm", "input_layernorm"},
                                                              {"query", "self_attn.q_proj"},
                                                              {"key", "self_attn.k_proj"},
                                                              {"value", "self_attn.v_proj"},
                                                              {"output", "self_attn.o_proj"},
                                                              {"ffn_norm", "post_attention_layernorm"},
                                                              {"gate", "mlp.gate_proj"},
                                                              {"up", "mlp.up_proj"},
                                                              {"down", "mlp.down_proj"}};
  TensorNames names{
      [](int layer, const char* part) { return fmt::format("model.layers.{}.{}.weight", layer, hf_parts.at(part)); },
      "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  const TensorReader read = [&](const std::string& tensor, const std::vector<std::int64_t>& shape) {
    return shard_for(tensor).read_float(tensor, shape);
  };
  // A checkpoint that says nothing about tying but has no lm_head is tied (some exports drop the duplicate).
  const bool has_output =
      !c.tied_embeddings && (shard_of.empty() ? shard_for("lm_head.weight").find("lm_head.weight") != nullptr
                                              : shard_of.contains("lm_head.weight"));
  c.tied_embeddings = !has_output;
  LlamaModel model{c, read_weights(c, read, names, has_output), Tokenizer(std::move(tokenizer)), directory.string(),
                   ""};
  model.description = fmt::format("Hugging Face safetensors, {} file{}", shards.size(), shards.size() == 1 ? "" : "s");
  return model;
}

}  // namespace

LlamaModel load_hugging_face_model(const std::filesystem::path& directory) {
  try {
    return read_hugging_face_model(directory);
  } catch (const nlohmann::json::exception& e) {
    // A JSON value of an unexpected type that the checks above do not look at: still a malformed checkpoint.
    throw Error(ErrorCode::io_error, directory.string() + ": unexpected content in a JSON file: " + e.what());
  }
}

LlamaModel load_model(const std::filesystem::path& path) {
  require(std::filesystem::exists(path), ErrorCode::io_error, path.string() + ": no such file or directory");
  if (std::filesystem::is_directory(path)) return load_hugging_face_model(path);
  return load_gguf_model(path);
}

}  // namespace kvq::llama
