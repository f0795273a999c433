// Where the elements of a quantization group live inside a block, and where its packed codes go.
// Per-token: the block is one token; group g covers channels [g*G, (g+1)*G).
// Per-channel: the block is G consecutive tokens; group g is channel g over those G tokens.
// Codes are packed along the group axis in 32-code units (packing.hpp), group after group, so each group owns
// whole 32-bit words and groups can be written by different threads without sharing a word.
#pragma once

#include <cstdint>

#include "kvq/core/macros.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/packing.hpp"

namespace kvq {

template <int HeadDim, int GroupSize, Axis GroupAxis, int Bits>
struct GroupGeometry {
  static_assert(is_supported_code_width<Bits>, "kvq: bits must be 2, 3, 4 or 8");
  static_assert(HeadDim > 0 && HeadDim % 32 == 0, "kvq: head_dim must be a positive multiple of 32");
  static_assert(GroupSize > 0 && GroupSize % 32 == 0,
                "kvq: group_size must be a positive multiple of 32 (codes pack in units of 32)");
  static_assert(GroupAxis == Axis::per_channel || HeadDim % GroupSize == 0,
                "kvq: group_size must divide head_dim for per-token groups");

  static constexpr int head_dim = HeadDim;
  static constexpr int group_size = GroupSize;
  static constexpr int tokens_per_block = GroupAxis == Axis::per_token ? 1 : GroupSize;
  static constexpr int groups_per_block = GroupAxis == Axis::per_token ? HeadDim / GroupSize : HeadDim;
  static constexpr int elements_per_block = tokens_per_block * HeadDim;
  static constexpr int code_bytes_per_group = GroupSize / codes_per_unit * PackedUnit<Bits>::bytes;
  static constexpr int code_bytes_per_block = groups_per_block * code_bytes_per_group;

  KVQ_HOST_DEVICE static constexpr int row_of([[maybe_unused]] int group, int index) noexcept {
    return GroupAxis == Axis::per_token ? 0 : index;
  }
  KVQ_HOST_DEVICE static constexpr int channel_of(int group, int index) noexcept {
    return GroupAxis == Axis::per_token ? group * GroupSize + index : group;
  }
  KVQ_HOST_DEVICE static constexpr int group_of([[maybe_unused]] int row, int channel) noexcept {
    return GroupAxis == Axis::per_token ? channel / GroupSize : channel;
  }
  KVQ_HOST_DEVICE static constexpr int index_of(int row, int channel) noexcept {
    return GroupAxis == Axis::per_token ? channel % GroupSize : row;
  }

  // Packs the group's codes (GroupSize of them, zero for missing rows) into its words.
  KVQ_HOST_DEVICE static void store_codes(std::uint8_t* block_codes, int group, const std::uint8_t* codes) noexcept {
    std::uint8_t* base = block_codes + group * code_bytes_per_group;
    for (int unit = 0; unit < GroupSize / codes_per_unit; ++unit)
      PackedUnit<Bits>::pack(codes + unit * codes_per_unit, base + unit * PackedUnit<Bits>::bytes);
  }

  KVQ_HOST_DEVICE static std::uint32_t load_code(const std::uint8_t* block_codes, int group, int index) noexcept {
    const std::uint8_t* unit = block_codes + group * code_bytes_per_group + (index / codes_per_unit) * PackedUnit<Bits>::bytes;
    return PackedUnit<Bits>::unpack(unit, index % codes_per_unit);
  }
};

}  // namespace kvq
