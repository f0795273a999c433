// Eviction (HostPagedKVCache::retain, kvq/cache/eviction.hpp): the compacted cache holds exactly the chosen
// tokens, each as an independent model of it predicts (old bytes where a block survives whole, the policy's
// quantize -> dequantize of what attention read otherwise, fp16 in the sinks and window), at its new position;
// decode attention over it equals attention over the kept subset computed here; pages go back to the pool; the
// importance rows move with the tokens; bad input changes nothing.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "../support/policy_fixtures.hpp"
#include "kvq/cache/eviction.hpp"
#include "kvq/cache/host_paged_cache.hpp"
#include "kvq/cache/importance_scores.hpp"
#include "kvq/host/decode_attention.hpp"
#include "kvq/host/quantize_tensor.hpp"

using namespace kvq;
using namespace kvq::testing;

namespace {

constexpr int d = 64;
using PerToken = Int4TokenSymBf16;                      // 4-bit, one group per token (tokens_per_block 1)
using PerTokenTier = Tier<PerToken, PerToken>;
using ChannelTier = Tier<Int3Channel, PerToken>;        // KIVI-like keys: blocks of 32 tokens
using Fp16Tier = Tier<Fp16Policy<d>, Fp16Policy<d>>;

// What the cache held before an eviction: storage-form rows [length][heads][d] of every layer (read_token).
struct Snapshot {
  std::vector<std::vector<float>> keys, values;
};

template <class Cache>
Snapshot snapshot(const Cache& cache, int sequence) {
  const auto& c = cache.config();
  const std::int64_t length = cache.sequences().sequence(sequence).length;
  Snapshot s;
  for (int layer = 0; layer < c.layers; ++layer) {
    std::vector<float> k(static_cast<std::size_t>(length) * c.kv_heads * d), v(k.size());
    for (std::int64_t t = 0; t < length; ++t)
      cache.read_token(layer, sequence, t, k.data() + t * c.kv_heads * d, v.data() + t * c.kv_heads * d);
    s.keys.push_back(std::move(k));
    s.values.push_back(std::move(v));
  }
  return s;
}

// quantize -> dequantize of `rows` tokens of one head through the host tensor reference (not the cache's code).
template <class P>
std::vector<float> round_trip(const std::vector<float>& rows, std::int64_t count) {
  const TensorShape shape{count, 1, d};
  const QuantizedTensorLayout<P> layout{shape};
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(layout.code_bytes())), meta(static_cast<std::size_t>(layout.meta_bytes()));
  quantize_tensor<P, float>(rows, shape, codes, meta, typename P::Params{});
  std::vector<float> out(rows.size());
  dequantize_tensor<P, float>(codes, meta, shape, out, typename P::Params{});
  return out;
}

float fp16_of(float x) { return to_float(to_f16_saturating(x)); }

