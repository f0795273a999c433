// The host paged cache against a plain fp32 model of what it must hold: sinks and window exactly (the fp16 form of
// what was appended, keys rotated when stored post-RoPE), quantized tokens equal to the policy's
// quantize -> dequantize of the unit they were flushed in. Random appends (decode and prefill), truncations and
// resets over several sequences, edge lengths, memory accounting and every error path.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "../support/policy_fixtures.hpp"
#include "kvq/cache/host_paged_cache.hpp"

using namespace kvq;
using namespace kvq::testing;

namespace {

// ---- the model --------------------------------------------------------------------------------------------------
template <class Tiers>
class CacheModel {
 public:
  static constexpr int d = Tiers::head_dim;
  static constexpr int flush = Tiers::flush_tokens;

  struct Token {
    std::vector<float> key, value;  // [heads][d]: what attention must read for this token
  };

  explicit CacheModel(const CacheConfig& config) : config_(config), rope_(make_rope_table<d>(config.rope)) {}

  // The layer-independent part of an append: tokens enter in their fp16 cache form.
  template <class LayerParams>
  void append(int layer, int sequence, const std::vector<f16>& keys, const std::vector<f16>& values,
              std::int64_t first_row, std::int64_t count, const LayerParams& params) {
    auto& s = state(layer, sequence);
    const int heads = config_.kv_heads;
    for (std::int64_t i = 0; i < count; ++i) {
      const std::int64_t position = static_cast<std::int64_t>(s.tokens.size());
      Token token{std::vector<float>(heads * d), std::vector<float>(heads * d)};
      for (int h = 0; h < heads; ++h) {
        float k[d];
        for (int c = 0; c < d; ++c) k[c] = to_float(keys[((first_row + i) * heads + h) * d + c]);
        if (config_.key_position == KeyPosition::post_rope) apply_rope<d>(k, position, rope_, config_.rope.style);
        for (int c = 0; c < d; ++c) {
          token.key[h * d + c] = to_float(to_f16(k[c]));
          token.value[h * d + c] = to_float(values[((first_row + i) * heads + h) * d + c]);
        }
      }
      s.tokens.push_back(std::move(token));
      flush_while_full(layer, s, params);
    }
  }

  template <class LayerParams>
  void flush_while_full(int layer, auto& s, const LayerParams& params) {
    const std::int64_t sinks = config_.sink_tokens;
    while (static_cast<std::int64_t>(s.tokens.size()) - sinks - s.quantized >= config_.window_tokens + flush) {
      Tiers::visit(tier(layer), [&]<class Tier>() { quantize_unit<Tier>(s, sinks + s.quantized, params); });
      s.quantized += flush;
    }
  }

  // Replaces the unit's values with the policy's quantize -> dequantize of them, per head.
  template <class Tier, class LayerParams>
  void quantize_unit(auto& s, std::int64_t first, const LayerParams& all_params) {
    using K = typename Tier::KeyPolicy;
    using V = typename Tier::ValuePolicy;
    const auto& params = std::get<std::pair<typename K::Params, typename V::Params>>(all_params);
    for (int h = 0; h < config_.kv_heads; ++h) {
      round_trip<K>(s, first, h, true, params.first);
      round_trip<V>(s, first, h, false, params.second);
    }
  }

  template <class P>
  static void round_trip(auto& s, std::int64_t first, int head, bool key, const typename P::Params& params) {
    for (int b = 0; b < flush / P::tokens_per_block; ++b) {
      std::vector<float> tile(P::tokens_per_block * d);
      for (int r = 0; r < P::tokens_per_block; ++r) {
        const auto& source = key ? s.tokens[first + b * P::tokens_per_block + r].key : s.tokens[first + b * P::tokens_per_block + r].value;
        std::copy_n(source.begin() + head * d, d, tile.begin() + r * d);
      }
      std::vector<std::uint8_t> codes(P::code_bytes_per_block), meta(P::meta_bytes_per_block);
      quantize_block<P>(tile.data(), P::tokens_per_block, {codes.data(), meta.data()}, params);
      for (int r = 0; r < P::tokens_per_block; ++r) {
        auto& target = key ? s.tokens[first + b * P::tokens_per_block + r].key : s.tokens[first + b * P::tokens_per_block + r].value;
        dequantize_row<P>({codes.data(), meta.data()}, r, target.data() + head * d, params, Domain::original);
      }
    }
  }

