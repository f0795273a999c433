// Named KV presets: every name reaches its type through the one dispatcher, bits per element are the hand-counted
// bytes of each record, effective bits follow the cache's flush rule, the calibration-free defaults make a working
// cache, and unknown names or head_dims are errors that say what exists.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "../support/policy_fixtures.hpp"
#include "kvq/cache/host_paged_cache.hpp"
#include "kvq/cache/presets.hpp"

using namespace kvq;

namespace {

template <int D>
void check_dispatch() {
  // name -> the type it must be, written out independently of BuiltinPresets.
  auto expect = [](std::string_view name, auto expected) {
    using Expected = typename decltype(expected)::type;
    const bool same = visit_preset(name, D, [&]<class P>() { return std::is_same_v<P, Expected>; });
    CHECK_MESSAGE(same, name, " at head_dim ", D);
    visit_preset(name, D, [&]<class P>() {
      CHECK(P::name == name);
      CHECK(P::Tier::KeyPolicy::head_dim == D);
    });
  };
  expect("fp16", std::type_identity<presets::Fp16<D>>{});
  expect("int8", std::type_identity<presets::Int8<D>>{});
  expect("fp8-e4m3", std::type_identity<presets::Fp8E4m3<D>>{});
  expect("q4_0", std::type_identity<presets::Q4_0<D>>{});
  expect("kivi-4", std::type_identity<presets::Kivi<D, 4>>{});
  expect("kivi-2", std::type_identity<presets::Kivi<D, 2>>{});
  expect("nuq4", std::type_identity<presets::Nuq<D, 4>>{});
  expect("nuq3", std::type_identity<presets::Nuq<D, 3>>{});
  expect("nuq2", std::type_identity<presets::Nuq<D, 2>>{});
  expect("rot4", std::type_identity<presets::Rotated<D, 4>>{});
  expect("rot3", std::type_identity<presets::Rotated<D, 3>>{});
}

}  // namespace

TEST_CASE("every preset name dispatches to its own type at head_dim 64 and 128") {
  CHECK(preset_names.size() == 11);
  check_dispatch<64>();
  check_dispatch<128>();
}

TEST_CASE("bits per element are the bytes of each record, counted by hand") {
  auto bits = [](std::string_view name, int d) {
    const PresetInfo p = preset_info(name, d);
    return std::pair{p.key_bits, p.value_bits};
  };
  // fp16: 2 bytes per element, no metadata.
  CHECK(bits("fp16", 128) == std::pair{16.0, 16.0});
  // int8, one asymmetric group per token: d code bytes + fp16 scale + fp16 zero = d + 4 bytes per d elements.
  CHECK(bits("int8", 128) == std::pair{8.25, 8.25});  // 132 * 8 / 128
  CHECK(bits("int8", 64) == std::pair{8.5, 8.5});     // 68 * 8 / 64
  // fp8: d code bytes + one fp16 scale.
  CHECK(bits("fp8-e4m3", 128) == std::pair{8.125, 8.125});  // 130 * 8 / 128
  CHECK(bits("fp8-e4m3", 64) == std::pair{8.25, 8.25});     // 66 * 8 / 64
  // q4_0: 16 code bytes + one fp16 scale per 32 elements, whatever d is.
  CHECK(bits("q4_0", 128) == std::pair{4.5, 4.5});
  CHECK(bits("q4_0", 64) == std::pair{4.5, 4.5});
  // KIVI keys, per channel over 32 tokens: 32 * b / 8 code bytes + scale + zero (4 bytes) per 32 elements; values
  // per token in groups of 32: the same count.
  CHECK(bits("kivi-4", 128) == std::pair{5.0, 5.0});  // (16 + 4) * 8 / 32
  CHECK(bits("kivi-2", 128) == std::pair{3.0, 3.0});  // (8 + 4) * 8 / 32
  CHECK(bits("kivi-2", 64) == std::pair{3.0, 3.0});
  // nuq, d = 128. Keys: a block is 128 tokens x 128 channels; codes 128 * 128 * b / 8, scale + offset per channel
  // 128 * 4, one outlier slot (uint16 channel + fp16 value) per token 128 * 4.
  //   nuq4: (8192 + 512 + 512) * 8 / 16384 = 4.5; nuq3: (6144 + 1024) * 8 / 16384 = 3.5; nuq2: (4096 + 1024) -> 2.5
  // Values: one token, codes 128 * b / 8, scale + offset 4, outlier slot 4: nuq4 (64 + 8) * 8 / 128 = 4.5, ...
  CHECK(bits("nuq4", 128) == std::pair{4.5, 4.5});
  CHECK(bits("nuq3", 128) == std::pair{3.5, 3.5});
  CHECK(bits("nuq2", 128) == std::pair{2.5, 2.5});
  // nuq4, d = 64. Keys: (64 * 128 * 4 / 8 + 64 * 4 + 128 * 4) * 8 / (128 * 64) = (4096 + 256 + 512) / 1024 = 4.75.
  // Values: (32 + 4 + 4) * 8 / 64 = 5.
  CHECK(bits("nuq4", 64) == std::pair{4.75, 5.0});
  // Rotation costs nothing (a seed): one asymmetric group per token, d * b / 8 + 4 bytes.
  CHECK(bits("rot4", 128) == std::pair{4.25, 4.25});  // (64 + 4) * 8 / 128
  CHECK(bits("rot3", 128) == std::pair{3.25, 3.25});  // (48 + 4) * 8 / 128
  CHECK(bits("rot3", 64) == std::pair{3.5, 3.5});     // (24 + 4) * 8 / 64
}