// The model: what row j of (layer, head) must read after retain(), from the snapshot alone.
template <class Tier>
void check_compacted(const HostPagedKVCache<LayerTiers<Tier>>& cache, int sequence, const Snapshot& before,
                     std::int64_t old_quantized, const TokenSelection& keep) {
  using K = typename Tier::KeyPolicy;
  using V = typename Tier::ValuePolicy;
  const auto& c = cache.config();
  const int heads = c.kv_heads, sinks = c.sink_tokens;
  const auto& s = cache.sequences().sequence(sequence);
  REQUIRE(s.length == keep.kept());
  REQUIRE(s.quantized == cache.sequences().geometry().quantized_after(s.length, 0));
  const bool post = c.key_position == KeyPosition::post_rope;
  for (int layer = 0; layer < c.layers; ++layer)
    for (int head = 0; head < heads; ++head) {
      const auto row = keep.row(layer, head);
      const std::int64_t n = keep.kept();
      // Attention's view of each kept token before, moved to its new position (post-RoPE keys re-rotated).
      std::vector<float> key(static_cast<std::size_t>(n) * d), value(key.size());
      for (std::int64_t j = 0; j < n; ++j) {
        const std::int64_t from = row[static_cast<std::size_t>(j)];
        const float* k = before.keys[static_cast<std::size_t>(layer)].data() + (from * heads + head) * d;
        const float* v = before.values[static_cast<std::size_t>(layer)].data() + (from * heads + head) * d;
        std::copy(k, k + d, key.begin() + j * d);
        std::copy(v, v + d, value.begin() + j * d);
        if (post && from != j) {
          apply_inverse_rope<d>(key.data() + j * d, from, cache.rope_table(), c.rope.style);
          apply_rope<d>(key.data() + j * d, j, cache.rope_table(), c.rope.style);
        }
      }
      std::vector<float> want_key(key.size()), want_value(key.size());
      auto place = [&]<class P>(const std::vector<float>& in, std::vector<float>& want, bool is_key) {
        for (std::int64_t j = 0; j < n; ++j)
          for (int ch = 0; ch < d; ++ch) want[j * d + ch] = fp16_of(in[j * d + ch]);  // sinks and window
        constexpr int T = P::tokens_per_block;
        for (std::int64_t b0 = 0; b0 < s.quantized; b0 += T) {
          // Whole old block, in order, not re-rotated: its old bytes, i.e. exactly what attention read before.
          const std::int64_t source = row[static_cast<std::size_t>(sinks + b0)] - sinks;
          bool whole = source >= 0 && source % T == 0 && source + T <= old_quantized;
          for (int r = 0; r < T && whole; ++r) {
            const std::int64_t from = row[static_cast<std::size_t>(sinks + b0 + r)];
            whole = from - sinks == source + r && !(is_key && post && from != sinks + b0 + r);
          }
          const std::vector<float> block(in.begin() + (sinks + b0) * d, in.begin() + (sinks + b0 + T) * d);
          const std::vector<float> stored = whole ? block : round_trip<P>(block, T);
          std::copy(stored.begin(), stored.end(), want.begin() + (sinks + b0) * d);
        }
      };
      place.template operator()<K>(key, want_key, true);
      place.template operator()<V>(value, want_value, false);
      std::vector<float> got_k(static_cast<std::size_t>(heads) * d), got_v(got_k.size());
      for (std::int64_t j = 0; j < n; ++j) {
        cache.read_token(layer, sequence, j, got_k.data(), got_v.data());
        INFO("layer " << layer << " head " << head << " row " << j << " (was token " << row[static_cast<std::size_t>(j)] << ")");
        for (int ch = 0; ch < d; ++ch) {
          REQUIRE(got_k[head * d + ch] == want_key[j * d + ch]);
          REQUIRE(got_v[head * d + ch] == want_value[j * d + ch]);
        }
      }
    }
}

// Random strictly ascending rows of `kept` tokens of [0, length) for every layer and head.
TokenSelection random_selection(int layers, int heads, std::int64_t length, std::int64_t kept, std::mt19937& rng) {
  TokenSelection selection(layers, heads, kept);
  std::vector<std::int64_t> all(static_cast<std::size_t>(length));
  std::iota(all.begin(), all.end(), 0);
  for (int layer = 0; layer < layers; ++layer)
    for (int head = 0; head < heads; ++head) {
      std::shuffle(all.begin(), all.end(), rng);
      auto row = selection.row(layer, head);
      std::copy_n(all.begin(), kept, row.begin());
      std::sort(row.begin(), row.end());
    }
  return selection;
}

template <class Tier>
HostPagedKVCache<LayerTiers<Tier>> filled_cache(const CacheConfig& config, std::int64_t length, std::mt19937& rng) {
  HostPagedKVCache<LayerTiers<Tier>> cache(config, std::int64_t{1} << 30);
  for (std::int64_t done = 0; done < length;) {
    const std::int64_t count = std::min<std::int64_t>(length - done, 1 + rng() % 40);  // prefill chunks and decode
    const int sequence = 0;
    const AppendPlan plan = cache.reserve({&sequence, 1}, {&count, 1});
    const TensorShape shape{count, config.kv_heads, d};
    for (int layer = 0; layer < config.layers; ++layer)
      cache.template write<f16>(plan, layer, make_input(shape, rng()), make_input(shape, rng()));
    done += count;
  }
  return cache;
}

