// A GGUF file (versions 2 and 3): header, metadata key/value pairs of every value type (arrays included), tensor
// infos and the aligned data section. Layout, from the GGUF specification (ggml's docs/gguf.md):
//
//   u32 magic "GGUF", u32 version, u64 tensor_count, u64 metadata_count
//   metadata_count x { string key, u32 value_type, value }       string = u64 length + UTF-8 bytes
//   tensor_count   x { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
//   padding to `general.alignment` (default 32), then the tensor data; each offset is relative to its start.
//
// dims[0] is the fastest-varying dimension: a weight matrix of `rows` outputs by `columns` inputs has
// dims = {columns, rows}. Everything is validated while parsing -- counts against the bytes left, tensor extents
// against the file size, offsets against the alignment -- so a malformed file throws kvq::Error(io_error) naming
// the file and the key or tensor, before any weight is read.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "model/ggml_blocks.hpp"
#include "model/mapped_file.hpp"

namespace kvq::llama {

enum class GgufValueType : std::uint32_t {
  uint8 = 0,
  int8 = 1,
  uint16 = 2,
  int16 = 3,
  uint32 = 4,
  int32 = 5,
  float32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  uint64 = 10,
  int64 = 11,
  float64 = 12,
};

struct GgufValue;
struct GgufArray {
  GgufValueType element_type = GgufValueType::uint8;
  std::vector<GgufValue> items;
};

// One metadata value; which alternative is held follows `type`: unsigned integers as uint64, signed as int64,
// floats as double.
struct GgufValue {
  GgufValueType type = GgufValueType::uint8;
  std::variant<std::uint64_t, std::int64_t, double, bool, std::string, GgufArray> value;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<std::int64_t> dims;  // dims[0] fastest
  std::uint32_t type = 0;          // ggml type id (supported or not; checked when the tensor is read)
  std::uint64_t offset = 0;        // from the start of the data section
  std::uint64_t elements = 0;
};

class GgufFile {
 public:
  explicit GgufFile(const std::string& path);  // throws kvq::Error(io_error) naming the file and the field

  [[nodiscard]] const std::string& path() const { return file_->path(); }
  [[nodiscard]] std::uint32_t version() const { return version_; }
  [[nodiscard]] std::uint64_t alignment() const { return alignment_; }
  [[nodiscard]] std::uint64_t data_offset() const { return data_offset_; }

  [[nodiscard]] const GgufValue* find(std::string_view key) const;
  [[nodiscard]] const std::vector<std::string>& keys() const { return key_order_; }
  // Typed reads: a missing key or a value of another type throws kvq::Error(io_error) naming file and key.
  [[nodiscard]] std::int64_t integer(std::string_view key) const;
  [[nodiscard]] std::optional<std::int64_t> optional_integer(std::string_view key) const;
  [[nodiscard]] double number(std::string_view key) const;  // any integer or float type
  [[nodiscard]] std::optional<double> optional_number(std::string_view key) const;
  [[nodiscard]] std::optional<bool> optional_boolean(std::string_view key) const;
  [[nodiscard]] std::string string(std::string_view key) const;
  [[nodiscard]] std::optional<std::string> optional_string(std::string_view key) const;
  [[nodiscard]] std::vector<std::string> string_array(std::string_view key) const;
  [[nodiscard]] std::vector<std::int64_t> integer_array(std::string_view key) const;

  [[nodiscard]] const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  [[nodiscard]] const GgufTensorInfo* find_tensor(std::string_view name) const;
  // Dequantizes a tensor to float, checking its type is supported and its dims are `expected_dims`
  // (dims[0] first); errors name the file and the tensor.
  [[nodiscard]] std::vector<float> read_float(std::string_view name,
                                              const std::vector<std::int64_t>& expected_dims) const;

 private:
  void parse();
  GgufValue read_value(ByteReader& reader, GgufValueType type, const std::string& key, std::string_view what,
                       int depth);

  std::unique_ptr<MappedFile> file_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = 32;
  std::uint64_t data_offset_ = 0;
  std::unordered_map<std::string, GgufValue> values_;
  std::vector<std::string> key_order_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> tensor_index_;
};

// "[576, 1536]" for error messages.
std::string format_dims(const std::vector<std::int64_t>& dims);

}  // namespace kvq::llama
