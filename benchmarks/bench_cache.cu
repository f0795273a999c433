// Append cost of the paged quantized cache, Llama-3-8B shape (32 layers, 8 KV heads, head_dim 128), batch 1:
//   decode/<policy>:  one decode step = reserve() + write() for all 32 layers, one token, from a context of
//                     `context` tokens; wall time of the whole step including host bookkeeping (CUDA events
//                     around the step, the host calls inside), since that is what an engine pays per token.
//   prefill/<policy>: one 4096-token chunk appended to an empty sequence, all 32 layers.
// Counters: bytes_written (pages + fp16 sinks/window per step, all layers), GB/s written, input GB/s (fp16 K and
// V read). Synthetic inputs (random normal); no real weights are involved.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <span>
#include <random>
#include <string>
#include <vector>

#include <kvq/cuda/kvq.cuh>

#include "device_support.cuh"

namespace {

using kvq::benchmarks::DeviceArray;
using kvq::benchmarks::EventTimer;
using kvq::benchmarks::Stream;
using kvq::cuda::check;

constexpr int kLayers = 32;
constexpr int kHeads = 8;
constexpr int kHeadDim = 128;
constexpr std::int64_t kChunk = 4096;

using Int4 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 32, .head_dim = kHeadDim}>;
using Int8 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 8, .group_size = 128, .head_dim = kHeadDim}>;
using Int2Channel =
    kvq::UniformPolicy<kvq::UniformConfig{.bits = 2, .group_size = 32, .head_dim = kHeadDim, .axis = kvq::Axis::per_channel}>;
using Int2Token = kvq::UniformPolicy<kvq::UniformConfig{.bits = 2, .group_size = 32, .head_dim = kHeadDim}>;
using Fp8 = kvq::Fp8Policy<kvq::Fp8Config{.format = kvq::Fp8Format::e4m3, .head_dim = kHeadDim}>;

kvq::CacheConfig llama3_8b(int sinks, int window) {
  kvq::CacheConfig config{.layers = kLayers, .kv_heads = kHeads, .max_sequences = 1, .max_tokens_per_sequence = 1 << 17,
                          .page_tokens = 256, .sink_tokens = sinks, .window_tokens = window};
  config.rope = kvq::RopeConfig{.theta = 500000.0f, .scaling = kvq::RopeScaling::llama3};
  return config;
}

DeviceArray<kvq::f16> random_rows(std::int64_t rows, std::uint32_t seed) {
  DeviceArray<kvq::f16> data(static_cast<std::size_t>(rows * kHeads * kHeadDim));
  std::vector<kvq::f16> host(static_cast<std::size_t>(rows * kHeads * kHeadDim));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  for (auto& x : host) x = kvq::to_f16(normal(rng));
  check(cudaMemcpy(data.get(), host.data(), data.bytes(), cudaMemcpyHostToDevice), "upload");
  return data;
}

// Appends `count` tokens to sequence 0 through every layer.
template <class Cache>
void append(Cache& cache, std::int64_t count, const kvq::f16* keys, const kvq::f16* values, cudaStream_t stream) {
  const int sequence = 0;
  const std::int64_t counts[1] = {count};
  const kvq::AppendPlan plan = cache.reserve(std::span(&sequence, 1), std::span(counts, 1), stream);
  for (int layer = 0; layer < kLayers; ++layer) cache.template write<kvq::f16>(plan, layer, keys, values, stream);
}

// Bytes one append of `count` tokens after `before` tokens writes, all layers: quantized pages + fp16 rows.
template <class Tiers>
double bytes_written(const kvq::CacheConfig& config, std::int64_t before, std::int64_t count) {
  const kvq::SequenceGeometry geometry{config.sink_tokens, config.window_tokens, Tiers::flush_tokens, config.page_tokens,
                                       config.max_tokens_per_sequence};
  const std::int64_t quantized_before = geometry.quantized_after(before, 0);
  const std::int64_t quantized_after = geometry.quantized_after(before + count, quantized_before);
  const double quantized_tokens = static_cast<double>(quantized_after - quantized_before);
  // New tokens that end in the sinks or stay in the window are written once in fp16 (the quantized ones may include
  // tokens that were already in the window).
  const std::int64_t end = before + count;
  const std::int64_t sink_rows = std::max<std::int64_t>(0, std::min<std::int64_t>(end, config.sink_tokens) - before);
  const std::int64_t window_rows =
      std::max<std::int64_t>(0, end - std::max<std::int64_t>({before, config.sink_tokens + quantized_after}));
  const double fp16_tokens = static_cast<double>(sink_rows + window_rows);
  using Tier = typename Tiers::First;
  const double page_bytes_per_token = kvq::TierPageLayout<Tier>::bytes_per_quantized_token(config.page_tokens, kHeads);
  return kLayers * (quantized_tokens * page_bytes_per_token + fp16_tokens * kHeads * kHeadDim * 2 * 2);
}

