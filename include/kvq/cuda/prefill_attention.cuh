// Chunked-prefill attention over the paged quantized cache, on tensor cores (flash-attention style).
//
// A call serves one chunk of query tokens per sequence. The chunk has been appended to the cache already (its keys
// and values written with PagedKVCache::write); query i of a chunk of n tokens sits at position past + i
// (past = length - n) and attends causally to tokens [0, past + i]. Tokens before the chunk are read as the cache
// stores them (exactly what the next decode step reads); the chunk's own tokens come from the fp16 tensors that
// were given to write() when the caller passes them (exact, as the model computed them: each chunk token reads as
// the fp16 window would hold it, keys rotated here for their positions), else from the cache as stored. docs/attention.md ("Prefill") states what each token sees.
//
// Work decomposition:
//   grid  = (row blocks, kv_heads, batch). A row is a (query token, query head) pair of one KV head's group:
//           row r is token r / group, head r % group, so GQA rows of one KV head share every K/V read.
//           A block takes 128 rows; the blocks with the latest rows (the most keys) start first.
//   block = 8 warps of 16 rows. Per 64-token tile of keys and values, all 256 threads read the tile once (any
//           policy: page rows dequantized by the policy, sinks, window, chunk rows; rotated policies rotated back;
//           RoPE at read for pre-RoPE caches) into fp16 shared memory; then each warp computes its 16 x 64 scores
//           with mma.sync m16n8k16 (Q fragments in registers, K by ldmatrix), an online softmax in fp32 (log2
//           domain), and P . V with P taken straight from the score registers and V by ldmatrix.trans.
//   Two tile buffers and two warp groups in opposite order (one reads its half of tile i+1, then computes tile
//   i; the other computes, then reads), so one group's memory latency overlaps the other's mmas; one barrier
//   per tile. The block is large (8 warps, one per SM at ~250 registers) so that each thread reads few tokens.
//   No workspace: the memory a call needs does not depend on the context length.
// Precision: a dequantized key is not an fp16 number, and rounding it to one moves a logit by ~2^-11 of |q||k|,
// which with outlier channels (logits of tens) is a 1e-2 error in the output. So keys enter the score product
// as two fp16 terms, hi = fp16(k) and lo = fp16(k - hi) (K = hi + lo to ~2^-22), in two mmas; fp16 policy pages with
// post-RoPE keys are exact in fp16 and take one. Float queries are split the same way (fp16 and bf16 queries are
// exact in fp16). Values and softmax weights enter P . V as fp16: their rounding errors are relative to each
// term and average out in the weighted sum (~3e-4); tests/device/test_device_prefill.cu states the budget.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>

#include "kvq/attention/decode_plan.hpp"
#include "kvq/attention/prefill_shape.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/core/element.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/cuda/error.cuh"
#include "kvq/cuda/lane_decode.cuh"
#include "kvq/cuda/mma_fragments.cuh"
#include "kvq/cuda/paged_cache.cuh"
#include "kvq/quant/fp16.hpp"

