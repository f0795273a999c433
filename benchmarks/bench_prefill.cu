// Chunked-prefill attention over the quantized cache, one Llama-3-8B layer shape: 32 query heads, 8 KV heads,
// head_dim 128, post-RoPE keys, pages of 256 tokens, SYNTHETIC K/V and queries (random, no weights).
//   prefill/<policy>/context:T/chunk:C   the attention of a whole T-token prefill in chunks of C tokens: T/C calls,
//                                        call c for the chunk at positions [cC, (c+1)C) of a sequence holding
//                                        (c+1)C tokens (T/C sequences, so every call sees the cache it would see
//                                        in a real prefill; the appends themselves are not timed)
// Counters:
//   us / real_time   GPU time of the T/C calls (CUDA events around them)
//   TFLOP/s          causal attention FLOPs (4 * q_heads * head_dim * T(T+1)/2) / time
//   calls            T/C
// scripts/bench-prefill.py runs this binary and PyTorch SDPA causal fp16 prefill of the same T tokens in one script.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <kvq/cuda/kvq.cuh>
#include <kvq/cuda/prefill_attention.cuh>

#include "device_support.cuh"

namespace {

using kvq::benchmarks::DeviceArray;
using kvq::benchmarks::EventTimer;
using kvq::benchmarks::random_fill;
using kvq::benchmarks::Stream;
using kvq::cuda::check;

constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128;

using Fp16 = kvq::Fp16Policy<kHeadDim>;
using Int8 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 8, .group_size = 128, .head_dim = kHeadDim}>;
using Int4G64 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 64, .head_dim = kHeadDim}>;
using Int2G64 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 2, .group_size = 64, .head_dim = kHeadDim}>;

template <class Tier>
void prefill_benchmark(benchmark::State& state) {
  using Tiers = kvq::LayerTiers<Tier>;
  const std::int64_t context = state.range(0), chunk = state.range(1);
  const int calls = static_cast<int>(context / chunk);
  kvq::CacheConfig config{.layers = 1, .kv_heads = kKvHeads, .max_sequences = calls, .max_tokens_per_sequence = context,
                          .page_tokens = 256};
  kvq::cuda::PagedKVCache<Tiers> cache(config, std::int64_t{1} << 40);
  Stream stream;
  const std::int64_t elements = chunk * kKvHeads * kHeadDim;
  DeviceArray<kvq::f16> keys(static_cast<std::size_t>(elements)), values(static_cast<std::size_t>(elements));
  // Sequence c holds (c + 1) chunks; each append writes one chunk to every sequence still growing.
  for (int step = 0; step < calls; ++step) {
    std::vector<int> sequences;
    for (int s = step; s < calls; ++s) sequences.push_back(s);
    const std::vector<std::int64_t> counts(sequences.size(), chunk);
    for (int s : sequences) {
      random_fill<<<1024, 256, 0, stream.get()>>>(keys.get(), elements, static_cast<std::uint32_t>(step * 977 + s * 7 + 1));
      random_fill<<<1024, 256, 0, stream.get()>>>(values.get(), elements, static_cast<std::uint32_t>(step * 977 + s * 7 + 2));
      const std::vector<int> one{s};
      const std::vector<std::int64_t> n{chunk};
      const auto plan = cache.reserve(one, n, stream.get());
      cache.template write<kvq::f16>(plan, 0, keys.get(), values.get(), stream.get());
    }
  }
  check(cudaStreamSynchronize(stream.get()), "fill");

  DeviceArray<kvq::f16> query(static_cast<std::size_t>(chunk) * kQHeads * kHeadDim), out(query.bytes() / 2);
  random_fill<<<1024, 256, 0, stream.get()>>>(query.get(), chunk * kQHeads * kHeadDim, 99);
  std::vector<std::int32_t> host_slots(static_cast<std::size_t>(calls));
  for (int c = 0; c < calls; ++c) host_slots[static_cast<std::size_t>(c)] = c;
  DeviceArray<std::int32_t> slots(host_slots.size()), starts(2);
  const std::int32_t host_starts[2] = {0, static_cast<std::int32_t>(chunk)};
  check(cudaMemcpy(slots.get(), host_slots.data(), host_slots.size() * 4, cudaMemcpyHostToDevice), "slots");
  check(cudaMemcpy(starts.get(), host_starts, sizeof host_starts, cudaMemcpyHostToDevice), "starts");
  const kvq::PrefillShape shape{1, kQHeads, kKvHeads, kHeadDim, chunk};
  auto prefill = [&] {
    for (int c = 0; c < calls; ++c)
      kvq::cuda::prefill_attention_async(cache, 0, shape, kvq::AttentionParams{}, query.get(), out.get(), keys.get(),
                                         values.get(), slots.get() + c, starts.get(), stream.get());
  };
  prefill();
  check(cudaStreamSynchronize(stream.get()), "warm-up");
  EventTimer timer;
  for (auto _ : state) state.SetIterationTime(timer.seconds(stream.get(), prefill));
  const double flops = 4.0 * kQHeads * kHeadDim * (static_cast<double>(context) * (context + 1) / 2);
  state.counters["TFLOP/s"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["calls"] = calls;
  state.counters["bits_per_elem"] =
      kvq::TierPageLayout<Tier>::bytes_per_quantized_token(256, kKvHeads) * 8 / (2.0 * kKvHeads * kHeadDim);
}

template <class Tier>
void register_policy(const char* name) {
  auto* b = benchmark::RegisterBenchmark((std::string("prefill/") + name).c_str(), prefill_benchmark<Tier>);
  b->ArgNames({"context", "chunk"})->UseManualTime()->Unit(benchmark::kMillisecond);
  b->Args({8192, 2048});
  b->Args({32768, 2048});
  b->Args({131072, 2048});
  b->Args({131072, 8192});
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  try {
    if (!kvq::benchmarks::report_device("kvq_bench_prefill")) return 2;
    register_policy<kvq::Tier<Fp16, Fp16>>("fp16");
    register_policy<kvq::Tier<Int8, Int8>>("int8_g128");
    register_policy<kvq::Tier<Int4G64, Int4G64>>("int4_g64");
    register_policy<kvq::Tier<Int2G64, Int2G64>>("int2_g64");
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "kvq_bench_prefill: %s\n", error.what());
    return 1;
  }
  return 0;
}
