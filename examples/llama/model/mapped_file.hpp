// Read-only access to a whole model file. Weights are read straight from a memory map rather than copied into a
// buffer first (a GGUF of an 8B model is several GiB), and every read of the file's structure goes through
// ByteReader, whose reads are bounds-checked: a truncated or corrupted file gives a kvq::Error naming the file
// and what was being read, never a read past the end.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "kvq/core/error.hpp"

namespace kvq::llama {

// The file formats read here are little-endian; so is every machine this example targets.
static_assert(std::endian::native == std::endian::little, "kvq: the model loaders assume a little-endian host");

class MappedFile {
 public:
  explicit MappedFile(std::string path);  // throws kvq::Error(io_error) if the file cannot be opened or mapped
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::span<const std::uint8_t> bytes() const { return {data_, size_}; }
  [[nodiscard]] std::uint64_t size() const { return size_; }

 private:
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// Sequential little-endian reads from a byte range; `what` names the field in the error of a short read.
class ByteReader {
 public:
  ByteReader(std::span<const std::uint8_t> bytes, std::string_view file) : bytes_(bytes), file_(file) {}

  template <class T>
  T read(std::string_view what) {
    static_assert(std::is_trivially_copyable_v<T>);
    const std::uint8_t* source = take(sizeof(T), what);
    T value;
    std::memcpy(&value, source, sizeof(T));
    return value;
  }
  std::string_view read_bytes(std::uint64_t count, std::string_view what) {
    return {reinterpret_cast<const char*>(take(count, what)), static_cast<std::size_t>(count)};
  }

  [[nodiscard]] std::uint64_t offset() const { return offset_; }
  [[nodiscard]] std::uint64_t remaining() const { return bytes_.size() - offset_; }
  [[nodiscard]] std::string_view file() const { return file_; }

 private:
  const std::uint8_t* take(std::uint64_t count, std::string_view what) {
    // Not require(): the message would be built on every read.
    if (count > remaining())
      throw Error(ErrorCode::io_error, std::string(file_) + ": truncated at byte " + std::to_string(offset_) +
                                           " while reading " + std::string(what) + " (" + std::to_string(count) +
                                           " bytes wanted, " + std::to_string(remaining()) + " left)");
    const std::uint8_t* at = bytes_.data() + offset_;
    offset_ += count;
    return at;
  }

  std::span<const std::uint8_t> bytes_;
  std::string_view file_;
  std::uint64_t offset_ = 0;
};

}  // namespace kvq::llama
