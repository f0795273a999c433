#include "tiny_model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>

#include "kvq/core/float16.hpp"

namespace kvq::llama::test {

TempDir::TempDir() {
  std::random_device device;
  for (int attempt = 0; attempt < 100; ++attempt) {
    path_ = std::filesystem::temp_directory_path() / ("kvq_llama_test_" + std::to_string(device()));
    if (std::filesystem::create_directory(path_)) return;
  }
  throw std::runtime_error("cannot create a temporary directory");
}
TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

void write_file(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream stream(path, std::ios::binary | std::ios::trunc);
  stream.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!stream) throw std::runtime_error("cannot write " + path.string());
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream stream(path, std::ios::binary);
  std::ostringstream text;
  text << stream.rdbuf();
  return text.str();
}

// --- GGUF ---------------------------------------------------------------------

std::string GgufWriter::encode_string(const std::string& text) { return encode<std::uint64_t>(text.size()) + text; }

void GgufWriter::add_raw(const std::string& key, std::uint32_t type, const std::string& encoded) {
  metadata_.push_back(encode_string(key) + encode(type) + encoded);
}
void GgufWriter::add_u32(const std::string& key, std::uint32_t value) { add_raw(key, 4, encode(value)); }
void GgufWriter::add_i32(const std::string& key, std::int32_t value) { add_raw(key, 5, encode(value)); }
void GgufWriter::add_f32(const std::string& key, float value) { add_raw(key, 6, encode(value)); }
void GgufWriter::add_bool(const std::string& key, bool value) { add_raw(key, 7, encode<std::uint8_t>(value ? 1 : 0)); }
void GgufWriter::add_string(const std::string& key, const std::string& value) { add_raw(key, 8, encode_string(value)); }
void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& values) {
  std::string encoded = encode<std::uint32_t>(8) + encode<std::uint64_t>(values.size());
  for (const std::string& value : values) encoded += encode_string(value);
  add_raw(key, 9, encoded);
}
void GgufWriter::add_i32_array(const std::string& key, const std::vector<std::int32_t>& values) {
  std::string encoded = encode<std::uint32_t>(5) + encode<std::uint64_t>(values.size());
  for (std::int32_t value : values) encoded += encode(value);
  add_raw(key, 9, encoded);
}
void GgufWriter::add_tensor(const std::string& name, const std::vector<std::int64_t>& dims, std::uint32_t type,
                            std::string data) {
  tensors_.push_back({name, dims, type, std::move(data)});
}
void GgufWriter::set_alignment(std::uint32_t alignment) {
  alignment_ = alignment;
  add_u32("general.alignment", alignment);
}

std::size_t GgufWriter::header_bytes() const {
  std::size_t size = 4 + 4 + 8 + 8;
  for (const std::string& entry : metadata_) size += entry.size();
  for (const Tensor& t : tensors_) size += 8 + t.name.size() + 4 + 8 * t.dims.size() + 4 + 8;
  return (size + alignment_ - 1) / alignment_ * alignment_;
}

std::string GgufWriter::bytes() const {
  std::string out = encode<std::uint32_t>(0x46554747) + encode(version_) + encode<std::uint64_t>(tensors_.size()) +
                    encode<std::uint64_t>(metadata_.size());
  for (const std::string& entry : metadata_) out += entry;
  std::uint64_t offset = 0;
  std::vector<std::uint64_t> offsets;
  for (const Tensor& t : tensors_) {
    out += encode_string(t.name) + encode<std::uint32_t>(static_cast<std::uint32_t>(t.dims.size()));
    for (std::int64_t dim : t.dims) out += encode<std::uint64_t>(static_cast<std::uint64_t>(dim));
    out += encode(t.type) + encode(offset);
    offsets.push_back(offset);
    offset = (offset + t.data.size() + alignment_ - 1) / alignment_ * alignment_;
  }
  out.resize(header_bytes(), '\0');
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    out.resize(header_bytes() + offsets[i], '\0');
    out += tensors_[i].data;
  }
  return out;
}

std::string encode_f32(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4);
}
std::string encode_f16(const std::vector<float>& values) {
  std::string out;
  for (float v : values) out += GgufWriter::encode(to_f16(v).bits);
  return out;
}
std::string encode_bf16(const std::vector<float>& values) {
  std::string out;
  for (float v : values) out += GgufWriter::encode(to_bf16(v).bits);
  return out;
}

