// Lane-level readers shared by the attention and interop kernels: a head vector of a token is spread over
// `Lanes` consecutive lanes of a warp, each owning N consecutive channels. These helpers decode a lane's channels
// from fp16 rows or quantized blocks, and apply RoPE and the Walsh-Hadamard rotation across the lanes of a token.
// Functions with shuffles must be called by all 32 lanes of the warp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/token_address.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/float_ops.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/cuda/paged_cache.cuh"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/fp16.hpp"
#include "kvq/quant/packing.hpp"
#include "kvq/quant/rotation.hpp"
#include "kvq/quant/uniform.hpp"

namespace kvq::cuda::detail {

template <class P>
inline constexpr bool is_rotated_policy = false;
template <class Inner>
inline constexpr bool is_rotated_policy<RotatedPolicy<Inner>> = true;

template <int N>
__device__ __forceinline__ void load_f16_lanes(const f16* source, float (&out)[N]) {
  static_assert(N % 8 == 0);
#pragma unroll
  for (int v = 0; v < N / 8; ++v) {
    const uint4 raw = reinterpret_cast<const uint4*>(source)[v];
    const std::uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      out[8 * v + 2 * w] = to_float(f16{static_cast<std::uint16_t>(words[w] & 0xFFFFu)});
      out[8 * v + 2 * w + 1] = to_float(f16{static_cast<std::uint16_t>(words[w] >> 16)});
    }
  }
}

// Channels [channel, channel + N) of one row of a quantized block. The generic path is the policy's own
// dequantize(); formats whose layout allows it get vector loads.
template <class P, int N>
struct LaneDecoder {
  __device__ __forceinline__ static void decode(ConstBlockRef block, int row, int channel, float (&out)[N],
                                                const typename P::Params& params) {
    P::dequantize(block, row, channel, N, out, params);
  }
};

template <int HeadDim, int N>
struct LaneDecoder<Fp16Policy<HeadDim>, N> {
  __device__ __forceinline__ static void decode(ConstBlockRef block, int, int channel, float (&out)[N], const NoParams&) {
    load_f16_lanes<N>(reinterpret_cast<const f16*>(block.codes) + channel, out);
  }
};

// Per-token uniform groups: the lane's channels lie in one group, so one scale and zero serve them all and the
// codes come from one aligned load (N codes of b bits = N*b/8 bytes).
template <UniformConfig Config, int N>
  requires(Config.axis == Axis::per_token && Config.bits != 3 && Config.group_size % N == 0)
struct LaneDecoder<UniformPolicy<Config>, N> {
  using P = UniformPolicy<Config>;
  __device__ __forceinline__ static void decode(ConstBlockRef block, int, int channel, float (&out)[N], const NoParams&) {
    constexpr int bits = Config.bits;
    constexpr int words = N * bits / 32;
    const int group = channel / Config.group_size;
    const int in_group = channel % Config.group_size;
    const std::uint8_t* unit = block.codes + group * P::Geometry::code_bytes_per_group +
                               in_group / codes_per_unit * PackedUnit<bits>::bytes;
    const int first_word = in_group % codes_per_unit * bits / 32;
    std::uint32_t w[words > 0 ? words : 1];
    if constexpr (words == 4) {
      const uint4 raw = *reinterpret_cast<const uint4*>(unit + 4 * first_word);
      w[0] = raw.x, w[1] = raw.y, w[2] = raw.z, w[3] = raw.w;
    } else if constexpr (words == 2) {
      const uint2 raw = *reinterpret_cast<const uint2*>(unit + 4 * first_word);
      w[0] = raw.x, w[1] = raw.y;
    } else {
#pragma unroll
      for (int i = 0; i < words; ++i) w[i] = reinterpret_cast<const std::uint32_t*>(unit)[first_word + i];
    }
    const auto s = P::load_scale(block.meta, group);
    constexpr int per_word = 32 / bits;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float code = static_cast<float>((w[k / per_word] >> (bits * (k % per_word))) & ((1u << bits) - 1u));
      if constexpr (Config.symmetric) {
        out[k] = kvq::detail::mul_rn(code - static_cast<float>(P::symmetric_offset), s.scale);
      } else {
        out[k] = kvq::detail::fma_rn(code, s.scale, s.zero);
      }
    }
  }
};

// Walsh-Hadamard rotation (rotation.hpp) of a head vector spread over `Lanes` lanes of `N` consecutive channels.
template <int N, int Lanes>
__device__ __forceinline__ void hadamard_lanes(float (&x)[N], int lane_in_token) {
#pragma unroll
  for (int half = 1; half < N; half *= 2)
#pragma unroll
    for (int start = 0; start < N; start += 2 * half)
#pragma unroll
      for (int j = start; j < start + half; ++j) {
        const float a = x[j], b = x[j + half];
        x[j] = a + b;
        x[j + half] = a - b;
      }
#pragma unroll
  for (int mask = 1; mask < Lanes; mask *= 2) {
    const bool upper = (lane_in_token & mask) != 0;
#pragma unroll
    for (int c = 0; c < N; ++c) {
      const float other = __shfl_xor_sync(0xFFFFFFFFu, x[c], mask);
      x[c] = upper ? other - x[c] : x[c] + other;
    }
  }
}