  void truncate(int layer, int sequence, std::int64_t length) {
    auto& s = state(layer, sequence);
    s.tokens.resize(static_cast<std::size_t>(length));
    const std::int64_t after_sinks = std::max<std::int64_t>(0, length - config_.sink_tokens);
    if (after_sinks < s.quantized) {
      s.quantized = after_sinks / flush * flush;
      // Tokens pulled back into the fp16 window keep their dequantized values, rounded to fp16.
      for (std::int64_t t = config_.sink_tokens + s.quantized; t < length; ++t)
        for (auto* row : {&s.tokens[t].key, &s.tokens[t].value})
          for (float& x : *row) x = to_float(to_f16(x));
    }
  }

  void reset(int layer, int sequence) { state(layer, sequence) = {}; }

  struct SequenceState {
    std::vector<Token> tokens;
    std::int64_t quantized = 0;
  };
  SequenceState& state(int layer, int sequence) { return layers_[{layer, sequence}]; }
  int tier(int layer) const { return config_.layer_tier.empty() ? 0 : config_.layer_tier[layer]; }

 private:
  CacheConfig config_;
  RopeTable<d> rope_;
  std::map<std::pair<int, int>, SequenceState> layers_;
};

// Compares every token of every sequence and layer with the model, bit for bit.
template <class Tiers>
void check_against_model(const HostPagedKVCache<Tiers>& cache, CacheModel<Tiers>& model) {
  constexpr int d = Tiers::head_dim;
  const auto& config = cache.config();
  std::vector<float> key(config.kv_heads * d), value(config.kv_heads * d);
  for (int layer = 0; layer < config.layers; ++layer)
    for (int s = 0; s < config.max_sequences; ++s) {
      const auto& expected = model.state(layer, s);
      REQUIRE(cache.sequences().sequence(s).length == static_cast<std::int64_t>(expected.tokens.size()));
      REQUIRE(cache.sequences().sequence(s).quantized == expected.quantized);
      for (std::size_t t = 0; t < expected.tokens.size(); ++t) {
        cache.read_token(layer, s, static_cast<std::int64_t>(t), key.data(), value.data());
        INFO("layer " << layer << " sequence " << s << " token " << t);
        REQUIRE(std::memcmp(key.data(), expected.tokens[t].key.data(), key.size() * 4) == 0);
        REQUIRE(std::memcmp(value.data(), expected.tokens[t].value.data(), value.size() * 4) == 0);
      }
    }
}

// Drives a cache and its model through the same random operations.
template <class Tiers, class ParamsFor>
void random_operations(CacheConfig config, std::uint32_t seed, int steps, ParamsFor params_for) {
  INFO("seed " << seed);
  HostPagedKVCache<Tiers> cache(config, std::int64_t{1} << 40);
  CacheModel<Tiers> model(config);
  std::vector<decltype(params_for(0))> layer_params;
  for (int layer = 0; layer < config.layers; ++layer) layer_params.push_back(params_for(layer));
  std::mt19937 rng(seed);
  constexpr int d = Tiers::head_dim;
  for (int step = 0; step < steps; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 7) {  // append to a random subset of sequences: mostly decode steps, sometimes prefill chunks
      std::vector<int> sequences;
      std::vector<std::int64_t> counts;
      for (int s = 0; s < config.max_sequences; ++s) {
        if (rng() % 3 == 0) continue;
        const std::int64_t room = config.max_tokens_per_sequence - cache.sequences().sequence(s).length;
        const std::int64_t want = op < 5 ? 1 : 1 + static_cast<std::int64_t>(rng() % 70);
        if (room <= 0) continue;
        sequences.push_back(s);
        counts.push_back(std::min(room, want));
      }
      const AppendPlan plan = cache.reserve(sequences, counts);
      for (int layer = 0; layer < config.layers; ++layer) {
        const TensorShape shape{plan.total_tokens, config.kv_heads, d};
        const auto keys = make_input(shape, rng()), values = make_input(shape, rng());
        cache.template write<f16>(plan, layer, keys, values);
        for (const AppendEntry& e : plan.entries)
          model.append(layer, e.sequence, keys, values, e.input_offset, e.count, layer_params[layer]);
      }
    } else if (op < 9) {
      const int s = static_cast<int>(rng() % config.max_sequences);
      const std::int64_t length = cache.sequences().sequence(s).length;
      const std::int64_t target = length == 0 ? 0 : static_cast<std::int64_t>(rng() % (length + 1));
      cache.truncate(s, target);
      for (int layer = 0; layer < config.layers; ++layer) model.truncate(layer, s, target);
    } else {
      const int s = static_cast<int>(rng() % config.max_sequences);
      cache.reset(s);
      for (int layer = 0; layer < config.layers; ++layer) model.reset(layer, s);
    }
    check_against_model(cache, model);
  }
}

