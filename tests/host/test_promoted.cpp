// Per-token precision tiers (kvq/cache/promoted_tokens.hpp, kvq/host/promoted_attention.hpp): tokens leaving the
// fp16 window are promoted to the high tier by importance (the store always holding the top of what it was
// offered, up to its capacity), attention reads promoted tokens from their copies and everything else as the cache
// stores it, the bytes are what the accounting says, copies follow their tokens through eviction, and bad input
// is refused.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "../support/policy_fixtures.hpp"
#include "kvq/cache/host_paged_cache.hpp"
#include "kvq/cache/importance_scores.hpp"
#include "kvq/cache/promoted_tokens.hpp"
#include "kvq/host/promoted_attention.hpp"
#include "kvq/host/quantize_tensor.hpp"

using namespace kvq;
using namespace kvq::testing;

namespace {

constexpr int d = 64;
using Low = Tier<Int4TokenSymBf16, Int4TokenSymBf16>;
using Int8 = UniformPolicy<UniformConfig{.bits = 8, .group_size = 64, .head_dim = 64}>;
using High = Tier<Int8, Int8>;
using Cache = HostPagedKVCache<LayerTiers<Low>>;

template <class P>
std::vector<float> round_trip(const float* row) {
  const TensorShape shape{1, 1, d};
  const QuantizedTensorLayout<P> layout{shape};
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(layout.code_bytes())), meta(static_cast<std::size_t>(layout.meta_bytes()));
  quantize_tensor<P, float>({row, d}, shape, codes, meta, typename P::Params{});
  std::vector<float> out(d);
  dequantize_tensor<P, float>(codes, meta, shape, out, typename P::Params{});
  return out;
}

CacheConfig config_for(KeyPosition position) {
  CacheConfig config{.layers = 2, .kv_heads = 2, .max_sequences = 1, .max_tokens_per_sequence = 300, .page_tokens = 32,
                     .sink_tokens = 1, .window_tokens = 6, .key_position = position};
  config.rope = llama31_8b_rope;
  return config;
}

}  // namespace

