// Interop: a range of one sequence's tokens, read from the paged cache (sinks, pages, window) and written as
// plain fp16 tensors keys[tokens][kv_heads][head_dim] and values[tokens][kv_heads][head_dim], for consumers
// that run their own attention. Values and keys come out in the original domain (rotated policies rotated
// back); keys of a pre-RoPE cache get RoPE for their position unless asked for as stored.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/token_address.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/cuda/error.cuh"
#include "kvq/cuda/lane_decode.cuh"
#include "kvq/cuda/paged_cache.cuh"

namespace kvq::cuda {

enum class KeyOutput {
  attention,  // as attention sees them: RoPE applied (for a pre-RoPE cache, at each token's position)
  stored,     // as the cache stores them (pre-RoPE caches: without RoPE)
};

namespace detail {

template <class Tier>
struct RangeArgs {
  CacheLayerView view;
  TierParams<Tier> params;
  RopeTable<Tier::KeyPolicy::head_dim> rope;
  RopeStyle style;
  int sequence;
  std::int64_t begin, count;
  f16* keys;
  f16* values;
  bool rope_keys;
};

template <int N>
__device__ __forceinline__ void store_f16_lanes(f16* target, const float (&x)[N]) {
#pragma unroll
  for (int c = 0; c < N; ++c) target[c] = to_f16_saturating(x[c]);
}

template <class Tier>
__global__ void __launch_bounds__(128) dequantize_range_kernel(const RangeArgs<Tier> a) {
  using K = typename Tier::KeyPolicy;
  using V = typename Tier::ValuePolicy;
  constexpr int D = K::head_dim, N = 16, L = D / N, slots = 32 / L;
  static_assert(D % N == 0 && L >= 2 && L <= 32, "kvq: dequantize_range supports head_dim 32 to 512");
  const CacheLayerView& v = a.view;
  const int lane = threadIdx.x % 32, lane_in_token = lane % L, slot = lane / L, first_channel = lane_in_token * N;
  const std::int64_t items = a.count * v.kv_heads;
  const std::int64_t warps = std::int64_t{gridDim.x} * (blockDim.x / 32);
  const std::int64_t quantized = v.quantized[a.sequence];
  // Loop bounds are the same for every lane of a warp, so the shuffles below are always warp-wide.
  for (std::int64_t base = (std::int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32) * slots; base < items;
       base += warps * slots) {
    const std::int64_t item = base + slot;
    const bool live = item < items;
    const std::int64_t token = a.begin + (live ? item / v.kv_heads : 0);
    const int head = static_cast<int>(live ? item % v.kv_heads : 0);
    float key[N], value[N];
    read_cached_token_lanes<Tier, N, L>(v, a.params, a.sequence, quantized, token, head, lane_in_token, true, key, value);
    if (a.rope_keys) rope_lanes<D, N, L>(key, lane_in_token, token, a.rope, a.style);
    if (live) {
      const std::int64_t out = item * D + first_channel;
      store_f16_lanes<N>(a.keys + out, key);
      store_f16_lanes<N>(a.values + out, value);
    }
  }
}

}  // namespace detail

// Tokens [begin, end) of `sequence` (which holds `sequence_length` tokens, as the caller's bookkeeping says).
// Asynchronous on `stream`; nothing is allocated.
template <class Tier>
void dequantize_range_async(const CacheLayerView& view, const TierParams<Tier>& params,
                            const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style, int sequence,
                            std::int64_t sequence_length, std::int64_t begin, std::int64_t end, f16* keys, f16* values,
                            KeyOutput key_output, cudaStream_t stream) {
  require(sequence >= 0 && sequence < view.max_sequences, ErrorCode::invalid_argument,
          "dequantize_range: sequence " + std::to_string(sequence) + " is outside [0, " + std::to_string(view.max_sequences) + ")");
  require(begin >= 0 && begin <= end && end <= sequence_length, ErrorCode::invalid_argument,
          "dequantize_range: tokens [" + std::to_string(begin) + ", " + std::to_string(end) + ") are not inside the " +
              std::to_string(sequence_length) + " tokens of sequence " + std::to_string(sequence));
  if (begin == end) return;
  require(keys != nullptr && values != nullptr, ErrorCode::invalid_argument, "dequantize_range: null output");
  require(reinterpret_cast<std::uintptr_t>(keys) % 4 == 0 && reinterpret_cast<std::uintptr_t>(values) % 4 == 0,
          ErrorCode::invalid_argument, "dequantize_range: outputs must be 4-byte aligned fp16 tensors");
  const detail::RangeArgs<Tier> args{view,     params, rope, style, sequence, begin, end - begin, keys, values,
                                     key_output == KeyOutput::attention && view.key_position == KeyPosition::pre_rope};
  const std::int64_t warps_needed = ((end - begin) * view.kv_heads + 7) / 8;
  const int blocks = static_cast<int>(std::min<std::int64_t>((warps_needed + 3) / 4, 4096));
  detail::dequantize_range_kernel<Tier><<<blocks, 128, 0, stream>>>(args);
  check_launch("dequantize_range");
}

// The same for one layer of a device cache; the range is checked against the sequence's length.
template <class Tiers>
void dequantize_range_async(const PagedKVCache<Tiers>& cache, int layer, int sequence, std::int64_t begin,
                            std::int64_t end, f16* keys, f16* values, KeyOutput key_output, cudaStream_t stream) {
  const CacheLayerView view = cache.view(layer);
  require(sequence >= 0 && sequence < cache.config().max_sequences, ErrorCode::invalid_argument,
          "dequantize_range: sequence " + std::to_string(sequence) + " is outside the cache");
  const std::int64_t length = cache.sequences().sequence(sequence).length;
  Tiers::visit(view.tier, [&]<class Tier>() {
    dequantize_range_async<Tier>(view, cache.template params<Tier>(layer), cache.rope_table(), cache.config().rope.style,
                                 sequence, length, begin, end, keys, values, key_output, stream);
  });
}

}  // namespace kvq::cuda
