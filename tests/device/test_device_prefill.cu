// GPU tests of chunked-prefill attention (kvq/cuda/prefill_attention.cuh) against the double-precision host
// reference (kvq/host/prefill_attention.hpp) over the same cache bytes, downloaded.
//
// Error budget, per output row (one query head of one query token): ||out - ref||_2 / ||ref||_2 <= 1e-3 + u_out.
// The kernel reads exactly the floats the reference reads (same policy code, same RoPE). Scores: keys enter the
// tensor-core product as hi + lo fp16 terms (exact to ~2^-22 relative), fp16/bf16 queries are exact in fp16 and
// float queries are split the same way, products accumulate in fp32: the logits are right to ~1e-6 relative. The
// softmax weights and the values enter P . V rounded to fp16, each a relative error of at most 2^-11 per term,
// uniform (2^-11/sqrt(3) = 2.8e-4 rms); both errors scale with the terms of the weighted sum, so they move the
// output by ~2.8e-4 of itself each, ~4e-4 together. 1e-3 is the issue's bound; u_out is the unit round-off of
// the output type (0 for float, 2^-11 fp16, 2^-8 bf16), since rounding the result to that type is part of the
// output and not of the attention error. (Rounding the keys to one fp16 term instead gave errors up to 5e-2 on
// these inputs with outlier channels: logits of tens moved by 2^-11 of their size.)
#include <doctest/doctest.h>

#include "../support/attention_support.cuh"
#include "kvq/cuda/prefill_attention.cuh"
#include "kvq/host/prefill_attention.hpp"

using namespace kvq;
using namespace kvq::testing;

