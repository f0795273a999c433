// GPU tests of the paged cache: after the same appends (decode steps and prefill chunks, several sequences),
// truncations and resets, the device cache holds exactly the bytes of the host reference cache: pages, sinks and
// window, every layer.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "../support/policy_fixtures.hpp"
#include "../support/device_buffer.cuh"
#include "kvq/cache/host_paged_cache.hpp"
#include "kvq/cuda/paged_cache.cuh"

using namespace kvq;
using namespace kvq::testing;

namespace {


template <class Tiers>
void compare(const HostPagedKVCache<Tiers>& host, const cuda::PagedKVCache<Tiers>& device, const char* after) {
  for (int layer = 0; layer < host.config().layers; ++layer) {
    const auto expected = host.storage(layer);
    const auto got = device.download(layer);
    INFO("after " << after << ", layer " << layer);
    REQUIRE(got.pages.size() == expected.pages.size());
    CHECK(std::memcmp(got.pages.data(), expected.pages.data(), got.pages.size()) == 0);
    CHECK(std::memcmp(got.sinks.data(), expected.sinks.data(), got.sinks.size() * sizeof(f16)) == 0);
    CHECK(std::memcmp(got.window.data(), expected.window.data(), got.window.size() * sizeof(f16)) == 0);
    // The device view addresses the same storage and the same bookkeeping as the host view.
    const CacheLayerView hv = host.view(layer), dv = device.view(layer);
    CHECK(dv.page_bytes == hv.page_bytes);
    CHECK(dv.value_meta_offset == hv.value_meta_offset);
    std::vector<std::uint8_t> pages(got.pages.size());
    std::vector<std::int32_t> table(static_cast<std::size_t>(hv.max_sequences) * hv.max_pages_per_sequence);
    std::vector<std::int64_t> lengths(hv.max_sequences), quantized(hv.max_sequences);
    cuda::check(cudaMemcpy(pages.data(), dv.pages, pages.size(), cudaMemcpyDeviceToHost), "view pages");
    cuda::check(cudaMemcpy(table.data(), dv.page_table, table.size() * 4, cudaMemcpyDeviceToHost), "view table");
    cuda::check(cudaMemcpy(lengths.data(), dv.lengths, lengths.size() * 8, cudaMemcpyDeviceToHost), "view lengths");
    cuda::check(cudaMemcpy(quantized.data(), dv.quantized, quantized.size() * 8, cudaMemcpyDeviceToHost), "view quantized");
    CHECK(pages == got.pages);
    CHECK(std::equal(table.begin(), table.end(), hv.page_table));
    CHECK(std::equal(lengths.begin(), lengths.end(), hv.lengths));
    CHECK(std::equal(quantized.begin(), quantized.end(), hv.quantized));
  }
}

// Random operations on both caches; `set_params(cache, arrays)` installs the same parameters in each.
template <class Tiers, class SetParams>
void run_both(const CacheConfig& config, std::uint32_t seed, int steps, SetParams set_params) {
  INFO("seed " << seed);
  HostPagedKVCache<Tiers> host(config, std::int64_t{1} << 40);
  cuda::PagedKVCache<Tiers> device(config, std::int64_t{1} << 40);
  CHECK(device.allocated_bytes() == device.memory().total_bytes());
  HostArrays host_arrays;
  DeviceArrays device_arrays;
  set_params(host, host_arrays);
  set_params(device, device_arrays);
  std::mt19937 rng(seed);
  constexpr int d = Tiers::head_dim;
  for (int step = 0; step < steps; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 8) {
      std::vector<int> sequences;
      std::vector<std::int64_t> counts;
      for (int s = 0; s < config.max_sequences; ++s) {
        const std::int64_t room = config.max_tokens_per_sequence - host.sequences().sequence(s).length;
        if (rng() % 4 == 0 || room <= 0) continue;
        sequences.push_back(s);
        // Mostly decode steps, sometimes prefill chunks, and now and then a sequence with nothing to append.
        const std::int64_t want = rng() % 8 == 0 ? 0 : op < 5 ? 1 : 1 + static_cast<std::int64_t>(rng() % 300);
        counts.push_back(std::min<std::int64_t>(room, want));
      }
      const AppendPlan host_plan = host.reserve(sequences, counts);
      const AppendPlan device_plan = device.reserve(sequences, counts, nullptr);
      for (int layer = 0; layer < config.layers; ++layer) {
        const TensorShape shape{host_plan.total_tokens, config.kv_heads, d};
        const auto keys = make_input(shape, rng()), values = make_input(shape, rng());
        if (step % 2 == 0) {
          host.template write<f16>(host_plan, layer, keys, values);
          DeviceBuffer<f16> device_keys(keys), device_values(values);
          device.template write<f16>(device_plan, layer, device_keys.get(), device_values.get(), nullptr);
        } else {  // bf16 input, rounded to fp16 for the sinks and window on both sides
          std::vector<bf16> keys16(keys.size()), values16(values.size());
          for (std::size_t i = 0; i < keys.size(); ++i)
            keys16[i] = to_bf16(to_float(keys[i]) * 3.0f), values16[i] = to_bf16(to_float(values[i]) * 3.0f);
          host.template write<bf16>(host_plan, layer, keys16, values16);
          DeviceBuffer<bf16> device_keys(keys16), device_values(values16);
          device.template write<bf16>(device_plan, layer, device_keys.get(), device_values.get(), nullptr);
        }
        cuda::check(cudaDeviceSynchronize(), "write");
      }
      compare(host, device, "append");
    } else if (op == 8) {
      const int s = static_cast<int>(rng() % config.max_sequences);
      const std::int64_t length = host.sequences().sequence(s).length;
      const std::int64_t target = length == 0 ? 0 : static_cast<std::int64_t>(rng() % (length + 1));
      host.truncate(s, target);
      device.truncate(s, target, nullptr);
      compare(host, device, "truncate");
    } else {
      const int s = static_cast<int>(rng() % config.max_sequences);
      host.reset(s);
      device.reset(s, nullptr);
      compare(host, device, "reset");
    }
  }
}

