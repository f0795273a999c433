// config.json -> ModelShape: a small fixture written into a temporary folder, the defaults LlamaConfig has, and
// every malformed file named with its path and field.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "kvq/planner/hf_config.hpp"
#include "kvq/planner/memory_plan.hpp"
#include "kvq/planner/model_presets.hpp"

using namespace kvq;

namespace {

// A folder of its own under the system temporary directory, removed at the end of the test.
class TemporaryFolder {
 public:
  TemporaryFolder() {
    path_ = std::filesystem::temp_directory_path() / ("kvq-hf-config-" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path_);
  }
  ~TemporaryFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TemporaryFolder(const TemporaryFolder&) = delete;
  TemporaryFolder& operator=(const TemporaryFolder&) = delete;

  std::filesystem::path write(const std::string& name, const std::string& text) const {
    const std::filesystem::path file = path_ / name;
    std::ofstream(file, std::ios::binary) << text;
    return file;
  }

 private:
  std::filesystem::path path_;
};

// SmolLM2-135M's config.json, the fields the planner reads plus a few it ignores.
const std::string smollm2 = R"({
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "hidden_size": 576,
  "intermediate_size": 1536,
  "num_attention_heads": 9,
  "num_hidden_layers": 30,
  "num_key_value_heads": 3,
  "max_position_embeddings": 8192,
  "rms_norm_eps": 1e-05,
  "rope_theta": 100000,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "vocab_size": 49152
})";

std::string error_of(auto&& call) {
  try {
    call();
  } catch (const Error& error) {
    CHECK(error.code() == ErrorCode::io_error);
    return error.what();
  }
  return "(no error)";
}

bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

// `smollm2` with one field replaced ("" removes it).
std::string with_field(const std::string& field, const std::string& value) {
  std::string text = smollm2;
  const std::size_t start = text.find("\"" + field + "\"");
  REQUIRE(start != std::string::npos);
  std::size_t end = text.find('\n', start);
  const bool last = text[end - 1] != ',';
  text.erase(start, end - start);
  if (value.empty()) {
    if (last) text.erase(text.rfind(',', start), 1);  // the new last field must not end in a comma
  } else {
    text.insert(start, "\"" + field + "\": " + value + (last ? "" : ","));
  }
  return text;
}

}  // namespace

TEST_CASE("a config.json fixture reads as the published shape and plans the same bytes") {
  const TemporaryFolder folder;
  const auto file = folder.write("config.json", smollm2);
  const ModelShape m = read_hf_config(file);
  const ModelShape& published = published_model("SmolLM2-135M");
  CHECK(m.layers == published.layers);
  CHECK(m.hidden == published.hidden);
  CHECK(m.intermediate == published.intermediate);
  CHECK(m.query_heads == published.query_heads);
  CHECK(m.kv_heads == published.kv_heads);
  CHECK(m.head_dim == 64);  // 576 / 9, no head_dim field
  CHECK(m.vocab == published.vocab);
  CHECK(m.tied_embeddings);
  CHECK(m.max_context == 8192);
  CHECK(contains(m.name, "llama"));
  CHECK(contains(m.name, file.string()));

  PlanRequest from_file, from_preset;
  from_file.model = m;
  from_preset.model = published;
  from_file.context = from_preset.context = 8192;
  from_file.kv_preset = from_preset.kv_preset = "kivi-2";
  CHECK(plan_memory(from_file).total() == plan_memory(from_preset).total());
}

TEST_CASE("config.json defaults: kv heads, head_dim and tied embeddings as LlamaConfig has them") {
  // No num_key_value_heads: multi-head attention. An explicit head_dim wins over hidden / heads.
  ModelShape m = parse_hf_config(with_field("num_key_value_heads", ""), "fixture");
  CHECK(m.kv_heads == 9);
  m = parse_hf_config(with_field("tie_word_embeddings", ""), "fixture");
  CHECK_FALSE(m.tied_embeddings);
  m = parse_hf_config(with_field("hidden_size", "576, \"head_dim\": 128"), "fixture");
  CHECK(m.head_dim == 128);
  m = parse_hf_config(with_field("tie_word_embeddings", "null"), "fixture");
  CHECK_FALSE(m.tied_embeddings);
}

TEST_CASE("malformed config.json files name the file and the field") {
  const TemporaryFolder folder;
  auto read = [&](const std::string& text) {
    const auto file = folder.write("config.json", text);
    return error_of([&] { (void)read_hf_config(file); });
  };
  std::string message = read(with_field("num_hidden_layers", ""));
  CHECK(contains(message, "config.json "));
  CHECK(contains(message, "missing field \"num_hidden_layers\""));
  CHECK(contains(read(with_field("hidden_size", "\"576\"")), "field \"hidden_size\" must be an integer, got string \"576\""));
  CHECK(contains(read(with_field("vocab_size", "49152.5")), "field \"vocab_size\" must be an integer, got number 49152.5"));
  CHECK(contains(read(with_field("num_attention_heads", "-9")), "field \"num_attention_heads\" must be in [1, 4096], got -9"));
  CHECK(contains(read(with_field("num_hidden_layers", "0")), "field \"num_hidden_layers\" must be in [1, 1024], got 0"));
  CHECK(contains(read(with_field("max_position_embeddings", "99999999999999999999")), "field \"max_position_embeddings\""));
  CHECK(contains(read(with_field("num_key_value_heads", "12")), "field \"num_key_value_heads\" must be in [1, 9], got 12"));
  CHECK(contains(read(with_field("tie_word_embeddings", "1")), "field \"tie_word_embeddings\" must be true or false"));
  CHECK(contains(read(with_field("num_key_value_heads", "2")), "query_heads 9 is not a multiple of kv_heads 2"));
  CHECK(contains(read(with_field("hidden_size", "577")), "hidden_size 577 is not a multiple of num_attention_heads 9"));
  CHECK(contains(read("{\"hidden_size\": 576,"), "not valid JSON"));
  CHECK(contains(read("[1, 2, 3]"), "expected a JSON object, got array"));
  CHECK(contains(read(""), "not valid JSON"));
  message = error_of([&] { (void)read_hf_config("/nonexistent/kvq/config.json"); });
  CHECK(contains(message, "/nonexistent/kvq/config.json: no such file"));
}
