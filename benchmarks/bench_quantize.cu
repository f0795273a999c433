// Throughput of kvq's device quantize/dequantize kernels on one Llama-3-8B layer's K (or V) cache:
// [tokens, 8 heads, 128 head_dim] fp16, against a device-to-device copy of the same tensor measured in the same
// process. Every kernel here is memory-bound at best, so "frac_of_copy" says how close a policy gets to the
// bandwidth ceiling.
//
// Counters (GB = 1e9 bytes; bytes_per_second from SetBytesProcessed uses binary units):
//   GB/s           bytes moved / GPU time, per direction:
//                    copy:       fp16 read + fp16 written
//                    quantize:   fp16 read + codes + metadata written
//                    dequantize: codes + metadata read + fp16 written
//   copy_GB/s      the copy baseline (median of 21 runs at startup) for the same token count
//   frac_of_copy   GB/s / copy_GB/s
//   bits_per_elem  storage cost of the policy (codes + metadata), 16 for the copy
//
// Times are CUDA event times of each iteration (UseManualTime), so host launch overhead is not counted.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <kvq/cuda/kvq.cuh>

#include "device_support.cuh"

namespace {

using kvq::cuda::check;
using kvq::benchmarks::DeviceArray;
using kvq::benchmarks::EventTimer;
using kvq::benchmarks::Stream;

constexpr int kHeads = 8;
constexpr int kHeadDim = 128;
constexpr std::array<std::int64_t, 2> kTokenCounts{32768, 131072};
constexpr std::array<int, 2> kOutlierChannels{3, 77};  // heavy-tailed channels, as seen in real K caches
constexpr float kOutlierScale = 20.0f;

kvq::TensorShape shape_for(std::int64_t tokens) {
  return {.tokens = tokens, .heads = kHeads, .head_dim = kHeadDim};
}

// What every benchmark reads: the input tensor for the largest token count (smaller counts use its first
// tokens, since the layout is token-major) and the copy baseline per token count.
struct Shared {
  DeviceArray<kvq::f16> input{static_cast<std::size_t>(shape_for(kTokenCounts.back()).elements())};
  std::vector<std::pair<std::int64_t, double>> copy_gigabytes_per_second;

  [[nodiscard]] double copy_baseline(std::int64_t tokens) const {
    for (const auto& [count, rate] : copy_gigabytes_per_second)
      if (count == tokens) return rate;
    return 0.0;
  }
};

// Normal values with a few outlier channels scaled up; fixed seed so every run quantizes the same data.
void fill_input(DeviceArray<kvq::f16>& input) {
  const std::size_t elements = input.bytes() / sizeof(kvq::f16);
  std::vector<kvq::f16> host(elements);
  std::mt19937 generator(20240611u);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::size_t i = 0; i < elements; ++i) {
    const int channel = static_cast<int>(i % kHeadDim);
    const bool outlier = std::find(kOutlierChannels.begin(), kOutlierChannels.end(), channel) != kOutlierChannels.end();
    host[i] = kvq::to_f16(normal(generator) * (outlier ? kOutlierScale : 1.0f));
  }
  check(cudaMemcpy(input.get(), host.data(), input.bytes(), cudaMemcpyHostToDevice), "cudaMemcpy input");
}

double copy_bandwidth_median(const Shared& shared, std::int64_t tokens) {
  const std::size_t bytes = static_cast<std::size_t>(shape_for(tokens).elements()) * sizeof(kvq::f16);
  DeviceArray<std::uint8_t> destination(bytes);
  Stream stream;
  EventTimer timer;
  const auto copy = [&] {
    check(cudaMemcpyAsync(destination.get(), shared.input.get(), bytes, cudaMemcpyDeviceToDevice, stream.get()),
          "cudaMemcpyAsync");
  };
  timer.seconds(stream.get(), copy);  // warm-up
  std::vector<double> times(21);
  for (double& time : times) time = timer.seconds(stream.get(), copy);
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return 2.0 * static_cast<double>(bytes) / times[times.size() / 2] / 1e9;
}

// Times `work` once per iteration (after one warm-up call) and sets the common counters.
template <class Work>
void run_timed(benchmark::State& state, const Shared& shared, double bytes_per_iteration, double bits_per_element,
               cudaStream_t stream, Work&& work) {
  EventTimer timer;
  timer.seconds(stream, work);  // warm-up: first launch, module load, caches
  double total_seconds = 0.0;
  for (auto _ : state) {
    const double seconds = timer.seconds(stream, work);
    state.SetIterationTime(seconds);
    total_seconds += seconds;
  }
  if (state.iterations() == 0) return;
  const double rate = bytes_per_iteration * static_cast<double>(state.iterations()) / total_seconds / 1e9;
  const double baseline = shared.copy_baseline(state.range(0));
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes_per_iteration) * state.iterations());
  state.counters["GB/s"] = benchmark::Counter(rate);
  state.counters["copy_GB/s"] = benchmark::Counter(baseline);
  state.counters["frac_of_copy"] = benchmark::Counter(baseline > 0.0 ? rate / baseline : 0.0);
  state.counters["bits_per_elem"] = benchmark::Counter(bits_per_element);
}