namespace kvq::cuda {

namespace detail {

template <int HeadDim, bool SplitKeys>
struct PrefillGeometry {
  static constexpr int warps = 8;
  static constexpr int blocks_per_sm = 1;
  static constexpr int threads = 32 * warps;
  static constexpr int rows = 16 * warps;       // (query token, head) rows per block
  static constexpr int tile_tokens = 64;        // keys per tile
  static constexpr int stride = HeadDim + 8;    // fp16 per shared row: 16-byte aligned rows, conflict-free ldmatrix
  static constexpr int channels_per_lane = 16;  // the tile reader: a token spread over HeadDim / 16 lanes
  static constexpr int lanes_per_token = HeadDim / channels_per_lane;
  static constexpr int group_threads = threads / 2;  // two warp groups, each reading half of every tile
  static constexpr int tokens_per_pass = group_threads / lanes_per_token;
  static constexpr int tile_elements = tile_tokens * stride;
  static constexpr int buffer_elements = (SplitKeys ? 3 /*keys hi, lo, values*/ : 2) * tile_elements;
  static constexpr int shared_bytes = 2 /*buffers*/ * buffer_elements * 2;
  static_assert(HeadDim == 64 || HeadDim == 128, "kvq: prefill attention supports head_dim 64 and 128");
  static_assert((tile_tokens / 2) % tokens_per_pass == 0);
};

template <class Tier, class Query, class Out>
struct PrefillArgs {
  CacheLayerView view;
  TierParams<Tier> params;
  RopeTable<Tier::KeyPolicy::head_dim> rope;
  RopeStyle style;
  const Query* query;
  Out* out;
  const f16* chunk_keys;  // null: the chunk's tokens are read from the cache
  const f16* chunk_values;
  const std::int32_t* sequences;
  const std::int32_t* chunk_starts;
  int q_heads, group;
  float scale;  // softmax scale times log2(e); with a soft cap the plain scale (log2(e) comes after the cap)
  float soft_cap;
};

// Two consecutive query elements as one register of two fp16.
template <class Q>
__device__ __forceinline__ std::uint32_t load_query_pair(const Q* p) {
  if constexpr (std::is_same_v<Q, f16>) {
    return *reinterpret_cast<const std::uint32_t*>(p);
  } else if constexpr (std::is_same_v<Q, float>) {
    const float2 x = *reinterpret_cast<const float2*>(p);
    return pack_half2(x.x, x.y);
  } else {
    return pack_half2(to_float(p[0]), to_float(p[1]));
  }
}

template <class O>
__device__ __forceinline__ void store_out_pair(O* p, float a, float b) {
  if constexpr (std::is_same_v<O, float>) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  } else {
    const std::uint32_t bits = static_cast<std::uint32_t>(from_float<O>(a).bits) |
                               static_cast<std::uint32_t>(from_float<O>(b).bits) << 16;
    *reinterpret_cast<std::uint32_t*>(p) = bits;
  }
}

// Two fp16 terms of each key channel: hi = fp16(x), lo = fp16(x - hi).
template <int N>
__device__ __forceinline__ void store_split_f16(uint4* hi, uint4* lo, const float (&x)[N]) {
#pragma unroll
  for (int q = 0; q < N / 8; ++q) {
    std::uint32_t h[4], l[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float a = x[8 * q + 2 * w], b = x[8 * q + 2 * w + 1];
      h[w] = pack_half2(a, b);
      const float2 back = __half22float2(bits_half2(h[w]));
      l[w] = pack_half2(a - back.x, b - back.y);
    }
    hi[q] = make_uint4(h[0], h[1], h[2], h[3]);
    if (lo != nullptr) lo[q] = make_uint4(l[0], l[1], l[2], l[3]);
  }
}

// Half `half` of the tokens [tile0, tile0 + tile_tokens) of KV head `kv` as attention sees them, into fp16 rows
// of shared memory (keys as hi and, with SplitKeys, lo terms); tokens at or past `end` become zeros. Called by
// every thread of one warp group (`thread` is its index in the group).
template <class Tier, bool SplitKeys, class Query, class Out>
__device__ __forceinline__ void read_prefill_tile(const PrefillArgs<Tier, Query, Out>& a, int slot, int kv,
                                                  std::int64_t quantized, std::int64_t past, int chunk_begin,
                                                  std::int64_t tile0, int half, int thread, std::int64_t end,
                                                  f16* keys, f16* keys_lo, f16* values) {
  constexpr int D = Tier::KeyPolicy::head_dim;
  using G = PrefillGeometry<D, SplitKeys>;
  constexpr int N = G::channels_per_lane, L = G::lanes_per_token;
  const CacheLayerView& v = a.view;
  const int lane_in_token = thread % L, token_slot = half * (G::tile_tokens / 2) + thread / L;
  const bool exact_chunk = a.chunk_keys != nullptr;
  // Every pass's tokens are read before any is stored, so the loads of all passes are in flight together: the
  // tile then costs one memory latency, not one per pass.
  constexpr int passes = G::tile_tokens / 2 / G::tokens_per_pass;
  float key[passes][N], value[passes][N];
#pragma unroll
  for (int pass = 0; pass < passes; ++pass) {
    const std::int64_t token = tile0 + pass * G::tokens_per_pass + token_slot;
    const bool live = token < end;
    const bool from_chunk = exact_chunk && token >= past;
#pragma unroll
    for (int c = 0; c < N; ++c) key[pass][c] = value[pass][c] = 0.0f;
    // Token 0 is always in the cache (the chunk is), so lanes with nothing to read still address valid memory.
    read_cached_token_lanes<Tier, N, L>(v, a.params, slot, quantized, live ? token : 0, kv, lane_in_token,
                                        live && !from_chunk, key[pass], value[pass]);
    if (live && from_chunk) {
      const std::int64_t offset =
          ((std::int64_t{chunk_begin} + (token - past)) * v.kv_heads + kv) * D + lane_in_token * N;
      load_f16_lanes<N>(a.chunk_keys + offset, key[pass]);
      load_f16_lanes<N>(a.chunk_values + offset, value[pass]);
    }
  }
#pragma unroll
  for (int pass = 0; pass < passes; ++pass) {
    const int row = pass * G::tokens_per_pass + token_slot;
    const std::int64_t token = tile0 + row;
    // RoPE at read: every key of a pre-RoPE cache; in a post-RoPE cache only the chunk's own keys, which are the
    // tensors given to write(): rotated and rounded to fp16 as write() does for the window, so a chunk token reads
    // exactly as the fp16 window holds it. rope_lanes shuffles: all lanes call.
    const bool rotate_chunk_key = exact_chunk && token < end && token >= past;
    if (v.key_position == KeyPosition::pre_rope) {
      rope_lanes<D, N, L>(key[pass], lane_in_token, token < end ? token : 0, a.rope, a.style);
    } else if (__any_sync(0xFFFFFFFFu, rotate_chunk_key)) {
      float rotated[N];
#pragma unroll
      for (int c = 0; c < N; ++c) rotated[c] = key[pass][c];
      rope_lanes<D, N, L>(rotated, lane_in_token, token < end ? token : 0, a.rope, a.style);
      if (rotate_chunk_key)
#pragma unroll
        for (int c = 0; c < N; ++c) key[pass][c] = to_float(to_f16_saturating(rotated[c]));
    }
    const int offset = row * G::stride + lane_in_token * N;
    store_split_f16<N>(reinterpret_cast<uint4*>(keys + offset),
                       SplitKeys ? reinterpret_cast<uint4*>(keys_lo + offset) : nullptr, key[pass]);
    uint4* value_row = reinterpret_cast<uint4*>(values + offset);
#pragma unroll
    for (int q = 0; q < N / 8; ++q)
      value_row[q] = make_uint4(pack_half2(value[pass][8 * q], value[pass][8 * q + 1]),
                                pack_half2(value[pass][8 * q + 2], value[pass][8 * q + 3]),
                                pack_half2(value[pass][8 * q + 4], value[pass][8 * q + 5]),
                                pack_half2(value[pass][8 * q + 6], value[pass][8 * q + 7]));
  }
}

template <class Tier, bool SplitKeys, bool SoftCap, class Query, class Out>
__global__ void __launch_bounds__(PrefillGeometry<Tier::KeyPolicy::head_dim, SplitKeys>::threads,
                                  PrefillGeometry<Tier::KeyPolicy::head_dim, SplitKeys>::blocks_per_sm)
    prefill_attention_kernel(const PrefillArgs<Tier, Query, Out> a) {
  constexpr int D = Tier::KeyPolicy::head_dim;
  using G = PrefillGeometry<D, SplitKeys>;
  constexpr bool split_query = std::is_same_v<Query, float>;
  constexpr int BN = G::tile_tokens, S = G::stride;
  constexpr int score_tiles = BN / 8, k_steps = D / 16, out_tiles = D / 8;
  extern __shared__ uint4 prefill_shared[];
  f16* const tiles = reinterpret_cast<f16*>(prefill_shared);

  const int b = static_cast<int>(blockIdx.z), kv = static_cast<int>(blockIdx.y);
  const int chunk_begin = a.chunk_starts[b], count = a.chunk_starts[b + 1] - chunk_begin;
  const int rows_total = count * a.group;
  const int block_row = static_cast<int>(gridDim.x - 1 - blockIdx.x) * G::rows;  // latest rows first
  if (block_row >= rows_total) return;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gid = lane / 4, tig = lane % 4;
  const int row[2] = {block_row + warp * 16 + gid, block_row + warp * 16 + gid + 8};

  const CacheLayerView& v = a.view;
  const int slot = a.sequences[b];
  const bool valid_slot = slot >= 0 && slot < v.max_sequences;
  const std::int64_t length = valid_slot ? v.lengths[slot] : 0;
  if (!valid_slot || count > length) {  // nothing to attend to that the call describes: NaN rows, as decode does
    for (int r = 0; r < 2; ++r) {
      if (row[r] >= rows_total) continue;
      Out* o = a.out + (std::int64_t{chunk_begin + row[r] / a.group} * a.q_heads + kv * a.group + row[r] % a.group) * D;
      for (int c = 2 * tig; c < D; c += 8) store_out_pair(o + c, NAN, NAN);
    }
    return;
  }
  const std::int64_t past = length - count;
  const std::int64_t quantized = v.quantized[slot];
  // Positions: a row sees keys [0, position]; rows past the chunk's end act as its last row and are not stored.
  std::int64_t position[2];
  for (int r = 0; r < 2; ++r) position[r] = past + (row[r] < rows_total ? row[r] : rows_total - 1) / a.group;
  const int last_block_row = min(block_row + G::rows, rows_total) - 1;
  const std::int64_t block_end = past + last_block_row / a.group + 1;  // keys any row of the block sees
  const int warp_first = block_row + warp * 16, warp_last = min(warp_first + 15, rows_total - 1);
  const std::int64_t warp_end = warp_first < rows_total ? past + warp_last / a.group + 1 : 0;
  const std::int64_t warp_min_position = past + min(warp_first, rows_total - 1) / a.group;

  // Q fragments (A operand, 16 x D, one k-step of 16 channels per entry); rows past the chunk are zeros.
  std::uint32_t qf[k_steps][4];
  std::uint32_t qf_lo[split_query ? k_steps : 1][4];
  {
    const Query* q[2];
    for (int r = 0; r < 2; ++r) {
      const int t = (row[r] < rows_total ? row[r] : 0) / a.group, h = kv * a.group + (row[r] < rows_total ? row[r] : 0) % a.group;
      q[r] = a.query + (std::int64_t{chunk_begin + t} * a.q_heads + h) * D;
    }
#pragma unroll
    for (int k = 0; k < k_steps; ++k) {
      const int c = 16 * k + 2 * tig;
      qf[k][0] = row[0] < rows_total ? load_query_pair(q[0] + c) : 0u;
      qf[k][1] = row[1] < rows_total ? load_query_pair(q[1] + c) : 0u;
      qf[k][2] = row[0] < rows_total ? load_query_pair(q[0] + c + 8) : 0u;
      qf[k][3] = row[1] < rows_total ? load_query_pair(q[1] + c + 8) : 0u;
      if constexpr (split_query) {
        const int rr[4] = {0, 1, 0, 1}, cc[4] = {c, c, c + 8, c + 8};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float2 x = make_float2(0.0f, 0.0f);
          if (row[rr[e]] < rows_total) x = *reinterpret_cast<const float2*>(q[rr[e]] + cc[e]);
          const float2 back = __half22float2(bits_half2(qf[k][e]));
          qf_lo[k][e] = pack_half2(x.x - back.x, x.y - back.y);
        }
      }
    }
  }