TEST_CASE("promotion keeps the most important tokens leaving the window, up to the fraction; attention reads them") {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  for (const KeyPosition position : {KeyPosition::pre_rope, KeyPosition::post_rope}) {
    const CacheConfig config = config_for(position);
    Cache cache(config, std::int64_t{1} << 30);
    ImportanceScores importance(2, 1, 2, 300);
    PromotedTokens<High> promoted(config, 0.25);
    // Scores fixed in advance (as if attention had accumulated them): the store must hold, at every moment, the
    // top `capacity` of the tokens offered so far, under "a token rejected or demoted once never comes back".
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (int layer = 0; layer < 2; ++layer)
      for (int head = 0; head < 2; ++head)
        for (float& x : importance.row(layer, 0, head)) x = uniform(rng);
    std::vector<std::set<std::int64_t>> model(4);  // [layer][head]: the tokens the store must hold
    const std::int64_t length = 200;
    const TensorShape shape{length, 2, d};
    const std::vector<f16> keys = make_input(shape, rng()), values = make_input(shape, rng());
    for (std::int64_t t = 0; t < length; ++t) {
      const int sequence = 0;
      const std::int64_t one = 1;
      const AppendPlan plan = cache.reserve({&sequence, 1}, {&one, 1});
      const auto& e = plan.entries[0];
      for (int layer = 0; layer < 2; ++layer) {
        promoted.before_write(cache, plan, layer, importance);
        const std::vector<f16> k(keys.begin() + t * 2 * d, keys.begin() + (t + 1) * 2 * d);
        const std::vector<f16> v(values.begin() + t * 2 * d, values.begin() + (t + 1) * 2 * d);
        cache.write<f16>(plan, layer, k, v);
        for (int head = 0; head < 2; ++head) {
          auto& held = model[static_cast<std::size_t>(layer * 2 + head)];
          const auto score = importance.row(layer, 0, head);
          for (std::int64_t q = e.old_quantized; q < e.new_quantized; ++q) {
            held.insert(1 + q);  // offered, then the weakest over capacity goes (ties: the newcomer)
            if (static_cast<std::int64_t>(held.size()) > promoted.capacity(e.new_quantized)) {
              const auto weakest = std::min_element(held.begin(), held.end(), [&](std::int64_t a, std::int64_t b) {
                const float x = score[static_cast<std::size_t>(a)], y = score[static_cast<std::size_t>(b)];
                return x != y ? x < y : a > b;
              });
              held.erase(weakest);
            }
          }
        }
      }
    }
    const std::int64_t quantized = cache.sequences().sequence(0).quantized;
    REQUIRE(quantized == length - 1 - 6);
    for (int layer = 0; layer < 2; ++layer)
      for (int head = 0; head < 2; ++head) {
        std::set<std::int64_t> got;
        for (const auto& c : promoted.copies(layer, 0, head)) got.insert(c.token);
        CHECK(got == model[static_cast<std::size_t>(layer * 2 + head)]);
        CHECK(static_cast<std::int64_t>(got.size()) == promoted.capacity(quantized));
      }
    CHECK(promoted.promoted_bytes() == 4 * promoted.capacity(quantized) * (64 + 4 + 64 + 4 + 4));

    // Attention: promoted tokens read as int8 of their fp16 cache form, the rest as the cache stores them.
    constexpr int q_heads = 4;
    std::normal_distribution<float> normal;
    std::vector<float> q(q_heads * d);
    for (float& x : q) x = normal(rng);
    ImportanceScores after(2, 1, 2, 300);
    for (int layer = 0; layer < 2; ++layer) {
      std::vector<double> got(q.size());
      promoted_decode_attention_reference<Low>(cache.view(layer), TierParams<Low>{}, promoted, layer, cache.rope_table(),
                                               config.rope.style, 0, q, q_heads, AttentionParams{}, got, after.view(layer));
      std::vector<float> k(2 * d), v(2 * d);
      for (int h = 0; h < q_heads; ++h) {
        const int kv = h / 2;
        std::vector<long double> logit(static_cast<std::size_t>(length)), out(d, 0);
        std::vector<std::vector<float>> vs;
        long double top = -INFINITY, sum = 0;
        for (std::int64_t t = 0; t < length; ++t) {
          cache.read_token(layer, 0, t, k.data(), v.data());
          std::vector<float> key(k.begin() + kv * d, k.begin() + kv * d + d), value(v.begin() + kv * d, v.begin() + kv * d + d);
          if (model[static_cast<std::size_t>(layer * 2 + kv)].count(t) != 0) {
            float fp16_key[d], fp16_value[d];  // the fp16 form the window held: rotated first when post-RoPE
            for (int c = 0; c < d; ++c) {
              fp16_key[c] = to_float(keys[static_cast<std::size_t>((t * 2 + kv) * d + c)]);
              fp16_value[c] = to_float(values[static_cast<std::size_t>((t * 2 + kv) * d + c)]);
            }
            if (position == KeyPosition::post_rope) {
              apply_rope<d>(fp16_key, t, cache.rope_table(), config.rope.style);
              for (float& x : fp16_key) x = to_float(to_f16_saturating(x));
            }
            key = round_trip<Int8>(fp16_key);
            value = round_trip<Int8>(fp16_value);
          }
          if (position == KeyPosition::pre_rope) apply_rope<d>(key.data(), t, cache.rope_table(), config.rope.style);
          float read_key[d], read_value[d];  // the reader attention uses, token by token
          read_promoted_attention_token<Low>(cache.view(layer), TierParams<Low>{}, promoted, layer, cache.rope_table(),
                                             config.rope.style, 0, t, kv, read_key, read_value);
          INFO("layer " << layer << " head " << kv << " token " << t);
          for (int c = 0; c < d; ++c) {
            REQUIRE(read_key[c] == key[static_cast<std::size_t>(c)]);
            REQUIRE(read_value[c] == value[static_cast<std::size_t>(c)]);
          }
          long double dot = 0;
          for (int c = 0; c < d; ++c) dot += static_cast<long double>(q[h * d + c]) * key[c];
          logit[static_cast<std::size_t>(t)] = dot / 8.0L;
          top = std::max(top, logit[static_cast<std::size_t>(t)]);
          vs.push_back(value);
        }
        for (std::int64_t t = 0; t < length; ++t) {
          const long double p = std::exp(logit[static_cast<std::size_t>(t)] - top);
          sum += p;
          for (int c = 0; c < d; ++c) out[c] += p * vs[static_cast<std::size_t>(t)][c];
        }
        for (int c = 0; c < d; ++c)
          CHECK(got[h * d + c] == doctest::Approx(static_cast<double>(out[c] / sum)).epsilon(1e-9).scale(1.0));
      }
      // Importance as importance.hpp defines it: each KV head's row gained its 2 query heads' probabilities.
      for (int kv = 0; kv < 2; ++kv) {
        const auto row = after.row(layer, 0, kv);
        CHECK(std::accumulate(row.begin(), row.begin() + length, 0.0) == doctest::Approx(2.0).epsilon(1e-5));
      }
    }
  }
}