using Int4T = UniformPolicy<UniformConfig{.bits = 4, .group_size = 32, .head_dim = 64}>;
using Int8T = UniformPolicy<UniformConfig{.bits = 8, .group_size = 64, .head_dim = 64}>;
using Int2C = UniformPolicy<UniformConfig{.bits = 2, .group_size = 32, .head_dim = 64, .axis = Axis::per_channel}>;
using KiviTiers = LayerTiers<Tier<Int2C, Int4T>>;

template <class K, class V>
auto no_params(int) {
  return std::tuple<std::pair<typename K::Params, typename V::Params>>{};
}

}  // namespace

TEST_CASE("per-token int4 keys and values with sinks and a window follow the model (post-RoPE, llama3 scaling)") {
  CacheConfig config{.layers = 2, .kv_heads = 2, .max_sequences = 3, .max_tokens_per_sequence = 300, .page_tokens = 16,
                     .sink_tokens = 4, .window_tokens = 8};
  config.rope = RopeConfig{.theta = 500000.0f, .scaling = RopeScaling::llama3};
  random_operations<LayerTiers<Tier<Int4T, Int4T>>>(config, fresh_seed(), 60, no_params<Int4T, Int4T>);
}

TEST_CASE("no sinks and no window: every token is quantized as it arrives (window capacity 0), interleaved RoPE") {
  CacheConfig config{.layers = 1, .kv_heads = 3, .max_sequences = 2, .max_tokens_per_sequence = 150, .page_tokens = 4};
  config.rope.style = RopeStyle::interleaved;
  random_operations<LayerTiers<Tier<Int8T, Int4T>>>(config, fresh_seed(), 40, no_params<Int8T, Int4T>);
}

TEST_CASE("KIVI layout: per-channel 2-bit keys flush 32 tokens at a time, no sinks, no window, pre-RoPE") {
  CacheConfig config{.layers = 2, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 400, .page_tokens = 64,
                     .key_position = KeyPosition::pre_rope};
  random_operations<KiviTiers>(config, fresh_seed(), 60, no_params<Int2C, Int4T>);
}

