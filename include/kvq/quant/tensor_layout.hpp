// How a quantized [tokens, heads, head_dim] tensor is stored: blocks (concept.hpp) in token-block-major order,
// block (b, h) = tokens [b*T, b*T+T) of head h at index b*heads + h, in two planes:
//   codes: blocks * code_bytes_per_block bytes, block i at i * code_bytes_per_block
//   meta:  blocks * meta_bytes_per_block bytes, block i at i * meta_bytes_per_block
// A partial last token block (tokens not a multiple of T) is stored whole, its missing rows coded as zero.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "kvq/core/error.hpp"
#include "kvq/core/macros.hpp"
#include "kvq/quant/concept.hpp"

namespace kvq {

struct TensorShape {
  std::int64_t tokens = 0;
  int heads = 0;
  int head_dim = 0;

  [[nodiscard]] KVQ_HOST_DEVICE constexpr std::int64_t elements() const noexcept {
    return tokens * heads * head_dim;
  }
};

// Which domain dequantization returns for rotated policies.
enum class Domain {
  original,  // what was quantized (rotation undone)
  stored,    // the policy's storage domain (rotated for rotated policies)
};

template <QuantizationPolicy P>
struct QuantizedTensorLayout {
  TensorShape shape;

  [[nodiscard]] KVQ_HOST_DEVICE constexpr std::int64_t token_blocks() const noexcept {
    return (shape.tokens + P::tokens_per_block - 1) / P::tokens_per_block;
  }
  [[nodiscard]] KVQ_HOST_DEVICE constexpr std::int64_t blocks() const noexcept { return token_blocks() * shape.heads; }
  [[nodiscard]] KVQ_HOST_DEVICE constexpr std::int64_t code_bytes() const noexcept {
    return blocks() * P::code_bytes_per_block;
  }
  [[nodiscard]] KVQ_HOST_DEVICE constexpr std::int64_t meta_bytes() const noexcept {
    return blocks() * P::meta_bytes_per_block;
  }
  // Rows of token block b that hold tokens (T, or fewer for the last block).
  [[nodiscard]] KVQ_HOST_DEVICE constexpr int rows_in(std::int64_t token_block) const noexcept {
    const std::int64_t left = shape.tokens - token_block * P::tokens_per_block;
    return static_cast<int>(left < P::tokens_per_block ? left : P::tokens_per_block);
  }
  [[nodiscard]] KVQ_HOST_DEVICE static BlockRef block(std::uint8_t* codes, std::uint8_t* meta,
                                                      std::int64_t index) noexcept {
    return {codes + index * P::code_bytes_per_block, meta + index * P::meta_bytes_per_block};
  }
  [[nodiscard]] KVQ_HOST_DEVICE static ConstBlockRef block(const std::uint8_t* codes, const std::uint8_t* meta,
                                                           std::int64_t index) noexcept {
    return {codes + index * P::code_bytes_per_block, meta + index * P::meta_bytes_per_block};
  }

  // Throws kvq::Error naming the problem if the shape cannot be stored with P.
  void validate() const {
    require(shape.tokens >= 0, ErrorCode::invalid_argument,
            "tensor tokens must be >= 0, got " + std::to_string(shape.tokens));
    require(shape.heads > 0, ErrorCode::invalid_argument, "tensor heads must be > 0, got " + std::to_string(shape.heads));
    require(shape.head_dim == P::head_dim, ErrorCode::invalid_argument,
            "tensor head_dim " + std::to_string(shape.head_dim) + " does not match the policy's head_dim " +
                std::to_string(P::head_dim));
    const std::int64_t limit = std::numeric_limits<std::int64_t>::max() / 8;
    require(shape.tokens <= limit / (static_cast<std::int64_t>(shape.heads) * P::head_dim),
            ErrorCode::invalid_argument, "tensor of " + std::to_string(shape.tokens) + " tokens is too large");
  }
};

// One row of a block, all head_dim channels, in the requested domain.
template <QuantizationPolicy P>
KVQ_HOST_DEVICE KVQ_INLINE void dequantize_row(ConstBlockRef block, int row, float* out,
                                               const typename P::Params& params, Domain domain) {
  P::dequantize(block, row, 0, P::head_dim, out, params);
  if constexpr (P::rotated) {
    if (domain == Domain::original) P::unrotate(out, params);
  }
}

}  // namespace kvq