template <class Tiers>
void decode_benchmark(benchmark::State& state, const kvq::CacheConfig& config) {
  const std::int64_t context = state.range(0);
  kvq::cuda::PagedKVCache<Tiers> cache(config, std::int64_t{64} << 30);
  Stream stream;
  auto prompt = random_rows(kChunk, 1);
  auto token = random_rows(1, 2);
  for (std::int64_t filled = 0; filled < context; filled += kChunk)
    append(cache, std::min(kChunk, context - filled), prompt.get(), prompt.get(), stream.get());
  EventTimer timer;
  std::int64_t length = context;
  const auto step = [&] { append(cache, 1, token.get(), token.get(), stream.get()); ++length; };
  timer.seconds(stream.get(), step);
  for (auto _ : state) {
    if (length + 1 > config.max_tokens_per_sequence) {
      cache.truncate(0, context, stream.get());
      length = context;
    }
    state.SetIterationTime(timer.seconds(stream.get(), step));
  }
  const double bytes = bytes_written<Tiers>(config, context, 1);
  state.counters["bytes_written"] = bytes;
}

template <class Tiers>
void prefill_benchmark(benchmark::State& state, const kvq::CacheConfig& config) {
  kvq::cuda::PagedKVCache<Tiers> cache(config, std::int64_t{64} << 30);
  Stream stream;
  auto keys = random_rows(kChunk, 3), values = random_rows(kChunk, 4);
  EventTimer timer;
  const auto chunk = [&] {
    cache.reset(0, stream.get());
    append(cache, kChunk, keys.get(), values.get(), stream.get());
  };
  timer.seconds(stream.get(), chunk);
  double seconds = 0;
  for (auto _ : state) {
    const double s = timer.seconds(stream.get(), chunk);
    state.SetIterationTime(s);
    seconds += s;
  }
  const double written = bytes_written<Tiers>(config, 0, kChunk);
  const double read = 2.0 * kLayers * kChunk * kHeads * kHeadDim * 2;
  state.counters["bytes_written"] = written;
  state.counters["written_GB/s"] = written * static_cast<double>(state.iterations()) / seconds / 1e9;
  state.counters["input_GB/s"] = read * static_cast<double>(state.iterations()) / seconds / 1e9;
}

template <class Tiers>
void register_policy(const std::string& name, kvq::CacheConfig config) {
  benchmark::RegisterBenchmark(("decode/" + name).c_str(), [config](benchmark::State& state) {
    try {
      decode_benchmark<Tiers>(state, config);
    } catch (const std::exception& error) {
      state.SkipWithError(error.what());
    }
  })->ArgName("context")->Arg(4096)->Arg(32768)->UseManualTime()->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark(("prefill4096/" + name).c_str(), [config](benchmark::State& state) {
    try {
      prefill_benchmark<Tiers>(state, config);
    } catch (const std::exception& error) {
      state.SkipWithError(error.what());
    }
  })->UseManualTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (!kvq::benchmarks::report_device("kvq_bench_cache")) return 2;
  std::printf("synthetic Llama-3-8B-shaped K/V (32 layers, 8 KV heads, d=128), batch 1\n");
  register_policy<kvq::LayerTiers<kvq::Tier<Int8, Int8>>>("int8_token", llama3_8b(0, 0));
  register_policy<kvq::LayerTiers<kvq::Tier<Fp8, Fp8>>>("fp8_e4m3", llama3_8b(0, 0));
  register_policy<kvq::LayerTiers<kvq::Tier<Int4, Int4>>>("int4_token_g32", llama3_8b(0, 0));
  register_policy<kvq::LayerTiers<kvq::Tier<Int4, Int4>>>("int4_token_g32_sinks4_window128", llama3_8b(4, 128));
  register_policy<kvq::LayerTiers<kvq::Tier<Int2Channel, Int2Token>>>("kivi2_window128", llama3_8b(0, 128));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
