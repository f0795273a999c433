// Shared by the decode-attention GPU tests: cache filling, host copies of a layer, queries, and the comparison
// of the kernel with the host reference. See test_device_attention.cu for the error budget.
#pragma once

#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "device_buffer.cuh"
#include "policy_fixtures.hpp"
#include "kvq/cuda/decode_attention.cuh"
#include "kvq/cuda/dequantize_range.cuh"
#include "kvq/host/decode_attention.hpp"

namespace kvq::testing {

template <class T>
constexpr double unit_roundoff = std::is_same_v<T, float> ? 0.0 : std::is_same_v<T, f16> ? 1.0 / 2048 : 1.0 / 256;

template <class T>
float as_float(T x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else return to_float(x);
}

// The same policy parameters in host memory (for the reference) and device memory (for the cache).
template <class Tier>
struct BothParams {
  HostArrays host_arrays;
  DeviceArrays device_arrays;
  TierParams<Tier> host, device;
  explicit BothParams(std::uint32_t seed) {
    host = {ParamsBuilder<typename Tier::KeyPolicy>::build(host_arrays, seed),
            ParamsBuilder<typename Tier::ValuePolicy>::build(host_arrays, seed + 7)};
    device = {ParamsBuilder<typename Tier::KeyPolicy>::build(device_arrays, seed),
              ParamsBuilder<typename Tier::ValuePolicy>::build(device_arrays, seed + 7)};
  }
};

// Appends `lengths[s]` tokens to sequence s of every layer: prefill chunks of random size, then single-token
// decode steps for the last few, so that windows roll and flush as in real use.
template <class Tiers>
void fill(cuda::PagedKVCache<Tiers>& cache, const std::vector<std::int64_t>& lengths, std::mt19937& rng) {
  constexpr int d = Tiers::head_dim;
  std::vector<std::int64_t> left = lengths;
  while (std::any_of(left.begin(), left.end(), [](std::int64_t n) { return n > 0; })) {
    std::vector<int> sequences;
    std::vector<std::int64_t> counts;
    for (std::size_t s = 0; s < left.size(); ++s) {
      if (left[s] == 0) continue;
      const std::int64_t chunk = left[s] <= 3 ? 1 : std::min<std::int64_t>(left[s] - 3, 1 + rng() % 8192);
      sequences.push_back(static_cast<int>(s));
      counts.push_back(chunk);
      left[s] -= chunk;
    }
    const AppendPlan plan = cache.reserve(sequences, counts, nullptr);
    for (int layer = 0; layer < cache.config().layers; ++layer) {
      const TensorShape shape{plan.total_tokens, cache.config().kv_heads, d};
      DeviceBuffer<f16> keys(make_input(shape, rng())), values(make_input(shape, rng()));
      cache.template write<f16>(plan, layer, keys.get(), values.get(), nullptr);
      cuda::check(cudaDeviceSynchronize(), "fill");
    }
  }
}

// One layer of a device cache copied to the host, with a view whose pointers address the copies.
struct HostLayer {
  struct {
    std::vector<std::uint8_t> pages;
    std::vector<f16> sinks, window;
  } copy;
  std::vector<std::int32_t> table;
  std::vector<std::int64_t> lengths, quantized;
  CacheLayerView view;
};

template <class Tiers>
HostLayer download_layer(const cuda::PagedKVCache<Tiers>& cache, int layer) {
  HostLayer h;
  const auto copy = cache.download(layer);
  h.copy.pages = copy.pages;
  h.copy.sinks = copy.sinks;
  h.copy.window = copy.window;
  const CacheLayerView dv = cache.view(layer);
  h.table.resize(static_cast<std::size_t>(dv.max_sequences) * dv.max_pages_per_sequence);
  h.lengths.resize(dv.max_sequences);
  h.quantized.resize(dv.max_sequences);
  cuda::check(cudaMemcpy(h.table.data(), dv.page_table, h.table.size() * 4, cudaMemcpyDeviceToHost), "table");
  cuda::check(cudaMemcpy(h.lengths.data(), dv.lengths, h.lengths.size() * 8, cudaMemcpyDeviceToHost), "lengths");
  cuda::check(cudaMemcpy(h.quantized.data(), dv.quantized, h.quantized.size() * 8, cudaMemcpyDeviceToHost), "quantized");
  h.view = dv;
  h.view.pages = h.copy.pages.data();
  h.view.page_table = h.table.data();
  h.view.lengths = h.lengths.data();
  h.view.quantized = h.quantized.data();
  const std::size_t sink_half = h.copy.sinks.size() / 2, window_half = h.copy.window.size() / 2;
  h.view.sink_keys = h.copy.sinks.data();
  h.view.sink_values = h.copy.sinks.data() + sink_half;
  h.view.window_keys = h.copy.window.data();
  h.view.window_values = h.copy.window.data() + window_half;
  return h;
}

template <class Q>
std::vector<Q> random_queries(std::size_t count, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<Q> q(count);
  for (Q& x : q) {
    if constexpr (std::is_same_v<Q, float>) x = normal(rng);
    else if constexpr (std::is_same_v<Q, f16>) x = to_f16(normal(rng));
    else x = to_bf16(normal(rng));
  }
  return q;
}

// What `record(stream)` enqueues, captured once as a CUDA graph on its own stream; replay() launches it and waits.
class CapturedGraph {
 public:
  template <class Record>
  explicit CapturedGraph(Record&& record) {
    cuda::check(cudaStreamCreate(&stream_), "stream");
    cuda::check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "capture");
    record(stream_);
    cuda::check(cudaStreamEndCapture(stream_, &graph_), "end capture");
    cuda::check(cudaGraphInstantiate(&exec_, graph_, 0), "instantiate");
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  ~CapturedGraph() {
    cudaGraphExecDestroy(exec_);
    cudaGraphDestroy(graph_);
    cudaStreamDestroy(stream_);
  }
  void replay() {
    cuda::check(cudaGraphLaunch(exec_, stream_), "replay");
    cuda::check(cudaStreamSynchronize(stream_), "replay sync");
  }