// kvq::Error (a failed CUDA call or launch) skips the benchmark with its message instead of aborting the run.
template <class Body>
void reporting_errors(benchmark::State& state, Body&& body) {
  try {
    body();
  } catch (const std::exception& error) {
    state.SkipWithError(error.what());
  }
}

void copy_benchmark(benchmark::State& state, const Shared& shared) {
  reporting_errors(state, [&] {
    const std::size_t bytes = static_cast<std::size_t>(shape_for(state.range(0)).elements()) * sizeof(kvq::f16);
    DeviceArray<std::uint8_t> destination(bytes);
    Stream stream;
    run_timed(state, shared, 2.0 * static_cast<double>(bytes), 16.0, stream.get(), [&] {
      check(cudaMemcpyAsync(destination.get(), shared.input.get(), bytes, cudaMemcpyDeviceToDevice, stream.get()),
            "cudaMemcpyAsync");
    });
  });
}

template <kvq::QuantizationPolicy P>
void quantize_benchmark(benchmark::State& state, const Shared& shared, const typename P::Params& params) {
  reporting_errors(state, [&] {
    const kvq::TensorShape shape = shape_for(state.range(0));
    const kvq::QuantizedTensorLayout<P> layout{shape};
    DeviceArray<std::uint8_t> codes(static_cast<std::size_t>(layout.code_bytes()));
    DeviceArray<std::uint8_t> meta(static_cast<std::size_t>(layout.meta_bytes()));
    DeviceArray<unsigned long long> poisoned_groups(1);
    check(cudaMemset(poisoned_groups.get(), 0, poisoned_groups.bytes()), "cudaMemset");
    Stream stream;
    const double bytes =
        static_cast<double>(shape.elements() * sizeof(kvq::f16) + layout.code_bytes() + layout.meta_bytes());
    run_timed(state, shared, bytes, P::bits_per_element, stream.get(), [&] {
      kvq::cuda::quantize_tensor_async<P>(shared.input.get(), shape, codes.get(), meta.get(), params,
                                          poisoned_groups.get(), stream.get());
    });
    // The input is finite, so a poisoned group means the kernel misread it: the timing would be meaningless.
    unsigned long long poisoned = 0;
    check(cudaMemcpy(&poisoned, poisoned_groups.get(), sizeof(poisoned), cudaMemcpyDeviceToHost), "cudaMemcpy");
    if (poisoned != 0) state.SkipWithError("finite input produced poisoned groups");
  });
}

template <kvq::QuantizationPolicy P>
void dequantize_benchmark(benchmark::State& state, const Shared& shared, const typename P::Params& params,
                          kvq::Domain domain) {
  reporting_errors(state, [&] {
    const kvq::TensorShape shape = shape_for(state.range(0));
    const kvq::QuantizedTensorLayout<P> layout{shape};
    DeviceArray<std::uint8_t> codes(static_cast<std::size_t>(layout.code_bytes()));
    DeviceArray<std::uint8_t> meta(static_cast<std::size_t>(layout.meta_bytes()));
    DeviceArray<kvq::f16> output(static_cast<std::size_t>(shape.elements()));
    Stream stream;
    // Dequantize real codes, not uninitialised memory.
    kvq::cuda::quantize_tensor_async<P>(shared.input.get(), shape, codes.get(), meta.get(), params, nullptr,
                                        stream.get());
    const double bytes =
        static_cast<double>(layout.code_bytes() + layout.meta_bytes() + shape.elements() * sizeof(kvq::f16));
    // Domain::original is the full round trip (rotated policies also undo the rotation); Domain::stored is what
    // an attention kernel over a rotated cache reads.
    run_timed(state, shared, bytes, P::bits_per_element, stream.get(), [&] {
      kvq::cuda::dequantize_tensor_async<P>(codes.get(), meta.get(), shape, output.get(), params, domain,
                                            stream.get());
    });
  });
}

void configure(benchmark::internal::Benchmark* benchmark) {
  benchmark->ArgName("tokens");
  for (const std::int64_t tokens : kTokenCounts) benchmark->Arg(tokens);
  benchmark->UseManualTime()->Unit(benchmark::kMicrosecond);
}