TEST_CASE("cache-level settings of the presets") {
  const PresetInfo kivi = preset_info("kivi-2", 128);
  CHECK(kivi.settings.window_tokens == 128);
  CHECK(kivi.settings.sink_tokens == 0);
  CHECK(kivi.flush_tokens == 32);  // per-channel key groups of 32 tokens
  CHECK(kivi.settings.key_position == KeyPosition::post_rope);
  const PresetInfo nuq = preset_info("nuq3", 64);
  CHECK(nuq.settings.sink_tokens == 1);
  CHECK(nuq.settings.window_tokens == 0);
  CHECK(nuq.flush_tokens == 128);
  CHECK(nuq.settings.key_position == KeyPosition::pre_rope);
  CHECK(preset_info("int8", 128).flush_tokens == 1);

  const CacheConfig config = presets::Kivi<128, 2>::settings.applied_to(CacheConfig{.layers = 3, .sink_tokens = 7});
  CHECK(config.layers == 3);
  CHECK(config.sink_tokens == 0);
  CHECK(config.window_tokens == 128);
}

TEST_CASE("effective bits amortise the fp16 sinks and window over the context") {
  // kivi-2 at 4096 tokens, no sinks, window R = 128, flush F = 32: the window keeps fewer than R + F tokens, so
  // Q = floor((4096 - 128) / 32) * 32 = 3968 tokens are quantized (3 bits for keys and values) and 128 are fp16:
  //   (3968 * (3 + 3) + 128 * 2 * 16) / (2 * 4096) = 27904 / 8192 = 3.40625.
  CHECK(quantized_tokens<presets::Kivi<128, 2>>(4096) == 3968);
  CHECK(effective_bits_per_element<presets::Kivi<128, 2>>(4096) == 3.40625);
  CHECK(effective_bits_per_element("kivi-2", 128, 4096) == 3.40625);
  // One token more than R + F - 1 past a flush boundary: 4127 tokens still keep 159 in the window.
  CHECK(quantized_tokens<presets::Kivi<128, 2>>(4127) == 3968);
  CHECK(quantized_tokens<presets::Kivi<128, 2>>(4128) == 4000);
  // nuq2 at 4096: 1 sink, F = 128, no window: Q = floor(4095 / 128) * 128 = 3968, so 1 sink + 127 pending tokens
  // are fp16: (3968 * 5 + 128 * 32) / 8192 = 23936 / 8192 = 2.921875.
  CHECK(effective_bits_per_element<presets::Nuq<128, 2>>(4096) == 2.921875);
  // Per-token presets without sinks or window cost their policy bits at any context.
  CHECK(effective_bits_per_element("int8", 128, 1) == 8.25);
  CHECK(effective_bits_per_element("q4_0", 64, 131072) == 4.5);
  CHECK(effective_bits_per_element("fp16", 128, 1000) == 16.0);
  // Shorter than the window: everything fp16.
  CHECK(effective_bits_per_element("kivi-4", 128, 100) == 16.0);
  // Long contexts approach the policy bits.
  CHECK(effective_bits_per_element("kivi-2", 128, 1 << 20) < 3.01);
  CHECK_THROWS_AS((void)effective_bits_per_element("kivi-2", 128, 0), Error);
}

