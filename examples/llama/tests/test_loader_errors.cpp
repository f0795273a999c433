// Malformed model files: each must give kvq::Error(io_error) naming the file and what is wrong with it -- never
// a crash, a read past the end or a silent wrong model.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "model/gguf_file.hpp"
#include "model/llama_model.hpp"
#include "model/safetensors_file.hpp"
#include "tiny_model.hpp"

using namespace kvq::llama;
using namespace kvq::llama::test;

namespace {

// The message of the kvq::Error(io_error) that loading `path` throws ("" if it loads, which fails the check).
std::string load_error(const std::filesystem::path& path) {
  try {
    static_cast<void>(load_model(path));
  } catch (const kvq::Error& e) {
    CHECK(e.code() == kvq::ErrorCode::io_error);
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("GGUF errors: bad magic, unsupported version, truncation anywhere in the header") {
  TempDir dir;
  const TinyModel model = make_tiny_model(1);
  const std::string good = tiny_gguf(model).bytes();
  const auto file = dir / "broken.gguf";

  write_file(file, "GGUG" + good.substr(4));
  CHECK(load_error(file).find("broken.gguf: not a GGUF file") != std::string::npos);
  write_file(file, good.substr(0, 4) + GgufWriter::encode<std::uint32_t>(1) + good.substr(8));
  CHECK(load_error(file).find("GGUF version 1 is not supported") != std::string::npos);
  write_file(file, "");
  CHECK(load_error(file).find("truncated at byte 0 while reading the magic number") != std::string::npos);

  // Every cut inside the header (metadata and tensor infos) fails cleanly, naming the file. Steps of 7 bytes
  // keep the loop short while landing inside every kind of field.
  const std::size_t header = tiny_gguf(model).header_bytes();
  int cuts = 0;
  for (std::size_t size = 0; size < header; size += 7, ++cuts) {
    write_file(file, good.substr(0, size));
    const std::string message = load_error(file);
    INFO("cut at ", size, ": ", message);
    CHECK(message.find("broken.gguf") != std::string::npos);
    // A short read, or a count that the bytes left cannot hold (checked before reading the entries).
    CHECK((message.find("truncated") != std::string::npos || message.find("cannot fit") != std::string::npos));
  }
  CHECK(cuts > 100);
  // Cut inside the tensor data: the tensor infos parse, and the first tensor that no longer fits is named.
  write_file(file, good.substr(0, good.size() - 100));
  CHECK(load_error(file).find("extends past the end of the file") != std::string::npos);
}

TEST_CASE("GGUF errors: tensor data past the end, unknown and unsupported types, wrong shapes, missing parts") {
  TempDir dir;
  const TinyModel model = make_tiny_model(2);
  const auto file = dir / "model.gguf";
  auto error_with = [&](const GgufOptions& options) {
    write_file(file, tiny_gguf(model, options).bytes());
    return load_error(file);
  };
  {  // A tensor whose data would lie beyond the end of the file: its dims claim more rows than were written.
    GgufOptions options;
    options.override_name = "output.weight";
    options.override_dims = {128, 100000};
    const std::string message = error_with(options);
    CHECK(message.find("model.gguf: tensor output.weight") != std::string::npos);
    CHECK(message.find("extends past the end of the file") != std::string::npos);
  }
  {  // A type id ggml does not have.
    GgufOptions options;
    options.override_name = "blk.1.attn_v.weight";
    options.override_type = 99;
    CHECK(error_with(options).find("tensor blk.1.attn_v.weight has type unknown type 99") != std::string::npos);
  }
  {  // A real ggml type this loader does not dequantize.
    GgufOptions options;
    options.override_name = "blk.0.ffn_up.weight";
    options.override_type = 13;
    CHECK(error_with(options).find("tensor blk.0.ffn_up.weight has type Q5_K (13)") != std::string::npos);
  }
  {  // Transposed: same element count, wrong shape.
    GgufOptions options;
    options.override_name = "blk.0.ffn_gate.weight";
    options.override_dims = {96, 128};
    CHECK(error_with(options).find("tensor blk.0.ffn_gate.weight has shape [96, 128], expected [128, 96]") !=
          std::string::npos);
  }
  {
    GgufOptions options;
    options.skip = "blk.1.ffn_norm.weight";
    CHECK(error_with(options).find("model.gguf: missing tensor blk.1.ffn_norm.weight") != std::string::npos);
  }
  {
    GgufOptions options;
    options.skip_key = "llama.block_count";
    CHECK(error_with(options).find("model.gguf: missing metadata key llama.block_count") != std::string::npos);
  }
  {
    GgufOptions options;
    options.skip_key = "llama.attention.layer_norm_rms_epsilon";
    CHECK(error_with(options).find("missing metadata key llama.attention.layer_norm_rms_epsilon") != std::string::npos);
  }
}

TEST_CASE("GGUF errors: malformed metadata") {
  TempDir dir;
  const auto file = dir / "meta.gguf";
  auto error_of = [&](GgufWriter& w) {
    write_file(file, w.bytes());
    try {
      GgufFile parsed(file.string());
    } catch (const kvq::Error& e) {
      CHECK(e.code() == kvq::ErrorCode::io_error);
      return std::string(e.what());
    }
    return std::string();
  };
  {
    GgufWriter w;
    w.add_raw("huge", 9,
              GgufWriter::encode<std::uint32_t>(8) + GgufWriter::encode<std::uint64_t>(std::uint64_t{1} << 60));
    CHECK(error_of(w).find("key huge: array of 1152921504606846976 string values cannot fit") != std::string::npos);
  }
  {
    GgufWriter w;
    w.add_raw("strange", 13, "");
    CHECK(error_of(w).find("key strange: unknown value type 13") != std::string::npos);
  }
  {
    GgufWriter w;
    w.add_raw("flag", 7, "\x02");
    CHECK(error_of(w).find("key flag: bool value 2 is neither 0 nor 1") != std::string::npos);
  }
  {
    GgufWriter w;
    w.add_u32("twice", 1);
    w.add_u32("twice", 2);
    CHECK(error_of(w).find("key twice appears twice") != std::string::npos);
  }
  {
    GgufWriter w;
    w.add_raw("general.alignment", 4, GgufWriter::encode<std::uint32_t>(48));
    CHECK(error_of(w).find("general.alignment must be a uint32 power of two") != std::string::npos);
  }
  {
    GgufWriter w;
    w.add_raw("text", 8, GgufWriter::encode<std::uint64_t>(std::uint64_t{1} << 62) + "abc");
    CHECK(error_of(w).find("while reading the value of text") != std::string::npos);
  }
  {  // A tensor offset that is not a multiple of the alignment.
    GgufWriter w;
    w.add_tensor("t", {4}, 0, encode_f32({1, 2, 3, 4}));
    std::string bytes = w.bytes();
    const std::size_t offset_at = w.header_bytes();  // the offset field is the last 8 bytes before the padding
    std::size_t field = 24 + 8 + 1 + 4 + 8 + 4;      // header, name, n_dims, one dim, type
    REQUIRE(field + 8 <= offset_at);
    bytes.replace(field, 8, GgufWriter::encode<std::uint64_t>(3));
    write_file(file, bytes);
    CHECK_THROWS_WITH_AS(GgufFile(file.string()),
                         doctest::Contains("tensor t starts at offset 3, not a multiple of the alignment 32"),
                         kvq::Error);
  }
  {  // A quantized row that is not whole blocks.
    GgufWriter w;
    w.add_tensor("odd", {48}, 8, std::string(34 * 2, '\0'));
    CHECK(error_of(w).find("tensor odd: rows of 48 elements are not whole 32-element blocks of Q8_0 (8)") !=
          std::string::npos);
  }
}

TEST_CASE("safetensors and Hugging Face checkpoint errors") {
  TempDir dir;
  const auto file = dir / "bad.safetensors";
  auto error_of = [&](const std::string& bytes) {
    write_file(file, bytes);
    try {
      SafetensorsFile parsed(file.string());
    } catch (const kvq::Error& e) {
      CHECK(e.code() == kvq::ErrorCode::io_error);
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string good = safetensors_bytes({{"w", "F32", {2, 2}, {1, 2, 3, 4}}});
  CHECK(error_of(good.substr(0, 5)).find("truncated at byte 0 while reading the header length") != std::string::npos);
  CHECK(error_of(GgufWriter::encode<std::uint64_t>(1000) + "{}").find("header length 1000 does not fit") !=
        std::string::npos);
  CHECK(error_of(GgufWriter::encode<std::uint64_t>(5) + "{abc:").find("the header is not valid JSON") !=
        std::string::npos);
  CHECK(error_of(good.substr(0, good.size() - 4)).find("tensor w: data [0, 16) extends past the end of the file") !=
        std::string::npos);
  auto with_header = [](const nlohmann::json& header, std::size_t data_bytes) {
    const std::string text = header.dump();
    return GgufWriter::encode<std::uint64_t>(text.size()) + text + std::string(data_bytes, '\0');
  };
  CHECK(error_of(with_header({{"w", {{"dtype", "I64"}, {"shape", {2}}, {"data_offsets", {0, 16}}}}}, 16))
            .find("tensor w: dtype I64 is not supported") != std::string::npos);
  CHECK(error_of(with_header({{"w", {{"dtype", "F16"}, {"shape", {3}}, {"data_offsets", {0, 8}}}}}, 8))
            .find("tensor w: data of 8 bytes does not hold 3 F16 elements") != std::string::npos);
  CHECK(error_of(with_header({{"w", {{"dtype", "F16"}, {"shape", {3}}}}}, 8))
            .find("tensor w: needs dtype, shape and data_offsets") != std::string::npos);

  // A checkpoint directory: wrong shape, missing tensor in the index, missing config key.
  const TinyModel model = make_tiny_model(3);
  const auto checkpoint = dir / "checkpoint";
  write_tiny_hugging_face(model, checkpoint, "F32", 2);
  {
    TinyModel wrong = model;
    wrong.shapes[2] = {64, 256};  // q_proj of layer 0, same element count
    const auto wrong_dir = dir / "wrong";
    write_tiny_hugging_face(wrong, wrong_dir, "F32", 1);
    const std::string message = load_error(wrong_dir);
    CHECK(message.find("model.safetensors: tensor model.layers.0.self_attn.q_proj.weight has shape [64, 256], expected "
                       "[128, 128]") != std::string::npos);
  }
  {
    nlohmann::json index = nlohmann::json::parse(read_file(checkpoint / "model.safetensors.index.json"));
    index["weight_map"].erase("model.layers.1.mlp.up_proj.weight");
    write_file(checkpoint / "model.safetensors.index.json", index.dump());
    CHECK(
        load_error(checkpoint).find("model.safetensors.index.json: missing tensor model.layers.1.mlp.up_proj.weight") !=
        std::string::npos);
  }
  {
    nlohmann::json config = nlohmann::json::parse(read_file(checkpoint / "config.json"));
    config.erase("intermediate_size");
    write_file(checkpoint / "config.json", config.dump());
    CHECK(load_error(checkpoint).find("config.json: missing key intermediate_size") != std::string::npos);
    config["intermediate_size"] = "wide";
    write_file(checkpoint / "config.json", config.dump());
    CHECK(load_error(checkpoint).find("config.json: key intermediate_size has the wrong type (string)") !=
          std::string::npos);
  }
  CHECK(load_error(dir / "nowhere").find("nowhere: no such file or directory") != std::string::npos);
}

TEST_CASE("GGUF and tokenizer.json with random corruptions: a kvq::Error or a model, nothing else") {
  // Byte changes anywhere in the metadata and tensor infos: whatever they hit (a length, a count, a type, a
  // key, a token), loading must end in kvq::Error or in a model -- no other exception, no crash, no huge
  // allocation. Seeded, so a failure repeats.
  TempDir dir;
  const TinyModel model = make_tiny_model(4);
  const GgufWriter writer = tiny_gguf(model);
  const std::string good = writer.bytes();
  std::mt19937 random(2024);
  int errors = 0, loaded = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = good;
    const int changes = 1 + static_cast<int>(random() % 3);
    for (int c = 0; c < changes; ++c) bytes[random() % writer.header_bytes()] = static_cast<char>(random());
    write_file(dir / "fuzz.gguf", bytes);
    try {
      static_cast<void>(load_model(dir / "fuzz.gguf"));
      ++loaded;
    } catch (const kvq::Error&) {
      ++errors;
    }
  }
  CHECK(errors > 0);
  MESSAGE("GGUF corruptions: ", errors, " refused, ", loaded,
          " loaded (a changed weight name or token text can still load)");

  write_tiny_hugging_face(model, dir / "hf", "F32", 1);
  const std::string tokenizer = read_file(dir / "hf" / "tokenizer.json");
  for (int trial = 0; trial < 100; ++trial) {
    std::string text = tokenizer;
    text[random() % text.size()] = "{}[]\",:0a \\"[random() % 11];
    write_file(dir / "hf" / "tokenizer.json", text);
    try {
      static_cast<void>(load_model(dir / "hf"));
    } catch (const kvq::Error&) {
    }
  }
}
