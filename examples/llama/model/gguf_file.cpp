#include "model/gguf_file.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <limits>

namespace kvq::llama {
namespace {

constexpr std::uint32_t gguf_magic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int max_dims = 4;                       // GGML_MAX_DIMS
constexpr int max_array_depth = 8;                // arrays of arrays are legal; deeper nesting is not plausible

const char* value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::uint8: return "uint8";
    case GgufValueType::int8: return "int8";
    case GgufValueType::uint16: return "uint16";
    case GgufValueType::int16: return "int16";
    case GgufValueType::uint32: return "uint32";
    case GgufValueType::int32: return "int32";
    case GgufValueType::float32: return "float32";
    case GgufValueType::boolean: return "bool";
    case GgufValueType::string: return "string";
    case GgufValueType::array: return "array";
    case GgufValueType::uint64: return "uint64";
    case GgufValueType::int64: return "int64";
    case GgufValueType::float64: return "float64";
  }
  return "unknown";
}

// The fewest bytes one value of `type` occupies, so that an array count can be checked against what is left.
std::uint64_t minimum_value_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::uint8:
    case GgufValueType::int8:
    case GgufValueType::boolean: return 1;
    case GgufValueType::uint16:
    case GgufValueType::int16: return 2;
    case GgufValueType::uint32:
    case GgufValueType::int32:
    case GgufValueType::float32: return 4;
    case GgufValueType::uint64:
    case GgufValueType::int64:
    case GgufValueType::float64: return 8;
    case GgufValueType::string: return 8;  // the length
    case GgufValueType::array: return 12;  // element type and count
  }
  return 1;
}

std::string read_string(ByteReader& reader, std::string_view what) {
  const auto length = reader.read<std::uint64_t>(what);
  return std::string(reader.read_bytes(length, what));
}

}  // namespace

std::string format_dims(const std::vector<std::int64_t>& dims) { return fmt::format("[{}]", fmt::join(dims, ", ")); }

GgufFile::GgufFile(const std::string& path) : file_(std::make_unique<MappedFile>(path)) { parse(); }

// `what` ("the value of KEY") is built once per key, not per array element.
GgufValue GgufFile::read_value(ByteReader& reader, GgufValueType type, const std::string& key, std::string_view what,
                               int depth) {
  GgufValue result{type, {}};
  switch (type) {
    case GgufValueType::uint8: result.value = std::uint64_t{reader.read<std::uint8_t>(what)}; break;
    case GgufValueType::int8: result.value = std::int64_t{reader.read<std::int8_t>(what)}; break;
    case GgufValueType::uint16: result.value = std::uint64_t{reader.read<std::uint16_t>(what)}; break;
    case GgufValueType::int16: result.value = std::int64_t{reader.read<std::int16_t>(what)}; break;
    case GgufValueType::uint32: result.value = std::uint64_t{reader.read<std::uint32_t>(what)}; break;
    case GgufValueType::int32: result.value = std::int64_t{reader.read<std::int32_t>(what)}; break;
    case GgufValueType::uint64: result.value = reader.read<std::uint64_t>(what); break;
    case GgufValueType::int64: result.value = reader.read<std::int64_t>(what); break;
    case GgufValueType::float32: result.value = double{reader.read<float>(what)}; break;
    case GgufValueType::float64: result.value = reader.read<double>(what); break;
    case GgufValueType::boolean: {
      const auto byte = reader.read<std::uint8_t>(what);
      if (byte > 1)
        throw Error(ErrorCode::io_error,
                    fmt::format("{}: key {}: bool value {} is neither 0 nor 1", path(), key, byte));
      result.value = byte == 1;
      break;
    }
    case GgufValueType::string: result.value = read_string(reader, what); break;
    case GgufValueType::array: {
      require(depth < max_array_depth, ErrorCode::io_error,
              fmt::format("{}: key {}: arrays nested too deeply", path(), key));
      const auto element = reader.read<std::uint32_t>(what);
      require(element <= static_cast<std::uint32_t>(GgufValueType::float64), ErrorCode::io_error,
              fmt::format("{}: key {}: unknown array element type {}", path(), key, element));
      const auto count = reader.read<std::uint64_t>(what);
      const auto element_type = static_cast<GgufValueType>(element);
      if (count > reader.remaining() / minimum_value_bytes(element_type))
        throw Error(ErrorCode::io_error,
                    fmt::format("{}: key {}: array of {} {} values cannot fit in the {} bytes left", path(), key, count,
                                value_type_name(element_type), reader.remaining()));
      GgufArray array{element_type, {}};
      array.items.reserve(static_cast<std::size_t>(count));
      for (std::uint64_t i = 0; i < count; ++i)
        array.items.push_back(read_value(reader, element_type, key, what, depth + 1));
      result.value = std::move(array);
      break;
    }
    default:
      throw Error(ErrorCode::io_error,
                  fmt::format("{}: key {}: unknown value type {}", path(), key, static_cast<std::uint32_t>(type)));
  }
  return result;
}