TEST_CASE("per-layer tiers: 8-bit first and last layers, rotated outliers and a codebook in between") {
  using Rotated = RotatedPolicy<OutlierPolicy<Int4T, OutlierConfig{.capacity = 2}>>;
  // Per-channel codebook values: the flush unit is 32 tokens for every layer, also the per-token 8-bit ones.
  using Nuq = CodebookPolicy<CodebookConfig{.bits = 3, .group_size = 32, .head_dim = 64, .axis = Axis::per_channel}>;
  using Tiers = LayerTiers<Tier<Int8T, Int8T>, Tier<Rotated, Nuq>>;
  static_assert(Tiers::flush_tokens == 32);
  CacheConfig config{.layers = 4, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 200, .page_tokens = 32,
                     .sink_tokens = 1, .window_tokens = 3, .layer_tier = {0, 1, 1, 0}};
  config.rope.style = RopeStyle::interleaved;
  HostArrays arrays;
  const auto book = ParamsBuilder<Nuq>::build(arrays, 7);
  using Params = std::tuple<std::pair<NoParams, NoParams>, std::pair<typename Rotated::Params, CodebookParams>>;
  auto params_for = [&](int layer) {
    Params p;
    std::get<1>(p) = {typename Rotated::Params{{}, 1234u + static_cast<std::uint32_t>(layer)}, book};
    return p;
  };
  // The cache needs the same parameters: wrap random_operations' cache construction by setting them per layer.
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  HostPagedKVCache<Tiers> cache(config, std::int64_t{1} << 40);
  for (int layer : {1, 2}) {
    const auto p = std::get<1>(params_for(layer));
    cache.template set_params<Tier<Rotated, Nuq>>(layer, p.first, p.second);
  }
  auto wrong_tier = [&] { cache.template set_params<Tier<Rotated, Nuq>>(0, {}, {}); };
  CHECK_THROWS_AS(wrong_tier(), Error);
  CacheModel<Tiers> model(config);
  std::mt19937 rng(seed);
  for (int step = 0; step < 50; ++step) {
    std::vector<int> sequences{0, 1};
    std::vector<std::int64_t> counts{1 + static_cast<std::int64_t>(rng() % 5), static_cast<std::int64_t>(rng() % 2)};
    if (cache.sequences().sequence(0).length + counts[0] > 200) break;
    const AppendPlan plan = cache.reserve(sequences, counts);
    for (int layer = 0; layer < config.layers; ++layer) {
      const TensorShape shape{plan.total_tokens, config.kv_heads, 64};
      const auto keys = make_input(shape, rng()), values = make_input(shape, rng());
      cache.write<f16>(plan, layer, keys, values);
      for (const AppendEntry& e : plan.entries) model.append(layer, e.sequence, keys, values, e.input_offset, e.count, params_for(layer));
    }
    if (step % 9 == 8) {
      const std::int64_t target = cache.sequences().sequence(0).length / 2;
      cache.truncate(0, target);
      for (int layer = 0; layer < config.layers; ++layer) model.truncate(layer, 0, target);
    }
    check_against_model(cache, model);
  }
}

TEST_CASE("decode token by token and one prefill chunk store identical bytes") {
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 1, .max_tokens_per_sequence = 200, .page_tokens = 64,
                     .sink_tokens = 2, .window_tokens = 5};
  for (std::int64_t length : {0, 1, 2, 7, 33, 34, 63, 64, 65, 66, 71, 72, 130}) {
    CAPTURE(length);
    const auto keys = make_input({length, 2, 64}, fresh_seed()), values = make_input({length, 2, 64}, fresh_seed());
    HostPagedKVCache<KiviTiers> decode(config, std::int64_t{1} << 30), prefill(config, std::int64_t{1} << 30);
    for (std::int64_t t = 0; t < length; ++t) {
      const std::vector<int> s{0};
      const std::vector<std::int64_t> one{1};
      const auto plan = decode.reserve(s, one);
      decode.write<f16>(plan, 0, std::span(keys).subspan(t * 128, 128), std::span(values).subspan(t * 128, 128));
    }
    const std::vector<int> s{0};
    const std::vector<std::int64_t> all{length};
    const auto plan = prefill.reserve(s, all);
    prefill.write<f16>(plan, 0, keys, values);
    const auto a = decode.storage(0), b = prefill.storage(0);
    CHECK(std::equal(a.pages.begin(), a.pages.end(), b.pages.begin()));
    CHECK(std::memcmp(a.sinks.data(), b.sinks.data(), a.sinks.size_bytes()) == 0);
    // Window slots hold the same live tokens (dead slots may differ: decode passed through them).
    std::vector<float> k1(128), v1(128), k2(128), v2(128);
    for (std::int64_t t = 0; t < length; ++t) {
      decode.read_token(0, 0, t, k1.data(), v1.data());
      prefill.read_token(0, 0, t, k2.data(), v2.data());
      REQUIRE(k1 == k2);
      REQUIRE(v1 == v2);
    }
  }
}

