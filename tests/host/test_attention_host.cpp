// Host tests of decode attention's pieces that run without a GPU: the split planner, the fp16 policy, and the host
// reference attention against an independent computation (the cache's own read_token, RoPE, long-double softmax).
#include <doctest/doctest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "../support/policy_fixtures.hpp"
#include "kvq/attention/decode_plan.hpp"
#include "kvq/cache/host_paged_cache.hpp"
#include "kvq/host/decode_attention.hpp"
#include "kvq/host/prefill_attention.hpp"
#include "kvq/quant/fp16.hpp"

using namespace kvq;
using namespace kvq::testing;

TEST_CASE("plan_decode: splits follow length, bytes and SM count; workspace layout; group chunks") {
  const DecodeShape llama{1, 32, 8, 128};
  // Short context: no split has less than min_split_bytes of KV data.
  const DecodePlan short_plan = plan_decode(llama, 30, 512.0, 132);
  CHECK(short_plan.splits == 1);
  CHECK(short_plan.workspace_bytes == 0);
  CHECK(plan_decode(llama, 64, 512.0, 132).splits == 2);  // 16 KiB per split
  // Long context, batch 1: one full wave of 3 blocks per SM, floor(132 * 3 / 8 heads) = 49 splits (392 of 396
  // slots; 50 would leave 4 blocks for a second wave, 99 fills two waves exactly but pays a second wave).
  const DecodePlan long_plan = plan_decode(llama, 131072, 512.0, 132);
  CHECK(long_plan.splits == 49);
  CHECK(long_plan.lse_offset == std::int64_t{32} * 49 * 128 * 4);
  CHECK(long_plan.counter_offset == long_plan.lse_offset + align16(32 * 49 * 4));
  // The occupancy the device planner measures sizes the wave: 2 blocks per SM give floor(264 / 8) = 33 splits.
  CHECK(plan_decode(llama, 131072, 512.0, 132, DecodeTuning{.blocks_per_sm = 2}).splits == 33);
  CHECK(long_plan.workspace_bytes == long_plan.counter_offset + align16(8 * 4));
  // Fewer bytes per token: more tokens per split before the minimum is reached.
  CHECK(plan_decode(llama, 4096, 48.0, 132).splits < plan_decode(llama, 4096, 512.0, 132).splits);
  // Larger batches: 256 blocks fill 65% of one wave unsplit, 97% of two waves in 3 splits (768 of 792 slots);
  // 512 blocks fill 65% of two waves unsplit, 86% of three in 2 splits. 1536 blocks (batch 192) are 3.9 full
  // waves already: no split.
  CHECK(plan_decode({32, 32, 8, 128}, 131072, 512.0, 132).splits == 3);
  CHECK(plan_decode({64, 32, 8, 128}, 131072, 512.0, 132).splits == 2);
  CHECK(plan_decode({192, 32, 8, 128}, 131072, 512.0, 132).splits == 1);
  // Group widths: 4 query heads per block up to a group of 4, then chunks of 8.
  const DecodePlan mqa = plan_decode({1, 9, 1, 64}, 1000, 64.0, 132);
  CHECK(mqa.group == 9);
  CHECK(mqa.group_width == 8);
  CHECK(mqa.head_chunks == 2);
  CHECK(plan_decode({1, 3, 1, 64}, 1000, 64.0, 132).group_width == 4);
  CHECK(plan_decode({0, 32, 8, 128}, 0, 512.0, 132).splits == 1);
  // Importance: every block resident at once (one wave of 396 slots) and logit rows in the workspace.
  const DecodePlan tracked = plan_decode(llama, 131072, 512.0, 132, DecodeTuning{.importance = true});
  CHECK(tracked.importance);
  CHECK(tracked.splits == 49);  // 392 blocks fit one wave already
  CHECK(tracked.logit_stride == 131072);
  CHECK(tracked.logit_offset == tracked.counter_offset + align16(8 * 4 * 2));  // arrivals and departures
  CHECK(tracked.workspace_bytes == tracked.logit_offset + std::int64_t{32} * 131072 * 4);
  CHECK(plan_decode({32, 32, 8, 128}, 131072, 512.0, 132, DecodeTuning{.importance = true}).splits == 1);  // 256 blocks: 1 per wave slot
  CHECK(plan_decode({8, 32, 8, 128}, 131072, 512.0, 132, DecodeTuning{.importance = true}).splits == 6);   // 384 of 396
  const DecodePlan unsplit = plan_decode({192, 32, 8, 128}, 1001, 512.0, 132, DecodeTuning{.importance = true});
  CHECK(unsplit.splits == 1);
  CHECK(unsplit.logit_stride == 1004);
  CHECK(unsplit.logit_offset == 0);
  CHECK(unsplit.workspace_bytes == align16(std::int64_t{192} * 32 * 1004 * 4));
  CHECK(long_plan.scale({}) == doctest::Approx(1.0 / std::sqrt(128.0)));
  CHECK(long_plan.scale({.softmax_scale = 0.5f}) == 0.5f);
  CHECK_THROWS_WITH_AS(plan_decode({1, 32, 6, 128}, 10, 1.0, 1), doctest::Contains("multiple of kv_heads"), Error);
  CHECK_THROWS_WITH_AS(plan_decode({-1, 32, 8, 128}, 10, 1.0, 1), doctest::Contains("negative"), Error);
  CHECK_THROWS_WITH_AS(plan_decode(llama, -1, 1.0, 1), doctest::Contains("negative"), Error);
  CHECK_THROWS_WITH_AS(plan_decode(llama, 10, 1.0, 0), doctest::Contains("positive"), Error);
  CHECK_THROWS_WITH_AS(plan_decode(llama, 10, 1.0, 132, DecodeTuning{.max_splits = decode_max_splits + 1}),
                       doctest::Contains("max_splits 257"), Error);
}