std::string encode_ggml(GgmlType type, const std::vector<float>& values) {
  switch (type) {
    case GgmlType::f32: return encode_f32(values);
    case GgmlType::f16: return encode_f16(values);
    case GgmlType::bf16: return encode_bf16(values);
    default: break;
  }
  std::string out;
  for (std::size_t b = 0; b < values.size() / 32; ++b) {
    const float* x = values.data() + b * 32;
    if (type == GgmlType::q8_0) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
      const float d = amax / 127.0f;
      out += GgufWriter::encode(to_f16(d).bits);
      for (int i = 0; i < 32; ++i)
        out += static_cast<char>(static_cast<std::int8_t>(d == 0 ? 0 : std::lround(x[i] / d)));
    } else if (type == GgmlType::q4_0) {
      float signed_max = 0;
      for (int i = 0; i < 32; ++i)
        if (std::fabs(x[i]) > std::fabs(signed_max)) signed_max = x[i];
      const float d = signed_max / -8.0f;
      out += GgufWriter::encode(to_f16(d).bits);
      auto code = [&](int i) { return d == 0 ? 8 : std::clamp(static_cast<int>(x[i] / d + 8.5f), 0, 15); };
      for (int i = 0; i < 16; ++i) out += static_cast<char>(code(i) | (code(i + 16) << 4));
    } else {  // q4_1
      const float low = *std::min_element(x, x + 32), high = *std::max_element(x, x + 32);
      const float d = (high - low) / 15.0f;
      out += GgufWriter::encode(to_f16(d).bits) + GgufWriter::encode(to_f16(low).bits);
      auto code = [&](int i) {
        return d == 0 ? 0 : std::clamp(static_cast<int>(std::lround((x[i] - low) / d)), 0, 15);
      };
      for (int i = 0; i < 16; ++i) out += static_cast<char>(code(i) | (code(i + 16) << 4));
    }
  }
  return out;
}

// --- safetensors ----------------------------------------------------------------