void GgufFile::parse() {
  ByteReader reader(file_->bytes(), path());
  const auto magic = reader.read<std::uint32_t>("the magic number");
  require(magic == gguf_magic, ErrorCode::io_error,
          fmt::format("{}: not a GGUF file (magic 0x{:08x}, expected 0x{:08x} \"GGUF\")", path(), magic, gguf_magic));
  version_ = reader.read<std::uint32_t>("the version");
  // Version 1 used 32-bit counts and lengths; nothing current writes it.
  require(version_ == 2 || version_ == 3, ErrorCode::io_error,
          fmt::format("{}: GGUF version {} is not supported (2 and 3 are)", path(), version_));
  const auto tensor_count = reader.read<std::uint64_t>("the tensor count");
  const auto metadata_count = reader.read<std::uint64_t>("the metadata count");
  // Each entry takes at least 12 bytes (key length and type; name length, n_dims, type and offset for tensors).
  require(metadata_count <= reader.remaining() / 12 && tensor_count <= reader.remaining() / 24, ErrorCode::io_error,
          fmt::format("{}: {} metadata entries and {} tensors cannot fit in a file of {} bytes", path(), metadata_count,
                      tensor_count, file_->size()));

  for (std::uint64_t i = 0; i < metadata_count; ++i) {
    std::string key = read_string(reader, fmt::format("the key of metadata entry {}", i));
    const auto type = reader.read<std::uint32_t>("the type of " + key);
    require(type <= static_cast<std::uint32_t>(GgufValueType::float64), ErrorCode::io_error,
            fmt::format("{}: key {}: unknown value type {}", path(), key, type));
    GgufValue value = read_value(reader, static_cast<GgufValueType>(type), key, "the value of " + key, 0);
    require(!values_.contains(key), ErrorCode::io_error, fmt::format("{}: key {} appears twice", path(), key));
    key_order_.push_back(key);
    values_.emplace(std::move(key), std::move(value));
  }

  if (const GgufValue* alignment = find("general.alignment")) {
    const auto* bits = std::get_if<std::uint64_t>(&alignment->value);
    require(alignment->type == GgufValueType::uint32 && bits != nullptr && *bits > 0 && (*bits & (*bits - 1)) == 0,
            ErrorCode::io_error, fmt::format("{}: general.alignment must be a uint32 power of two", path()));
    alignment_ = *bits;
  }

  for (std::uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo info;
    info.name = read_string(reader, fmt::format("the name of tensor {}", i));
    const auto dim_count = reader.read<std::uint32_t>("the dimension count of tensor " + info.name);
    require(dim_count >= 1 && dim_count <= max_dims, ErrorCode::io_error,
            fmt::format("{}: tensor {} has {} dimensions (1 to {} allowed)", path(), info.name, dim_count, max_dims));
    info.elements = 1;
    for (std::uint32_t d = 0; d < dim_count; ++d) {
      const auto dim = reader.read<std::uint64_t>("the dimensions of tensor " + info.name);
      require(dim >= 1 && dim <= (std::uint64_t{1} << 40) && info.elements <= (std::uint64_t{1} << 50) / dim,
              ErrorCode::io_error, fmt::format("{}: tensor {} has an invalid dimension {}", path(), info.name, dim));
      info.elements *= dim;
      info.dims.push_back(static_cast<std::int64_t>(dim));
    }
    info.type = reader.read<std::uint32_t>("the type of tensor " + info.name);
    info.offset = reader.read<std::uint64_t>("the offset of tensor " + info.name);
    require(info.offset % alignment_ == 0, ErrorCode::io_error,
            fmt::format("{}: tensor {} starts at offset {}, not a multiple of the alignment {}", path(), info.name,
                        info.offset, alignment_));
    require(!tensor_index_.contains(info.name), ErrorCode::io_error,
            fmt::format("{}: tensor {} appears twice", path(), info.name));
    tensor_index_.emplace(info.name, tensors_.size());
    tensors_.push_back(std::move(info));
  }

  data_offset_ = (reader.offset() + alignment_ - 1) / alignment_ * alignment_;
  require(data_offset_ <= file_->size(), ErrorCode::io_error,
          fmt::format("{}: truncated before the tensor data (needs {} bytes, has {})", path(), data_offset_,
                      file_->size()));
  const std::uint64_t data_bytes = file_->size() - data_offset_;
  for (const GgufTensorInfo& info : tensors_) {
    const auto type = supported_ggml_type(info.type);
    if (!type) continue;  // reported when the tensor is read: a file may carry tensors this example never reads
    require(static_cast<std::uint64_t>(info.dims[0]) % static_cast<std::uint64_t>(type->block_elements) == 0,
            ErrorCode::io_error,
            fmt::format("{}: tensor {}: rows of {} elements are not whole {}-element blocks of {}", path(), info.name,
                        info.dims[0], type->block_elements, ggml_type_name(info.type)));
    const std::uint64_t bytes = ggml_bytes(*type, info.elements);
    require(info.offset <= data_bytes && bytes <= data_bytes - info.offset, ErrorCode::io_error,
            fmt::format("{}: tensor {} ({} bytes at data offset {}) extends past the end of the file ({} data bytes)",
                        path(), info.name, bytes, info.offset, data_bytes));
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = values_.find(std::string(key));
  return it == values_.end() ? nullptr : &it->second;
}

std::optional<std::int64_t> GgufFile::optional_integer(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  if (const auto* u = std::get_if<std::uint64_t>(&value->value)) {
    require(*u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()), ErrorCode::io_error,
            fmt::format("{}: key {}: value {} is out of range", path(), key, *u));
    return static_cast<std::int64_t>(*u);
  }
  if (const auto* s = std::get_if<std::int64_t>(&value->value)) return *s;
  throw Error(ErrorCode::io_error,
              fmt::format("{}: key {} is a {}, expected an integer", path(), key, value_type_name(value->type)));
}