TEST_CASE("Fp16Policy: exact for fp16 values, saturates beyond fp16, poisons a slice holding NaN or Inf") {
  using P = Fp16Policy<64>;
  static_assert(QuantizationPolicy<P>);
  std::mt19937 rng(fresh_seed());
  std::normal_distribution<float> normal(0.0f, 100.0f);
  std::vector<float> tile(64), back(64);
  for (float& x : tile) x = to_float(to_f16(normal(rng)));
  tile[5] = 1e6f;    // saturates to 65504
  tile[6] = -1e9f;   // saturates to -65504
  tile[40] = NAN;    // poisons channels 32..63
  std::vector<std::uint8_t> codes(P::code_bytes_per_block);
  std::vector<float> input = tile;
  CHECK(quantize_block<P>(input.data(), 1, BlockRef{codes.data(), nullptr}, {}) == 1);
  P::dequantize(ConstBlockRef{codes.data(), nullptr}, 0, 0, 64, back.data(), {});
  for (int c = 0; c < 32; ++c) {
    const float expected = c == 5 ? 65504.0f : c == 6 ? -65504.0f : tile[c];
    CHECK(back[c] == expected);
  }
  for (int c = 32; c < 64; ++c) CHECK(std::isnan(back[c]));
}

TEST_CASE("decode_attention_reference equals attention computed from read_token (pre-RoPE keys, sinks, window)") {
  using T = Tier<Int4Token, Int8Token>;
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 600, .page_tokens = 64,
                     .sink_tokens = 3, .window_tokens = 10, .key_position = KeyPosition::pre_rope};
  config.rope = llama31_8b_rope;
  HostPagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 30);
  for (const std::int64_t count : {std::int64_t{250}, std::int64_t{1}, std::int64_t{300}}) {
    const AppendPlan plan = cache.reserve(std::vector<int>{0, 1}, std::vector<std::int64_t>{count, count / 2});
    const TensorShape shape{plan.total_tokens, 2, 128};
    cache.write<f16>(plan, 0, make_input(shape, rng()), make_input(shape, rng()));
  }
  constexpr int q_heads = 6, d = 128;
  std::normal_distribution<float> normal;
  std::vector<float> q(q_heads * d);
  for (float& x : q) x = normal(rng);
  const AttentionParams attention{.softmax_scale = 0.05f, .soft_cap = 20.0f};
  // Importance rows (importance.hpp): 2 sequences x 2 KV heads x 600 slots, poisoned past each length.
  constexpr std::int64_t slots = 600;
  std::vector<float> importance(2 * 2 * slots, -7.0f);
  const ImportanceView importance_view{importance.data(), 2 * slots, slots};
  for (int s = 0; s < 2; ++s) {
    const std::int64_t length = cache.sequences().sequence(s).length;
    for (int kv = 0; kv < 2; ++kv)
      std::fill_n(importance.begin() + s * 2 * slots + kv * slots, length, 0.5f);  // a previous step's sum
    std::vector<double> got(q.size()), again(q.size());
    decode_attention_reference<T>(cache.view(0), TierParams<T>{}, cache.rope_table(), config.rope.style, s, q, q_heads,
                                  attention, got, importance_view);
    decode_attention_reference<T>(cache.view(0), TierParams<T>{}, cache.rope_table(), config.rope.style, s, q, q_heads,
                                  attention, again);
    CHECK(got == again);  // the bookkeeping does not change the output
    std::vector<long double> expected_importance(2 * static_cast<std::size_t>(length), 0.5L);
    std::vector<float> keys(static_cast<std::size_t>(length) * 2 * d), values(keys.size());
    for (std::int64_t t = 0; t < length; ++t) {
      cache.read_token(0, s, t, keys.data() + t * 2 * d, values.data() + t * 2 * d);
      for (int h = 0; h < 2; ++h) apply_rope<d>(keys.data() + (t * 2 + h) * d, t, cache.rope_table(), config.rope.style);
    }
    for (int h = 0; h < q_heads; ++h) {
      const int kv = h / 3;
      std::vector<long double> logit(static_cast<std::size_t>(length));
      long double top = -INFINITY, sum = 0;
      for (std::int64_t t = 0; t < length; ++t) {
        long double dot = 0;
        for (int c = 0; c < d; ++c) dot += static_cast<long double>(q[h * d + c]) * keys[(t * 2 + kv) * d + c];
        logit[t] = 20.0L * std::tanh(dot * static_cast<long double>(0.05f) / 20.0L);  // the float scale, as given
        top = std::max(top, logit[t]);
      }
      std::vector<long double> o(d, 0);
      for (std::int64_t t = 0; t < length; ++t) {
        const long double p = std::exp(logit[t] - top);
        sum += p;
        for (int c = 0; c < d; ++c) o[c] += p * values[(t * 2 + kv) * d + c];
      }
      for (int c = 0; c < d; ++c) CHECK(got[h * d + c] == doctest::Approx(static_cast<double>(o[c] / sum)).epsilon(1e-9).scale(1.0));
      for (std::int64_t t = 0; t < length; ++t) expected_importance[kv * length + t] += std::exp(logit[t] - top) / sum;
    }
    // Each KV head's row gained its 3 heads' probabilities (float storage: 1e-6 relative), nothing past the length.
    for (int kv = 0; kv < 2; ++kv) {
      const float* row = importance.data() + s * 2 * slots + kv * slots;
      double total = 0;
      for (std::int64_t t = 0; t < length; ++t) {
        CHECK(row[t] == doctest::Approx(static_cast<double>(expected_importance[kv * length + t])).epsilon(1e-6));
        total += row[t] - 0.5;
      }
      CHECK(total == doctest::Approx(3.0).epsilon(1e-5));
      for (std::int64_t t = length; t < slots; ++t) CHECK(row[t] == -7.0f);
    }
  }
  std::vector<double> scratch(q.size());
  CHECK_THROWS_WITH_AS(decode_attention_reference<T>(cache.view(0), TierParams<T>{}, cache.rope_table(), config.rope.style,
                                                     0, q, q_heads, attention, scratch,
                                                     ImportanceView{importance.data(), 2 * slots, 100}),
                       doctest::Contains("head_stride 100"), Error);
  std::vector<double> out(q.size());
  CHECK_THROWS_WITH_AS(decode_attention_reference<T>(cache.view(0), TierParams<T>{}, cache.rope_table(), config.rope.style,
                                                     2, q, q_heads, attention, out),
                       doctest::Contains("sequence 2"), Error);
  CHECK_THROWS_WITH_AS(decode_attention_reference<T>(cache.view(0), TierParams<T>{}, cache.rope_table(), config.rope.style,
                                                     0, q, 5, attention, out),
                       doctest::Contains("q_heads 5"), Error);
}