CacheConfig small_config(KeyPosition position, int sinks, int window) {
  CacheConfig config{.layers = 2, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 400, .page_tokens = 32,
                     .sink_tokens = sinks, .window_tokens = window, .key_position = position};
  config.rope = llama31_8b_rope;
  return config;
}

template <class Tier>
void check_random_evictions(KeyPosition position, int sinks, int window) {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  const CacheConfig config = small_config(position, sinks, window);
  // Lengths at page boundaries +-1 (after the sinks), kept counts from 1 to all but one.
  for (const std::int64_t length : {std::int64_t{sinks + 64 - 1}, std::int64_t{sinks + 64}, std::int64_t{sinks + 64 + 1},
                                    static_cast<std::int64_t>(sinks + 160 + rng() % 60)}) {
    for (const std::int64_t kept : {std::int64_t{1}, std::int64_t{sinks + window}, std::int64_t{sinks + 32},
                                    length / 2, length - 1}) {
      if (kept < 1 || kept >= length) continue;
      auto cache = filled_cache<Tier>(config, length, rng);
      const Snapshot before = snapshot(cache, 0);
      const std::int64_t old_quantized = cache.sequences().sequence(0).quantized;
      const TokenSelection keep = random_selection(config.layers, config.kv_heads, length, kept, rng);
      INFO("length " << length << " kept " << kept);
      cache.retain(0, keep);
      check_compacted<Tier>(cache, 0, before, old_quantized, keep);
      // The pool got the pages back: a sequence holds exactly the pages its quantized tokens need.
      const SequenceGeometry& g = cache.sequences().geometry();
      CHECK(cache.sequences().sequence(0).pages.size() ==
            static_cast<std::size_t>(g.pages_for(g.quantized_after(kept, 0))));
      CHECK(cache.sequences().free_pages() ==
            cache.memory().pool_pages - static_cast<int>(cache.sequences().sequence(0).pages.size()));
    }
  }
}

}  // namespace

TEST_CASE("retain keeps exactly the chosen tokens: per-token 4-bit, pre-RoPE, sinks and window (bytes copied)") {
  check_random_evictions<PerTokenTier>(KeyPosition::pre_rope, 3, 5);
}

TEST_CASE("retain keeps exactly the chosen tokens: per-token 4-bit, post-RoPE keys re-rotated to their new position") {
  check_random_evictions<PerTokenTier>(KeyPosition::post_rope, 2, 4);
}

TEST_CASE("retain keeps exactly the chosen tokens: per-channel 3-bit keys (32-token blocks), no sinks, a window") {
  check_random_evictions<ChannelTier>(KeyPosition::pre_rope, 0, 7);
}

TEST_CASE("retain: whole aligned key blocks keep their bytes; a cut block is re-quantized from what attention read") {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  const CacheConfig config = small_config(KeyPosition::pre_rope, 0, 0);
  auto cache = filled_cache<ChannelTier>(config, 32 * 5, rng);  // five quantized 32-token blocks
  const std::vector<std::uint8_t> pages_before(cache.storage(0).pages.begin(), cache.storage(0).pages.end());
  // Drop blocks 1 and 3 whole: blocks 0, 2, 4 become blocks 0, 1, 2 with their old bytes.
  std::vector<std::int64_t> tokens;
  for (const int block : {0, 2, 4})
    for (int r = 0; r < 32; ++r) tokens.push_back(block * 32 + r);
  const Snapshot before = snapshot(cache, 0);
  const auto keep = TokenSelection::everywhere(config.layers, config.kv_heads, tokens);
  const std::int32_t page = cache.sequences().sequence(0).pages[1];
  cache.retain(0, keep);
  check_compacted<ChannelTier>(cache, 0, before, 160, keep);
  // New logical page 1 (old block 2) holds old page 2's bytes of head 0's key codes.
  const std::int64_t layout_bytes = TierPageLayout<ChannelTier>::key_code_bytes(config.page_tokens);
  const std::int64_t page_bytes = cache.storage(0).page_bytes;
  const std::int32_t old_page2 = page + 1;  // a fresh pool hands out consecutive pages
  const auto after = cache.storage(0).pages;
  CHECK(std::equal(after.begin() + page * page_bytes, after.begin() + page * page_bytes + layout_bytes,
                   pages_before.begin() + old_page2 * page_bytes));
  CHECK(cache.sequences().sequence(0).pages.size() == 3);
}