namespace {

struct PrefillCase {
  std::vector<std::int64_t> past;    // tokens each sequence holds before its chunk
  std::vector<std::int64_t> chunks;  // chunk tokens of each sequence (0: not in the call)
  int q_heads = 8;
  bool exact_chunk = true;           // pass the chunk's own keys and values (else: read them from the cache)
  AttentionParams attention{};
  int rows_checked = 24;             // query tokens per sequence compared with the reference (all if fewer)
};

// Query tokens of a chunk to check: all of a short chunk; otherwise the first and last two, both sides of the
// row-block boundaries at 4 query heads per KV head (128 rows = 32 tokens) and random ones.
std::vector<std::int64_t> rows_to_check(std::int64_t n, int wanted, std::mt19937& rng) {
  std::vector<std::int64_t> rows;
  if (n <= wanted) {
    for (std::int64_t i = 0; i < n; ++i) rows.push_back(i);
    return rows;
  }
  for (std::int64_t i : {std::int64_t{0}, std::int64_t{1}, std::int64_t{31}, std::int64_t{32}, n / 2, n - 2, n - 1})
    if (i >= 0 && i < n) rows.push_back(i);
  while (static_cast<int>(rows.size()) < wanted) rows.push_back(static_cast<std::int64_t>(rng() % n));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

template <class Tier, class Q = f16, class O = f16>
void run_prefill_case(CacheConfig config, const PrefillCase& pc) {
  constexpr int d = Tier::KeyPolicy::head_dim;
  using Tiers = LayerTiers<Tier>;
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  const int sequences = static_cast<int>(pc.past.size());
  config.layers = 1;
  config.max_sequences = sequences;
  std::int64_t longest = 1;
  for (int s = 0; s < sequences; ++s) longest = std::max(longest, pc.past[s] + pc.chunks[s]);
  config.max_tokens_per_sequence = longest;
  cuda::PagedKVCache<Tiers> cache(config, std::int64_t{1} << 40);
  BothParams<Tier> params(seed);
  cache.template set_params<Tier>(0, params.device.key, params.device.value);
  fill(cache, pc.past, rng);

  // The chunks: appended like a prefill step (one reserve, one write), their fp16 keys and values kept.
  std::vector<int> slots;
  std::vector<std::int64_t> counts;
  std::vector<std::int32_t> starts{0};
  for (int s = 0; s < sequences; ++s) {
    if (pc.chunks[s] == 0) continue;
    slots.push_back(s);
    counts.push_back(pc.chunks[s]);
    starts.push_back(starts.back() + static_cast<std::int32_t>(pc.chunks[s]));
  }
  std::vector<int> order(slots.size());  // batch entries in a shuffled order of slots
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int> batch_slots;
  std::vector<std::int32_t> batch_starts{0};
  for (int e : order) {
    batch_slots.push_back(slots[static_cast<std::size_t>(e)]);
    batch_starts.push_back(batch_starts.back() + static_cast<std::int32_t>(counts[static_cast<std::size_t>(e)]));
  }
  const std::int64_t total = batch_starts.back();
  std::vector<std::int64_t> batch_counts;
  for (std::size_t b = 0; b < batch_slots.size(); ++b) batch_counts.push_back(batch_starts[b + 1] - batch_starts[b]);
  const TensorShape kv_shape{total, config.kv_heads, d};
  const std::vector<f16> chunk_keys = make_input(kv_shape, rng()), chunk_values = make_input(kv_shape, rng());
  DeviceBuffer<f16> device_keys(chunk_keys), device_values(chunk_values);
  if (total > 0) {
    const AppendPlan plan = cache.reserve(batch_slots, batch_counts, nullptr);
    cache.template write<f16>(plan, 0, device_keys.get(), device_values.get(), nullptr);
    cuda::check(cudaDeviceSynchronize(), "chunk append");
  }

  std::int64_t max_chunk = 0;
  for (std::int64_t n : batch_counts) max_chunk = std::max(max_chunk, n);
  const PrefillShape shape{static_cast<int>(batch_slots.size()), pc.q_heads, config.kv_heads, d, max_chunk};
  const auto queries = random_queries<Q>(static_cast<std::size_t>(total) * pc.q_heads * d, rng);
  DeviceBuffer<Q> device_queries(queries);
  DeviceBuffer<O> out(static_cast<std::size_t>(total) * pc.q_heads * d, 0xFF);  // NaN until written
  DeviceBuffer<std::int32_t> device_slots(std::vector<std::int32_t>(batch_slots.begin(), batch_slots.end()));
  DeviceBuffer<std::int32_t> device_starts(batch_starts);
  cuda::prefill_attention_async(cache, 0, shape, pc.attention, device_queries.get(), out.get(),
                                pc.exact_chunk ? device_keys.get() : nullptr,
                                pc.exact_chunk ? device_values.get() : nullptr, device_slots.get(),
                                device_starts.get(), nullptr);
  cuda::check(cudaDeviceSynchronize(), "prefill attention");
  const std::vector<O> got = out.download();

  const HostLayer host = download_layer(cache, 0);
  for (std::size_t b = 0; b < batch_slots.size(); ++b) {
    const std::int64_t n = batch_counts[b], first = batch_starts[b];
    const int slot = batch_slots[b];
    std::vector<float> q(static_cast<std::size_t>(n) * pc.q_heads * d);
    for (std::size_t i = 0; i < q.size(); ++i) q[i] = as_float(queries[static_cast<std::size_t>(first) * pc.q_heads * d + i]);
    std::vector<float> keys, values;
    if (pc.exact_chunk) {
      const std::size_t begin = static_cast<std::size_t>(first) * config.kv_heads * d,
                        end = begin + static_cast<std::size_t>(n) * config.kv_heads * d;
      for (std::size_t i = begin; i < end; ++i) {
        keys.push_back(to_float(chunk_keys[i]));
        values.push_back(to_float(chunk_values[i]));
      }
    }
    const std::vector<std::int64_t> rows = rows_to_check(n, pc.rows_checked, rng);
    std::vector<double> expected(rows.size() * pc.q_heads * d);
    prefill_attention_reference<Tier>(host.view, params.host, cache.rope_table(), cache.config().rope.style, slot, n, q,
                                      pc.q_heads, pc.exact_chunk ? keys.data() : nullptr,
                                      pc.exact_chunk ? values.data() : nullptr, pc.attention, rows, expected);
    for (std::size_t r = 0; r < rows.size(); ++r)
      for (int h = 0; h < pc.q_heads; ++h) {
        double error = 0, norm = 0;
        bool finite = true;
        for (int c = 0; c < d; ++c) {
          const double x = as_float(got[((static_cast<std::size_t>(first + rows[r])) * pc.q_heads + h) * d + c]);
          const double e = expected[(r * pc.q_heads + h) * d + c];
          finite = finite && std::isfinite(x);
          error += (x - e) * (x - e);
          norm += e * e;
        }
        INFO("sequence " << slot << " (past " << pc.past[static_cast<std::size_t>(slot)] << ", chunk " << n
                         << "), query token " << rows[r] << ", head " << h);
        REQUIRE(finite);
        CHECK(std::sqrt(error / norm) <= 1e-3 + unit_roundoff<O>);
      }
  }
  // Every row of every chunk was written (the poison is gone), not only the rows compared.
  std::size_t unwritten = 0;
  for (const O& x : got) unwritten += std::isnan(as_float(x)) ? 1 : 0;
  CHECK(unwritten == 0);
}

}  // namespace

TEST_CASE("prefill attention: chunks of 1, 17, 512 and 2048 over pasts 0, page +- 1 and 4K in one batch (int4, 32/8 heads)") {
  CacheConfig config{.kv_heads = 8, .page_tokens = 256};
  run_prefill_case<Tier<Int4T, Int4T>>(config, {.past = {0, 255, 256, 257, 4096, 0, 1000},
                                                 .chunks = {1, 17, 512, 2048, 17, 2048, 1},
                                                 .q_heads = 32});
}

TEST_CASE("prefill attention: the chunk read from the cache as stored, sinks and window across the chunk (KIVI-2)") {
  CacheConfig config{.kv_heads = 4, .page_tokens = 64, .sink_tokens = 4, .window_tokens = 32};
  for (const bool exact : {true, false}) {
    INFO("exact chunk " << exact);
    run_prefill_case<Tier<Int2C, Int2T>>(config, {.past = {0, 3, 4 + 63 + 32, 3000, 100},
                                                  .chunks = {5, 17, 40, 700, 0},
                                                  .q_heads = 16,
                                                  .exact_chunk = exact});
  }
}

TEST_CASE("prefill attention: 128K tokens, chunk 2048 at the end (fp16 and int4 g64) and chunk 512 with sinks and window") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 256};
  run_prefill_case<Tier<Fp16, Fp16>>(config, {.past = {131072 - 2048}, .chunks = {2048}, .q_heads = 8, .rows_checked = 8});
  run_prefill_case<Tier<Int4T64, Int4T64>>(config, {.past = {131072 - 2048}, .chunks = {2048}, .q_heads = 8, .rows_checked = 8});
  CacheConfig windowed{.kv_heads = 2, .page_tokens = 256, .sink_tokens = 4, .window_tokens = 128};
  run_prefill_case<Tier<Int2C, Int4T64>>(windowed, {.past = {131072 - 512, 30000}, .chunks = {512, 17}, .q_heads = 8,
                                                     .rows_checked = 8});
}

