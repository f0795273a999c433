// Decode attention over the quantized cache, one Llama-3-8B layer shape: 32 query heads, 8 KV heads, head_dim 128,
// one query token per sequence, post-RoPE keys, pages of 256 tokens, SYNTHETIC K/V (random normal, no weights).
//   attention/<policy>/batch:B/context:T   one decode_attention_async call, every sequence T tokens long
//   importance/<policy>/batch:B/context:T  the same call with importance bookkeeping (kvq/attention/importance.hpp):
//                                          a plan made for it and an ImportanceView over [B][8][T] floats; compare
//                                          with attention/<policy> at the same arguments for its cost
// Counters:
//   us            GPU time per call (CUDA events around 20 back-to-back calls, divided by 20)
//   bytes_read    KV bytes the call must read: quantized tokens at their exact page cost (codes + metadata) plus
//                 fp16 window tokens, all KV heads and sequences (queries and outputs are < 0.1% and not counted)
//   GB/s          bytes_read / time
//   frac_of_copy  GB/s over the device-to-device copy bandwidth (read + write) measured at startup in this process
//   splits        split-KV count the planner chose
// scripts/bench-attention.py runs this binary and PyTorch SDPA in one script and prints the comparison table.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <kvq/cuda/kvq.cuh>

#include "device_support.cuh"

namespace {

using kvq::benchmarks::DeviceArray;
using kvq::benchmarks::EventTimer;
using kvq::benchmarks::random_fill;
using kvq::benchmarks::Stream;
using kvq::cuda::check;

constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128;
constexpr int kCallsPerTiming = 20;
double g_copy_gigabytes_per_second = 0;

using Fp16 = kvq::Fp16Policy<kHeadDim>;
using Int8 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 8, .group_size = 128, .head_dim = kHeadDim}>;
using Int4G64 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 64, .head_dim = kHeadDim}>;
using Int4G32 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 32, .head_dim = kHeadDim}>;
using Int2G64 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 2, .group_size = 64, .head_dim = kHeadDim}>;
using Int2G32 = kvq::UniformPolicy<kvq::UniformConfig{.bits = 2, .group_size = 32, .head_dim = kHeadDim}>;
using Int2Channel =
    kvq::UniformPolicy<kvq::UniformConfig{.bits = 2, .group_size = 32, .head_dim = kHeadDim, .axis = kvq::Axis::per_channel}>;