std::string safetensors_bytes(const std::vector<SafetensorsEntry>& entries) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const SafetensorsEntry& e : entries) {
    const std::string encoded = e.dtype == "F32"   ? encode_f32(e.values)
                                : e.dtype == "F16" ? encode_f16(e.values)
                                                   : encode_bf16(e.values);
    header[e.name] = {
        {"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {data.size(), data.size() + encoded.size()}}};
    data += encoded;
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');  // the format pads the header to 8 bytes with spaces
  return GgufWriter::encode<std::uint64_t>(text.size()) + text + data;
}

// --- the tiny model ---------------------------------------------------------------

const std::vector<float>& TinyModel::tensor(const std::string& name) const {
  for (const auto& [n, values] : tensors)
    if (n == name) return values;
  throw std::runtime_error("tiny model has no tensor " + name);
}

TinyModel make_tiny_model(std::uint32_t seed, bool tied) {
  TinyModel m;
  m.tied = tied;
  for (int byte = 0; byte < 256; ++byte) m.tokens.push_back(byte_to_unicode(static_cast<std::uint8_t>(byte)));
  const std::string space = byte_to_unicode(' ');
  m.merges = {{"h", "e"}, {space, "t"}, {space + "t", "he"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}};
  for (const auto& [left, right] : m.merges) m.tokens.push_back(left + right);
  for (const char* special : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) m.tokens.emplace_back(special);

  std::mt19937 random(seed);
  std::normal_distribution<float> normal;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, float scale, float offset) {
    std::int64_t size = 1;
    for (std::int64_t s : shape) size *= s;
    std::vector<float> values(static_cast<std::size_t>(size));
    for (float& v : values) v = offset + scale * normal(random);
    m.tensors.emplace_back(name, std::move(values));
    m.shapes.push_back(std::move(shape));
  };
  const std::int64_t q = m.q_heads * m.head_dim, kv = m.kv_heads * m.head_dim, h = m.hidden, f = m.ffn,
                     v = m.vocabulary();
  add("model.embed_tokens.weight", {v, h}, 1.0f, 0.0f);
  for (int layer = 0; layer < m.layers; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    add(p + "input_layernorm.weight", {h}, 0.1f, 1.0f);
    add(p + "self_attn.q_proj.weight", {q, h}, 0.3f, 0.0f);  // larger than 1/sqrt(h) so attention is not uniform
    add(p + "self_attn.k_proj.weight", {kv, h}, 0.3f, 0.0f);
    add(p + "self_attn.v_proj.weight", {kv, h}, 1.0f / std::sqrt(static_cast<float>(h)), 0.0f);
    add(p + "self_attn.o_proj.weight", {h, q}, 1.0f / std::sqrt(static_cast<float>(q)), 0.0f);
    add(p + "post_attention_layernorm.weight", {h}, 0.1f, 1.0f);
    add(p + "mlp.gate_proj.weight", {f, h}, 1.0f / std::sqrt(static_cast<float>(h)), 0.0f);
    add(p + "mlp.up_proj.weight", {f, h}, 1.0f / std::sqrt(static_cast<float>(h)), 0.0f);
    add(p + "mlp.down_proj.weight", {h, f}, 1.0f / std::sqrt(static_cast<float>(f)), 0.0f);
  }
  add("model.norm.weight", {h}, 0.1f, 1.0f);
  if (!tied) add("lm_head.weight", {v, h}, 1.0f / std::sqrt(static_cast<float>(h)), 0.0f);
  return m;
}

namespace {

// llama.cpp's converter order for q/k rows: GGUF row 2i + j of a head = Hugging Face row i + j * d/2.
std::vector<float> permute_rows(const std::vector<float>& values, int heads, int head_dim, std::int64_t columns) {
  std::vector<float> out(values.size());
  for (int head = 0; head < heads; ++head)
    for (int i = 0; i < head_dim / 2; ++i)
      for (int j = 0; j < 2; ++j) {
        const std::int64_t to = std::int64_t{head} * head_dim + 2 * i + j;
        const std::int64_t from = std::int64_t{head} * head_dim + i + j * head_dim / 2;
        std::copy_n(values.begin() + from * columns, columns, out.begin() + to * columns);
      }
  return out;
}

std::string gguf_name(const std::string& hf) {
  static const std::map<std::string, std::string> parts = {
      {"input_layernorm", "attn_norm"}, {"self_attn.q_proj", "attn_q"},      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},   {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},    {"mlp.up_proj", "ffn_up"},           {"mlp.down_proj", "ffn_down"}};
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string prefix = "model.layers.";
  const std::size_t dot = hf.find('.', prefix.size());
  const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
  const std::string part = hf.substr(dot + 1, hf.size() - dot - 1 - std::string(".weight").size());
  return "blk." + layer + "." + parts.at(part) + ".weight";
}

}  // namespace

GgufWriter tiny_gguf(const TinyModel& m, const GgufOptions& options) {
  GgufWriter w;
  auto u32 = [&](const std::string& key, std::uint32_t value) {
    if (key != options.skip_key) w.add_u32(key, value);
  };
  w.add_string("general.architecture", "llama");
  w.add_string("general.name", "kvq tiny test model");
  u32("llama.block_count", static_cast<std::uint32_t>(m.layers));
  u32("llama.context_length", 256);
  u32("llama.embedding_length", static_cast<std::uint32_t>(m.hidden));
  u32("llama.feed_forward_length", static_cast<std::uint32_t>(m.ffn));
  u32("llama.attention.head_count", static_cast<std::uint32_t>(m.q_heads));
  u32("llama.attention.head_count_kv", static_cast<std::uint32_t>(m.kv_heads));
  u32("llama.rope.dimension_count", static_cast<std::uint32_t>(m.head_dim));
  w.add_f32("llama.rope.freq_base", m.theta);
  if (options.skip_key != "llama.attention.layer_norm_rms_epsilon")
    w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", "gpt2");
  w.add_string_array("tokenizer.ggml.tokens", m.tokens);
  std::vector<std::string> merges;
  for (const auto& [left, right] : m.merges) merges.push_back(left + " " + right);
  w.add_string_array("tokenizer.ggml.merges", merges);
  std::vector<std::int32_t> types(m.tokens.size(), 1);
  for (std::size_t i = m.tokens.size() - 3; i < m.tokens.size(); ++i) types[i] = 3;
  w.add_i32_array("tokenizer.ggml.token_type", types);
  u32("tokenizer.ggml.bos_token_id", static_cast<std::uint32_t>(m.tokens.size() - 3));
  u32("tokenizer.ggml.eos_token_id", static_cast<std::uint32_t>(m.tokens.size() - 3));
  w.add_bool("tokenizer.ggml.add_bos_token", false);
  for (std::size_t i = 0; i < m.tensors.size(); ++i) {
    const auto& [hf, values] = m.tensors[i];
    const std::string name = gguf_name(hf);
    if (name == options.skip) continue;
    const auto& shape = m.shapes[i];
    std::vector<float> data = values;
    if (hf.find("q_proj") != std::string::npos) data = permute_rows(values, m.q_heads, m.head_dim, shape[1]);
    if (hf.find("k_proj") != std::string::npos) data = permute_rows(values, m.kv_heads, m.head_dim, shape[1]);
    std::vector<std::int64_t> dims(shape.rbegin(), shape.rend());
    // Vectors stay F32, as llama.cpp's converter keeps norms.
    GgmlType type = shape.size() == 2 ? options.matrix_type : GgmlType::f32;
    std::uint32_t type_id = static_cast<std::uint32_t>(type);
    std::string encoded = encode_ggml(type, data);
    if (name == options.override_name) {
      if (!options.override_dims.empty()) dims = options.override_dims;
      if (options.override_type != 0xFFFFFFFF) type_id = options.override_type;
    }
    w.add_tensor(name, dims, type_id, std::move(encoded));
  }
  return w;
}

