// The quantization policy concept: the one door through which built-in and user policies reach kvq's
// containers and kernels.
//
// A policy quantizes BLOCKS. A block holds `tokens_per_block` tokens x `head_dim` channels of ONE KV head:
// one token for per-token policies, `group_size` consecutive tokens for per-channel (KIVI/KVQuant key) policies.
// A block is stored as two byte records that a container may place wherever it likes (e.g. codes of a page
// together, metadata of a page together):
//   codes: `code_bytes_per_block` bytes, a multiple of 4, 4-byte aligned (packed integer codes, see packing.hpp)
//   meta:  `meta_bytes_per_block` bytes, 2-byte aligned (scales, zero points, outliers ...)
// A block splits into `groups_per_block` independent quantization groups that may be quantized in parallel
// (one thread each); wrapping policies (rotation, outliers) treat the whole block as one group.
//
// Required members of a policy P (all functions static, KVQ_HOST_DEVICE, usable on host and device):
//   typename P::Params            runtime data (codebooks, thresholds, seeds), trivially copyable: passed to
//                                 kernels by value; its pointers must point to memory the caller can read
//                                 where the policy runs (host memory on host, device memory on device)
//   int  head_dim, tokens_per_block, groups_per_block, code_bytes_per_block, meta_bytes_per_block
//   bool rotated                  true if dequantize() yields a rotated domain (see rotation.hpp)
//   double bits_per_element       exact storage cost, codes and all metadata: (code+meta bytes)*8 / elements
//   bool quantize_group(float* tile, int rows, int group, BlockRef out, const Params&)
//        tile: the block's input, `rows` x head_dim floats, row-major (rows <= tokens_per_block; a partial
//        last block leaves the codes of the missing rows zero). The policy may rewrite the elements of its own
//        group in place (a staging buffer, not the caller's tensor). Returns false if the group was poisoned
//        (non-finite input, see docs/policies.md): then every element of the group dequantizes to NaN.
//   void dequantize(ConstBlockRef in, int row, int channel_begin, int count, float* out, const Params&)
//        writes `count` consecutive channels of one row of the block as floats.
#pragma once

#include <concepts>
#include <cstdint>
#include <type_traits>

#include "kvq/core/macros.hpp"

namespace kvq {

// Which axis a quantization group runs along.
enum class Axis {
  per_token,    // a group is `group_size` consecutive channels of one token (usual for values)
  per_channel,  // a group is `group_size` consecutive tokens of one channel (KIVI/KVQuant keys)
};

struct BlockRef {
  std::uint8_t* codes;
  std::uint8_t* meta;
};

struct ConstBlockRef {
  const std::uint8_t* codes;
  const std::uint8_t* meta;
};

template <class P>
concept QuantizationPolicy =
    requires {
      typename P::Params;
      { P::head_dim } -> std::convertible_to<int>;
      { P::tokens_per_block } -> std::convertible_to<int>;
      { P::groups_per_block } -> std::convertible_to<int>;
      { P::code_bytes_per_block } -> std::convertible_to<int>;
      { P::meta_bytes_per_block } -> std::convertible_to<int>;
      { P::rotated } -> std::convertible_to<bool>;
      { P::bits_per_element } -> std::convertible_to<double>;
    } && std::is_trivially_copyable_v<typename P::Params> && (P::code_bytes_per_block % 4 == 0) &&
    (P::meta_bytes_per_block % 2 == 0) && (P::head_dim > 0) && (P::tokens_per_block > 0) &&
    requires(float* tile, int rows, int group, BlockRef out, ConstBlockRef in, int channel, int count,
             float* values, const typename P::Params& params) {
      { P::quantize_group(tile, rows, group, out, params) } -> std::same_as<bool>;
      { P::dequantize(in, rows, channel, count, values, params) } -> std::same_as<void>;
    };

// Exact bits per element of a block record, including every byte of metadata.
template <int CodeBytes, int MetaBytes, int Elements>
inline constexpr double bits_per_element_of = (CodeBytes + MetaBytes) * 8.0 / Elements;

// Quantize a whole block: every group in order. `tile` is rows x head_dim floats (modified in place).
// Returns the number of poisoned groups.
template <QuantizationPolicy P>
KVQ_HOST_DEVICE KVQ_INLINE int quantize_block(float* tile, int rows, BlockRef out,
                                              const typename P::Params& params) {
  int poisoned = 0;
  for (int group = 0; group < P::groups_per_block; ++group)
    poisoned += P::quantize_group(tile, rows, group, out, params) ? 0 : 1;
  return poisoned;
}

}  // namespace kvq