double copy_bandwidth() {
  const std::size_t bytes = std::size_t{1} << 30;
  DeviceArray<std::uint8_t> a(bytes), b(bytes);
  Stream stream;
  EventTimer timer;
  std::vector<double> rates;
  for (int i = 0; i < 11; ++i) {
    const double s = timer.seconds(stream.get(), [&] {
      check(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, stream.get()), "copy");
    });
    rates.push_back(2.0 * bytes / s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

template <class Tier>
void attention_benchmark(benchmark::State& state, int window, bool importance) {
  using Tiers = kvq::LayerTiers<Tier>;
  const int batch = static_cast<int>(state.range(0));
  const std::int64_t context = state.range(1);
  kvq::CacheConfig config{.layers = 1, .kv_heads = kKvHeads, .max_sequences = batch, .max_tokens_per_sequence = context,
                          .page_tokens = 256, .window_tokens = window};
  kvq::cuda::PagedKVCache<Tiers> cache(config, std::int64_t{1} << 40);
  Stream stream;
  // Prefill every sequence in chunks of up to 32K tokens.
  const std::int64_t chunk = std::min<std::int64_t>(context, 32768);
  DeviceArray<kvq::f16> keys(static_cast<std::size_t>(chunk * batch * kKvHeads * kHeadDim)),
      values(static_cast<std::size_t>(chunk * batch * kKvHeads * kHeadDim));
  for (std::int64_t done = 0; done < context; done += chunk) {
    const std::int64_t n = std::min(chunk, context - done);
    std::vector<int> sequences(batch);
    std::vector<std::int64_t> counts(batch, n);
    for (int s = 0; s < batch; ++s) sequences[s] = s;
    const std::int64_t elements = n * batch * kKvHeads * kHeadDim;
    random_fill<<<1024, 256, 0, stream.get()>>>(keys.get(), elements, static_cast<std::uint32_t>(done * 7 + 1));
    random_fill<<<1024, 256, 0, stream.get()>>>(values.get(), elements, static_cast<std::uint32_t>(done * 7 + 2));
    const auto plan = cache.reserve(sequences, counts, stream.get());
    cache.template write<kvq::f16>(plan, 0, keys.get(), values.get(), stream.get());
  }
  check(cudaStreamSynchronize(stream.get()), "prefill");

  const kvq::DecodePlan plan = kvq::cuda::plan_decode(cache, 0, {batch, kQHeads, kKvHeads, kHeadDim}, context,
                                                      kvq::DecodeTuning{.importance = importance});
  DeviceArray<std::uint8_t> workspace(static_cast<std::size_t>(std::max<std::int64_t>(plan.workspace_bytes, 16)));
  DeviceArray<float> importance_rows(importance ? static_cast<std::size_t>(batch) * kKvHeads * context : 1);
  if (importance) check(cudaMemsetAsync(importance_rows.get(), 0, importance_rows.bytes(), stream.get()), "importance");
  const kvq::ImportanceView importance_view =
      importance ? kvq::ImportanceView{importance_rows.get(), kKvHeads * context, context} : kvq::ImportanceView{};
  kvq::cuda::clear_decode_workspace_async(plan, workspace.get(), stream.get());
  DeviceArray<kvq::f16> query(static_cast<std::size_t>(batch) * kQHeads * kHeadDim), out(query.bytes() / 2);
  random_fill<<<64, 256, 0, stream.get()>>>(query.get(), static_cast<std::int64_t>(batch) * kQHeads * kHeadDim, 99);
  std::vector<std::int32_t> slots(batch);
  for (int s = 0; s < batch; ++s) slots[s] = s;
  DeviceArray<std::int32_t> sequences(slots.size());
  check(cudaMemcpy(sequences.get(), slots.data(), slots.size() * 4, cudaMemcpyHostToDevice), "slots");
  auto call = [&] {
    kvq::cuda::decode_attention_async(cache, 0, plan, kvq::AttentionParams{}, query.get(), out.get(), sequences.get(),
                                      workspace.get(), plan.workspace_bytes, stream.get(), importance_view);
  };
  call();
  check(cudaStreamSynchronize(stream.get()), "warm-up");

  const auto& s0 = cache.sequences().sequence(0);
  const double quantized_bytes = kvq::TierPageLayout<Tier>::bytes_per_quantized_token(256, kKvHeads);
  const double bytes = batch * (s0.quantized * quantized_bytes +
                                static_cast<double>(s0.length - s0.quantized) * kKvHeads * kHeadDim * 2 * 2);
  EventTimer timer;
  for (auto _ : state) {
    const double seconds = timer.seconds(stream.get(), [&] {
      for (int i = 0; i < kCallsPerTiming; ++i) call();
    });
    state.SetIterationTime(seconds / kCallsPerTiming);
  }
  // Counters from the median-free mean of the timed iterations (Google Benchmark reports real_time per iteration).
  state.counters["bytes_read"] = bytes;
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_GB/s"] = g_copy_gigabytes_per_second;
  state.counters["splits"] = plan.splits;
  state.counters["bits_per_elem"] = quantized_bytes * 8 / (2.0 * kKvHeads * kHeadDim);
}

template <class Tier>
void register_policy(const char* name, int window, bool long_context) {
  for (const bool importance : {false, true}) {
    auto* b = benchmark::RegisterBenchmark(
        (std::string(importance ? "importance/" : "attention/") + name).c_str(),
        [window, importance](benchmark::State& state) { attention_benchmark<Tier>(state, window, importance); });
    b->ArgNames({"batch", "context"})->UseManualTime()->Unit(benchmark::kMicrosecond);
    for (int batch : {1, 8})
      for (std::int64_t context : {1024, 4096, 16384, 32768, 131072}) b->Args({batch, context});
    if (long_context) b->Args({1, 524288});
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  try {
    if (!kvq::benchmarks::report_device("kvq_bench_attention")) return 2;
    g_copy_gigabytes_per_second = copy_bandwidth();
    std::printf("fp16 copy: %.1f GB/s (read + write, median of 11 1-GiB D2D copies)\n", g_copy_gigabytes_per_second);
    std::fflush(stdout);
    register_policy<kvq::Tier<Fp16, Fp16>>("fp16", 0, false);
    register_policy<kvq::Tier<Int8, Int8>>("int8_g128", 0, false);
    register_policy<kvq::Tier<Int4G64, Int4G64>>("int4_g64", 0, true);
    register_policy<kvq::Tier<Int4G32, Int4G32>>("int4_g32", 0, false);
    register_policy<kvq::Tier<Int2G64, Int2G64>>("int2_g64", 0, true);
    register_policy<kvq::Tier<Int2G32, Int2G32>>("int2_g32", 0, false);
    register_policy<kvq::Tier<Int2Channel, Int2G32>>("kivi2_window128", 128, false);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "kvq_bench_attention: %s\n", error.what());
    return 1;
  }
  return 0;
}