 private:
  cudaStream_t stream_{};
  cudaGraph_t graph_{};
  cudaGraphExec_t exec_{};
};

struct Workspace {
  DecodePlan plan;
  std::unique_ptr<DeviceBuffer<std::uint8_t>> buffer;
  Workspace(const DecodePlan& p) : plan(p), buffer(std::make_unique<DeviceBuffer<std::uint8_t>>(p.workspace_bytes, 0xAB)) {
    cuda::clear_decode_workspace_async(plan, buffer->get(), nullptr);
  }
};

// Importance after two identical steps: each element gained twice the reference's one-step probability p (its
// softmax weights summed over the group). Budget: the output's 1e-3 as the relative error of p (p = 2^z / sum,
// so a logit error dz in the log2 domain gives ln2 * dz relative: the same dot products as the output), plus the
// float additions (two adds into a value of magnitude |got|: 2^-23 |got|). Past each length: untouched.
inline void check_importance(const std::vector<float>& got, const std::vector<float>& before,
                             const std::vector<float>& reference, const std::vector<std::int64_t>& lengths,
                             const std::vector<int>& batch, int kv_heads, std::int64_t stride, int group) {
  for (std::size_t s = 0; s < lengths.size(); ++s)
    for (int k = 0; k < kv_heads; ++k) {
      const bool in_batch = std::find(batch.begin(), batch.end(), static_cast<int>(s)) != batch.end();
      const std::size_t row = (s * kv_heads + static_cast<std::size_t>(k)) * static_cast<std::size_t>(stride);
      double worst = 0, added = 0;
      std::int64_t worst_token = -1;
      bool untouched = true;
      for (std::int64_t t = 0; t < stride; ++t) {
        const std::size_t i = row + static_cast<std::size_t>(t);
        if (t >= lengths[s] || !in_batch) {
          untouched = untouched && got[i] == before[i];
          continue;
        }
        const double p = static_cast<double>(reference[i]) - before[i];  // float storage of the reference: see below
        const double error = std::abs((static_cast<double>(got[i]) - before[i]) - 2 * p);
        // The reference's own float row adds 2^-24 |reference| to the uncertainty of p.
        // Float atomics flush subnormal sums to zero: 2^-126 absolute per add.
        const double budget = 2e-3 * p + 0x1p-23 * std::abs(got[i]) + 0x1p-23 * std::abs(reference[i]) + 2 * 0x1p-126;
        if (error - budget > worst) worst = error - budget, worst_token = t;
        added += static_cast<double>(got[i]) - before[i];
      }
      INFO("importance of slot " << s << ", KV head " << k << ", length " << lengths[s] << ": worst excess " << worst
                                 << " at token " << worst_token);
      CHECK(worst <= 0);
      CHECK(untouched);
      if (in_batch && lengths[s] > 0) CHECK(added == doctest::Approx(2.0 * group).epsilon(1e-3));
    }
}

// Attention of `sequences` (cache slots, one query each) on the device against the host reference.
template <class Tiers, class Q, class O>
void check_decode(const cuda::PagedKVCache<Tiers>& cache, const TierParams<typename Tiers::First>& host_params,
                  const std::vector<int>& sequences, int q_heads, AttentionParams attention, std::mt19937& rng,
                  const DecodeTuning& tuning = {}) {
  using Tier = typename Tiers::First;
  constexpr int d = Tiers::head_dim;
  const int batch = static_cast<int>(sequences.size());
  const HostLayer host = download_layer(cache, 0);
  std::int64_t longest = 0;
  for (int s : sequences) longest = std::max(longest, cache.sequences().sequence(s).length);
  // The device planner (the kernel's measured occupancy) unless the case forces a tuning of its own.
  const DecodeShape shape{batch, q_heads, cache.config().kv_heads, d};
  const DecodePlan plan = tuning.blocks_per_sm == 0
                              ? cuda::plan_decode<Q, O>(cache, 0, shape, longest, tuning)
                              : plan_decode(shape, longest, cuda::kv_bytes_per_token_head<Tier>(), cuda::device_sm_count(), tuning);
  INFO("splits " << plan.splits << ", group " << plan.group << ", longest " << longest);
  Workspace workspace(plan);
  const auto queries = random_queries<Q>(static_cast<std::size_t>(batch) * q_heads * d, rng);
  DeviceBuffer<Q> device_queries(queries);
  DeviceBuffer<std::int32_t> device_sequences(std::vector<std::int32_t>(sequences.begin(), sequences.end()));
  // Importance (tuning.importance): rows of every cache slot, random earlier sums in [0, 1) and -7 past each
  // length (must stay untouched); both runs add to them.
  const int kv_heads = cache.config().kv_heads, slots = cache.config().max_sequences;
  const std::int64_t stride = std::max<std::int64_t>(1, longest) + 5;
  std::vector<float> importance_before(static_cast<std::size_t>(slots) * kv_heads * stride, -7.0f);
  if (tuning.importance) {
    std::uniform_real_distribution<float> unit(0.0f, 1.0f);
    for (int s = 0; s < slots; ++s)
      for (int k = 0; k < kv_heads; ++k)
        for (std::int64_t t = 0; t < host.lengths[static_cast<std::size_t>(s)]; ++t)
          importance_before[(static_cast<std::size_t>(s) * kv_heads + k) * stride + t] = unit(rng);
  }
  DeviceBuffer<float> device_importance(importance_before);
  const ImportanceView importance_view =
      tuning.importance ? ImportanceView{device_importance.get(), kv_heads * stride, stride} : ImportanceView{};
  std::vector<float> importance_reference = importance_before;  // one step's sums added by the host reference
  const ImportanceView reference_view{importance_reference.data(), kv_heads * stride, stride};
  std::vector<O> first;
  for (int run = 0; run < 2; ++run) {
    DeviceBuffer<O> out(static_cast<std::size_t>(batch) * q_heads * d, 0xFF);  // NaN until written
    cuda::decode_attention_async(cache, 0, plan, attention, device_queries.get(), out.get(), device_sequences.get(),
                                 workspace.buffer->get(), plan.workspace_bytes, nullptr, importance_view);
    cuda::check(cudaDeviceSynchronize(), "decode attention");
    const std::vector<O> got = out.download();
    if (run == 1) {  // the arrival counters were left at zero and nothing depends on timing
      CHECK(std::memcmp(got.data(), first.data(), got.size() * sizeof(O)) == 0);
      if (tuning.importance) check_importance(device_importance.download(), importance_before, importance_reference,
                                              host.lengths, sequences, kv_heads, stride, plan.group);
      break;
    }
    first = got;
    for (int b = 0; b < batch; ++b) {
      std::vector<float> q(static_cast<std::size_t>(q_heads) * d);
      for (std::size_t i = 0; i < q.size(); ++i) q[i] = as_float(queries[static_cast<std::size_t>(b) * q.size() + i]);
      std::vector<double> expected(q.size());
      decode_attention_reference<Tier>(host.view, host_params, cache.rope_table(), cache.config().rope.style,
                                       sequences[static_cast<std::size_t>(b)], q, q_heads, attention, expected,
                                       tuning.importance ? reference_view : ImportanceView{});
      for (int h = 0; h < q_heads; ++h) {
        double error = 0, norm = 0;
        bool finite = true;
        for (int c = 0; c < d; ++c) {
          const double x = as_float(got[(static_cast<std::size_t>(b) * q_heads + h) * d + c]);
          const double r = expected[static_cast<std::size_t>(h) * d + c];
          finite = finite && std::isfinite(x);
          error += (x - r) * (x - r);
          norm += r * r;
        }
        INFO("batch entry " << b << " (sequence " << sequences[static_cast<std::size_t>(b)] << ", length "
                            << host.lengths[static_cast<std::size_t>(sequences[static_cast<std::size_t>(b)])] << "), head " << h);
        REQUIRE(finite);
        if (norm == 0) {
          CHECK(error == 0);
        } else {
          CHECK(std::sqrt(error / norm) <= 1e-3 + unit_roundoff<O>);
        }
      }
    }
  }
}

template <class Tier, class Q = f16, class O = f16>
void run_case(CacheConfig config, const std::vector<std::int64_t>& lengths, int q_heads, AttentionParams attention = {},
              const DecodeTuning& tuning = {}) {
  const std::uint32_t seed = fresh_seed();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  config.layers = 1;
  config.max_sequences = static_cast<int>(lengths.size());
  config.max_tokens_per_sequence = std::max<std::int64_t>(1, *std::max_element(lengths.begin(), lengths.end()));
  cuda::PagedKVCache<LayerTiers<Tier>> cache(config, std::int64_t{1} << 40);
  BothParams<Tier> params(seed);
  cache.template set_params<Tier>(0, params.device.key, params.device.value);
  fill(cache, lengths, rng);
  std::vector<int> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  check_decode<LayerTiers<Tier>, Q, O>(cache, params.host, order, q_heads, attention, rng, tuning);
}

using Int4T = UniformPolicy<UniformConfig{.bits = 4, .group_size = 32, .head_dim = 128}>;
using Int4T64 = UniformPolicy<UniformConfig{.bits = 4, .group_size = 64, .head_dim = 128}>;
using Int2C = UniformPolicy<UniformConfig{.bits = 2, .group_size = 32, .head_dim = 128, .axis = Axis::per_channel}>;
using Int2T = UniformPolicy<UniformConfig{.bits = 2, .group_size = 32, .head_dim = 128}>;
using Fp16 = Fp16Policy<128>;

}  // namespace kvq::testing
