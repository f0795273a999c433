// GPU tests of the decode kernels' importance bookkeeping (kvq/attention/importance.hpp) against the host
// reference's probabilities: the tensor-core and generic kernels, one and many splits (cooperative launch),
// query groups served in chunks (two blocks add to one row), sinks, window, pre-RoPE keys, soft cap, and a CUDA
// graph replayed over growing sequences. Budget: see check_importance in attention_support.cuh (float atomics
// flush subnormal results to zero: up to 2^-126 absolute per add).
#include <doctest/doctest.h>

#include "../support/attention_support.cuh"

using namespace kvq;
using namespace kvq::testing;

namespace {
const DecodeTuning with_importance{.importance = true};
}

TEST_CASE("importance: tensor-core kernel, lengths 1, page +- 1, 4K, 32K in one batch; 128K batch 1 (fp16, int4)") {
  CacheConfig config{.kv_heads = 8, .page_tokens = 256};
  run_case<Tier<Int4T, Int4T>>(config, {1, 255, 256, 257, 4096, 32768, 2, 1000}, 32, {}, with_importance);
  run_case<Tier<Fp16, Fp16>>(config, {131072}, 32, {}, with_importance);
  run_case<Tier<Int8Token, Int8Token>>(config, {131072}, 32, {}, with_importance);
}

TEST_CASE("importance: generic kernel with sinks and window (KIVI-2), pre-RoPE keys, soft cap") {
  CacheConfig windowed{.kv_heads = 4, .page_tokens = 64, .sink_tokens = 4, .window_tokens = 32};
  run_case<Tier<Int2C, Int2T>>(windowed, {1, 4, 5, 36, 4 + 64 + 32, 4 + 65 + 32, 3000}, 16, {}, with_importance);
  CacheConfig pre{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 1, .window_tokens = 16,
                  .key_position = KeyPosition::pre_rope};
  pre.rope = llama31_8b_rope;
  run_case<Tier<RotatedInt4, Int8Token>>(pre, {2, 300, 2049}, 8, AttentionParams{.soft_cap = 30.0f}, with_importance);
}

TEST_CASE("importance: one split (no waiting), groups of 16 in two chunks, float output") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64};
  run_case<Tier<Int4T, Int4T>>(config, {10, 5000}, 8, {}, DecodeTuning{.max_splits = 1, .importance = true});
  run_case<Tier<Int4T, Int4T>, f16, float>(config, {1, 700, 9000}, 32, {}, with_importance);  // group 16
  run_case<Tier<Fp16, Fp16>>(config, {1, 700, 9000}, 32, {}, with_importance);
}

TEST_CASE("importance: a CUDA graph replayed over growing sequences adds each step's probabilities") {
  using T = Tier<Int4T, Int4T>;
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 5000, .page_tokens = 64,
                     .sink_tokens = 2, .window_tokens = 16};
  cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 40);
  fill(cache, {2000, 30}, rng);
  constexpr int d = 128, q_heads = 8, batch = 2;
  const DecodePlan plan = cuda::plan_decode(cache, 0, {batch, q_heads, 2, d}, 5000, with_importance);
  REQUIRE(plan.splits > 1);
  REQUIRE(plan.importance);
  Workspace workspace(plan);
  const auto queries = random_queries<f16>(static_cast<std::size_t>(batch) * q_heads * d, rng);
  DeviceBuffer<f16> device_queries(queries);
  DeviceBuffer<std::int32_t> device_sequences(std::vector<std::int32_t>{1, 0});
  DeviceBuffer<f16> out(static_cast<std::size_t>(batch) * q_heads * d, 0xFF);
  constexpr std::int64_t stride = 5000;
  DeviceBuffer<float> importance(std::vector<float>(2 * 2 * stride, 0.0f));
  std::vector<double> expected(2 * 2 * stride, 0.0);
  const ImportanceView view{importance.get(), 2 * stride, stride};
  CapturedGraph graph([&](cudaStream_t stream) {
    cuda::decode_attention_async(cache, 0, plan, AttentionParams{}, device_queries.get(), out.get(),
                                 device_sequences.get(), workspace.buffer->get(), plan.workspace_bytes, stream, view);
  });
  for (int step = 0; step < 4; ++step) {
    fill(cache, {1 + step * 300, 1}, rng);  // lengths change between replays; the grid does not
    graph.replay();
    const HostLayer host = download_layer(cache, 0);
    const std::vector<int> order{1, 0};
    for (int b = 0; b < batch; ++b) {
      std::vector<float> q(static_cast<std::size_t>(q_heads) * d);
      for (std::size_t i = 0; i < q.size(); ++i) q[i] = to_float(queries[static_cast<std::size_t>(b) * q.size() + i]);
      std::vector<double> o(q.size());
      std::vector<float> step_importance(2 * 2 * stride, 0.0f);
      decode_attention_reference<T>(host.view, TierParams<T>{}, cache.rope_table(), config.rope.style, order[b], q,
                                    q_heads, AttentionParams{}, o, ImportanceView{step_importance.data(), 2 * stride, stride});
      for (std::size_t i = 0; i < expected.size(); ++i) expected[i] += step_importance[i];
    }
    const std::vector<float> got = importance.download();
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::abs(got[i] - expected[i]) -
                                  (1e-3 * expected[i] + 0x1p-22 * std::abs(got[i]) + (step + 1) * 0x1p-126));
    INFO("step " << step << ": worst excess over the budget " << worst);
    CHECK(worst <= 0);
  }
}