  float o[out_tiles][4];
#pragma unroll
  for (int j = 0; j < out_tiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  const int tile_count = static_cast<int>((block_end + BN - 1) / BN);
  const auto buffer = [&](int i, int part) { return tiles + (i & 1) * G::buffer_elements + part * G::tile_elements; };
  constexpr int value_part = SplitKeys ? 2 : 1;
  // Two warp groups in opposite order: group 0 reads its half of tile i+1 and then computes tile i, group 1
  // computes tile i and then reads its half of tile i+1, so one group's memory latency overlaps the other's
  // tensor-core work; one barrier per tile.
  const int warp_group = warp / (G::warps / 2), thread_in_group = static_cast<int>(threadIdx.x) % G::group_threads;
  const auto read_half = [&](int i) {
    read_prefill_tile<Tier, SplitKeys>(a, slot, kv, quantized, past, chunk_begin, std::int64_t{i} * BN, warp_group,
                                       thread_in_group, block_end, buffer(i, 0), buffer(i, 1), buffer(i, value_part));
  };
  read_half(0);
  __syncthreads();
#pragma unroll 1
  for (int it = 0; it < tile_count; ++it) {
    const bool next = it + 1 < tile_count;
    if (warp_group == 0 && next) read_half(it + 1);
    const std::int64_t tile0 = std::int64_t{it} * BN;
    const f16* const keys = buffer(it, 0);
    const f16* const keys_lo = buffer(it, 1);
    const f16* const values = buffer(it, value_part);
    if (tile0 < warp_end) {
      float s[score_tiles][4];
#pragma unroll
      for (int j = 0; j < score_tiles; ++j) {
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kp = 0; kp < k_steps / 2; ++kp) {
          const int offset = (8 * j + (lane & 7)) * S + 32 * kp + 8 * (lane >> 3);
          std::uint32_t bk[4];
          load_matrices_x4(bk, keys + offset);
          mma_16x8x16(s[j], qf[2 * kp], bk[0], bk[1]);
          mma_16x8x16(s[j], qf[2 * kp + 1], bk[2], bk[3]);
          if constexpr (split_query) {
            mma_16x8x16(s[j], qf_lo[2 * kp], bk[0], bk[1]);
            mma_16x8x16(s[j], qf_lo[2 * kp + 1], bk[2], bk[3]);
          }
          if constexpr (SplitKeys) {
            load_matrices_x4(bk, keys_lo + offset);
            mma_16x8x16(s[j], qf[2 * kp], bk[0], bk[1]);
            mma_16x8x16(s[j], qf[2 * kp + 1], bk[2], bk[3]);
          }
        }
      }
      // Scale (and cap) into the log2 domain; mask keys past each row's position.
      const bool masked = tile0 + BN - 1 > warp_min_position;
      const std::int64_t limit[2] = {position[0] - tile0, position[1] - tile0};
      float top[2] = {m[0], m[1]};
#pragma unroll
      for (int j = 0; j < score_tiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[j][e];
          if constexpr (SoftCap) {
            x = a.soft_cap * tanhf(x * a.scale / a.soft_cap) * log2_e;
          } else {
            x *= a.scale;
          }
          if (masked && 8 * j + 2 * tig + (e & 1) > limit[e >> 1]) x = -INFINITY;
          s[j][e] = x;
          top[e >> 1] = fmaxf(top[e >> 1], x);
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        top[r] = fmaxf(top[r], __shfl_xor_sync(0xFFFFFFFFu, top[r], 1));
        top[r] = fmaxf(top[r], __shfl_xor_sync(0xFFFFFFFFu, top[r], 2));
      }
      // Every row sees key 0, so after the first tile its maximum is finite; before it m is -inf and the
      // correction exp2(-inf) = 0 multiplies nothing but zeros.
      const float correction[2] = {exp2_approx(m[0] - top[0]), exp2_approx(m[1] - top[1])};
      m[0] = top[0];
      m[1] = top[1];
      l[0] *= correction[0];
      l[1] *= correction[1];
#pragma unroll
      for (int j = 0; j < out_tiles; ++j) {
        o[j][0] *= correction[0];
        o[j][1] *= correction[0];
        o[j][2] *= correction[1];
        o[j][3] *= correction[1];
      }
#pragma unroll
      for (int j = 0; j < score_tiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] = exp2_approx(s[j][e] - m[e >> 1]);
          l[e >> 1] += s[j][e];
        }
      // P . V: the score fragments of two 8-key tiles are the A operand of one 16-key step.
#pragma unroll
      for (int kt = 0; kt < BN / 16; ++kt) {
        const std::uint32_t pa[4] = {pack_half2(s[2 * kt][0], s[2 * kt][1]), pack_half2(s[2 * kt][2], s[2 * kt][3]),
                                     pack_half2(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                                     pack_half2(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
        for (int np = 0; np < out_tiles / 2; ++np) {
          std::uint32_t bv[4];
          load_matrices_x4_trans(bv, values + (16 * kt + (lane & 7) + 8 * ((lane >> 3) & 1)) * S + 16 * np + 8 * (lane >> 4));
          mma_16x8x16(o[2 * np], pa, bv[0], bv[1]);
          mma_16x8x16(o[2 * np + 1], pa, bv[2], bv[3]);
        }
      }
    }
    if (warp_group == 1 && next) read_half(it + 1);
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xFFFFFFFFu, l[r], 1);
    l[r] += __shfl_xor_sync(0xFFFFFFFFu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= rows_total) continue;
    const float inverse = 1.0f / l[r];
    Out* out = a.out + (std::int64_t{chunk_begin + row[r] / a.group} * a.q_heads + kv * a.group + row[r] % a.group) * D;
#pragma unroll
    for (int j = 0; j < out_tiles; ++j) store_out_pair(out + 8 * j + 2 * tig, o[j][2 * r] * inverse, o[j][2 * r + 1] * inverse);
  }
}

template <class Tier, bool SplitKeys, bool SoftCap, class Query, class Out>
void launch_prefill_attention(const PrefillArgs<Tier, Query, Out>& args, dim3 grid, cudaStream_t stream) {
  constexpr int D = Tier::KeyPolicy::head_dim;
  using G = PrefillGeometry<D, SplitKeys>;
  constexpr auto* kernel = &prefill_attention_kernel<Tier, SplitKeys, SoftCap, Query, Out>;
  // The dynamic shared-memory limit is raised once per device (a host call per launch costs microseconds).
  static std::atomic<std::uint64_t> prepared_devices{0};
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const std::uint64_t bit = device < 64 ? std::uint64_t{1} << device : 0;
  if (bit == 0 || (prepared_devices.load(std::memory_order_acquire) & bit) == 0) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, G::shared_bytes),
          "prefill attention: shared memory size");
    prepared_devices.fetch_or(bit, std::memory_order_acq_rel);
  }
  kernel<<<grid, G::threads, G::shared_bytes, stream>>>(args);
}

}  // namespace detail