TEST_CASE_TEMPLATE("prefill attention: every built-in policy as keys and values, GQA 3, sinks and window", P,
                   KVQ_TEST_POLICIES, Fp16Policy<64>) {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 2, .window_tokens = 8};
  run_prefill_case<Tier<P, P>>(config, {.past = {0, 3, 300, 1100}, .chunks = {17, 1, 64, 130}, .q_heads = 6});
}

TEST_CASE("prefill attention: pre-RoPE keys (RoPE at read), half-split llama3 and interleaved, plain and rotated") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 3, .window_tokens = 16,
                     .key_position = KeyPosition::pre_rope};
  config.rope = llama31_8b_rope;
  const PrefillCase pc{.past = {0, 20, 700, 5000}, .chunks = {33, 17, 100, 257}, .q_heads = 8};
  run_prefill_case<Tier<Int4T, Int4T>>(config, pc);
  run_prefill_case<Tier<RotatedInt4, RotatedInt4>>(config, pc);
  config.rope.style = RopeStyle::interleaved;
  config.rope.scaling = RopeScaling::none;
  run_prefill_case<Tier<Int2C, OutliersInt4>>(config, pc);
  PrefillCase stored = pc;
  stored.exact_chunk = false;
  run_prefill_case<Tier<RotatedInt4, Int8Token>>(config, stored);
}

TEST_CASE("prefill attention: query-group widths 1, 3, 4, 5, 8 and 16") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 1, .window_tokens = 4};
  for (int group : {1, 3, 4, 5, 8, 16}) {
    INFO("group " << group);
    run_prefill_case<Tier<Int4TokenSymBf16, Fp8E5m2F32>>(config, {.past = {0, 500}, .chunks = {70, 33}, .q_heads = 2 * group});
  }
}

TEST_CASE("prefill attention: bf16 and float queries and outputs, softmax scale and soft cap") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 2, .window_tokens = 8};
  const PrefillCase pc{.past = {0, 900}, .chunks = {40, 100}, .q_heads = 8};
  run_prefill_case<Tier<Int8Token, Int4T>, bf16, bf16>(config, pc);
  run_prefill_case<Tier<Int8Token, Int4T>, float, float>(config, pc);
  run_prefill_case<Tier<Int8Token, Int4T>, f16, float>(config, pc);
  PrefillCase scaled = pc;
  scaled.attention = {.softmax_scale = 0.05f, .soft_cap = 0.0f};
  run_prefill_case<Tier<Int8Token, Int4T>>(config, scaled);
  scaled.attention = {.softmax_scale = 0.0f, .soft_cap = 3.0f};
  run_prefill_case<Tier<Int8Token, Int4T>>(config, scaled);
}