TEST_CASE("decode attention over the compacted cache equals attention over the kept tokens at their new positions") {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  for (const KeyPosition position : {KeyPosition::pre_rope, KeyPosition::post_rope}) {
    const CacheConfig config = small_config(position, 2, 6);
    auto cache = filled_cache<PerTokenTier>(config, 150, rng);
    const TokenSelection keep = random_selection(config.layers, config.kv_heads, 150, 70, rng);
    cache.retain(0, keep);
    constexpr int q_heads = 4;
    std::normal_distribution<float> normal;
    std::vector<float> q(q_heads * d);
    for (float& x : q) x = normal(rng);
    for (int layer = 0; layer < config.layers; ++layer) {
      std::vector<double> got(q.size());
      decode_attention_reference<PerTokenTier>(cache.view(layer), TierParams<PerTokenTier>{}, cache.rope_table(),
                                               config.rope.style, 0, q, q_heads, AttentionParams{}, got);
      // Independent: the kept rows as read_token returns them, RoPE at their new index for pre-RoPE keys.
      std::vector<float> k(static_cast<std::size_t>(config.kv_heads) * d), v(k.size());
      for (int h = 0; h < q_heads; ++h) {
        const int kv = h / 2;
        std::vector<long double> logit(70), out(d, 0);
        long double top = -INFINITY, sum = 0;
        std::vector<std::vector<float>> values;
        for (std::int64_t j = 0; j < 70; ++j) {
          cache.read_token(layer, 0, j, k.data(), v.data());
          if (position == KeyPosition::pre_rope) apply_rope<d>(k.data() + kv * d, j, cache.rope_table(), config.rope.style);
          long double dot = 0;
          for (int c = 0; c < d; ++c) dot += static_cast<long double>(q[h * d + c]) * k[kv * d + c];
          logit[j] = dot / std::sqrt(static_cast<long double>(d));
          top = std::max(top, logit[j]);
          values.emplace_back(v.begin() + kv * d, v.begin() + kv * d + d);
        }
        for (std::int64_t j = 0; j < 70; ++j) {
          const long double p = std::exp(logit[j] - top);
          sum += p;
          for (int c = 0; c < d; ++c) out[c] += p * values[j][c];
        }
        for (int c = 0; c < d; ++c)
          CHECK(got[h * d + c] == doctest::Approx(static_cast<double>(out[c] / sum)).epsilon(1e-9).scale(1.0));
      }
    }
  }
}

TEST_CASE("post-RoPE fp16 cache: a kept key reads as its input rotated by its NEW position (within fp16 rounding)") {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  const CacheConfig config = small_config(KeyPosition::post_rope, 0, 0);
  HostPagedKVCache<LayerTiers<Fp16Tier>> cache(config, std::int64_t{1} << 30);
  const std::int64_t length = 120;
  const TensorShape shape{length, config.kv_heads, d};
  const std::vector<f16> keys = make_input(shape, rng()), values = make_input(shape, rng());
  const int sequence = 0;
  const AppendPlan plan = cache.reserve({&sequence, 1}, {&length, 1});
  for (int layer = 0; layer < 2; ++layer) cache.write<f16>(plan, layer, keys, values);
  const TokenSelection keep = random_selection(2, 2, length, 40, rng);
  cache.retain(0, keep);
  std::vector<float> k(2 * d), v(2 * d);
  for (int layer = 0; layer < 2; ++layer)
    for (int head = 0; head < 2; ++head)
      for (std::int64_t j = 0; j < 40; ++j) {
        const std::int64_t from = keep.row(layer, head)[static_cast<std::size_t>(j)];
        cache.read_token(layer, 0, j, k.data(), v.data());
        float want[d];
        for (int c = 0; c < d; ++c) want[c] = to_float(keys[static_cast<std::size_t>((from * 2 + head) * d + c)]);
        apply_rope<d>(want, j, cache.rope_table(), config.rope.style);
        // Two fp16 roundings: the stored fp16(rope_from(k)) is off by at most 2^-11 of each element, so by at most
        // 2^-11 of the pair's norm as a vector, which the rotation back and forward keeps; the re-rotated key is
        // rounded to fp16 again (another 2^-11 of the element, at most of the norm). Plus the float rotations'
        // rounding (a few ulps of the norm) and fp16 subnormal spacing.
        for (int c = 0; c < d; ++c) {
          const int partner = c < d / 2 ? c + d / 2 : c - d / 2;  // half-split pairs
          const float norm = std::hypot(want[c], want[partner]);
          CHECK(std::abs(k[head * d + c] - want[c]) <= norm * (2 * std::ldexp(1.0f, -11) + 1e-6f) + 1.2e-7f);
        }
        for (int c = 0; c < d; ++c) CHECK(v[head * d + c] == to_float(values[static_cast<std::size_t>((from * 2 + head) * d + c)]));
      }
}

