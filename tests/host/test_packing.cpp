// Bit packing: documented layout and round trips for 2/3/4/8-bit codes.
#include <doctest/doctest.h>

#include <cstring>
#include <random>

#include "../support/policy_fixtures.hpp"

using namespace kvq;

TEST_CASE_TEMPLATE("a unit of 32 codes packs into `bits` words and unpacks to the same codes", Width,
                   std::integral_constant<int, 2>, std::integral_constant<int, 3>, std::integral_constant<int, 4>,
                   std::integral_constant<int, 8>) {
  constexpr int bits = Width::value;
  std::mt19937 rng(kvq::testing::fresh_seed());
  for (int trial = 0; trial < 1000; ++trial) {
    std::uint8_t codes[32];
    for (auto& c : codes) c = static_cast<std::uint8_t>(rng() & ((1u << bits) - 1u));
    std::uint8_t packed[PackedUnit<bits>::bytes + 4];
    std::memset(packed, 0xEE, sizeof(packed));
    PackedUnit<bits>::pack(codes, packed);
    REQUIRE(packed[PackedUnit<bits>::bytes] == 0xEE);  // writes exactly `bits` words
    for (int j = 0; j < 32; ++j) REQUIRE(PackedUnit<bits>::unpack(packed, j) == codes[j]);
  }
}

TEST_CASE("packed layouts are the documented ones") {
  std::uint8_t codes[32];
  for (int j = 0; j < 32; ++j) codes[j] = static_cast<std::uint8_t>(j);
  std::uint32_t words[8];

  std::uint8_t four[32];
  for (int j = 0; j < 32; ++j) four[j] = codes[j] & 0xF;
  PackedUnit<4>::pack(four, reinterpret_cast<std::uint8_t*>(words));
  CHECK(words[0] == 0x76543210u);  // code 8w + j in nibble j
  CHECK(words[1] == 0xFEDCBA98u);

  std::uint8_t two[32];
  for (int j = 0; j < 32; ++j) two[j] = static_cast<std::uint8_t>(j % 4);
  PackedUnit<2>::pack(two, reinterpret_cast<std::uint8_t*>(words));
  CHECK(words[0] == 0xE4E4E4E4u);  // code 16w + j in bits [2j, 2j+2)

  std::uint8_t three[32];
  for (int j = 0; j < 32; ++j) three[j] = static_cast<std::uint8_t>(j % 8);
  PackedUnit<3>::pack(three, reinterpret_cast<std::uint8_t*>(words));
  CHECK(words[0] == 0xE4E4E4E4u);  // low two bits, 2-bit layout
  CHECK(words[2] == 0xF0F0F0F0u);  // bit 2 of code j in bit j

  PackedUnit<8>::pack(codes, reinterpret_cast<std::uint8_t*>(words));
  CHECK(words[0] == 0x03020100u);
}