std::int64_t GgufFile::integer(std::string_view key) const {
  const auto value = optional_integer(key);
  require(value.has_value(), ErrorCode::io_error, fmt::format("{}: missing metadata key {}", path(), key));
  return *value;
}

std::optional<double> GgufFile::optional_number(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  if (const auto* d = std::get_if<double>(&value->value)) return *d;
  return static_cast<double>(*optional_integer(key));
}

double GgufFile::number(std::string_view key) const {
  const auto value = optional_number(key);
  require(value.has_value(), ErrorCode::io_error, fmt::format("{}: missing metadata key {}", path(), key));
  return *value;
}

std::optional<bool> GgufFile::optional_boolean(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  const auto* flag = std::get_if<bool>(&value->value);
  require(flag != nullptr, ErrorCode::io_error,
          fmt::format("{}: key {} is a {}, expected a bool", path(), key, value_type_name(value->type)));
  return *flag;
}

std::optional<std::string> GgufFile::optional_string(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  const auto* text = std::get_if<std::string>(&value->value);
  require(text != nullptr, ErrorCode::io_error,
          fmt::format("{}: key {} is a {}, expected a string", path(), key, value_type_name(value->type)));
  return *text;
}

std::string GgufFile::string(std::string_view key) const {
  auto value = optional_string(key);
  require(value.has_value(), ErrorCode::io_error, fmt::format("{}: missing metadata key {}", path(), key));
  return std::move(*value);
}

std::vector<std::string> GgufFile::string_array(std::string_view key) const {
  const GgufValue* value = find(key);
  require(value != nullptr, ErrorCode::io_error, fmt::format("{}: missing metadata key {}", path(), key));
  const auto* array = std::get_if<GgufArray>(&value->value);
  require(array != nullptr && array->element_type == GgufValueType::string, ErrorCode::io_error,
          fmt::format("{}: key {} is not an array of strings", path(), key));
  std::vector<std::string> result;
  result.reserve(array->items.size());
  for (const GgufValue& item : array->items) result.push_back(std::get<std::string>(item.value));
  return result;
}

std::vector<std::int64_t> GgufFile::integer_array(std::string_view key) const {
  const GgufValue* value = find(key);
  require(value != nullptr, ErrorCode::io_error, fmt::format("{}: missing metadata key {}", path(), key));
  const auto* array = std::get_if<GgufArray>(&value->value);
  require(array != nullptr, ErrorCode::io_error, fmt::format("{}: key {} is not an array", path(), key));
  std::vector<std::int64_t> result;
  result.reserve(array->items.size());
  for (const GgufValue& item : array->items) {
    if (const auto* u = std::get_if<std::uint64_t>(&item.value)) {
      if (*u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        throw Error(ErrorCode::io_error, fmt::format("{}: key {}: value {} is out of range", path(), key, *u));
      result.push_back(static_cast<std::int64_t>(*u));
    } else if (const auto* s = std::get_if<std::int64_t>(&item.value)) {
      result.push_back(*s);
    } else {
      throw Error(ErrorCode::io_error, fmt::format("{}: key {} is not an array of integers", path(), key));
    }
  }
  return result;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<float> GgufFile::read_float(std::string_view name, const std::vector<std::int64_t>& expected_dims) const {
  const GgufTensorInfo* info = find_tensor(name);
  require(info != nullptr, ErrorCode::io_error, fmt::format("{}: missing tensor {}", path(), name));
  const auto type = supported_ggml_type(info->type);
  require(type.has_value(), ErrorCode::io_error,
          fmt::format("{}: tensor {} has type {}, which this loader cannot read (F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                      path(), name, ggml_type_name(info->type)));
  // Trailing dimensions of 1 are the same tensor (some writers pad a vector to [n, 1]).
  std::vector<std::int64_t> dims = info->dims;
  while (dims.size() > expected_dims.size() && dims.back() == 1) dims.pop_back();
  require(dims == expected_dims, ErrorCode::io_error,
          fmt::format("{}: tensor {} has shape {}, expected {}", path(), name, format_dims(info->dims),
                      format_dims(expected_dims)));
  std::vector<float> values(static_cast<std::size_t>(info->elements));
  dequantize_ggml(type->type, file_->bytes().data() + data_offset_ + info->offset, info->elements, values.data());
  return values;
}

}  // namespace kvq::llama