TEST_CASE("memory: exact bytes per token, a size query before allocation, and the allocation equals it") {
  using Tier4 = Tier<UniformPolicy<UniformConfig{.bits = 4, .group_size = 32, .head_dim = 128}>,
                     UniformPolicy<UniformConfig{.bits = 4, .group_size = 32, .head_dim = 128}>>;
  // Per head and token: 64 code bytes + 4 fp16 scales + 4 fp16 zeros = 80 bytes, for keys and values alike;
  // 8 heads -> 1280 bytes per token and layer, against 4096 for fp16.
  static_assert(TierPageLayout<Tier4>::bytes_per_quantized_token(256, 8) == 1280.0);
  static_assert(TierPageLayout<Tier<Int2C, Int4T>>::page_bytes(64, 1) == (64 * 64 / 4 + 2 * 64 * 2 * 2) + 64 * (32 + 8));

  CacheConfig config{.layers = 3, .kv_heads = 8, .max_sequences = 2, .max_tokens_per_sequence = 1000, .page_tokens = 256,
                     .sink_tokens = 4, .window_tokens = 32};
  const CacheMemory memory = HostPagedKVCache<LayerTiers<Tier4>>::required_memory(config);
  CHECK(memory.pool_pages == 2 * 4);  // ceil(996 / 256) pages per sequence
  CHECK(memory.pool_bytes == 3LL * 8 * 256 * 1280);
  CHECK(memory.sink_bytes == 3LL * 2 * 4 * 8 * 128 * 2 * 2);
  CHECK(memory.window_bytes == 3LL * 2 * 32 * 8 * 128 * 2 * 2);
  HostPagedKVCache<LayerTiers<Tier4>> cache(config, memory.total_bytes());
  CHECK(cache.allocated_bytes() == memory.total_bytes());

  try {
    HostPagedKVCache<LayerTiers<Tier4>> too_big(config, memory.total_bytes() - 1);
    FAIL("expected out_of_memory");
  } catch (const Error& error) {
    CHECK(error.code() == ErrorCode::out_of_memory);
    CHECK(std::string(error.what()).find("budget") != std::string::npos);
  }

  // Per-channel keys: the window holds up to R + F - 1 tokens (F = 32).
  CacheConfig kivi{.layers = 2, .kv_heads = 8, .max_sequences = 3, .max_tokens_per_sequence = 1000, .page_tokens = 64,
                   .window_tokens = 128};
  const CacheMemory kivi_memory = HostPagedKVCache<KiviTiers>::required_memory(kivi);
  CHECK(kivi_memory.window_bytes == 2LL * 3 * (128 + 31) * 8 * 64 * 2 * 2);
  CHECK(HostPagedKVCache<KiviTiers>(kivi, kivi_memory.total_bytes()).allocated_bytes() == kivi_memory.total_bytes());
}

TEST_CASE("capacity: a full pool or a full sequence is refused and nothing stored changes") {
  CacheConfig config{.layers = 1, .kv_heads = 1, .max_sequences = 2, .max_tokens_per_sequence = 100, .page_tokens = 32,
                     .pool_pages = 3};
  HostPagedKVCache<KiviTiers> cache(config, std::int64_t{1} << 30);
  const auto keys = make_input({96, 1, 64}, fresh_seed()), values = make_input({96, 1, 64}, fresh_seed());
  const std::vector<int> first{0};
  const std::vector<std::int64_t> count96{96};
  auto plan = cache.reserve(first, count96);
  cache.write<f16>(plan, 0, keys, values);
  const std::vector<std::uint8_t> pages_before(cache.storage(0).pages.begin(), cache.storage(0).pages.end());

  const std::vector<int> second{1};
  const std::vector<std::int64_t> count32{32};
  try {
    cache.reserve(second, count32);
    FAIL("expected capacity_exceeded");
  } catch (const Error& error) {
    CHECK(error.code() == ErrorCode::capacity_exceeded);
    CHECK(std::string(error.what()).find("only 0 of the pool are free") != std::string::npos);
  }
  const std::vector<std::int64_t> count5{5};
  CHECK_THROWS_AS(cache.reserve(first, count5), Error);  // 101 > max_tokens_per_sequence
  CHECK(cache.sequences().sequence(0).length == 96);
  CHECK(cache.sequences().sequence(1).length == 0);
  CHECK(cache.sequences().free_pages() == 0);
  CHECK(std::equal(pages_before.begin(), pages_before.end(), cache.storage(0).pages.begin()));

  // Truncating frees pages for the other sequence.
  cache.truncate(0, 40);
  CHECK(cache.sequences().free_pages() == 2);
  plan = cache.reserve(second, count32);
  cache.write<f16>(plan, 0, std::span(keys).first(32 * 64), std::span(values).first(32 * 64));
}