template <int HeadDim, int N, int Lanes>
__device__ __forceinline__ void rotate_lanes(float (&x)[N], int lane_in_token, std::uint32_t seed, bool inverse) {
  const int first = lane_in_token * N;
  if (!inverse)
#pragma unroll
    for (int c = 0; c < N; ++c)
      if (rotation_sign_negative(seed, first + c)) x[c] = -x[c];
  hadamard_lanes<N, Lanes>(x, lane_in_token);
#pragma unroll
  for (int c = 0; c < N; ++c) {
    x[c] *= inverse_sqrt_power_of_two<HeadDim>;
    if (inverse && rotation_sign_negative(seed, first + c)) x[c] = -x[c];
  }
}

// RoPE of a key at `position` for the lane's channels; the partner of a half-split pair is in lane ^ Lanes/2.
template <int HeadDim, int N, int Lanes>
__device__ __forceinline__ void rope_lanes(float (&x)[N], int lane_in_token, std::int64_t position,
                                           const RopeTable<HeadDim>& rope, RopeStyle style) {
  float partner[N];
  if (style == RopeStyle::interleaved) {
#pragma unroll
    for (int c = 0; c < N; ++c) partner[c] = x[c ^ 1];
  } else {
#pragma unroll
    for (int c = 0; c < N; ++c) partner[c] = __shfl_xor_sync(0xFFFFFFFFu, x[c], Lanes / 2);
  }
#pragma unroll
  for (int c = 0; c < N; ++c)
    x[c] = rope_channel<HeadDim>(x[c], partner[c], lane_in_token * N + c, position, rope, style);
}

// The inverse rotation of a head vector, applied where `apply` (lanes holding page rows); all 32 lanes call.
template <int HeadDim, int N, int Lanes>
__device__ __forceinline__ void rotate_back_lanes(float (&x)[N], int lane_in_token, std::uint32_t seed, bool apply) {
  if (!__any_sync(0xFFFFFFFFu, apply)) return;
  float back[N];
#pragma unroll
  for (int c = 0; c < N; ++c) back[c] = x[c];
  rotate_lanes<HeadDim, N, Lanes>(back, lane_in_token, seed, true);
  if (apply)
#pragma unroll
    for (int c = 0; c < N; ++c) x[c] = back[c];
}

// Channels [lane_in_token * N, + N) of the key and value of `token` (head `head`) as the cache stores them: a sink or
// window row, or a page row dequantized by the policy; rotated policies rotated back to the original domain; no
// RoPE. `quantized` is the sequence's count of tokens in pages. Called by all 32 lanes (the inverse rotation
// shuffles among the lanes of a token); lanes with `read` false take part in the shuffles and leave key and value
// as they were. Every lane must name a token the cache holds, read or not, so that its addresses are valid.
template <class Tier, int N, int Lanes>
__device__ __forceinline__ void read_cached_token_lanes(const CacheLayerView& v, const TierParams<Tier>& params,
                                                        int sequence, std::int64_t quantized, std::int64_t token,
                                                        int head, int lane_in_token, bool read, float (&key)[N],
                                                        float (&value)[N]) {
  using K = typename Tier::KeyPolicy;
  using V = typename Tier::ValuePolicy;
  constexpr int D = K::head_dim;
  static_assert(!K::rotated || is_rotated_policy<K>, "kvq: attention rotates only RotatedPolicy keys");
  static_assert(!V::rotated || is_rotated_policy<V>, "kvq: attention rotates only RotatedPolicy values");
  const int first_channel = lane_in_token * N;
  const TokenSegment segment = token_segment(v, quantized, token);
  float k[N], x[N];
  if (segment == TokenSegment::quantized) {
    const auto ref = quantized_token<Tier>(v, sequence, token - v.sink_tokens, head);
    LaneDecoder<K, N>::decode(ref.key, ref.key_row, first_channel, k, params.key);
    LaneDecoder<V, N>::decode(ref.value, ref.value_row, first_channel, x, params.value);
  } else {
    const bool sink = segment == TokenSegment::sink;
    const std::int64_t offset = (sink ? sink_row_offset(v, sequence, token, head)
                                      : window_row_offset(v, sequence, window_slot(v, token), head)) + first_channel;
    load_f16_lanes<N>((sink ? v.sink_keys : v.window_keys) + offset, k);
    load_f16_lanes<N>((sink ? v.sink_values : v.window_values) + offset, x);
  }
  const bool from_pages = read && segment == TokenSegment::quantized;
  if constexpr (K::rotated) rotate_back_lanes<D, N, Lanes>(k, lane_in_token, params.key.seed, from_pages);
  if constexpr (V::rotated) rotate_back_lanes<D, N, Lanes>(x, lane_in_token, params.value.seed, from_pages);
  if (read) {
#pragma unroll
    for (int c = 0; c < N; ++c) {
      key[c] = k[c];
      value[c] = x[c];
    }
  }
}

}  // namespace kvq::cuda::detail