TEST_CASE("eviction policies: StreamingLLM, H2O and SnapKV choose what they promise; importance rows move along") {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  const CacheConfig config = small_config(KeyPosition::pre_rope, 0, 0);
  const std::int64_t length = 100;

  SUBCASE("streaming: sinks and the most recent tokens, the same in every layer and head") {
    auto cache = filled_cache<PerTokenTier>(config, length, rng);
    const StreamingLLM policy{.sink_tokens = 4, .recent_tokens = 20};
    CHECK(evict(cache, nullptr, 0, policy, policy.budget() - 1).has_value());  // room for one incoming token
    CHECK(cache.sequences().sequence(0).length == 23);
    const TokenSelection s = policy.select({2, 2, 0, length, nullptr}, 23);
    for (int layer = 0; layer < 2; ++layer)
      for (int head = 0; head < 2; ++head) {
        const auto row = s.row(layer, head);
        CHECK(std::vector<std::int64_t>(row.begin(), row.begin() + 4) == std::vector<std::int64_t>{0, 1, 2, 3});
        CHECK(row[4] == length - 19);
        CHECK(row.back() == length - 1);
      }
    CHECK_FALSE(evict(cache, nullptr, 0, policy, policy.budget()).has_value());  // within budget: a no-op
  }

  SUBCASE("h2o: per head, the highest accumulated importance outside the recent window; rows compacted with it") {
    auto cache = filled_cache<PerTokenTier>(config, length, rng);
    ImportanceScores importance(2, 2, 2, 400);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (int layer = 0; layer < 2; ++layer)
      for (int head = 0; head < 2; ++head) {
        auto row = importance.row(layer, 0, head);
        for (std::int64_t t = 0; t < length; ++t) row[static_cast<std::size_t>(t)] = uniform(rng) + static_cast<float>(t) * 1e-3f;
      }
    const ImportanceScores original = importance;
    const HeavyHitters policy{.budget_tokens = 30, .recent_tokens = 10, .sink_tokens = 1};
    const TokenSelection s = policy.select({2, 2, 0, length, &importance}, 30);
    CHECK(evict(cache, &importance, 0, policy, 30).has_value());
    for (int layer = 0; layer < 2; ++layer)
      for (int head = 0; head < 2; ++head) {
        const auto row = s.row(layer, head);
        const auto score = original.row(layer, 0, head);
        CHECK(row[0] == 0);
        for (int r = 0; r < 10; ++r) CHECK(row[static_cast<std::size_t>(20 + r)] == length - 10 + r);
        // Every dropped middle token scores at most the lowest kept heavy hitter.
        float lowest_kept = INFINITY;
        for (int i = 1; i < 20; ++i) lowest_kept = std::min(lowest_kept, score[static_cast<std::size_t>(row[static_cast<std::size_t>(i)])]);
        for (std::int64_t t = 1; t < length - 10; ++t)
          if (std::find(row.begin(), row.end(), t) == row.end()) CHECK(score[static_cast<std::size_t>(t)] <= lowest_kept);
        for (std::int64_t j = 0; j < 30; ++j)
          CHECK(importance.row(layer, 0, head)[static_cast<std::size_t>(j)] == score[static_cast<std::size_t>(row[static_cast<std::size_t>(j)])]);
        CHECK(importance.row(layer, 0, head)[30] == 0.0f);
      }
    // Keeping budget - 1 (one token incoming): the recent window keeps one token less, the heavy hitters stay 19.
    const TokenSelection fewer = policy.select({2, 2, 0, length, &original}, 29);
    CHECK(fewer.kept() == 29);
    CHECK(fewer.row(0, 0)[20] == length - 9);
    CHECK(fewer.row(0, 0)[28] == length - 1);
  }

  SUBCASE("snapkv: the observation window and the max-pooled top tokens before it") {
    ImportanceScores importance(2, 2, 2, 400);
    for (int layer = 0; layer < 2; ++layer)
      for (int head = 0; head < 2; ++head) importance.row(layer, 0, head)[static_cast<std::size_t>(10 + 20 * head)] = 5.0f;
    const SnapKV policy{.budget_tokens = 16, .window_tokens = 8, .pool_kernel = 5};
    const TokenSelection s = policy.select({2, 2, 0, length, &importance}, 16);
    for (int head = 0; head < 2; ++head) {
      const auto row = s.row(1, head);
      // Pooling spreads the peak over its +-2 neighbours; ties go to the older token: peak-2 .. peak+2, then 0..2.
      const std::int64_t peak = 10 + 20 * head;
      std::vector<std::int64_t> want{0, 1, 2};
      for (std::int64_t t = peak - 2; t <= peak + 2; ++t) want.push_back(t);
      for (std::int64_t t = length - 8; t < length; ++t) want.push_back(t);
      std::sort(want.begin(), want.end());
      CHECK(std::vector<std::int64_t>(row.begin(), row.end()) == want);
    }
  }
}