template <kvq::QuantizationPolicy P>
void register_policy(const std::string& name, const Shared& shared, typename P::Params params = {}) {
  benchmark::RegisterBenchmark(("quantize/" + name).c_str(), [&shared, params](benchmark::State& state) {
    quantize_benchmark<P>(state, shared, params);
  })->Apply(configure);
  benchmark::RegisterBenchmark(("dequantize/" + name).c_str(), [&shared, params](benchmark::State& state) {
    dequantize_benchmark<P>(state, shared, params, kvq::Domain::original);
  })->Apply(configure);
  if constexpr (P::rotated) {
    benchmark::RegisterBenchmark(("dequantize_stored_domain/" + name).c_str(), [&shared, params](benchmark::State& state) {
      dequantize_benchmark<P>(state, shared, params, kvq::Domain::stored);
    })->Apply(configure);
  }
}

using Int8Token = kvq::UniformPolicy<kvq::UniformConfig{.bits = 8, .group_size = 128, .head_dim = 128}>;
using Int4Token = kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 32, .head_dim = 128}>;
using Int4Channel =
    kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 32, .head_dim = 128, .axis = kvq::Axis::per_channel}>;
using Int3TokenSymmetric =
    kvq::UniformPolicy<kvq::UniformConfig{.bits = 3, .group_size = 32, .head_dim = 128, .symmetric = true}>;
using Int2Channel =
    kvq::UniformPolicy<kvq::UniformConfig{.bits = 2, .group_size = 32, .head_dim = 128, .axis = kvq::Axis::per_channel}>;
using Fp8E4m3 = kvq::Fp8Policy<kvq::Fp8Config{.format = kvq::Fp8Format::e4m3, .head_dim = 128}>;
using Nuq4 = kvq::CodebookPolicy<kvq::CodebookConfig{.bits = 4, .group_size = 32, .head_dim = 128}>;
// Capacity 2 of 128 channels: about the top 1.5% per token, the KVQuant "1% outliers" setting.
using Outliers2Int4 = kvq::OutlierPolicy<
    Int4Token, kvq::OutlierConfig{.capacity = 2, .selection = kvq::OutlierSelection::largest_magnitude}>;
using RotatedInt4 = kvq::RotatedPolicy<Int4Token>;

// Normal quantiles at (k + 0.5) / 16, scaled so the outermost are -1 and 1: a fixed, plausible nuq4 codebook.
constexpr std::array<float, 16> kNormalCentroids{-1.0000f, -0.7076f, -0.5422f, -0.4168f, -0.3109f, -0.2159f,
                                                 -0.1273f, -0.0421f, 0.0421f,  0.1273f,  0.2159f,  0.3109f,
                                                 0.4168f,  0.5422f,  0.7076f,  1.0000f};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  try {
    if (!kvq::benchmarks::report_device("kvq_bench_quantize")) return 2;

    Shared shared;
    fill_input(shared.input);
    for (const std::int64_t tokens : kTokenCounts) {
      const double rate = copy_bandwidth_median(shared, tokens);
      shared.copy_gigabytes_per_second.emplace_back(tokens, rate);
      std::printf("fp16 copy baseline, tokens=%lld (%.0f MiB): %.1f GB/s (median of 21 D2D cudaMemcpyAsync)\n",
                  static_cast<long long>(tokens),
                  static_cast<double>(shape_for(tokens).elements() * sizeof(kvq::f16)) / (1 << 20), rate);
    }
    std::fflush(stdout);

    DeviceArray<float> centroids(kNormalCentroids.size());
    check(cudaMemcpy(centroids.get(), kNormalCentroids.data(), centroids.bytes(), cudaMemcpyHostToDevice),
          "cudaMemcpy centroids");

    benchmark::RegisterBenchmark("copy/fp16", [&shared](benchmark::State& state) {
      copy_benchmark(state, shared);
    })->Apply(configure);
    register_policy<Int8Token>("int8_token_g128", shared);
    register_policy<Int4Token>("int4_token_g32", shared);
    register_policy<Int4Channel>("int4_channel_g32", shared);
    register_policy<Int3TokenSymmetric>("int3_token_g32_symmetric", shared);
    register_policy<Int2Channel>("int2_channel_g32", shared);
    register_policy<Fp8E4m3>("fp8_e4m3", shared);
    register_policy<Nuq4>("nuq4_token_g32", shared, {.centroids = centroids.get()});
    register_policy<Outliers2Int4>("outliers2_int4_token_g32", shared);
    register_policy<RotatedInt4>("rotated_int4_token_g32", shared, {.seed = 0x6B7A5EEDu});

    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "kvq_bench_quantize: %s\n", error.what());
    return 1;
  }
  return 0;
}
