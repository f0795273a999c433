// Test helpers: a GGUF writer (valid files, and the raw pieces to corrupt them), a safetensors writer, and a tiny
// random Llama model written both ways, for tests that need model files without downloading one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "model/ggml_blocks.hpp"
#include "tokenizer/tokenizer.hpp"

namespace kvq::llama::test {

// A fresh empty directory under the system temp dir, removed when the object goes.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

void write_file(const std::filesystem::path& path, const std::string& bytes);
std::string read_file(const std::filesystem::path& path);

// Builds a GGUF file in memory, in the order the format lays it out.
class GgufWriter {
 public:
  explicit GgufWriter(std::uint32_t version = 3) : version_(version) {}
  void add_u32(const std::string& key, std::uint32_t value);
  void add_i32(const std::string& key, std::int32_t value);
  void add_f32(const std::string& key, float value);
  void add_bool(const std::string& key, bool value);
  void add_string(const std::string& key, const std::string& value);
  void add_string_array(const std::string& key, const std::vector<std::string>& values);
  void add_i32_array(const std::string& key, const std::vector<std::int32_t>& values);
  // Any value: `type` and its already-encoded bytes (for the value types above not covered, and for corruption).
  void add_raw(const std::string& key, std::uint32_t type, const std::string& encoded);
  // dims[0] fastest; `data` already in the tensor type's encoding.
  void add_tensor(const std::string& name, const std::vector<std::int64_t>& dims, std::uint32_t type, std::string data);
  void set_alignment(std::uint32_t alignment);

  [[nodiscard]] std::string bytes() const;
  // Bytes up to the start of the tensor data (header, metadata, tensor infos, padding).
  [[nodiscard]] std::size_t header_bytes() const;

  static std::string encode_string(const std::string& text);
  template <class T>
  static std::string encode(T value) {
    return std::string(reinterpret_cast<const char*>(&value), sizeof(T));
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<std::int64_t> dims;
    std::uint32_t type;
    std::string data;
  };
  std::uint32_t version_;
  std::uint32_t alignment_ = 32;
  std::vector<std::string> metadata_;  // each: key, type, value, encoded
  std::vector<Tensor> tensors_;
};

// Tensor data encodings for the writer.
std::string encode_f32(const std::vector<float>& values);
std::string encode_f16(const std::vector<float>& values);
std::string encode_bf16(const std::vector<float>& values);
std::string encode_ggml(GgmlType type, const std::vector<float>& values);  // F32/F16/BF16/Q8_0/Q4_0/Q4_1

// Writes a safetensors file: (name, dtype "F32"/"F16"/"BF16", shape, values).
struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};
std::string safetensors_bytes(const std::vector<SafetensorsEntry>& entries);

// A tiny Llama with random weights (2 layers, hidden 128, MLP 96, 2 query heads and 1 KV head of 64, a 265-token
// byte-level vocabulary with a few merges and three special tokens), in Hugging Face row order.
struct TinyModel {
  int layers = 2, hidden = 128, ffn = 96, q_heads = 2, kv_heads = 1, head_dim = 64;
  float theta = 10000.0f;
  bool tied = false;
  std::vector<std::string> tokens;  // byte-level texts, specials last
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::pair<std::string, std::vector<float>>> tensors;  // HF names, row-major HF shapes
  std::vector<std::vector<std::int64_t>> shapes;
  [[nodiscard]] int vocabulary() const { return static_cast<int>(tokens.size()); }
  [[nodiscard]] const std::vector<float>& tensor(const std::string& name) const;
};
TinyModel make_tiny_model(std::uint32_t seed, bool tied = false);

// The model as GGUF (llama.cpp's names, q/k rows permuted as its converter does, matrices in `matrix_type`).
// `skip` leaves out one tensor; `override_dims` replaces one tensor's dims (for the error tests).
struct GgufOptions {
  GgmlType matrix_type = GgmlType::f32;
  std::string skip;
  std::string override_name;
  std::vector<std::int64_t> override_dims;
  std::uint32_t override_type = 0xFFFFFFFF;  // for override_name, when not 0xFFFFFFFF
  std::string skip_key;
};
GgufWriter tiny_gguf(const TinyModel& model, const GgufOptions& options = {});

// The model as a Hugging Face directory: config.json, tokenizer.json, and the weights in `dtype`, in one file
// or split over `shards` files with model.safetensors.index.json.
void write_tiny_hugging_face(const TinyModel& model, const std::filesystem::path& directory, const std::string& dtype,
                             int shards);

}  // namespace kvq::llama::test
