// GPU tests of decode attention and the dequantize-range interop kernel against the host reference
// (kvq/host/decode_attention.hpp: double-precision attention over the same cache bytes, downloaded).
//
// Error budget, per output row (one query head of one sequence): ||out - ref||_2 / ||ref||_2 <= 1e-3 + u_out.
// The kernel dequantizes exactly the floats the reference dequantizes (same policy code) and applies RoPE with
// the same rounded operations; what differs is fp32 instead of double for the dot products (head_dim terms),
// the online softmax (exp2f, ~2^-22 relative) and the accumulation over up to 2^17 tokens in fp32 partial sums
// of at most a few thousand terms each, then the split combine: all together a few 1e-6 relative on these inputs.
// 1e-3 is the issue's bound; u_out is the unit round-off of the output type (0 for float, 2^-11 fp16, 2^-8 bf16),
// since rounding the result to that type is part of the kernel's output and not of the attention error.
#include <doctest/doctest.h>

#include "../support/attention_support.cuh"

using namespace kvq;
using namespace kvq::testing;


TEST_CASE("decode attention: lengths 1, page +- 1, 4K and 32K in one mixed batch (int4, 32 query / 8 KV heads)") {
  CacheConfig config{.kv_heads = 8, .page_tokens = 256};
  config.rope = llama31_8b_rope;
  run_case<Tier<Int4T, Int4T>>(config, {1, 255, 256, 257, 4096, 32768, 2, 1000}, 32);
}

TEST_CASE("decode attention: sinks and window around page boundaries, KIVI-2 (per-channel keys)") {
  CacheConfig config{.kv_heads = 4, .page_tokens = 64, .sink_tokens = 4, .window_tokens = 32};
  // 4 sinks + window of 32 (+31 waiting to flush): page boundaries of the quantized part at 64 tokens.
  run_case<Tier<Int2C, Int2T>>(config, {1, 4, 5, 36, 4 + 63 + 32, 4 + 64 + 32, 4 + 65 + 32, 4 + 64 + 63, 3000}, 16);
}

TEST_CASE("decode attention: 128K tokens, batch 1 (fp16 policy) and 128K with sinks and window (int2 keys, int4 values)") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 256};
  run_case<Tier<Fp16, Fp16>>(config, {131072}, 8);
  CacheConfig windowed{.kv_heads = 2, .page_tokens = 256, .sink_tokens = 4, .window_tokens = 128};
  run_case<Tier<Int2C, Int4T64>>(windowed, {131072, 70000}, 8);
}

TEST_CASE("decode attention: pre-RoPE keys (RoPE at read), half-split llama3 and interleaved, plain and rotated") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 3, .window_tokens = 16,
                     .key_position = KeyPosition::pre_rope};
  config.rope = llama31_8b_rope;
  run_case<Tier<Int4T, Int4T>>(config, {1, 20, 700, 5000}, 8);
  run_case<Tier<RotatedInt4, RotatedInt4>>(config, {1, 20, 700, 5000}, 8);
  config.rope.style = RopeStyle::interleaved;
  config.rope.scaling = RopeScaling::none;
  run_case<Tier<Int2C, OutliersInt4>>(config, {2, 300, 2049}, 8);
  run_case<Tier<RotatedInt4, Int8Token>>(config, {2, 300, 2049}, 8);
}

TEST_CASE("decode attention: query-group widths 1, 4, 5, 8, 9 and 16 at head_dim 64 and 128") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 1, .window_tokens = 4};
  for (int group : {1, 4, 5, 8, 9, 16}) {
    INFO("group " << group);
    run_case<Tier<Int4TokenSymBf16, Fp8E5m2F32>>(config, {33, 1000}, 2 * group);
    run_case<Tier<Fp8E4m3, Int8Token>>(config, {33, 1000}, 2 * group);
  }
}