TEST_CASE("bad evictions are refused with the problem named, and nothing stored changes") {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  const CacheConfig config = small_config(KeyPosition::post_rope, 2, 3);
  auto cache = filled_cache<PerTokenTier>(config, 90, rng);
  ImportanceScores importance(2, 2, 2, 400);
  const auto pages = std::vector<std::uint8_t>(cache.storage(1).pages.begin(), cache.storage(1).pages.end());
  const auto window = std::vector<f16>(cache.storage(1).window.begin(), cache.storage(1).window.end());
  const auto sequence_before = cache.sequences().sequence(0);
  const int free_before = cache.sequences().free_pages();

  TokenSelection unknown(2, 2, 10);
  unknown.row(1, 1)[9] = 90;
  CHECK_THROWS_WITH_AS(cache.retain(0, unknown), doctest::Contains("keeps token 90, which is not in the sequence of 90"), Error);
  TokenSelection unordered(2, 2, 10);
  std::swap(unordered.row(0, 1)[3], unordered.row(0, 1)[4]);
  CHECK_THROWS_WITH_AS(cache.retain(0, unordered), doctest::Contains("strictly ascending"), Error);
  CHECK_THROWS_WITH_AS(cache.retain(0, TokenSelection(3, 2, 10)), doctest::Contains("3 layers"), Error);
  CHECK_THROWS_WITH_AS(cache.retain(0, TokenSelection(2, 2, 91)), doctest::Contains("keeps 91 tokens of a sequence of 90"), Error);
  CHECK_THROWS_WITH_AS(evict(cache, &importance, 0, HeavyHitters{.budget_tokens = 10, .recent_tokens = 8, .sink_tokens = 4}, 9),
                       doctest::Contains("budget of 10 tokens is below sinks + recent window (4 + 8)"), Error);
  CHECK_THROWS_WITH_AS(evict(cache, nullptr, 0, HeavyHitters{.budget_tokens = 10, .recent_tokens = 4}, 9),
                       doctest::Contains("needs importance scores"), Error);
  CHECK_THROWS_WITH_AS(evict(cache, &importance, 0, SnapKV{.budget_tokens = 8, .window_tokens = 16}, 8),
                       doctest::Contains("below its observation window of 16"), Error);
  CHECK_THROWS_WITH_AS(evict(cache, nullptr, 0, StreamingLLM{.sink_tokens = 4, .recent_tokens = 8}, 3),
                       doctest::Contains("cannot keep 3 of 90"), Error);
  importance.row(1, 0, 1)[33] = std::nanf("");
  CHECK_THROWS_WITH_AS(evict(cache, &importance, 0, HeavyHitters{.budget_tokens = 20, .recent_tokens = 4}, 19),
                       doctest::Contains("importance of token 33 (layer 1, KV head 1) is not finite"), Error);
  // A pending append (reserved, not every layer written) blocks eviction too.
  const int other = 1;  // an append to the other sequence, into its sinks: nothing of sequence 0 moves
  const std::int64_t one = 1;
  const AppendPlan plan = cache.reserve({&other, 1}, {&one, 1});
  CHECK_THROWS_WITH_AS(cache.retain(0, TokenSelection(2, 2, 10)), doctest::Contains("evict: layer"), Error);
  const TensorShape shape{1, 2, d};
  for (int layer = 0; layer < 2; ++layer) cache.write<f16>(plan, layer, make_input(shape, rng()), make_input(shape, rng()));

  CHECK(std::equal(pages.begin(), pages.end(), cache.storage(1).pages.begin()));
  CHECK(std::equal(window.begin(), window.end(), cache.storage(1).window.begin(),
                   [](f16 a, f16 b) { return a.bits == b.bits; }));
  CHECK(cache.sequences().sequence(0).length == sequence_before.length);
  CHECK(cache.sequences().sequence(0).pages == sequence_before.pages);
  CHECK(cache.sequences().free_pages() == free_before);
  CHECK(importance.row(1, 0, 1)[32] == 0.0f);  // the rows were not compacted either
}