void write_tiny_hugging_face(const TinyModel& m, const std::filesystem::path& directory, const std::string& dtype,
                             int shards) {
  std::filesystem::create_directories(directory);
  const int eos = m.vocabulary() - 3;
  nlohmann::json config = {{"model_type", "llama"},
                           {"architectures", {"LlamaForCausalLM"}},
                           {"hidden_size", m.hidden},
                           {"intermediate_size", m.ffn},
                           {"num_hidden_layers", m.layers},
                           {"num_attention_heads", m.q_heads},
                           {"num_key_value_heads", m.kv_heads},
                           {"vocab_size", m.vocabulary()},
                           {"rms_norm_eps", 1e-5},
                           {"rope_theta", m.theta},
                           {"rope_scaling", nullptr},
                           {"max_position_embeddings", 256},
                           {"tie_word_embeddings", m.tied},
                           {"bos_token_id", eos},
                           {"eos_token_id", eos},
                           {"torch_dtype", "float32"}};
  write_file(directory / "config.json", config.dump(2));

  nlohmann::json vocab = nlohmann::json::object();
  for (int id = 0; id < m.vocabulary() - 3; ++id) vocab[m.tokens[static_cast<std::size_t>(id)]] = id;
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& [left, right] : m.merges) merges.push_back({left, right});
  nlohmann::json added = nlohmann::json::array();
  for (int id = m.vocabulary() - 3; id < m.vocabulary(); ++id)
    added.push_back({{"id", id},
                     {"content", m.tokens[static_cast<std::size_t>(id)]},
                     {"special", true},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false}});
  nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}}};
  write_file(directory / "tokenizer.json", tokenizer.dump(2));

  std::vector<std::vector<SafetensorsEntry>> files(static_cast<std::size_t>(shards));
  nlohmann::json weight_map = nlohmann::json::object();
  auto shard_name = [&](int shard) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", shard + 1, shards);
    return std::string(name);
  };
  for (std::size_t i = 0; i < m.tensors.size(); ++i) {
    const int shard = static_cast<int>(i * static_cast<std::size_t>(shards) / m.tensors.size());
    files[static_cast<std::size_t>(shard)].push_back({m.tensors[i].first, dtype, m.shapes[i], m.tensors[i].second});
    weight_map[m.tensors[i].first] = shard_name(shard);
  }
  if (shards == 1) {
    write_file(directory / "model.safetensors", safetensors_bytes(files[0]));
    return;
  }
  for (int shard = 0; shard < shards; ++shard)
    write_file(directory / shard_name(shard), safetensors_bytes(files[static_cast<std::size_t>(shard)]));
  write_file(directory / "model.safetensors.index.json",
             nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump(2));
}

}  // namespace kvq::llama::test
