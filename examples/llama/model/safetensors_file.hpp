// A safetensors file (Hugging Face's weight format): u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "BF16", "shape": [rows, columns], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data, offsets relative to its start, row-major with the last dimension fastest. The header is
// validated whole before any data is read (dtype known, end - begin = elements * element size, inside the file).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/mapped_file.hpp"

namespace kvq::llama {

enum class SafetensorsType { f32, f16, bf16 };

struct SafetensorsTensorInfo {
  std::string name;
  SafetensorsType type = SafetensorsType::f32;
  std::string dtype;                 // as written, for messages
  std::vector<std::int64_t> shape;   // shape[0] slowest
  std::uint64_t begin = 0, end = 0;  // relative to the data section
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws kvq::Error(io_error) naming file and tensor

  [[nodiscard]] const std::string& path() const { return file_->path(); }
  [[nodiscard]] const SafetensorsTensorInfo* find(std::string_view name) const;
  [[nodiscard]] std::vector<std::string> names() const;
  // The tensor converted to float, checking its shape (shape[0] slowest) against `expected_shape`.
  [[nodiscard]] std::vector<float> read_float(std::string_view name,
                                              const std::vector<std::int64_t>& expected_shape) const;

 private:
  std::unique_ptr<MappedFile> file_;
  std::uint64_t data_offset_ = 0;
  std::unordered_map<std::string, SafetensorsTensorInfo> tensors_;
};

}  // namespace kvq::llama