TEST_CASE("importance: refused without an importance plan or with rows too short; NaN rows past the plan's length") {
  using T = Tier<Int4T, Int4T>;
  std::mt19937 rng(fresh_seed());
  CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 1000, .page_tokens = 32};
  cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 40);
  fill(cache, {50, 900}, rng);
  DeviceBuffer<f16> q(random_queries<f16>(2 * 4 * 128, rng)), out(2 * 4 * 128, 0xFF);
  DeviceBuffer<std::int32_t> sequences(std::vector<std::int32_t>{0, 1});
  DeviceBuffer<float> importance(std::vector<float>(2 * 2 * 1000, 0.0f));
  const ImportanceView view{importance.get(), 2 * 1000, 1000};
  const DecodePlan plain = cuda::plan_decode(cache, 0, {2, 4, 2, 128}, 1000);
  Workspace plain_workspace(plain);
  CHECK_THROWS_WITH_AS(cuda::decode_attention_async(cache, 0, plain, {}, q.get(), out.get(), sequences.get(),
                                                    plain_workspace.buffer->get(), plain.workspace_bytes, nullptr, view),
                       doctest::Contains("DecodeTuning::importance"), Error);
  // A plan for 100 tokens: rows of 100 suffice for the check, but sequence 1 (900 tokens) is beyond the plan.
  const DecodePlan short_plan = cuda::plan_decode(cache, 0, {2, 4, 2, 128}, 100, with_importance);
  Workspace workspace(short_plan);
  CHECK_THROWS_WITH_AS(cuda::decode_attention_async(cache, 0, short_plan, {}, q.get(), out.get(), sequences.get(),
                                                    workspace.buffer->get(), short_plan.workspace_bytes, nullptr,
                                                    ImportanceView{importance.get(), 2 * 50, 50}),
                       doctest::Contains("head_stride 50"), Error);
  cuda::decode_attention_async(cache, 0, short_plan, {}, q.get(), out.get(), sequences.get(), workspace.buffer->get(),
                               short_plan.workspace_bytes, nullptr, view);
  cuda::check(cudaDeviceSynchronize(), "attention");
  const auto got = out.download();
  for (int i = 0; i < 4 * 128; ++i) CHECK(std::isfinite(to_float(got[i])));
  for (int i = 4 * 128; i < 8 * 128; ++i) CHECK(std::isnan(to_float(got[i])));
  const auto rows = importance.download();
  double sequence0 = 0, sequence1 = 0;
  for (int k = 0; k < 2; ++k)
    for (int t = 0; t < 1000; ++t) {
      sequence0 += rows[static_cast<std::size_t>(k * 1000 + t)];
      sequence1 += rows[static_cast<std::size_t>(2000 + k * 1000 + t)];
    }
  CHECK(sequence0 == doctest::Approx(2 * 2.0).epsilon(1e-4));  // 2 KV heads x group 2
  CHECK(sequence1 == 0.0);
}
