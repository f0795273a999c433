#include "model/safetensors_file.hpp"

#include <fmt/format.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "kvq/core/float16.hpp"
#include "model/gguf_file.hpp"

namespace kvq::llama {
namespace {

// The header is JSON of a few hundred bytes per tensor; 100 MiB is far above any real checkpoint and keeps a
// corrupted length from asking for the whole address space.
constexpr std::uint64_t max_header_bytes = std::uint64_t{100} << 20;

int element_bytes(SafetensorsType type) { return type == SafetensorsType::f32 ? 4 : 2; }

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  ByteReader reader(file_->bytes(), path);
  const auto header_bytes = reader.read<std::uint64_t>("the header length");
  require(header_bytes <= max_header_bytes && header_bytes <= reader.remaining(), ErrorCode::io_error,
          fmt::format("{}: header length {} does not fit the file ({} bytes)", path, header_bytes, file_->size()));
  const std::string_view header_text = reader.read_bytes(header_bytes, "the header");
  data_offset_ = reader.offset();
  const std::uint64_t data_bytes = file_->size() - data_offset_;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorCode::io_error, fmt::format("{}: the header is not valid JSON: {}", path, e.what()));
  }
  require(header.is_object(), ErrorCode::io_error, path + ": the header is not a JSON object");
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const auto fail = [&](const std::string& why) {
      throw Error(ErrorCode::io_error, fmt::format("{}: tensor {}: {}", path, name, why));
    };
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      fail("needs dtype, shape and data_offsets");
    SafetensorsTensorInfo info;
    info.name = name;
    if (!entry["dtype"].is_string()) fail("dtype is not a string");
    info.dtype = entry["dtype"].get<std::string>();
    if (info.dtype == "F32")
      info.type = SafetensorsType::f32;
    else if (info.dtype == "F16")
      info.type = SafetensorsType::f16;
    else if (info.dtype == "BF16")
      info.type = SafetensorsType::bf16;
    else
      fail("dtype " + info.dtype + " is not supported (F32, F16, BF16)");
    const auto& shape = entry["shape"];
    if (!shape.is_array()) fail("shape is not an array");
    std::uint64_t elements = 1;
    for (const auto& dim : shape) {
      if (!dim.is_number_unsigned() || dim.get<std::uint64_t>() > (std::uint64_t{1} << 40)) fail("invalid shape");
      const auto value = dim.get<std::uint64_t>();
      if (value != 0 && elements > (std::uint64_t{1} << 50) / value) fail("invalid shape");
      elements *= value;
      info.shape.push_back(static_cast<std::int64_t>(value));
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned())
      fail("data_offsets must be two unsigned integers");
    info.begin = offsets[0].get<std::uint64_t>();
    info.end = offsets[1].get<std::uint64_t>();
    if (info.begin > info.end || info.end > data_bytes)
      fail(fmt::format("data [{}, {}) extends past the end of the file ({} data bytes)", info.begin, info.end,
                       data_bytes));
    if (info.end - info.begin != elements * static_cast<std::uint64_t>(element_bytes(info.type)))
      fail(fmt::format("data of {} bytes does not hold {} {} elements", info.end - info.begin, elements, info.dtype));
    tensors_.emplace(name, std::move(info));
  }
}

const SafetensorsTensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto it = tensors_.find(std::string(name));
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> result;
  for (const auto& [name, info] : tensors_) result.push_back(name);
  return result;
}

std::vector<float> SafetensorsFile::read_float(std::string_view name,
                                               const std::vector<std::int64_t>& expected_shape) const {
  const SafetensorsTensorInfo* info = find(name);
  require(info != nullptr, ErrorCode::io_error, fmt::format("{}: missing tensor {}", path(), name));
  require(info->shape == expected_shape, ErrorCode::io_error,
          fmt::format("{}: tensor {} has shape {}, expected {}", path(), name, format_dims(info->shape),
                      format_dims(expected_shape)));
  const std::uint8_t* data = file_->bytes().data() + data_offset_ + info->begin;
  const std::uint64_t elements = (info->end - info->begin) / static_cast<std::uint64_t>(element_bytes(info->type));
  std::vector<float> values(static_cast<std::size_t>(elements));
  for (std::uint64_t i = 0; i < elements; ++i) {
    switch (info->type) {
      case SafetensorsType::f32: std::memcpy(&values[i], data + 4 * i, 4); break;
      case SafetensorsType::f16: {
        f16 h;
        std::memcpy(&h.bits, data + 2 * i, 2);
        values[i] = to_float(h);
        break;
      }
      case SafetensorsType::bf16: {
        bf16 b;
        std::memcpy(&b.bits, data + 2 * i, 2);
        values[i] = to_float(b);
        break;
      }
    }
  }
  return values;
}

}  // namespace kvq::llama
