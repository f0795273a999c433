// Bit packing of 2/3/4/8-bit codes. Codes are packed in UNITS of 32 consecutive codes along the group axis; a
// unit of b-bit codes is exactly b 32-bit little-endian words, so a kernel unpacks 32/b codes from one load:
//   8-bit: word w, byte j          = code 4w + j
//   4-bit: word w, bits [4j, 4j+4) = code 8w + j
//   2-bit: word w, bits [2j, 2j+2) = code 16w + j
//   3-bit: words 0-1 hold the low two bits of codes 0..31 in the 2-bit layout; word 2, bit j = bit 2 of code j
// Natural order within a word: `(word >> 4k) & 0x000F000F` yields codes k and k+4 side by side, which is the
// form the half2 "magic number" conversion wants.
#pragma once

#include <cstdint>
#include <cstring>

#include "kvq/core/macros.hpp"

namespace kvq {

template <int Bits>
inline constexpr bool is_supported_code_width = Bits == 2 || Bits == 3 || Bits == 4 || Bits == 8;

inline constexpr int codes_per_unit = 32;

template <int Bits>
struct PackedUnit {
  static_assert(is_supported_code_width<Bits>, "kvq: packed codes must be 2, 3, 4 or 8 bits wide");
  static constexpr int words = Bits;  // 32 codes x Bits bits = Bits words of 32 bits
  static constexpr int bytes = 4 * Bits;

  KVQ_HOST_DEVICE static void pack(const std::uint8_t* codes, std::uint8_t* out) noexcept {
    std::uint32_t w[words] = {};
    if constexpr (Bits == 3) {
      for (int j = 0; j < codes_per_unit; ++j) {
        w[j / 16] |= static_cast<std::uint32_t>(codes[j] & 0x3u) << (2 * (j % 16));
        w[2] |= static_cast<std::uint32_t>((codes[j] >> 2) & 0x1u) << j;
      }
    } else {
      constexpr int per_word = 32 / Bits;
      constexpr std::uint32_t mask = (1u << Bits) - 1u;
      for (int j = 0; j < codes_per_unit; ++j)
        w[j / per_word] |= (static_cast<std::uint32_t>(codes[j]) & mask) << (Bits * (j % per_word));
    }
    memcpy(out, w, sizeof(w));
  }

  // Code `index` (0..31) of the unit starting at `unit`.
  KVQ_HOST_DEVICE static std::uint32_t unpack(const std::uint8_t* unit, int index) noexcept {
    if constexpr (Bits == 3) {
      std::uint32_t low, high;
      memcpy(&low, unit + 4 * (index / 16), 4);
      memcpy(&high, unit + 8, 4);
      return ((low >> (2 * (index % 16))) & 0x3u) | (((high >> index) & 0x1u) << 2);
    } else {
      constexpr int per_word = 32 / Bits;
      std::uint32_t word;
      memcpy(&word, unit + 4 * (index / per_word), 4);
      return (word >> (Bits * (index % per_word))) & ((1u << Bits) - 1u);
    }
  }
};

}  // namespace kvq