TEST_CASE("decode attention: bf16 and float queries and outputs, softmax scale and soft cap") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 2, .window_tokens = 8};
  run_case<Tier<Int4T, Int4T>, bf16, bf16>(config, {10, 2000}, 8);
  run_case<Tier<Int4T, Int4T>, float, float>(config, {10, 2000}, 8);
  run_case<Tier<Int4T, Int4T>, bf16, float>(config, {10, 2000}, 8, AttentionParams{.softmax_scale = 0.3f});
  run_case<Tier<Int4T, Int4T>, f16, float>(config, {10, 2000}, 8, AttentionParams{.softmax_scale = 0.2f, .soft_cap = 5.0f});
  // Forced splits: many short ones (and more splits than a sequence has tokens) combine to the same result.
  run_case<Tier<Int4T, Int4T>, f16, float>(config, {1, 10, 2000}, 8, {},
                                           DecodeTuning{.blocks_per_sm = 64, .min_split_bytes = 1, .max_splits = 200});
}

TEST_CASE("decode attention: one plan and one CUDA graph serve decode steps of growing sequences") {
  using T = Tier<Int4T, Int2C>;
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 3, .max_tokens_per_sequence = 5000, .page_tokens = 64,
                     .sink_tokens = 2, .window_tokens = 16};
  cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 40);
  fill(cache, {100, 1, 3000}, rng);
  constexpr int d = 128, q_heads = 8, batch = 3;
  const DecodePlan plan = plan_decode({batch, q_heads, 2, d}, 5000, cuda::kv_bytes_per_token_head<T>(), cuda::device_sm_count());
  REQUIRE(plan.splits > 1);
  Workspace workspace(plan);
  const auto queries = random_queries<f16>(static_cast<std::size_t>(batch) * q_heads * d, rng);
  DeviceBuffer<f16> device_queries(queries);
  DeviceBuffer<std::int32_t> device_sequences(std::vector<std::int32_t>{2, 0, 1});
  DeviceBuffer<f16> out(static_cast<std::size_t>(batch) * q_heads * d, 0xFF);
  CapturedGraph graph([&](cudaStream_t stream) {
    cuda::decode_attention_async(cache, 0, plan, AttentionParams{}, device_queries.get(), out.get(),
                                 device_sequences.get(), workspace.buffer->get(), plan.workspace_bytes, stream);
  });
  for (int step = 0; step < 4; ++step) {
    fill(cache, {1 + step * 300, 40, 1}, rng);  // lengths change between replays; the grid does not
    graph.replay();
    const auto got = out.download();
    const HostLayer host = download_layer(cache, 0);
    const std::vector<int> order{2, 0, 1};
    for (int b = 0; b < batch; ++b) {
      std::vector<float> q(static_cast<std::size_t>(q_heads) * d);
      for (std::size_t i = 0; i < q.size(); ++i) q[i] = to_float(queries[static_cast<std::size_t>(b) * q.size() + i]);
      std::vector<double> expected(q.size());
      decode_attention_reference<T>(host.view, TierParams<T>{}, cache.rope_table(), config.rope.style, order[b], q, q_heads,
                                    AttentionParams{}, expected);
      double error = 0, norm = 0;
      for (std::size_t i = 0; i < q.size(); ++i) {
        const double x = to_float(got[static_cast<std::size_t>(b) * q.size() + i]);
        error += (x - expected[i]) * (x - expected[i]);
        norm += expected[i] * expected[i];
      }
      INFO("step " << step << ", batch entry " << b);
      CHECK(std::sqrt(error / norm) <= 1e-3 + 1.0 / 2048);
    }
  }
}