TEST_CASE("bad writes are refused before anything is written") {
  CacheConfig config{.layers = 2, .kv_heads = 2, .max_sequences = 1, .max_tokens_per_sequence = 100, .page_tokens = 64,
                     .window_tokens = 4};
  HostPagedKVCache<KiviTiers> cache(config, std::int64_t{1} << 30);
  const std::vector<int> s{0};
  const std::vector<std::int64_t> n{40};
  auto keys = make_input({40, 2, 64}, fresh_seed()), values = make_input({40, 2, 64}, fresh_seed());
  const auto plan = cache.reserve(s, n);
  CHECK_THROWS_AS(cache.write<f16>(plan, 0, std::span(keys).first(100), values), Error);
  CHECK_THROWS_AS(cache.write<f16>(plan, 2, keys, values), Error);
  auto poisoned = keys;
  poisoned[5 * 128 + 3] = to_f16(NAN);
  try {
    cache.write<f16>(plan, 0, poisoned, values);
    FAIL("expected non_finite_input");
  } catch (const Error& error) {
    CHECK(error.code() == ErrorCode::non_finite_input);
  }
  const auto untouched = cache.storage(0);
  CHECK(std::all_of(untouched.pages.begin(), untouched.pages.end(), [](std::uint8_t b) { return b == 0; }));
  cache.write<f16>(plan, 0, keys, values);
  CHECK_THROWS_AS(cache.write<f16>(plan, 0, keys, values), Error);            // twice for one plan
  CHECK_THROWS_AS(cache.reserve(s, std::vector<std::int64_t>{1}), Error);    // layer 1 not written yet
  CHECK_THROWS_AS(cache.truncate(0, 10), Error);                              // nor truncate or reset meanwhile
  CHECK_THROWS_AS(cache.reset(0), Error);
  cache.write<f16>(plan, 1, keys, values);
  const auto next = cache.reserve(s, std::vector<std::int64_t>{40});
  try {  // the old plan, with inputs of the right size: only its age is wrong
    cache.write<f16>(plan, 0, keys, values);
    FAIL("expected a stale-plan error");
  } catch (const Error& error) {
    CHECK(std::string(error.what()).find("not the latest reservation") != std::string::npos);
  }
  cache.write<f16>(next, 0, keys, values);
  cache.write<f16>(next, 1, keys, values);
  CHECK_THROWS_AS(cache.truncate(0, 81), Error);  // longer than the sequence
  cache.reset(0);
  CHECK(cache.sequences().sequence(0).length == 0);
  CHECK(cache.sequences().free_pages() == cache.memory().pool_pages);
}

TEST_CASE("the sinks and window are untouched by a rejected write") {
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 1, .max_tokens_per_sequence = 100, .page_tokens = 64,
                     .sink_tokens = 3, .window_tokens = 4};
  HostPagedKVCache<KiviTiers> cache(config, std::int64_t{1} << 30);
  auto keys = make_input({10, 2, 64}, fresh_seed()), values = make_input({10, 2, 64}, fresh_seed());
  const std::vector<int> s{0};
  const auto plan = cache.reserve(s, std::vector<std::int64_t>{10});
  values[9 * 128 + 5] = to_f16(INFINITY);
  CHECK_THROWS_AS(cache.write<f16>(plan, 0, keys, values), Error);
  const auto storage = cache.storage(0);
  CHECK(std::all_of(storage.sinks.begin(), storage.sinks.end(), [](f16 x) { return x.bits == 0; }));
  CHECK(std::all_of(storage.window.begin(), storage.window.end(), [](f16 x) { return x.bits == 0; }));
}

