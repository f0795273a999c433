// The ggml tensor element types a GGUF file may hold, and dequantization of the ones this example reads.
//
// Block layouts (ggml's ggml-common.h, as the GGUF specification refers to them): a row of a quantized tensor is
// a sequence of blocks of 32 elements, each block self-contained:
//   Q8_0  34 bytes: fp16 scale d, 32 int8 codes q;               x[i] = d * q[i]
//   Q4_0  18 bytes: fp16 scale d, 16 bytes of 4-bit codes;        x[i] = d * (q[i] - 8)
//   Q4_1  20 bytes: fp16 scale d, fp16 minimum m, 16 code bytes;  x[i] = d * q[i] + m
// In the 4-bit types byte j holds element j in its low nibble and element j + 16 in its high nibble. F32, F16 and
// BF16 are plain little-endian arrays.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace kvq::llama {

enum class GgmlType : std::uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q8_0 = 8,
  bf16 = 30,
};

struct GgmlTypeInfo {
  GgmlType type;
  int block_elements;  // elements per block (1 for the float types)
  int block_bytes;
};

// The info of a supported type, or nothing for any other id (including real ggml types such as Q5_K that this
// example does not dequantize).
std::optional<GgmlTypeInfo> supported_ggml_type(std::uint32_t type);

// A readable name for any ggml type id, for error messages ("Q5_K (13)", "unknown type 99").
std::string ggml_type_name(std::uint32_t type);

// Bytes of `elements` elements of `info` (elements must be a multiple of block_elements).
[[nodiscard]] inline std::uint64_t ggml_bytes(const GgmlTypeInfo& info, std::uint64_t elements) {
  return elements / static_cast<std::uint64_t>(info.block_elements) * static_cast<std::uint64_t>(info.block_bytes);
}

// Dequantizes `elements` elements (a multiple of the type's block size) from `data` into `out`.
void dequantize_ggml(GgmlType type, const std::uint8_t* data, std::uint64_t elements, float* out);

}  // namespace kvq::llama
