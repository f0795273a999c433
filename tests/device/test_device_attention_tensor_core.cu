// The tensor-core decode kernel (kvq/cuda/decode_attention_mma.cuh) against the host reference, format by format,
// and against its own preconditions. The error budget is the one of test_device_attention.cu (1e-3 + u_out per
// output row); for this kernel the derivation adds the fp16 operands of the value mma: dequantized values and
// softmax weights are rounded to fp16 (relative 2^-12 on average, 2^-11 at most, independently per element), so
// the row error is a few 1e-4 on random data. Scores: fp16 keys meet the query's fp16 high + low parts (~2^-22);
// integer keys meet its 8-bit high + low parts (q = s (hi + lo/254), s = max|q| / 127), whose rounding is at most
// max|q| / 64516 per element, so a logit moves by at most scale * max|q| * sum|k| / 64516 -- on these N(0,1) data
// about 1e-4 in the worst case and ~1e-5 typically (independent roundings), inside the budget.
#include <doctest/doctest.h>

#include "../support/attention_support.cuh"

using namespace kvq;
using namespace kvq::testing;

namespace {
template <int Bits, int Group, int D, bool Symmetric = false>
using Uniform = UniformPolicy<UniformConfig{.bits = Bits, .group_size = Group, .head_dim = D, .symmetric = Symmetric}>;

constexpr DecodeTuning tensor_cores{.kernel = DecodeKernel::tensor_core};
constexpr DecodeTuning many_splits{.blocks_per_sm = 64, .min_split_bytes = 1, .max_splits = 200,
                                   .kernel = DecodeKernel::tensor_core};
}  // namespace

TEST_CASE("tensor-core decode: every format (2/4/8-bit, sym/asym, groups 32-128, fp16) as keys and values") {
  // Pages of 48 tokens: tiles of 16 never straddle a page, but ranges start and end inside tiles and pages.
  CacheConfig config{.kv_heads = 2, .page_tokens = 48, .sink_tokens = 3, .window_tokens = 5};
  const std::vector<std::int64_t> lengths{1, 17, 47, 48, 49, 700, 2100};
  run_case<Tier<Uniform<4, 64, 128>, Uniform<4, 64, 128>>>(config, lengths, 8, {}, tensor_cores);
  run_case<Tier<Uniform<2, 32, 128>, Uniform<2, 64, 128>>>(config, lengths, 8, {}, tensor_cores);
  run_case<Tier<Uniform<8, 128, 128>, Uniform<8, 32, 128, true>>>(config, lengths, 8, {}, tensor_cores);
  run_case<Tier<Uniform<4, 32, 128, true>, Uniform<2, 128, 128, true>>>(config, lengths, 8, {}, tensor_cores);
  run_case<Tier<Fp16Policy<128>, Uniform<4, 32, 128>>>(config, lengths, 8, {}, tensor_cores);
  run_case<Tier<Uniform<2, 64, 128>, Fp16Policy<128>>>(config, lengths, 8, {}, tensor_cores);
  // head_dim 64: 2-bit values are 2 bytes per lane and token.
  run_case<Tier<Uniform<2, 32, 64>, Uniform<2, 32, 64>>>(config, lengths, 6, {}, tensor_cores);
  run_case<Tier<Uniform<4, 64, 64, true>, Uniform<8, 64, 64>>>(config, lengths, 6, {}, tensor_cores);
  run_case<Tier<Fp16Policy<64>, Fp16Policy<64>>>(config, lengths, 6, {}, tensor_cores);
}