TEST_CASE("quantized_tokens follows the cache's own reservation") {
  const std::uint32_t seed = testing::fresh_seed();
  INFO("seed ", seed);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int64_t> length(1, 3000);
  auto compare = [&]<class P>() {
    using Cache = HostPagedKVCache<PresetTiers<P>>;
    for (int trial = 0; trial < 8; ++trial) {
      const std::int64_t tokens = length(rng);
      const CacheConfig config = P::settings.applied_to(
          CacheConfig{.layers = 1, .kv_heads = 1, .max_tokens_per_sequence = 3000, .page_tokens = 128});
      Cache cache(config, Cache::required_memory(config).total_bytes());
      const int sequence = 0;
      cache.reserve(std::span(&sequence, 1), std::span(&tokens, 1));
      CHECK_MESSAGE(cache.sequences().sequence(0).quantized == quantized_tokens<P>(tokens), P::name, " at ", tokens);
    }
  };
  compare.template operator()<presets::Kivi<64, 4>>();
  compare.template operator()<presets::Nuq<64, 3>>();
  compare.template operator()<presets::Int8<64>>();
}

TEST_CASE("the Gaussian codebook: Lloyd-Max levels of N(0,1) over the expected group maximum") {
  // E[max of 2 standard normals] = 1/sqrt(pi), of 3 = 3/(2 sqrt(pi)).
  CHECK(detail::expected_normal_maximum(2) == doctest::Approx(0.5641895835).epsilon(1e-9));
  CHECK(detail::expected_normal_maximum(3) == doctest::Approx(0.8462843753).epsilon(1e-9));
  // Lloyd-Max levels of N(0,1) as tabulated by Max (1960): 2 bits +-0.4528, +-1.510; 3 bits +-0.2451, +-0.7560,
  // +-1.344, +-2.152.
  const auto two = detail::lloyd_max_normal_levels<4>();
  CHECK(two[2] == doctest::Approx(0.4528).epsilon(2e-4));
  CHECK(two[3] == doctest::Approx(1.510).epsilon(2e-4));
  const auto three = detail::lloyd_max_normal_levels<8>();
  CHECK(three[4] == doctest::Approx(0.2451).epsilon(2e-4));
  CHECK(three[5] == doctest::Approx(0.7560).epsilon(2e-4));
  CHECK(three[6] == doctest::Approx(1.344).epsilon(2e-4));
  CHECK(three[7] == doctest::Approx(2.152).epsilon(2e-4));
  // Groups of 2: 0.4528 * sqrt(pi) = 0.80257, and 1.510 * sqrt(pi) = 2.68 clamps to 1.
  CHECK(gaussian_codebook<2, 2>()[2] == doctest::Approx(0.80257).epsilon(5e-4));
  CHECK(gaussian_codebook<2, 2>()[3] == 1.0f);
  auto check = [](const auto& levels) {
    const int count = static_cast<int>(levels.size());
    for (int k = 0; k < count; ++k) {
      if (k > 0) CHECK(levels[k] > levels[k - 1]);
      CHECK(levels[k] == -levels[count - 1 - k]);
      CHECK(std::fabs(levels[k]) <= 1.0f);
    }
  };
  check(gaussian_codebook<2, 128>());
  check(gaussian_codebook<3, 128>());
  check(gaussian_codebook<4, 128>());
  check(gaussian_codebook<4, 64>());
  // 2 bits, groups of 128: 0.4528 / 2.5946 = 0.1745.
  CHECK(gaussian_codebook<2, 128>()[2] == doctest::Approx(0.1745).epsilon(1e-3));
}