// Chunked-prefill attention over one cache layer (semantics at the top of this file):
//   query        [total_tokens][q_heads][head_dim] (fp16, bf16 or float; |q| < 65504), RoPE applied; the chunk of
//                batch entry b is rows [chunk_starts[b], chunk_starts[b + 1]);
//   out          [total_tokens][q_heads][head_dim];
//   chunk_keys,  [total_tokens][kv_heads][head_dim] fp16: the tensors given to the cache's write() for this
//   chunk_values chunk (keys before RoPE, as write() takes them whatever the key position: RoPE is applied here),
//                or both null to read the chunk from the cache as stored;
//   sequences    [batch] cache sequence slots, chunk_starts [batch + 1] ascending (device memory). Each chunk must
//                be the last tokens of its sequence (appended before the call); a slot outside the cache or a
//                chunk longer than its sequence gives NaN rows.
// Query head h attends with KV head h / (q_heads / kv_heads). Asynchronous on `stream`; nothing is allocated and
// no workspace is needed. Valid inside CUDA-graph capture (the grid depends on the shape only).
template <class Tier, TensorElement Query, TensorElement Out>
void prefill_attention_async(const CacheLayerView& view, const TierParams<Tier>& params,
                             const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style, const PrefillShape& shape,
                             const AttentionParams& attention, const Query* query, Out* out, const f16* chunk_keys,
                             const f16* chunk_values, const std::int32_t* sequences, const std::int32_t* chunk_starts,
                             cudaStream_t stream) {
  constexpr int d = Tier::KeyPolicy::head_dim;
  using G = detail::PrefillGeometry<d, true>;
  kvq::detail::check_prefill_shape(shape);
  require(shape.head_dim == d && view.head_dim == d, ErrorCode::invalid_argument,
          "prefill attention: shape head_dim " + std::to_string(shape.head_dim) + " and cache head_dim " +
              std::to_string(view.head_dim) + " must both be the tier's " + std::to_string(d));
  require(shape.kv_heads == view.kv_heads, ErrorCode::invalid_argument,
          "prefill attention: the shape has " + std::to_string(shape.kv_heads) + " KV heads, the cache " +
              std::to_string(view.kv_heads));
  require(std::isfinite(attention.softmax_scale) && attention.softmax_scale >= 0.0f &&
              std::isfinite(attention.soft_cap) && attention.soft_cap >= 0.0f,
          ErrorCode::invalid_argument, "prefill attention: softmax_scale and soft_cap must be finite and >= 0");
  require((chunk_keys == nullptr) == (chunk_values == nullptr), ErrorCode::invalid_argument,
          "prefill attention: give both chunk keys and chunk values, or neither");
  if (shape.batch == 0 || shape.max_chunk_tokens == 0) return;
  require(shape.batch <= 65535 && shape.kv_heads <= 65535, ErrorCode::invalid_argument,
          "prefill attention: batch and kv_heads must be at most 65535");
  require(query != nullptr && out != nullptr && sequences != nullptr && chunk_starts != nullptr,
          ErrorCode::invalid_argument, "prefill attention: query, out, sequences and chunk_starts must not be null");
  require(view.pages != nullptr && view.lengths != nullptr && view.page_table != nullptr, ErrorCode::invalid_argument,
          "prefill attention: the cache view has no storage");
  const auto misaligned = [](const void* p, std::uintptr_t n) { return reinterpret_cast<std::uintptr_t>(p) % n != 0; };
  require(!misaligned(query, 2 * sizeof(Query)) && !misaligned(out, 2 * sizeof(Out)) &&
              (chunk_keys == nullptr || (!misaligned(chunk_keys, 16) && !misaligned(chunk_values, 16))),
          ErrorCode::invalid_argument,
          "prefill attention: query and out must be aligned to two elements, chunk keys and values to 16 bytes");
  const int group = shape.q_heads / shape.kv_heads;
  const std::int64_t row_blocks = (shape.max_chunk_tokens * group + G::rows - 1) / G::rows;
  require(row_blocks <= (std::int64_t{1} << 31) - 1 && shape.max_chunk_tokens * shape.q_heads < (std::int64_t{1} << 31),
          ErrorCode::invalid_argument, "prefill attention: the chunk is too large for one call");
  const float scale = attention.softmax_scale != 0.0f ? attention.softmax_scale : 1.0f / std::sqrt(static_cast<float>(d));
  const bool soft_cap = attention.soft_cap > 0.0f;
  const detail::PrefillArgs<Tier, Query, Out> args{view,         params,    rope,         style,  query,
                                                   out,          chunk_keys, chunk_values, sequences,
                                                   chunk_starts, shape.q_heads, group,
                                                   soft_cap ? scale : scale * detail::log2_e, attention.soft_cap};
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(shape.kv_heads),
                  static_cast<unsigned>(shape.batch));
  // Keys are exact in fp16 (one mma) only for fp16 pages with post-RoPE keys: sinks, window and chunk rows are fp16.
  if constexpr (std::is_same_v<typename Tier::KeyPolicy, Fp16Policy<d>>) {
    if (view.key_position == KeyPosition::post_rope) {
      soft_cap ? detail::launch_prefill_attention<Tier, false, true>(args, grid, stream)
               : detail::launch_prefill_attention<Tier, false, false>(args, grid, stream);
      check_launch("prefill attention");
      return;
    }
  }
  soft_cap ? detail::launch_prefill_attention<Tier, true, true>(args, grid, stream)
           : detail::launch_prefill_attention<Tier, true, false>(args, grid, stream);
  check_launch("prefill attention");
}

// The same for one layer of a device cache (its tier, parameters and RoPE table).
template <class Tiers, TensorElement Query, TensorElement Out>
void prefill_attention_async(const PagedKVCache<Tiers>& cache, int layer, const PrefillShape& shape,
                             const AttentionParams& attention, const Query* query, Out* out, const f16* chunk_keys,
                             const f16* chunk_values, const std::int32_t* sequences, const std::int32_t* chunk_starts,
                             cudaStream_t stream) {
  const CacheLayerView view = cache.view(layer);
  Tiers::visit(view.tier, [&]<class Tier>() {
    prefill_attention_async<Tier>(view, cache.template params<Tier>(layer), cache.rope_table(),
                                  cache.config().rope.style, shape, attention, query, out, chunk_keys, chunk_values,
                                  sequences, chunk_starts, stream);
  });
}

}  // namespace kvq::cuda