TEST_CASE("tensor-core decode: query groups 1-16 (column blocks of up to 4 mmas), query types, scale, cap, splits") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 1, .window_tokens = 4};
  for (int group : {1, 3, 4, 5, 8, 16}) {
    INFO("group " << group);
    run_case<Tier<Uniform<2, 32, 128>, Uniform<4, 32, 128>>>(config, {33, 1000}, 2 * group, {}, tensor_cores);
    run_case<Tier<Uniform<8, 64, 64>, Uniform<4, 64, 64>>, bf16, float>(config, {33, 1000}, 2 * group, {}, tensor_cores);
  }
  using T = Tier<Uniform<4, 64, 128>, Uniform<4, 64, 128>>;
  run_case<T, float, float>(config, {10, 2000}, 8, {}, tensor_cores);
  run_case<T, bf16, bf16>(config, {10, 2000}, 8, AttentionParams{.softmax_scale = 0.3f}, tensor_cores);
  run_case<T, f16, float>(config, {10, 2000}, 8, AttentionParams{.softmax_scale = 0.2f, .soft_cap = 5.0f}, tensor_cores);
  run_case<T, f16, f16>(config, {1, 10, 2000}, 8, {}, many_splits);
  // head_dim 64, 200 splits of 4 heads: the split weights (800) outgrow the shared merge rows (3 x 4 x 64) and
  // go through the workspace instead.
  run_case<Tier<Uniform<4, 64, 64>, Uniform<4, 64, 64>>, f16, f16>(config, {7000, 10, 1}, 8, {}, many_splits);
}

TEST_CASE("tensor-core decode: 128K tokens, batch 1, int4 g64 and int2 g64 (the benchmark formats)") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 256, .sink_tokens = 4, .window_tokens = 64};
  run_case<Tier<Uniform<4, 64, 128>, Uniform<4, 64, 128>>>(config, {131072}, 8, {}, tensor_cores);
  run_case<Tier<Uniform<2, 64, 128>, Uniform<2, 64, 128>>>(config, {131072, 5000}, 8, {}, tensor_cores);
}

TEST_CASE("tensor-core decode: the forced generic kernel matches the reference; calls it cannot take are refused") {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 2, .window_tokens = 8};
  run_case<Tier<Uniform<4, 64, 128>, Uniform<4, 64, 128>>>(config, {5, 3000}, 8, {},
                                                          DecodeTuning{.kernel = DecodeKernel::generic});
  // Formats, key positions and page sizes without a tensor-core path: an error naming the requirement.
  const auto refused = [](auto tier, CacheConfig c) {
    using T = decltype(tier);
    c.layers = 1, c.max_sequences = 1, c.max_tokens_per_sequence = 100;
    cuda::PagedKVCache<LayerTiers<T>> cache(c, std::int64_t{1} << 40);
    const DecodePlan plan = plan_decode({1, 4, c.kv_heads, T::KeyPolicy::head_dim}, 100, cuda::kv_bytes_per_token_head<T>(),
                                        132, tensor_cores);
    DeviceBuffer<f16> q(4 * T::KeyPolicy::head_dim, 0), out(4 * T::KeyPolicy::head_dim, 0);
    DeviceBuffer<std::int32_t> sequences(1, 0);
    DeviceBuffer<std::uint8_t> workspace(static_cast<std::size_t>(std::max<std::int64_t>(plan.workspace_bytes, 1)), 0);
    CHECK_THROWS_WITH_AS(cuda::decode_attention_async(cache, 0, plan, {}, q.get(), out.get(), sequences.get(),
                                                      workspace.get(), plan.workspace_bytes, nullptr),
                         doctest::Contains("tensor-core kernel"), Error);
  };
  CacheConfig base{.kv_heads = 2, .page_tokens = 64};
  refused(Tier<Int2C, Int4T>{}, base);                                                   // per-channel keys
  refused(Tier<Int4T, Int3TokenSym>{}, base);                                            // 3-bit values
  refused(Tier<Int4T, Int2TokenF32>{}, base);                                            // fp32 value scales
  refused(Tier<Int4T, Int4T>{}, CacheConfig{.kv_heads = 2, .page_tokens = 40});          // pages of 40 tokens
  CacheConfig pre_rope = base;
  pre_rope.key_position = KeyPosition::pre_rope;
  refused(Tier<Int4T, Int4T>{}, pre_rope);                                               // RoPE at read
}

