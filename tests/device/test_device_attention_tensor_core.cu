// The tensor-core decode kernel (kvq/cuda/decode_attention_mma.cuh) against the host reference, format by format,
// and against its own preconditions. The error budget is the one of test_device_attention.cu (1e-3 + u_out per
// output row); for this kernel the derivation adds the fp16 operands of the value mma: dequantized values and
// softmax weights are rounded to fp16 (relative 2^-12 on average, 2^-11 at most, independently per element), so
// the row error is a few 1e-4 on random data. Keys are scored with exact integer codes and the queries' fp16
// high + low parts (~2^-22), so the scores carry no fp16 error.
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
