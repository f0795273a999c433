#include "model/ggml_blocks.hpp"

#include <cstring>

#include "kvq/core/float16.hpp"

namespace kvq::llama {
namespace {

constexpr int block_size = 32;

float read_f16(const std::uint8_t* bytes) {
  f16 value;
  std::memcpy(&value.bits, bytes, 2);
  return to_float(value);
}

float read_bf16(const std::uint8_t* bytes) {
  bf16 value;
  std::memcpy(&value.bits, bytes, 2);
  return to_float(value);
}

void dequantize_q8_0(const std::uint8_t* block, float* out) {
  const float scale = read_f16(block);
  for (int i = 0; i < block_size; ++i) out[i] = scale * static_cast<float>(static_cast<std::int8_t>(block[2 + i]));
}

void dequantize_q4_0(const std::uint8_t* block, float* out) {
  const float scale = read_f16(block);
  const std::uint8_t* codes = block + 2;
  for (int i = 0; i < block_size / 2; ++i) {
    out[i] = scale * static_cast<float>((codes[i] & 0x0F) - 8);
    out[i + block_size / 2] = scale * static_cast<float>((codes[i] >> 4) - 8);
  }
}

void dequantize_q4_1(const std::uint8_t* block, float* out) {
  const float scale = read_f16(block);
  const float minimum = read_f16(block + 2);
  const std::uint8_t* codes = block + 4;
  for (int i = 0; i < block_size / 2; ++i) {
    out[i] = scale * static_cast<float>(codes[i] & 0x0F) + minimum;
    out[i + block_size / 2] = scale * static_cast<float>(codes[i] >> 4) + minimum;
  }
}

}  // namespace

std::optional<GgmlTypeInfo> supported_ggml_type(std::uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::f32: return GgmlTypeInfo{GgmlType::f32, 1, 4};
    case GgmlType::f16: return GgmlTypeInfo{GgmlType::f16, 1, 2};
    case GgmlType::bf16: return GgmlTypeInfo{GgmlType::bf16, 1, 2};
    case GgmlType::q8_0: return GgmlTypeInfo{GgmlType::q8_0, block_size, 2 + block_size};
    case GgmlType::q4_0: return GgmlTypeInfo{GgmlType::q4_0, block_size, 2 + block_size / 2};
    case GgmlType::q4_1: return GgmlTypeInfo{GgmlType::q4_1, block_size, 4 + block_size / 2};
  }
  return std::nullopt;
}

std::string ggml_type_name(std::uint32_t type) {
  // Ids from ggml's enum ggml_type; the gaps (4, 5) are types ggml removed.
  static constexpr const char* names[] = {"F32",     "F16",    "Q4_0",    "Q4_1",  nullptr,  nullptr, "Q5_0",  "Q5_1",
                                          "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
                                          "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
                                          "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M", "BF16"};
  if (type < std::size(names) && names[type] != nullptr)
    return std::string(names[type]) + " (" + std::to_string(type) + ")";
  return "unknown type " + std::to_string(type);
}

void dequantize_ggml(GgmlType type, const std::uint8_t* data, std::uint64_t elements, float* out) {
  switch (type) {
    case GgmlType::f32: std::memcpy(out, data, elements * 4); return;
    case GgmlType::f16:
      for (std::uint64_t i = 0; i < elements; ++i) out[i] = read_f16(data + 2 * i);
      return;
    case GgmlType::bf16:
      for (std::uint64_t i = 0; i < elements; ++i) out[i] = read_bf16(data + 2 * i);
      return;
    case GgmlType::q8_0:
      for (std::uint64_t b = 0; b < elements / block_size; ++b) dequantize_q8_0(data + b * 34, out + b * block_size);
      return;
    case GgmlType::q4_0:
      for (std::uint64_t b = 0; b < elements / block_size; ++b) dequantize_q4_0(data + b * 18, out + b * block_size);
      return;
    case GgmlType::q4_1:
      for (std::uint64_t b = 0; b < elements / block_size; ++b) dequantize_q4_1(data + b * 20, out + b * block_size);
      return;
  }
}

}  // namespace kvq::llama