TEST_CASE("device planner: splits fill one wave of the kernel's measured occupancy") {
  using T = Tier<Uniform<4, 64, 128>, Uniform<4, 64, 128>>;
  CacheConfig config{.layers = 1, .kv_heads = 8, .max_sequences = 1, .max_tokens_per_sequence = 131072, .page_tokens = 256};
  cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 40);
  const int occupancy = cuda::decode_blocks_per_sm<T>(cache.view(0), 4, DecodeKernel::automatic);
  INFO("tensor-core kernel: " << occupancy << " blocks per SM");
  CHECK(occupancy >= 2);  // the kernel is built for 3 (launch bounds); fewer would halve its memory parallelism
  const int slots = occupancy * cuda::device_sm_count();
  const DecodePlan plan = cuda::plan_decode(cache, 0, {1, 32, 8, 128}, 131072);
  // 8 blocks per split (one per KV head): the most splits whose blocks all run in the first wave.
  CHECK(plan.splits == std::min(slots / 8, DecodeTuning{}.max_splits));
  // A tuning that sets blocks_per_sm is taken as given.
  CHECK(cuda::plan_decode(cache, 0, {1, 32, 8, 128}, 131072, DecodeTuning{.blocks_per_sm = 1}).splits ==
        cuda::device_sm_count() / 8);
  // The generic kernel has its own occupancy (no dynamic shared memory, more registers).
  CHECK(cuda::decode_blocks_per_sm<T>(cache.view(0), 4, DecodeKernel::generic) >= 1);
  CHECK_THROWS_WITH_AS(cuda::decode_blocks_per_sm<T>(cache.view(0), 5, DecodeKernel::automatic),
                       doctest::Contains("group width"), Error);
}

TEST_CASE("tensor-core decode: a non-finite query element gives NaN for its head only (integer and fp16 keys)") {
  const auto check_heads = []<class T>(T) {
    const std::uint32_t seed = fresh_seed();
    INFO("seed " << seed);
    std::mt19937 rng(seed);
    CacheConfig config{.layers = 1, .kv_heads = 2, .max_sequences = 1, .max_tokens_per_sequence = 500,
                       .page_tokens = 64, .sink_tokens = 2, .window_tokens = 8};
    cuda::PagedKVCache<LayerTiers<T>> cache(config, std::int64_t{1} << 40);
    BothParams<T> params(seed);
    cache.template set_params<T>(0, params.device.key, params.device.value);
    fill(cache, {500}, rng);
    const DecodePlan plan = cuda::plan_decode(cache, 0, {1, 8, 2, T::KeyPolicy::head_dim}, 500);
    Workspace workspace(plan);
    constexpr int d = T::KeyPolicy::head_dim;
    for (const float bad : {NAN, INFINITY}) {
      std::vector<f16> queries = random_queries<f16>(8 * d, rng);
      queries[3 * d + 17] = to_f16(bad);  // head 3, served by KV head 0 with heads 0-2
      DeviceBuffer<f16> q(queries);
      DeviceBuffer<std::int32_t> sequences(std::vector<std::int32_t>{0});
      DeviceBuffer<f16> out(8 * d, 0);  // zeros: a NaN must be written, not left over
      cuda::decode_attention_async(cache, 0, plan, {}, q.get(), out.get(), sequences.get(), workspace.buffer->get(),
                                   plan.workspace_bytes, nullptr);
      cuda::check(cudaDeviceSynchronize(), "decode attention");
      const std::vector<f16> got = out.download();
      for (int h = 0; h < 8; ++h) {
        INFO("head " << h << ", bad value " << bad);
        int nan = 0;
        for (int c = 0; c < d; ++c) nan += std::isnan(to_float(got[h * d + c])) ? 1 : 0;
        CHECK(nan == (h == 3 ? d : 0));
      }
    }
  };
  check_heads(Tier<Uniform<4, 64, 128>, Uniform<4, 64, 128>>{});
  check_heads(Tier<Fp16Policy<128>, Uniform<4, 32, 128>>{});
}