TEST_CASE("prefill_attention_reference: each query token equals decode over its prefix; exact chunk K/V where given") {
  using T = Tier<Int4Token, Int8Token>;
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  constexpr int q_heads = 4, d = 128, kv_heads = 2;
  // window 64: a chunk of 40 stays in the fp16 window; a chunk of 100 flushes part of itself to pages. Keys stored
  // before and after RoPE: write() takes them before RoPE either way, and so does the exact chunk.
  for (const KeyPosition position : {KeyPosition::pre_rope, KeyPosition::post_rope}) {
    INFO("pre-RoPE keys " << (position == KeyPosition::pre_rope));
    CacheConfig config{.layers = 1, .kv_heads = kv_heads, .max_sequences = 1, .max_tokens_per_sequence = 600,
                       .page_tokens = 64, .sink_tokens = 3, .window_tokens = 64, .key_position = position};
    config.rope = llama31_8b_rope;
    HostPagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 30);
    const auto append = [&](std::int64_t count, std::vector<float>& keys, std::vector<float>& values) {
      const AppendPlan plan = cache.reserve(std::vector<int>{0}, std::vector<std::int64_t>{count});
      const TensorShape shape{count, kv_heads, d};
      const std::vector<f16> k = make_input(shape, rng()), v = make_input(shape, rng());
      cache.write<f16>(plan, 0, k, v);
      keys.clear();
      values.clear();
      for (std::size_t i = 0; i < k.size(); ++i) keys.push_back(to_float(k[i])), values.push_back(to_float(v[i]));
    };
    std::vector<float> keys, values;
    append(200, keys, values);
    std::normal_distribution<float> normal;
    const AttentionParams attention{.softmax_scale = 0.0f, .soft_cap = 0.0f};
    for (const std::int64_t count : {std::int64_t{40}, std::int64_t{100}}) {
      INFO("chunk " << count);
      append(count, keys, values);
      std::vector<float> q(static_cast<std::size_t>(count) * q_heads * d);
      for (float& x : q) x = normal(rng);
      std::vector<std::int64_t> rows(static_cast<std::size_t>(count));
      std::iota(rows.begin(), rows.end(), 0);
      std::vector<double> stored(q.size()), exact(q.size());
      const CacheLayerView view = cache.view(0);
      prefill_attention_reference<T>(view, TierParams<T>{}, cache.rope_table(), config.rope.style, 0, count, q, q_heads,
                                     nullptr, nullptr, attention, rows, stored);
      prefill_attention_reference<T>(view, TierParams<T>{}, cache.rope_table(), config.rope.style, 0, count, q, q_heads,
                                     keys.data(), values.data(), attention, rows, exact);
      // As stored, query i is decode attention over the first past + i + 1 tokens of the same cache.
      const std::int64_t length = view.lengths[0], past = length - count;
      for (const std::int64_t i : {std::int64_t{0}, count / 2, count - 1}) {
        std::int64_t prefix = past + i + 1;
        CacheLayerView shorter = view;
        shorter.lengths = &prefix;
        std::vector<double> decoded(static_cast<std::size_t>(q_heads) * d);
        decode_attention_reference<T>(shorter, TierParams<T>{}, cache.rope_table(), config.rope.style, 0,
                                      std::span<const float>(q).subspan(static_cast<std::size_t>(i) * q_heads * d, q_heads * d),
                                      q_heads, attention, decoded);
        for (std::size_t c = 0; c < decoded.size(); ++c) CHECK(stored[static_cast<std::size_t>(i) * q_heads * d + c] == decoded[c]);
      }
      // The window holds the whole 40-token chunk in fp16, so exact = as stored; the 100-token chunk was partly
      // flushed to int4/int8 pages, so its exact rows differ.
      double difference = 0;
      for (std::size_t c = 0; c < q.size(); ++c) difference = std::max(difference, std::abs(stored[c] - exact[c]));
      if (count == 40) CHECK(difference == 0.0);
      else CHECK(difference > 1e-4);
    }
    std::vector<double> out(static_cast<std::size_t>(q_heads) * d);
    const std::vector<float> q1(static_cast<std::size_t>(q_heads) * d);
    const std::vector<std::int64_t> row0{0};
    CHECK_THROWS_WITH_AS(prefill_attention_reference<T>(cache.view(0), TierParams<T>{}, cache.rope_table(), config.rope.style,
                                                        0, 1, q1, q_heads, keys.data(), nullptr, attention, row0, out),
                         doctest::Contains("both chunk keys and values"), Error);
    const std::vector<std::int64_t> row5{5};
    CHECK_THROWS_WITH_AS(prefill_attention_reference<T>(cache.view(0), TierParams<T>{}, cache.rope_table(), config.rope.style,
                                                        0, 1, q1, q_heads, nullptr, nullptr, attention, row5, out),
                         doctest::Contains("outside the chunk"), Error);
    CHECK_THROWS_WITH_AS(prefill_attention_reference<T>(cache.view(0), TierParams<T>{}, cache.rope_table(), config.rope.style,
                                                        0, 100000, q1, q_heads, nullptr, nullptr, attention, row0, out),
                         doctest::Contains("not inside"), Error);
  }
}