TEST_CASE("decode attention: empty sequence gives zeros, a slot outside the cache gives NaN, batch 0 does nothing") {
  using T = Tier<Int4T, Int4T>;
  std::mt19937 rng(fresh_seed());
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 100, .page_tokens = 32};
  cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 40);
  fill(cache, {0, 50}, rng);
  const DecodePlan plan = plan_decode({3, 4, 2, 128}, 100, cuda::kv_bytes_per_token_head<T>(), cuda::device_sm_count(),
                                      DecodeTuning{.min_split_bytes = 1});
  Workspace workspace(plan);
  DeviceBuffer<f16> q(random_queries<f16>(3 * 4 * 128, rng));
  DeviceBuffer<std::int32_t> sequences(std::vector<std::int32_t>{0, 7, 1});
  DeviceBuffer<f16> out(3 * 4 * 128, 0xFF);
  cuda::decode_attention_async(cache, 0, plan, {}, q.get(), out.get(), sequences.get(), workspace.buffer->get(),
                               plan.workspace_bytes, nullptr);
  cuda::check(cudaDeviceSynchronize(), "attention");
  const auto got = out.download();
  for (int i = 0; i < 4 * 128; ++i) CHECK(to_float(got[i]) == 0.0f);
  for (int i = 4 * 128; i < 8 * 128; ++i) CHECK(std::isnan(to_float(got[i])));
  for (int i = 8 * 128; i < 12 * 128; ++i) CHECK(std::isfinite(to_float(got[i])));
  DecodePlan empty = plan_decode({0, 4, 2, 128}, 100, 1.0, 132);
  cuda::decode_attention_async(cache, 0, empty, {}, static_cast<const f16*>(nullptr), static_cast<f16*>(nullptr),
                               nullptr, nullptr, 0, nullptr);
}

TEST_CASE("decode attention: invalid calls are refused with the problem named") {
  using T = Tier<Int4T, Int4T>;
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 1, .max_tokens_per_sequence = 100, .page_tokens = 32};
  cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 40);
  DeviceBuffer<f16> q(4 * 128, 0), out(4 * 128, 0);
  DeviceBuffer<std::int32_t> sequences(1, 0);
  const auto attempt = [&](const DecodePlan& plan, AttentionParams params, std::int64_t workspace_bytes) {
    DeviceBuffer<std::uint8_t> workspace(static_cast<std::size_t>(std::max<std::int64_t>(workspace_bytes, 1)), 0);
    cuda::decode_attention_async(cache, 0, plan, params, q.get(), out.get(), sequences.get(), workspace.get(),
                                 workspace_bytes, nullptr);
  };
  const DecodePlan good = plan_decode({1, 4, 2, 128}, 100, 64.0, 132, DecodeTuning{.min_split_bytes = 1});
  REQUIRE(good.workspace_bytes > 0);
  CHECK_NOTHROW(attempt(good, {}, good.workspace_bytes));
  CHECK_THROWS_WITH_AS(attempt(good, {}, good.workspace_bytes - 1), doctest::Contains("workspace"), Error);
  CHECK_THROWS_WITH_AS(attempt(plan_decode({1, 8, 4, 128}, 100, 64.0, 132), {}, 1 << 20), doctest::Contains("KV heads"), Error);
  CHECK_THROWS_WITH_AS(attempt(plan_decode({1, 4, 2, 64}, 100, 64.0, 132), {}, 1 << 20), doctest::Contains("head_dim"), Error);
  CHECK_THROWS_WITH_AS(attempt(good, AttentionParams{.softmax_scale = NAN}, good.workspace_bytes), doctest::Contains("softmax_scale"), Error);
  CHECK_THROWS_WITH_AS(attempt(good, AttentionParams{.soft_cap = -1.0f}, good.workspace_bytes), doctest::Contains("soft_cap"), Error);
  CHECK_THROWS_WITH_AS(plan_decode({1, 6, 4, 128}, 100, 64.0, 132), doctest::Contains("multiple"), Error);
  CHECK_THROWS_WITH_AS(plan_decode({1, 4, 2, 128}, std::int64_t{1} << 31, 64.0, 132), doctest::Contains("2^31"), Error);
  cuda::check(cudaDeviceSynchronize(), "attempts");
}