TEST_CASE("edges: keeping everything is a no-op; one token; the freed pages show in the accounting") {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  const CacheConfig config = small_config(KeyPosition::pre_rope, 1, 2);
  auto cache = filled_cache<PerTokenTier>(config, 200, rng);
  const std::int64_t in_use = cache.pages_in_use_bytes();
  const std::int64_t page_bytes = 2 * cache.storage(0).page_bytes;  // two layers
  CHECK(in_use == 7 * page_bytes);                                   // 197 quantized tokens in 32-token pages
  const auto bytes = std::vector<std::uint8_t>(cache.storage(0).pages.begin(), cache.storage(0).pages.end());
  cache.retain(0, TokenSelection(2, 2, 200));                        // every token: nothing moves
  CHECK(std::equal(bytes.begin(), bytes.end(), cache.storage(0).pages.begin()));
  CHECK_FALSE(evict(cache, nullptr, 0, StreamingLLM{.sink_tokens = 1, .recent_tokens = 300}, 300).has_value());
  CHECK(evict(cache, nullptr, 0, StreamingLLM{.sink_tokens = 1, .recent_tokens = 99}, 100).has_value());
  CHECK(cache.pages_in_use_bytes() == 4 * page_bytes);               // 97 quantized tokens
  CHECK(cache.allocated_bytes() == cache.memory().total_bytes());    // the allocation itself is fixed
  const Snapshot before = snapshot(cache, 0);
  cache.retain(0, TokenSelection::everywhere(2, 2, std::vector<std::int64_t>{57}));
  CHECK(cache.sequences().sequence(0).length == 1);
  CHECK(cache.pages_in_use_bytes() == 0);
  std::vector<float> k(2 * d), v(2 * d);
  cache.read_token(0, 0, 0, k.data(), v.data());
  // Quantized token 57 becomes the fp16 sink: fp16 of its dequantized value.
  for (int c = 0; c < 2 * d; ++c) CHECK(k[c] == fp16_of(before.keys[0][57 * 2 * d + c]));
  // The compacted sequence grows again like any other.
  const int s0 = 0;
  const std::int64_t count = 50;
  const AppendPlan plan = cache.reserve({&s0, 1}, {&count, 1});
  const TensorShape shape{count, 2, d};
  for (int layer = 0; layer < 2; ++layer) cache.write<f16>(plan, layer, make_input(shape, rng()), make_input(shape, rng()));
  CHECK(cache.sequences().sequence(0).length == 51);
  CHECK(cache.sequences().sequence(0).quantized == 48);
}
