// GGUF metadata of every value type, ggml block layouts with hand-computed values, and safetensors dtypes.
#include <doctest/doctest.h>

#include <cmath>

#include "model/gguf_file.hpp"
#include "model/safetensors_file.hpp"
#include "tiny_model.hpp"

using namespace kvq::llama;
using namespace kvq::llama::test;

TEST_CASE("GGUF metadata: every value type, arrays of strings, numbers and arrays") {
  TempDir dir;
  GgufWriter w;
  w.add_raw("u8", 0, GgufWriter::encode<std::uint8_t>(200));
  w.add_raw("i8", 1, GgufWriter::encode<std::int8_t>(-100));
  w.add_raw("u16", 2, GgufWriter::encode<std::uint16_t>(60000));
  w.add_raw("i16", 3, GgufWriter::encode<std::int16_t>(-30000));
  w.add_u32("u32", 4000000000u);
  w.add_i32("i32", -2000000000);
  w.add_f32("f32", 0.25f);
  w.add_bool("yes", true);
  w.add_string("text", "héllo");
  w.add_raw("u64", 10, GgufWriter::encode<std::uint64_t>(std::uint64_t{1} << 40));
  w.add_raw("i64", 11, GgufWriter::encode<std::int64_t>(-(std::int64_t{1} << 40)));
  w.add_raw("f64", 12, GgufWriter::encode<double>(-1.5));
  w.add_string_array("strings", {"a", "", "ccc"});
  w.add_i32_array("ints", {1, -2, 3});
  // An array of two arrays of u8.
  const std::string inner = GgufWriter::encode<std::uint32_t>(0) + GgufWriter::encode<std::uint64_t>(2) + "\x01\x02";
  w.add_raw("nested", 9, GgufWriter::encode<std::uint32_t>(9) + GgufWriter::encode<std::uint64_t>(2) + inner + inner);
  write_file(dir / "meta.gguf", w.bytes());

  const GgufFile file((dir / "meta.gguf").string());
  CHECK(file.version() == 3);
  CHECK(file.integer("u8") == 200);
  CHECK(file.integer("i8") == -100);
  CHECK(file.integer("u16") == 60000);
  CHECK(file.integer("i16") == -30000);
  CHECK(file.integer("u32") == 4000000000ll);
  CHECK(file.integer("i32") == -2000000000);
  CHECK(file.number("f32") == 0.25);
  CHECK(file.optional_boolean("yes") == true);
  CHECK(file.string("text") == "héllo");
  CHECK(file.integer("u64") == (std::int64_t{1} << 40));
  CHECK(file.integer("i64") == -(std::int64_t{1} << 40));
  CHECK(file.number("f64") == -1.5);
  CHECK(file.number("u32") == 4000000000.0);  // integers read as numbers too
  CHECK(file.string_array("strings") == std::vector<std::string>{"a", "", "ccc"});
  CHECK(file.integer_array("ints") == std::vector<std::int64_t>{1, -2, 3});
  const auto& nested = std::get<GgufArray>(file.find("nested")->value);
  REQUIRE(nested.items.size() == 2);
  CHECK(std::get<GgufArray>(nested.items[1].value).items.size() == 2);
  CHECK(file.keys().size() == 15);
  CHECK(file.find("absent") == nullptr);
  CHECK_THROWS_WITH_AS(static_cast<void>(file.string("u32")),
                       doctest::Contains("key u32 is a uint32, expected a string"), kvq::Error);
  CHECK_THROWS_WITH_AS(static_cast<void>(file.integer("absent")), doctest::Contains("missing metadata key absent"),
                       kvq::Error);
}