TEST_CASE("promoted copies follow their tokens through eviction and truncation; bad input is refused") {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  const CacheConfig config = config_for(KeyPosition::pre_rope);
  Cache cache(config, std::int64_t{1} << 30);
  ImportanceScores importance(2, 1, 2, 300);
  PromotedTokens<High> promoted(config, 0.5);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  for (int layer = 0; layer < 2; ++layer)
    for (int head = 0; head < 2; ++head)
      for (float& x : importance.row(layer, 0, head)) x = uniform(rng);
  for (int t = 0; t < 120; ++t) {
    const int sequence = 0;
    const std::int64_t one = 1;
    const AppendPlan plan = cache.reserve({&sequence, 1}, {&one, 1});
    const TensorShape shape{1, 2, d};
    for (int layer = 0; layer < 2; ++layer) {
      promoted.before_write(cache, plan, layer, importance);
      cache.write<f16>(plan, layer, make_input(shape, rng()), make_input(shape, rng()));
    }
  }
  const PromotedTokens<High> before = promoted;
  // Keep every other token: token 2j -> position j.
  std::vector<std::int64_t> even;
  for (std::int64_t t = 0; t < 120; t += 2) even.push_back(t);
  const TokenSelection keep = TokenSelection::everywhere(2, 2, even);
  cache.retain(0, keep);
  promoted.retain(0, keep, cache.sequences().sequence(0).quantized);
  const std::int64_t quantized = cache.sequences().sequence(0).quantized;  // 60 - 1 sink - 6 window = 53
  CHECK(quantized == 53);
  for (int layer = 0; layer < 2; ++layer)
    for (int head = 0; head < 2; ++head) {
      for (const auto& c : promoted.copies(layer, 0, head)) {
        CHECK(c.token >= 1);
        CHECK(c.token < 1 + quantized);
        const auto* old = before.find(layer, 0, head, 2 * c.token);
        REQUIRE(old != nullptr);
        CHECK(old->bytes == c.bytes);  // pre-RoPE: the same bytes at the new position
      }
      // Every surviving old copy of an even token inside the new quantized range is still there (capacity 26).
      std::int64_t expected = 0;
      for (const auto& c : before.copies(layer, 0, head))
        if (c.token % 2 == 0 && c.token / 2 >= 1 && c.token / 2 < 1 + quantized) ++expected;
      CHECK(static_cast<std::int64_t>(promoted.copies(layer, 0, head).size()) == std::min(expected, promoted.capacity(quantized)));
    }
  cache.truncate(0, 30);
  promoted.truncate(0, cache.sequences().sequence(0).quantized);
  for (const auto& c : promoted.copies(1, 0, 1)) CHECK(c.token < 1 + cache.sequences().sequence(0).quantized);
  promoted.reset(0);
  CHECK(promoted.promoted_bytes() == 0);

  CHECK_THROWS_WITH_AS(PromotedTokens<High>(config, 1.5), doctest::Contains("fraction must be in [0, 1]"), Error);
  CacheConfig no_window = config;
  no_window.window_tokens = 0;
  CHECK_THROWS_WITH_AS(PromotedTokens<High>(no_window, 0.1), doctest::Contains("needs an fp16 window"), Error);
  // A NaN score is refused when its token is offered.
  cache.reset(0);
  importance.row(0, 0, 0)[1] = std::nanf("");
  std::string message;
  for (int t = 0; t < 10 && message.empty(); ++t) {
    const int sequence = 0;
    const std::int64_t one = 1;
    const AppendPlan plan = cache.reserve({&sequence, 1}, {&one, 1});
    const TensorShape shape{1, 2, d};
    for (int layer = 0; layer < 2; ++layer) {
      try {
        promoted.before_write(cache, plan, layer, importance);
      } catch (const Error& e) {
        message = e.what();
      }
      cache.write<f16>(plan, layer, make_input(shape, rng()), make_input(shape, rng()));
    }
  }
  CHECK(message.find("importance of token 1 (layer 0, KV head 0) is not finite") != std::string::npos);
}
