// The quantization policy concept: the one door through which built-in and user policies reach kvq's
// containers and kernels.
//
// A policy quantizes BLOCKS. A block holds `tokens_per_block` tokens x `head_dim` channels of ONE KV head:
// one token for per-token policies, `group_size` consecutive tokens for per-channel (KIVI/KVQuant key) policies.
// A block is stored as two byte records that a container may place wherever it likes (e.g. codes of a page
// together, metadata of a page together):
//   codes: `code_bytes_per_block` bytes, a multiple of 4, 4-byte aligned (packed integer codes, see packing.hpp)
//   meta:  `meta_bytes_per_block` bytes, 2-byte aligned (scales, zero points, outliers ...)
// A block is quantized in two steps: an optional `prepare_block` (one thread per block: block-wide transforms
// such as rotation and outlier extraction, statistics of groups wider than one 32-code unit) and then
// `groups_per_block` independent work units ("groups") that may run in parallel, one thread each. For plain
// uniform and codebook policies a unit is one quantization group; where prepare_block computed the scales, a unit
// is one 32-code slice of a group.
//
// Required members of a policy P (all functions static, KVQ_HOST_DEVICE, usable on host and device):
//   typename P::Params            runtime data (codebooks, thresholds, seeds), trivially copyable: passed to
//                                 kernels by value; its pointers must point to memory the caller can read
//                                 where the policy runs (host memory on host, device memory on device)
//   int  head_dim, tokens_per_block, groups_per_block, code_bytes_per_block, meta_bytes_per_block
//   bool rotated                  true if dequantize() yields a rotated domain (see rotation.hpp)
//   double bits_per_element       exact storage cost, codes and all metadata: (code+meta bytes)*8 / elements
//   void prepare_block(float* tile, int rows, BlockRef out, const Params&)   (optional)
//        runs once per block before its groups; may transform the tile and write block-level metadata.
//   bool quantize_group(float* tile, int rows, int group, BlockRef out, const Params&)
//        tile: the block's input, `rows` x head_dim floats, row-major (rows <= tokens_per_block; a partial
//        last block leaves the codes of the missing rows zero). The policy may rewrite the elements of its own
//        group in place (a staging buffer, not the caller's tensor). Returns false if the group was poisoned
//        (non-finite input, see docs/policies.md): then every element of the group dequantizes to NaN. A poisoned
//        group is reported by exactly one of its units.
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

template <class P>
concept HasPrepareBlock = requires(float* tile, int rows, BlockRef out, const typename P::Params& params) {
  P::prepare_block(tile, rows, out, params);
};

// The block step of a policy, if it has one.
template <QuantizationPolicy P>
KVQ_HOST_DEVICE KVQ_INLINE void prepare_block(float* tile, int rows, BlockRef out, const typename P::Params& params) {
  if constexpr (HasPrepareBlock<P>) P::prepare_block(tile, rows, out, params);
}

// Quantize a whole block: the block step, then every group in order. `tile` is rows x head_dim floats (modified in
// place). Returns the number of poisoned groups.
template <QuantizationPolicy P>
KVQ_HOST_DEVICE KVQ_INLINE int quantize_block(float* tile, int rows, BlockRef out,
                                              const typename P::Params& params) {
  prepare_block<P>(tile, rows, out, params);
  int poisoned = 0;
  for (int group = 0; group < P::groups_per_block; ++group)
    poisoned += P::quantize_group(tile, rows, group, out, params) ? 0 : 1;
  return poisoned;
}

}  // namespace kvq