TEST_CASE("ggml blocks: F32, F16, BF16, Q8_0, Q4_0 and Q4_1 dequantize to hand-computed values") {
  TempDir dir;
  GgufWriter w;
  w.set_alignment(64);  // a non-default alignment must be honoured for every tensor
  using E = GgufWriter;
  w.add_tensor("f32", {3}, 0, encode_f32({1.5f, -2.0f, 1e-30f}));
  // fp16 bits: 1.0, -2.0, 65504 (largest), 2^-24 (smallest subnormal); bf16 bits: 1.0, 3.140625, -0.5.
  w.add_tensor("f16", {4}, 1,
               E::encode<std::uint16_t>(0x3C00) + E::encode<std::uint16_t>(0xC000) + E::encode<std::uint16_t>(0x7BFF) +
                   E::encode<std::uint16_t>(0x0001));
  w.add_tensor("bf16", {3}, 30,
               E::encode<std::uint16_t>(0x3F80) + E::encode<std::uint16_t>(0x4049) + E::encode<std::uint16_t>(0xBF00));
  // Q8_0: scale 0.5 (fp16 0x3800), codes -16..15.
  std::string q8 = E::encode<std::uint16_t>(0x3800);
  for (int i = 0; i < 32; ++i) q8 += static_cast<char>(static_cast<std::int8_t>(i - 16));
  w.add_tensor("q8_0", {32}, 8, q8);
  // Q4_0: scale 0.25 (0x3400); byte j = code j (low nibble) | code j+16 (high nibble), codes j and 15 - j.
  std::string q4_0 = E::encode<std::uint16_t>(0x3400);
  for (int j = 0; j < 16; ++j) q4_0 += static_cast<char>(j | ((15 - j) << 4));
  w.add_tensor("q4_0", {32}, 2, q4_0);
  // Q4_1: scale 2 (0x4000), minimum -3 (0xC200), the same codes.
  std::string q4_1 = E::encode<std::uint16_t>(0x4000) + E::encode<std::uint16_t>(0xC200);
  for (int j = 0; j < 16; ++j) q4_1 += static_cast<char>(j | ((15 - j) << 4));
  w.add_tensor("q4_1", {32, 2}, 3, q4_1 + q4_1);
  write_file(dir / "blocks.gguf", w.bytes());

  const GgufFile file((dir / "blocks.gguf").string());
  CHECK(file.alignment() == 64);
  CHECK(file.data_offset() % 64 == 0);
  for (const GgufTensorInfo& info : file.tensors()) CHECK(info.offset % 64 == 0);
  CHECK(file.read_float("f32", {3}) == std::vector<float>{1.5f, -2.0f, 1e-30f});
  CHECK(file.read_float("f16", {4}) == std::vector<float>{1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24)});
  CHECK(file.read_float("bf16", {3}) == std::vector<float>{1.0f, 3.140625f, -0.5f});
  const auto q8_values = file.read_float("q8_0", {32});
  const auto q4_0_values = file.read_float("q4_0", {32});
  const auto q4_1_values = file.read_float("q4_1", {32, 2});
  for (int i = 0; i < 32; ++i) {
    CHECK(q8_values[static_cast<std::size_t>(i)] == 0.5f * static_cast<float>(i - 16));
    const int code = i < 16 ? i : 15 - (i - 16);
    CHECK(q4_0_values[static_cast<std::size_t>(i)] == 0.25f * static_cast<float>(code - 8));
    CHECK(q4_1_values[static_cast<std::size_t>(i)] == 2.0f * static_cast<float>(code) - 3.0f);
    CHECK(q4_1_values[static_cast<std::size_t>(i + 32)] == q4_1_values[static_cast<std::size_t>(i)]);
  }
}

TEST_CASE("GGUF quantizing writer and loader agree within the block's rounding") {
  // The test writer's quantizers put every element within half a step of its block's grid; the loader must
  // give those grid values back (this checks the nibble order and scales of a whole random tensor).
  TempDir dir;
  std::vector<float> values(32 * 8);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = std::sin(static_cast<float>(i) * 0.37f) * 3.0f;
  GgufWriter w;
  for (GgmlType type : {GgmlType::q8_0, GgmlType::q4_0, GgmlType::q4_1, GgmlType::f16, GgmlType::bf16})
    w.add_tensor(ggml_type_name(static_cast<std::uint32_t>(type)), {32, 8}, static_cast<std::uint32_t>(type),
                 encode_ggml(type, values));
  write_file(dir / "q.gguf", w.bytes());
  const GgufFile file((dir / "q.gguf").string());
  // Steps: Q8_0 amax/127 = 3/127; Q4_0 amax/8 = 3/8 (codes span -8..7, so up to one step at the far end);
  // Q4_1 range/15 = 6/15; fp16/bf16 relative 2^-11 / 2^-8. Each bound is half a step plus the fp16 rounding of
  // the scale, which moves far codes by up to 8 * 2^-11 of the value.
  const struct {
    GgmlType type;
    float bound;
  } cases[] = {{GgmlType::q8_0, 3.0f / 127 / 2 + 0.01f},
               {GgmlType::q4_0, 3.0f / 8 + 0.01f},
               {GgmlType::q4_1, 6.0f / 15 / 2 + 0.01f},
               {GgmlType::f16, 3.0f / 2048},
               {GgmlType::bf16, 3.0f / 256}};
  for (const auto& c : cases) {
    const auto loaded = file.read_float(ggml_type_name(static_cast<std::uint32_t>(c.type)), {32, 8});
    float worst = 0;
    for (std::size_t i = 0; i < values.size(); ++i) worst = std::max(worst, std::fabs(loaded[i] - values[i]));
    INFO(ggml_type_name(static_cast<std::uint32_t>(c.type)), " worst error ", worst);
    CHECK(worst <= c.bound);
    CHECK(worst > 0);  // the file really was quantized
  }
}

TEST_CASE("safetensors: F32, F16 and BF16 tensors read back") {
  TempDir dir;
  const std::vector<float> values = {1.0f, -0.5f, 3.140625f, 0.0f, 65504.0f, -2.0f};
  write_file(dir / "t.safetensors",
             safetensors_bytes({{"a.f32", "F32", {2, 3}, values},
                                {"b.f16", "F16", {6}, values},
                                {"c.bf16", "BF16", {3, 2}, {1.0f, -0.5f, 3.140625f, 0.0f, 2.0f, -2.0f}}}));
  const SafetensorsFile file((dir / "t.safetensors").string());
  CHECK(file.names().size() == 3);
  CHECK(file.read_float("a.f32", {2, 3}) == values);
  CHECK(file.read_float("b.f16", {6}) == values);  // every value is exact in fp16
  CHECK(file.read_float("c.bf16", {3, 2}) == std::vector<float>{1.0f, -0.5f, 3.140625f, 0.0f, 2.0f, -2.0f});
  CHECK_THROWS_WITH_AS(static_cast<void>(file.read_float("a.f32", {3, 2})),
                       doctest::Contains("tensor a.f32 has shape [2, 3], expected [3, 2]"), kvq::Error);
}