TEST_CASE("dequantize_range: fp16 keys and values of any token range equal the host read, every segment") {
  const auto check_range = []<class T>(CacheConfig config, std::vector<std::int64_t> lengths) {
    const std::uint32_t seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    config.layers = 1;
    config.max_sequences = static_cast<int>(lengths.size());
    config.max_tokens_per_sequence = *std::max_element(lengths.begin(), lengths.end());
    cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 40);
    BothParams<T> params(seed);
    cache.template set_params<T>(0, params.device.key, params.device.value);
    fill(cache, lengths, rng);
    const HostLayer host = download_layer(cache, 0);
    constexpr int d = T::KeyPolicy::head_dim;
    const int heads = config.kv_heads;
    for (int s = 0; s < static_cast<int>(lengths.size()); ++s) {
      const std::int64_t length = lengths[static_cast<std::size_t>(s)];
      const std::int64_t begin = static_cast<std::int64_t>(rng() % length), end = begin + 1 + static_cast<std::int64_t>(rng() % (length - begin));
      for (auto output : {cuda::KeyOutput::attention, cuda::KeyOutput::stored}) {
        const std::size_t n = static_cast<std::size_t>(end - begin) * heads * d;
        DeviceBuffer<f16> keys(n, 0xFF), values(n, 0xFF);
        cuda::dequantize_range_async(cache, 0, s, begin, end, keys.get(), values.get(), output, nullptr);
        cuda::check(cudaDeviceSynchronize(), "dequantize_range");
        const auto got_keys = keys.download(), got_values = values.download();
        CacheLayerView view = host.view;
        if (output == cuda::KeyOutput::stored) view.key_position = KeyPosition::post_rope;  // no RoPE at read
        std::vector<float> k(d), v(d);
        int mismatches = 0;
        double worst = 0;
        for (std::int64_t t = begin; t < end; ++t)
          for (int h = 0; h < heads; ++h) {
            read_attention_token<T>(view, params.host, cache.rope_table(), config.rope.style, s, t, h, k.data(), v.data());
            for (int c = 0; c < d; ++c) {
              const std::size_t i = (static_cast<std::size_t>(t - begin) * heads + h) * d + c;
              // Values and non-rotated keys are the same floats rounded once; a rotation back runs its butterflies
              // in another order (a few float roundings), so it may land one fp16 step away.
              const double tolerance = std::abs(k[c]) / 1024 + 1e-6;
              const double kd = std::abs(to_float(got_keys[i]) - to_float(to_f16_saturating(k[c])));
              const double vd = std::abs(to_float(got_values[i]) - to_float(to_f16_saturating(v[c])));
              worst = std::max({worst, kd / (std::abs(k[c]) + 1e-3), vd / (std::abs(v[c]) + 1e-3)});
              if (kd > tolerance || vd > std::abs(v[c]) / 1024 + 1e-6) ++mismatches;
            }
          }
        INFO("sequence " << s << ", tokens [" << begin << ", " << end << "), worst relative " << worst);
        CHECK(mismatches == 0);
      }
    }
    std::vector<f16> none(1);
    CHECK_THROWS_WITH_AS(cuda::dequantize_range_async(cache, 0, 0, 0, lengths[0] + 1, none.data(), none.data(),
                                                      cuda::KeyOutput::attention, nullptr),
                         doctest::Contains("not inside"), Error);
  };
  CacheConfig post{.kv_heads = 3, .page_tokens = 64, .sink_tokens = 2, .window_tokens = 8};
  check_range.operator()<Tier<Int4T, Int2C>>(post, {1, 90, 700});
  CacheConfig pre{.kv_heads = 2, .page_tokens = 32, .sink_tokens = 1, .window_tokens = 5, .key_position = KeyPosition::pre_rope};
  pre.rope = llama31_8b_rope;
  check_range.operator()<Tier<RotatedOutliersNuq3, RotatedOutliersNuq3>>(pre, {40, 500});
  check_range.operator()<Tier<RotatedInt4, Int8Token>>(pre, {300});
}