using Int4T = UniformPolicy<UniformConfig{.bits = 4, .group_size = 32, .head_dim = 128}>;
using Int2C = UniformPolicy<UniformConfig{.bits = 2, .group_size = 32, .head_dim = 128, .axis = Axis::per_channel}>;
using Fp8 = Fp8Policy<Fp8Config{.format = Fp8Format::e4m3, .head_dim = 128}>;
using Rotated = RotatedPolicy<OutlierPolicy<Int4T, OutlierConfig{.capacity = 2}>>;
using Nuq = CodebookPolicy<CodebookConfig{.bits = 3, .group_size = 32, .head_dim = 128, .axis = Axis::per_channel}>;

}  // namespace

TEST_CASE("device cache equals the host cache: KIVI tiers, sinks, window, post-RoPE with llama3 scaling") {
  CacheConfig config{.layers = 2, .kv_heads = 8, .max_sequences = 3, .max_tokens_per_sequence = 2000, .page_tokens = 64,
                     .sink_tokens = 4, .window_tokens = 16};
  config.rope = RopeConfig{.theta = 500000.0f, .scaling = RopeScaling::llama3};
  run_both<LayerTiers<Tier<Int2C, Int4T>>>(config, fresh_seed(), 40, [](auto&, auto&) {});
}

TEST_CASE("device cache equals the host cache: per-layer tiers with fp8, rotation, outliers and a codebook, pre-RoPE") {
  using Tiers = LayerTiers<Tier<Fp8, Fp8>, Tier<Rotated, Nuq>>;
  CacheConfig config{.layers = 3, .kv_heads = 2, .max_sequences = 2, .max_tokens_per_sequence = 1500, .page_tokens = 32,
                     .sink_tokens = 1, .window_tokens = 3, .key_position = KeyPosition::pre_rope, .layer_tier = {0, 1, 0}};
  run_both<Tiers>(config, fresh_seed(), 40, [](auto& cache, auto& arrays) {
    const CodebookParams book = ParamsBuilder<Nuq>::build(arrays, 99);
    cache.template set_params<Tier<Rotated, Nuq>>(1, typename Rotated::Params{{}, 4321u}, book);
  });
}

TEST_CASE("device cache equals the host cache: per-token int4, post-RoPE with interleaved pairs, no window") {
  CacheConfig config{.layers = 2, .kv_heads = 4, .max_sequences = 4, .max_tokens_per_sequence = 1000, .page_tokens = 16,
                     .sink_tokens = 2};
  config.rope.style = RopeStyle::interleaved;
  run_both<LayerTiers<Tier<Int4T, Int4T>>>(config, fresh_seed(), 30, [](auto&, auto&) {});
}

TEST_CASE("device cache: a budget or a device too small is refused before allocating") {
  CacheConfig config{.layers = 32, .kv_heads = 8, .max_sequences = 1, .max_tokens_per_sequence = 1 << 20};
  using Cache = cuda::PagedKVCache<LayerTiers<Tier<Int4T, Int4T>>>;
  const auto memory = Cache::required_memory(config);
  CHECK_THROWS_AS(Cache(config, memory.total_bytes() - 1), Error);
  config.max_sequences = 64;  // ~5.4 TB of pages: more than any device has
  try {
    Cache too_big(config, std::int64_t{1} << 50);
    FAIL("expected out_of_memory");
  } catch (const Error& error) {
    CHECK(error.code() == ErrorCode::out_of_memory);
  }
}