TEST_CASE("batch and config errors name the problem and change nothing") {
  auto message_of = [](auto call) -> std::string {
    try {
      call();
    } catch (const Error& error) {
      return error.what();
    }
    return "no error";
  };
  CacheConfig config{.layers = 2, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 100, .page_tokens = 64};
  HostPagedKVCache<KiviTiers> cache(config, std::int64_t{1} << 30);
  CHECK(message_of([&] { cache.reserve(std::vector<int>{0, 0}, std::vector<std::int64_t>{1, 1}); }).find("appears twice") != std::string::npos);
  CHECK(message_of([&] { cache.reserve(std::vector<int>{2}, std::vector<std::int64_t>{1}); }).find("outside [0, 2)") != std::string::npos);
  CHECK(message_of([&] { cache.reserve(std::vector<int>{1}, std::vector<std::int64_t>{-1}); }).find("negative token count") != std::string::npos);
  CHECK(message_of([&] { cache.reserve(std::vector<int>{1}, std::vector<std::int64_t>{INT64_MAX}); }).find("max_tokens_per_sequence") != std::string::npos);
  CHECK(message_of([&] { cache.reserve(std::vector<int>{0, 1}, std::vector<std::int64_t>{1}); }).find("token counts") != std::string::npos);
  CHECK(cache.sequences().sequence(0).length == 0);
  CHECK(cache.sequences().sequence(1).length == 0);

  auto bad = config;
  bad.page_tokens = 48;  // not a multiple of the 32-token flush unit of per-channel keys
  CHECK(message_of([&] { HostPagedKVCache<KiviTiers> c(bad, std::int64_t{1} << 30); }).find("multiple of 32") != std::string::npos);
  bad = config;
  bad.layer_tier = {0, 1};
  CHECK(message_of([&] { HostPagedKVCache<KiviTiers> c(bad, std::int64_t{1} << 30); }).find("layer_tier[1]") != std::string::npos);
  bad = config;
  bad.kv_heads = 0;
  CHECK(message_of([&] { HostPagedKVCache<KiviTiers> c(bad, std::int64_t{1} << 30); }).find("kv_heads") != std::string::npos);
  bad = config;
  bad.max_sequences = 1 << 24;
  bad.max_tokens_per_sequence = std::int64_t{1} << 40;
  bad.page_tokens = 32;
  CHECK(message_of([&] { HostPagedKVCache<KiviTiers>::required_memory(bad); }).find("2^31 pages") != std::string::npos);

  using Nuq = CodebookPolicy<CodebookConfig{.bits = 2, .group_size = 32, .head_dim = 64}>;
  HostPagedKVCache<LayerTiers<Tier<Nuq, Nuq>>> needs_params(config, std::int64_t{1} << 30);
  const auto plan = needs_params.reserve(std::vector<int>{0}, std::vector<std::int64_t>{1});
  const auto row = make_input({1, 2, 64}, fresh_seed());
  CHECK(message_of([&] { needs_params.write<f16>(plan, 0, row, row); }).find("set_params") != std::string::npos);
}