TEST_CASE("prefill attention: a chunk longer than its sequence or a slot outside the cache gives NaN rows; empty calls do nothing") {
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 256, .page_tokens = 64};
  using T = Tier<Int8Token, Int8Token>;
  cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 30);
  std::mt19937 rng(fresh_seed());
  fill(cache, {10, 0}, rng);
  constexpr int d = 128, q_heads = 4;
  const int total = 12;
  DeviceBuffer<f16> query(random_queries<f16>(static_cast<std::size_t>(total) * q_heads * d, rng));
  DeviceBuffer<f16> out(static_cast<std::size_t>(total) * q_heads * d, 0);
  DeviceBuffer<std::int32_t> slots(std::vector<std::int32_t>{0, 7});
  DeviceBuffer<std::int32_t> starts(std::vector<std::int32_t>{0, 11, 12});  // 11 tokens asked of a 10-token sequence
  cuda::prefill_attention_async(cache, 0, PrefillShape{2, q_heads, 2, d, 11}, {}, query.get(), out.get(),
                                static_cast<const f16*>(nullptr), static_cast<const f16*>(nullptr), slots.get(),
                                starts.get(), nullptr);
  cuda::check(cudaDeviceSynchronize(), "prefill attention");
  for (const f16 x : out.download()) REQUIRE(std::isnan(to_float(x)));
  // batch 0 and empty chunks launch nothing and touch nothing (null pointers are fine then).
  cuda::prefill_attention_async(cache, 0, PrefillShape{0, q_heads, 2, d, 0}, {}, static_cast<const f16*>(nullptr),
                                static_cast<f16*>(nullptr), nullptr, nullptr, nullptr, nullptr, nullptr);
  cuda::check(cudaDeviceSynchronize(), "empty prefill");
}

TEST_CASE("prefill attention: invalid calls are refused with the problem named") {
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 1, .max_tokens_per_sequence = 256, .page_tokens = 64};
  using T = Tier<Int8Token, Int8Token>;
  cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 30);
  DeviceBuffer<f16> buffer(1 << 16, 0);
  DeviceBuffer<std::int32_t> ints(std::vector<std::int32_t>{0, 4});
  const auto call = [&](PrefillShape shape, AttentionParams attention, const f16* q, const f16* keys, const f16* values) {
    cuda::prefill_attention_async(cache, 0, shape, attention, q, buffer.get(), keys, values, ints.get(), ints.get(), nullptr);
  };
  const PrefillShape good{1, 4, 2, 128, 4};
  CHECK_NOTHROW(call(good, {}, buffer.get(), nullptr, nullptr));
  CHECK_THROWS_WITH_AS(call({1, 4, 2, 64, 4}, {}, buffer.get(), nullptr, nullptr), doctest::Contains("head_dim"), Error);
  CHECK_THROWS_WITH_AS(call({1, 4, 4, 128, 4}, {}, buffer.get(), nullptr, nullptr), doctest::Contains("KV heads"), Error);
  CHECK_THROWS_WITH_AS(call({1, 5, 2, 128, 4}, {}, buffer.get(), nullptr, nullptr), doctest::Contains("multiple of kv_heads"), Error);
  CHECK_THROWS_WITH_AS(call(good, {.softmax_scale = NAN}, buffer.get(), nullptr, nullptr), doctest::Contains("softmax_scale"), Error);
  CHECK_THROWS_WITH_AS(call(good, {.soft_cap = -1.0f}, buffer.get(), nullptr, nullptr), doctest::Contains("soft_cap"), Error);
  CHECK_THROWS_WITH_AS(call(good, {}, nullptr, nullptr, nullptr), doctest::Contains("must not be null"), Error);
  CHECK_THROWS_WITH_AS(call(good, {}, buffer.get(), buffer.get(), nullptr), doctest::Contains("both chunk keys and chunk values"), Error);
  CHECK_THROWS_WITH_AS(call(good, {}, buffer.get() + 1, nullptr, nullptr), doctest::Contains("aligned"), Error);
  CHECK_THROWS_WITH_AS(call(good, {}, buffer.get(), buffer.get() + 2, buffer.get() + 2), doctest::Contains("aligned"), Error);
  CHECK_THROWS_WITH_AS(call({1, 4, 2, 128, -1}, {}, buffer.get(), nullptr, nullptr), doctest::Contains("max_chunk_tokens"), Error);
  cuda::check(cudaDeviceSynchronize(), "attempts");
}