namespace {

// Appends `tokens` random N(0,1) tokens to one sequence of a two-layer cache built from preset P with its default
// parameters, then reads every token back: sinks and window exactly, quantized tokens within a loose relative
// error (a broken codebook, rotation or parameter pointer gives errors near or above 1).
template <KVPreset P>
void round_trip_with_defaults(std::mt19937& rng) {
  constexpr int d = P::Tier::KeyPolicy::head_dim;
  using Cache = HostPagedKVCache<PresetTiers<P>>;
  const int heads = 2;
  const std::int64_t tokens = 300;
  const CacheConfig config = P::settings.applied_to(
      CacheConfig{.layers = 2, .kv_heads = heads, .max_tokens_per_sequence = tokens, .page_tokens = 128});
  Cache cache(config, Cache::required_memory(config).total_bytes());
  for (int layer = 0; layer < config.layers; ++layer) {
    const TierParams<typename P::Tier> params = P::default_params();
    if constexpr (!std::is_empty_v<typename P::Tier::KeyPolicy::Params> || !std::is_empty_v<typename P::Tier::ValuePolicy::Params>)
      cache.template set_params<typename P::Tier>(layer, params.key, params.value);
  }
  std::normal_distribution<float> normal;
  std::vector<f16> keys(static_cast<std::size_t>(tokens * heads * d)), values(keys.size());
  for (f16& x : keys) x = to_f16(normal(rng));
  for (f16& x : values) x = to_f16(normal(rng));
  const int sequence = 0;
  const AppendPlan plan = cache.reserve(std::span(&sequence, 1), std::span(&tokens, 1));
  for (int layer = 0; layer < config.layers; ++layer)
    cache.write(plan, layer, std::span<const f16>(keys), std::span<const f16>(values));

  const std::int64_t quantized = cache.sequences().sequence(0).quantized;
  CHECK(quantized == quantized_tokens<P>(tokens));
  double error = 0, energy = 0;
  std::vector<float> key(heads * d), value(heads * d);
  for (std::int64_t t = 0; t < tokens; ++t) {
    cache.read_token(1, 0, t, key.data(), value.data());
    const bool exact = t < config.sink_tokens || t >= config.sink_tokens + quantized;
    for (int h = 0; h < heads; ++h) {
      // What the cache must hold for the key: fp16(rope(k)) when it applies RoPE, k itself before RoPE.
      float k[d];
      for (int c = 0; c < d; ++c) k[c] = to_float(keys[(t * heads + h) * d + c]);
      if (config.key_position == KeyPosition::post_rope) {
        apply_rope<d>(k, t, cache.rope_table(), config.rope.style);
        for (float& x : k) x = to_float(to_f16(x));
      }
      for (int c = 0; c < d; ++c) {
        const int i = h * d + c;
        const float v = to_float(values[t * heads * d + i]);
        REQUIRE(std::isfinite(key[i]));
        REQUIRE(std::isfinite(value[i]));
        if (exact) {
          CHECK(key[i] == k[c]);
          CHECK(value[i] == v);
        } else {
          error += (key[i] - k[c]) * (key[i] - k[c]) + (value[i] - v) * (value[i] - v);
          energy += k[c] * k[c] + v * v;
        }
      }
    }
  }
  if (quantized > 0) {
    const double relative = std::sqrt(error / energy);
    INFO(P::name, " d=", d, ": relative RMS error ", relative);
    // Uniform 2-bit groups of N(0,1) values lose about 0.4 of the RMS, 4-bit 0.08, 8-bit 0.005.
    CHECK(relative < 0.5);
    if (P::name == std::string_view("fp16")) CHECK(relative == 0.0);
    else CHECK(relative > 1e-4);  // it was quantized
  }
}

template <int D>
void round_trip_all(std::mt19937& rng) {
  round_trip_with_defaults<presets::Fp16<D>>(rng);
  round_trip_with_defaults<presets::Int8<D>>(rng);
  round_trip_with_defaults<presets::Fp8E4m3<D>>(rng);
  round_trip_with_defaults<presets::Q4_0<D>>(rng);
  round_trip_with_defaults<presets::Kivi<D, 4>>(rng);
  round_trip_with_defaults<presets::Kivi<D, 2>>(rng);
  round_trip_with_defaults<presets::Nuq<D, 4>>(rng);
  round_trip_with_defaults<presets::Nuq<D, 3>>(rng);
  round_trip_with_defaults<presets::Nuq<D, 2>>(rng);
  round_trip_with_defaults<presets::Rotated<D, 4>>(rng);
  round_trip_with_defaults<presets::Rotated<D, 3>>(rng);
}

}  // namespace

TEST_CASE("every preset makes a working cache with its calibration-free default parameters") {
  const std::uint32_t seed = testing::fresh_seed();
  INFO("seed ", seed);
  std::mt19937 rng(seed);
  round_trip_all<64>(rng);
  round_trip_all<128>(rng);
}

TEST_CASE("unknown preset names and head_dims are errors that list what exists") {
  try {
    (void)preset_info("int5", 128);
    FAIL("expected an error");
  } catch (const Error& error) {
    const std::string message = error.what();
    CHECK(error.code() == ErrorCode::invalid_argument);
    CHECK(message.find("\"int5\"") != std::string::npos);
    CHECK(message.find("fp16, int8, fp8-e4m3, q4_0, kivi-4, kivi-2, nuq4, nuq3, nuq2, rot4, rot3") != std::string::npos);
  }
  try {
    (void)preset_info("int8", 96);
    FAIL("expected an error");
  } catch (const Error& error) {
    const std::string message = error.what();
    CHECK(message.find("head_dim 96") != std::string::npos);
    CHECK(message.find("64, 128") != std::string::npos);
  }
  // Names are case-sensitive: they are identifiers, shared with the evaluation tables.
  CHECK_THROWS_AS((void)preset_info("INT8", 128), Error);
}