TEST_CASE("finite inputs never become Inf in the cache: fp16 storage saturates") {
  CacheConfig config{.layers = 1, .kv_heads = 1, .max_sequences = 1, .max_tokens_per_sequence = 64, .page_tokens = 4,
                     .window_tokens = 2};
  config.rope.theta = 10000.0f;
  HostPagedKVCache<LayerTiers<Tier<Int8T, Int8T>>> cache(config, std::int64_t{1} << 30);
  // A key at the edge of the fp16 range, rotated by RoPE, and a float value beyond it.
  std::vector<float> keys(8 * 64, 0.0f), values(8 * 64, 1.0f);
  for (int t = 0; t < 8; ++t) keys[t * 64 + 0] = keys[t * 64 + 32] = 60000.0f, values[t * 64 + 3] = 70000.0f;
  const auto plan = cache.reserve(std::vector<int>{0}, std::vector<std::int64_t>{8});
  cache.write<float>(plan, 0, keys, values);
  std::vector<float> key(64), value(64);
  for (int t = 0; t < 8; ++t) {
    cache.read_token(0, 0, t, key.data(), value.data());
    for (int c = 0; c < 64; ++c) {
      REQUIRE(std::isfinite(key[c]));
      REQUIRE(std::isfinite(value[c]));
    }
  }
}

TEST_CASE("a layer view finds every token without the cache's help, as an attention kernel would") {
  CacheConfig config{.layers = 2, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 120, .page_tokens = 4,
                     .sink_tokens = 2, .window_tokens = 3};
  HostPagedKVCache<LayerTiers<Tier<Int4T, Int8T>>> cache(config, std::int64_t{1} << 30);
  std::mt19937 rng(fresh_seed());
  for (int step = 0; step < 12; ++step) {
    const std::vector<int> sequences{0, 1};
    const std::vector<std::int64_t> counts{1 + static_cast<std::int64_t>(rng() % 9), static_cast<std::int64_t>(rng() % 3)};
    const auto plan = cache.reserve(sequences, counts);
    for (int layer = 0; layer < 2; ++layer) {
      const auto rows = make_input({plan.total_tokens, 2, 64}, rng());
      cache.write<f16>(plan, layer, rows, rows);
    }
  }
  cache.truncate(0, cache.sequences().sequence(0).length - 5);
  for (int layer = 0; layer < 2; ++layer) {
    const CacheLayerView v = cache.view(layer);
    for (int s = 0; s < 2; ++s) {
      REQUIRE(v.lengths[s] == cache.sequences().sequence(s).length);
      for (std::int64_t t = 0; t < v.lengths[s]; ++t)
        for (int h = 0; h < v.kv_heads; ++h) {
          float key[64], value[64], expected_key[128], expected_value[128];
          cache.read_token(layer, s, t, expected_key, expected_value);
          const std::int64_t q = t - v.sink_tokens;
          if (t < v.sink_tokens || q >= v.quantized[s]) {
            const bool sink = t < v.sink_tokens;
            const std::int64_t row = sink ? t : q % v.window_capacity;
            const std::int64_t rows = sink ? v.sink_tokens : v.window_capacity;
            const f16* k = (sink ? v.sink_keys : v.window_keys) + ((s * rows + row) * v.kv_heads + h) * 64;
            const f16* val = (sink ? v.sink_values : v.window_values) + ((s * rows + row) * v.kv_heads + h) * 64;
            for (int c = 0; c < 64; ++c) key[c] = to_float(k[c]), value[c] = to_float(val[c]);
          } else {
            const std::int32_t page = v.page_table[s * v.max_pages_per_sequence + q / v.page_tokens];
            const std::uint8_t* head = v.pages + page * v.page_bytes + h * v.head_bytes;
            const std::int64_t block = q % v.page_tokens;  // both policies are per-token: one block per token
            Int4T::dequantize({head + block * Int4T::code_bytes_per_block, head + v.key_meta_offset + block * Int4T::meta_bytes_per_block},
                              0, 0, 64, key, {});
            Int8T::dequantize({head + v.value_code_offset + block * Int8T::code_bytes_per_block,
                               head + v.value_meta_offset + block * Int8T::meta_bytes_per_block},
                              0, 0, 64, value, {});
          }
          INFO("layer " << layer << " sequence " << s << " token " << t << " head " << h);
          REQUIRE(std::memcmp(key, expected_key + h * 64, sizeof(key)) == 0);
          REQUIRE(std::memcmp(value, expected_value + h * 64, sizeof(value)) == 0);
        }
    }
  }
}
