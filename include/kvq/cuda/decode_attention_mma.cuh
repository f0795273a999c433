// Tensor-core decode attention for the page formats of tile_formats.cuh (fp16 pages and per-token 2/4/8-bit
// uniform codes), post-RoPE keys, head_dim 64 or 128. Same arguments, grid, splits and epilogue as the generic
// kernel in decode_attention.cuh; decode_attention_async picks this one when the tier and the call allow it.
//
// A warp takes 16 tokens at a time (a tile; tiles of a block's range go round-robin to its 4 warps) and keeps its
// own online softmax for up to 8 query heads:
//   scores  S^T (16 tokens x 8 columns) = K (16 x head_dim, exact integer codes) . Q^T, one mma per 16 channels.
//           A column is a (scale group, query head) pair: the query is zero outside the column's group, so the
//           mma yields per-group dot products and each group's scale and zero point are applied in fp32 after it
//           (score = sum over groups of scale * (q . codes) + zero * sum(q)). Queries that are not fp16 are split
//           into fp16 high and low parts (two mmas), after a power-of-two scale per head, so no query precision
//           is lost.
//   softmax in registers: a lane holds 2 tokens x 2 heads; the tile's max per head is a 3-step shuffle.
//   output  O^T (head_dim x 8 heads) += V^T (values dequantized to fp16 with their token's scale) . P^T, P in
//           fp16; the score fragment becomes the P^T operand with one movmatrix transpose.
// A lane reads a quarter of a key row (rows g and g + 8 of the tile) and an eighth of four value rows (tokens
// 2t, 2t+1, 2t+8, 2t+9) from shared memory, where cp.async copies keep several of the warp's next tiles in flight
// (a per-warp pipeline; no block-wide synchronisation while tokens are read).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/token_address.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/cuda/decode_epilogue.cuh"
#include "kvq/cuda/error.cuh"
#include "kvq/cuda/mma_fragments.cuh"
#include "kvq/cuda/tile_formats.cuh"

namespace kvq::cuda::detail {

// Whether a tier's page formats have a tensor-core path (keys and values; head_dim 64 or 128).
template <class Tier>
inline constexpr bool tensor_core_decode_supported = [] {
  using K = typename Tier::KeyPolicy;
  using V = typename Tier::ValuePolicy;
  if constexpr (TileFormat<K>::supported && TileFormat<V>::supported) {
    return (K::head_dim == 64 || K::head_dim == 128) && TileFormat<V>::value_supported;
  } else {
    return false;
  }
}();

template <int Bytes>
__device__ __forceinline__ void load_words(const std::uint8_t* p, std::uint32_t* out) {
  if constexpr (Bytes >= 16) {
#pragma unroll
    for (int i = 0; i < Bytes / 16; ++i) {
      const uint4 r = reinterpret_cast<const uint4*>(p)[i];
      out[4 * i] = r.x, out[4 * i + 1] = r.y, out[4 * i + 2] = r.z, out[4 * i + 3] = r.w;
    }
  } else if constexpr (Bytes == 8) {
    const uint2 r = *reinterpret_cast<const uint2*>(p);
    out[0] = r.x, out[1] = r.y;
  } else if constexpr (Bytes == 4) {
    out[0] = *reinterpret_cast<const std::uint32_t*>(p);
  } else {
    static_assert(Bytes == 2);
    out[0] = *reinterpret_cast<const std::uint16_t*>(p);
  }
}

template <class Tier, int GroupWidth>
struct MmaDecode {
  using K = typename Tier::KeyPolicy;
  using V = typename Tier::ValuePolicy;
  using KF = TileFormat<K>;
  using VF = TileFormat<V>;
  static constexpr int head_dim = K::head_dim, D = head_dim;
  static constexpr int warps = 4, threads = 32 * warps, tile = 16;
  static constexpr int key_groups = KF::key_groups;
  static constexpr int score_mmas = (key_groups * GroupWidth + 7) / 8;  // column blocks of 8 (group, head) pairs
  static constexpr int key_chunk = D / 4;    // channels of a key row one lane reads
  static constexpr int value_chunk = D / 8;  // channels of a value row one lane reads
  static constexpr int k_steps = D / 16, pairs = D / 8, m_tiles = D / 16;
  static constexpr int key_bytes = key_chunk * KF::bits / 8, key_words = key_bytes / 4;
  static constexpr int value_bytes = value_chunk * VF::bits / 8, value_words = value_bytes >= 4 ? value_bytes / 4 : 1;
  static_assert(key_bytes % 4 == 0);

  // A tile's page bytes staged in shared memory: 16 rows of key codes, the key metadata, 16 rows of value codes,
  // the value metadata. Rows whose lanes read across a 128-byte bank window are padded by 16 bytes so the
  // lanes' vector reads hit distinct banks.
  static constexpr int key_row = K::code_bytes_per_block, value_row = V::code_bytes_per_block;
  static constexpr int key_meta_row = K::meta_bytes_per_block, value_meta_row = V::meta_bytes_per_block;
  static_assert(key_row % 16 == 0 && value_row % 16 == 0, "kvq: tensor-core tiles copy rows in 16-byte pieces");
  static constexpr int key_stride = key_row + (key_row % 128 == 0 ? 16 : 0);
  static constexpr int value_stride = value_row + 16;
  static constexpr int key_meta_at = tile * key_stride;
  static constexpr int value_at = key_meta_at + tile * key_meta_row;
  static constexpr int value_meta_at = value_at + tile * value_stride;
  static constexpr int stage_bytes = value_meta_at + tile * value_meta_row;
  // Stages per warp: ~16 KiB of staging per warp (the tile being read plus the ones in flight), 2 to 8 stages;
  // with 3 blocks of 4 warps per SM this keeps ~100-150 KiB of page reads in flight per SM.
  static constexpr int stages_wanted = 16384 / stage_bytes;
  static constexpr int stages = stages_wanted < 2 ? 2 : stages_wanted > 8 ? 8 : stages_wanted;
  static constexpr int shared_bytes = warps * stages * stage_bytes;
  static_assert(stage_bytes % 16 == 0);

  // Operands of one tile (keys are scored before the values are decoded, so both are never live at once).
  struct KeyFragments {
    std::uint32_t key[2][pairs];        // rows g, g+8: fp16 pairs in KF's channel order
    KeyScale key_scale[2][score_mmas];  // per row, for this lane's column group of each column block
    bool key_live[2];
  };
  struct ValueFragments {
    std::uint32_t value[2][pairs];  // token pairs (2t, 2t+1), (2t+8, 2t+9): fp16 pairs, channels in order
  };
};

template <class Tier, int GroupWidth, class Query, class Out>
__global__ void __launch_bounds__(MmaDecode<Tier, GroupWidth>::threads, 3)
    decode_attention_mma_kernel(const DecodeArgs<Tier, Query, Out> a) {
  using M = MmaDecode<Tier, GroupWidth>;
  using K = typename M::K;
  using V = typename M::V;
  using KF = typename M::KF;
  using VF = typename M::VF;
  using KeyFragments = typename M::KeyFragments;
  using ValueFragments = typename M::ValueFragments;
  constexpr int D = M::D, H = GroupWidth, KG = M::key_groups, MK = M::score_mmas;
  constexpr int warps = M::warps, threads = M::threads, tile = M::tile;
  constexpr bool split_query = !std::is_same_v<Query, f16>;

  __shared__ float q_rows[H][D];
  __shared__ float q_scale[H], q_inverse_scale[H];
  __shared__ float q_sum[KG][H];
  __shared__ float merge_acc[warps][H][D];
  __shared__ float merge_max[warps][H], merge_sum[warps][H];
  extern __shared__ __align__(16) std::uint8_t stage_memory[];  // M::shared_bytes: warps x stages x stage

  const CacheLayerView& v = a.view;
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / a.head_chunks, chunk = blockIdx.y % a.head_chunks;
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int first_head = kv_head * a.group + chunk * H;
  const int heads_here = min(H, a.group - chunk * H);

  const int sequence = a.sequences[b];
  const bool valid_sequence = sequence >= 0 && sequence < v.max_sequences;
  const std::int64_t length = valid_sequence ? v.lengths[sequence] : 0;
  const std::int64_t quantized = valid_sequence ? v.quantized[sequence] : 0;
  const std::int64_t chunk_tokens = ((length + a.splits - 1) / a.splits + 31) / 32 * 32;
  const std::int64_t begin = min(length, split * chunk_tokens), end = min(length, begin + chunk_tokens);

  // Queries: rows in shared memory, a power-of-two scale per head (largest |q| in [128, 256) for non-fp16
  // queries, so the fp16 high and low parts hold the value to ~22 bits) and per-group sums for zero points.
  for (int i = threadIdx.x; i < H * D; i += threads) {
    const int h = i / D, c = i % D;
    q_rows[h][c] = h < heads_here ? to_float(a.query[(std::int64_t{b} * a.q_heads + first_head + h) * D + c]) : 0.0f;
  }
  __syncthreads();
  // One warp per head (heads w, w + 4): lanes reduce the largest |q| and the per-group sums.
  for (int h = warp; h < H; h += warps) {
    float top = 0.0f;
    for (int c = lane; c < D; c += 32) top = fmaxf(top, fabsf(q_rows[h][c]));
#pragma unroll
    for (int mask = 16; mask > 0; mask /= 2) top = fmaxf(top, __shfl_xor_sync(0xFFFFFFFFu, top, mask));
    const int exponent = split_query && top > 0.0f && top <= 3.0e38f ? max(-100, ilogbf(top) - 7) : 0;
    if (lane == 0) q_scale[h] = ldexpf(1.0f, exponent), q_inverse_scale[h] = ldexpf(1.0f, -exponent);
#pragma unroll
    for (int group = 0; group < KG; ++group) {
      float sum = 0.0f;
      for (int c = group * KF::group_size + lane; c < (group + 1) * KF::group_size; c += 32) sum += q_rows[h][c];
#pragma unroll
      for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, mask);
      if (lane == 0) q_sum[group][h] = sum;
    }
  }
  __syncthreads();

  // Query operand: column n = 8 m + g is (group n / H, head n % H); zero outside the group of this lane's chunk.
  std::uint32_t q_high[MK][M::k_steps][2], q_low[split_query ? MK : 1][M::k_steps][2];
  const int chunk_group = t * M::key_chunk / KF::group_size;
#pragma unroll
  for (int m = 0; m < MK; ++m) {
    const int n = 8 * m + g, group = n / H, h = n % H;
    const bool on = group == chunk_group && h < heads_here;
#pragma unroll
    for (int s = 0; s < M::k_steps; ++s)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float x[2];
#pragma unroll
        for (int e = 0; e < 2; ++e)
          x[e] = on ? q_rows[h][t * M::key_chunk + KF::key_channel(2 * s + r, e)] * q_inverse_scale[h] : 0.0f;
        q_high[m][s][r] = pack_half2(x[0], x[1]);
        if constexpr (split_query) {
          const float2 back = __half22float2(bits_half2(q_high[m][s][r]));
          q_low[m][s][r] = pack_half2(x[0] - back.x, x[1] - back.y);
        }
      }
  }
  // This lane's score columns 8 m + 2 t + j: the query scale and the group sum of q that multiplies zero points.
  float col_scale[MK][2], col_sum[MK][2];
  int key_group[MK];
#pragma unroll
  for (int m = 0; m < MK; ++m) {
    key_group[m] = (8 * m + 2 * t) / H;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int n = 8 * m + 2 * t + j, group = n / H, h = n % H;
      const bool on = group < KG && h < heads_here;
      col_scale[m][j] = on ? q_scale[h] : 0.0f;
      col_sum[m][j] = on ? q_sum[group][h] : 0.0f;
    }
  }

  // Online softmax state for heads 2t and 2t+1; acc[i] holds channels (2i, 2i+1) of value chunk g.
  float run_max[2] = {-INFINITY, -INFINITY}, run_sum[2] = {0.0f, 0.0f};
  float acc[M::m_tiles][4];
#pragma unroll
  for (int i = 0; i < M::m_tiles; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

  // Scores a tile, updates the softmax state and returns P^T as the B operand of the value mma.
  auto score = [&](const KeyFragments& f, std::uint32_t& p0, std::uint32_t& p1) {
    float c[MK][4];
#pragma unroll
    for (int m = 0; m < MK; ++m) c[m][0] = c[m][1] = c[m][2] = c[m][3] = 0.0f;
#pragma unroll
    for (int s = 0; s < M::k_steps; ++s) {
      const std::uint32_t key[4] = {f.key[0][2 * s], f.key[1][2 * s], f.key[0][2 * s + 1], f.key[1][2 * s + 1]};
#pragma unroll
      for (int m = 0; m < MK; ++m) {
        mma_16x8x16(c[m], key, q_high[m][s][0], q_high[m][s][1]);
        if constexpr (split_query) mma_16x8x16(c[m], key, q_low[m][s][0], q_low[m][s][1]);
      }
    }
    float p[2][2];
#pragma unroll
    for (int row = 0; row < 2; ++row)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float raw = 0.0f;
#pragma unroll
        for (int m = 0; m < MK; ++m)
          raw += f.key_scale[row][m].scale * (c[m][2 * row + j] * col_scale[m][j]) + f.key_scale[row][m].zero * col_sum[m][j];
        if constexpr (H == 4 && KG >= 2) raw += __shfl_xor_sync(0xFFFFFFFFu, raw, 2);  // the other group's half
        const float logit =
            a.soft_cap > 0.0f ? a.soft_cap * log2_e * tanhf(raw * a.scale_log2 / a.soft_cap) : raw * a.scale_log2;
        p[row][j] = f.key_live[row] && 2 * t + j < heads_here ? logit : -INFINITY;
      }
    float factor[2];
    bool moved = false;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float top = fmaxf(p[0][j], p[1][j]);
      top = fmaxf(top, __shfl_xor_sync(0xFFFFFFFFu, top, 4));
      top = fmaxf(top, __shfl_xor_sync(0xFFFFFFFFu, top, 8));
      top = fmaxf(top, __shfl_xor_sync(0xFFFFFFFFu, top, 16));
      const float new_max = fmaxf(run_max[j], top);
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      factor[j] = exp2f(run_max[j] - base);
      moved = moved || new_max != run_max[j];
      p[0][j] = exp2f(p[0][j] - base);
      p[1][j] = exp2f(p[1][j] - base);
      run_sum[j] = run_sum[j] * factor[j] + (p[0][j] + p[1][j]);
      run_max[j] = new_max;
    }
    // The running max settles after the first tiles: rescale the accumulators only when it moved.
    if (__any_sync(0xFFFFFFFFu, moved)) {
#pragma unroll
      for (int i = 0; i < M::m_tiles; ++i) {
        acc[i][0] *= factor[0];
        acc[i][1] *= factor[1];
        acc[i][2] *= factor[0];
        acc[i][3] *= factor[1];
      }
    }
    p0 = transpose_8x8(pack_half2(p[0][0], p[0][1]));
    p1 = transpose_8x8(pack_half2(p[1][0], p[1][1]));
  };
  auto accumulate = [&](const ValueFragments& f, std::uint32_t p0, std::uint32_t p1) {
#pragma unroll
    for (int i = 0; i < M::m_tiles; ++i) {
      const std::uint32_t value[4] = {f.value[0][2 * i], f.value[0][2 * i + 1], f.value[1][2 * i], f.value[1][2 * i + 1]};
      mma_16x8x16(acc[i], value, p0, p1);
    }
  };

  if (valid_sequence) {
    const std::int64_t sinks = v.sink_tokens;

    // fp16 rows (sinks, window) of tokens [from, to); `row_of(token)` is the row's element offset.
    auto attend_rows = [&](std::int64_t from, std::int64_t to, const f16* keys, const f16* values, auto row_of) {
      for (std::int64_t base = from + std::int64_t{warp} * tile; base < to; base += warps * tile) {
        KeyFragments f;
#pragma unroll
        for (int row = 0; row < 2; ++row) {
          const std::int64_t token = base + g + 8 * row;
          f.key_live[row] = token < to;
#pragma unroll
          for (int m = 0; m < MK; ++m) f.key_scale[row][m] = {1.0f, 0.0f};
          const f16* k = keys + (f.key_live[row] ? row_of(token) : 0) + t * M::key_chunk;
#pragma unroll
          for (int p = 0; p < M::pairs; ++p)
            f.key[row][p] = f.key_live[row] ? static_cast<std::uint32_t>(k[KF::key_channel(p, 0)].bits) |
                                                  static_cast<std::uint32_t>(k[KF::key_channel(p, 1)].bits) << 16
                                            : 0u;
        }
        std::uint32_t p0, p1;
        score(f, p0, p1);
        constexpr int words = M::value_chunk / 2;
        std::uint32_t w[4][words];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const std::int64_t token = base + 2 * t + (r & 1) + 8 * (r >> 1);
          if (token < to) {
            load_words<M::value_chunk * 2>(reinterpret_cast<const std::uint8_t*>(values + row_of(token) + g * M::value_chunk), w[r]);
          } else {
#pragma unroll
            for (int i = 0; i < words; ++i) w[r][i] = 0u;
          }
        }
        ValueFragments vf;
#pragma unroll
        for (int pair = 0; pair < 2; ++pair)
#pragma unroll
          for (int i = 0; i < words; ++i) {
            std::uint32_t out[2];
            TileFormat<Fp16Policy<D>>::value_pairs(w[2 * pair][i], w[2 * pair + 1][i], 0, 0, out);
            vf.value[pair][2 * i] = out[0];
            vf.value[pair][2 * i + 1] = out[1];
          }
        accumulate(vf, p0, p1);
      }
    };

    attend_rows(begin, min(end, sinks), v.sink_keys, v.sink_values,
                [&](std::int64_t token) { return sink_row_offset(v, sequence, token, kv_head); });

    // Pages: tiles are aligned to 16 quantized tokens, so a tile never straddles a page (page_tokens % 16 == 0);
    // rows outside [lo, hi) are masked (keys) or zeroed (values).
    const std::int64_t q_from = max(begin, sinks), q_to = min(end, sinks + quantized);
    if (q_from < q_to) {
      const int lo = static_cast<int>(q_from - sinks), hi = static_cast<int>(q_to - sinks);
      const int first = lo / tile * tile;
      const int tiles = (hi - first + tile - 1) / tile;
      const std::int32_t* page_row = v.page_table + std::int64_t{sequence} * v.max_pages_per_sequence;
      const int value_group = g * M::value_chunk / VF::group_size;

      std::uint8_t* my_stages = stage_memory + warp * M::stages * M::stage_bytes;
      // Copies tile k's rows (whole 16-row tile; rows outside [lo, hi) are masked when read) into a stage.
      auto issue = [&](std::uint8_t* stage, int k, std::int32_t page) {
        const int in_page = (first + k * tile) % v.page_tokens;
        const std::uint8_t* head = v.pages + page * v.page_bytes + kv_head * v.head_bytes;
        constexpr int key_pieces = M::key_row / 16, value_pieces = M::value_row / 16;
#pragma unroll
        for (int i = lane; i < tile * key_pieces; i += 32) {
          const int r = i / key_pieces, c = i % key_pieces;
          copy_async_16(stage + r * M::key_stride + c * 16, head + (in_page + r) * M::key_row + c * 16);
        }
#pragma unroll
        for (int i = lane; i < M::key_meta_row; i += 32)  // tile * key_meta_row bytes = key_meta_row pieces
          copy_async_16(stage + M::key_meta_at + i * 16, head + v.key_meta_offset + in_page * M::key_meta_row + i * 16);
#pragma unroll
        for (int i = lane; i < tile * value_pieces; i += 32) {
          const int r = i / value_pieces, c = i % value_pieces;
          copy_async_16(stage + M::value_at + r * M::value_stride + c * 16,
                        head + v.value_code_offset + (in_page + r) * M::value_row + c * 16);
        }
#pragma unroll
        for (int i = lane; i < M::value_meta_row; i += 32)
          copy_async_16(stage + M::value_meta_at + i * 16,
                        head + v.value_meta_offset + in_page * M::value_meta_row + i * 16);
      };
      auto decode_keys = [&](const std::uint8_t* stage, int k, KeyFragments& f) {
        const int index = first + k * tile;
        constexpr int per_word = KF::codes_per_word / 2;
#pragma unroll
        for (int row = 0; row < 2; ++row) {
          const int r = g + 8 * row;
          f.key_live[row] = index + r >= lo && index + r < hi;
          std::uint32_t words[M::key_words];
          load_words<M::key_bytes>(stage + r * M::key_stride + t * M::key_bytes, words);
#pragma unroll
          for (int w = 0; w < M::key_words; ++w) {
            std::uint32_t out[per_word];
            KF::key_pairs(words[w], out);
#pragma unroll
            for (int i = 0; i < per_word; ++i) f.key[row][w * per_word + i] = out[i];
          }
#pragma unroll
          for (int m = 0; m < MK; ++m)
            f.key_scale[row][m] = key_group[m] < KG ? KF::key_scale(KF::load_key_meta(stage + M::key_meta_at + r * M::key_meta_row, key_group[m]))
                                                    : KeyScale{0.0f, 0.0f};
        }
      };
      auto decode_values = [&](const std::uint8_t* stage, int k, ValueFragments& f) {
        const int index = first + k * tile;
        std::uint32_t words[4][M::value_words], meta[4];
#pragma unroll
        for (int k4 = 0; k4 < 4; ++k4) {
          const int r = 2 * t + (k4 & 1) + 8 * (k4 >> 1);
          const bool live = index + r >= lo && index + r < hi;
          load_words<M::value_bytes>(stage + M::value_at + r * M::value_stride + g * M::value_bytes, words[k4]);
          meta[k4] = live ? VF::load_value_meta(stage + M::value_meta_at + r * M::value_meta_row, value_group) : 0u;
#pragma unroll
          for (int i = 0; i < M::value_words; ++i) words[k4][i] = live ? words[k4][i] : 0u;
        }
#pragma unroll
        for (int pair = 0; pair < 2; ++pair)
#pragma unroll
          for (int w = 0; w < M::value_words; ++w) {
            std::uint32_t out[VF::codes_per_word];
            VF::value_pairs(words[2 * pair][w], words[2 * pair + 1][w], meta[2 * pair], meta[2 * pair + 1], out);
#pragma unroll
            for (int i = 0; i < VF::codes_per_word; ++i)
              if (w * VF::codes_per_word + i < M::value_chunk) f.value[pair][w * VF::codes_per_word + i] = out[i];
          }
      };

      // This warp's tiles are warp, warp + warps, ...; the pipeline keeps `stages` of them in flight, and the
      // page id of the tile to copy next is read one step ahead.
      auto page_of = [&](int k) { return k < tiles ? page_row[(first + k * tile) / v.page_tokens] : 0; };
      const int count = warp < tiles ? (tiles - warp + warps - 1) / warps : 0;
#pragma unroll
      for (int i = 0; i < M::stages; ++i) {
        if (i < count) issue(my_stages + i * M::stage_bytes, warp + i * warps, page_of(warp + i * warps));
        commit_async_copies();
      }
      std::int32_t next_page = page_of(warp + M::stages * warps);
      std::uint8_t* stage = my_stages;
      for (int i = 0; i < count; ++i) {
        wait_async_copies<M::stages - 1>();
        __syncwarp();
        std::uint32_t p0, p1;
        {
          KeyFragments f;
          decode_keys(stage, warp + i * warps, f);
          score(f, p0, p1);
        }
        ValueFragments f;
        decode_values(stage, warp + i * warps, f);
        __syncwarp();  // every lane has read the stage: refill it
        const int ahead = i + M::stages;
        const std::int32_t page = next_page;
        next_page = page_of(warp + (ahead + 1) * warps);
        if (ahead < count) issue(stage, warp + ahead * warps, page);
        commit_async_copies();
        stage = stage + M::stage_bytes == my_stages + M::stages * M::stage_bytes ? my_stages : stage + M::stage_bytes;
        accumulate(f, p0, p1);
      }
    }

    const std::int64_t w_from = max(begin, sinks + quantized);
    attend_rows(w_from, end, v.window_keys, v.window_values,
                [&](std::int64_t token) { return window_row_offset(v, sequence, window_slot(v, token), kv_head); });
  }

  // Warp state -> shared memory (sums over the 8 lanes that share a head), then the common epilogue.
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    run_sum[j] += __shfl_xor_sync(0xFFFFFFFFu, run_sum[j], 4);
    run_sum[j] += __shfl_xor_sync(0xFFFFFFFFu, run_sum[j], 8);
    run_sum[j] += __shfl_xor_sync(0xFFFFFFFFu, run_sum[j], 16);
    const int h = 2 * t + j;
    if (h < H) {
#pragma unroll
      for (int i = 0; i < M::m_tiles; ++i) {
        merge_acc[warp][h][g * M::value_chunk + 2 * i] = acc[i][j];
        merge_acc[warp][h][g * M::value_chunk + 2 * i + 1] = acc[i][2 + j];
      }
      if (g == 0) {
        merge_max[warp][h] = run_max[j];
        merge_sum[warp][h] = run_sum[j];
      }
    }
  }
  __syncthreads();
  finish_decode_block<V, D, H, warps, threads>(a, merge_acc, merge_max, merge_sum, valid_sequence, b, split, first_head,
                                               heads_here);
}

template <class Tier, int GroupWidth, class Query, class Out>
void launch_decode_attention_mma(const DecodeArgs<Tier, Query, Out>& args, dim3 grid, cudaStream_t stream) {
  using M = MmaDecode<Tier, GroupWidth>;
  auto* kernel = &decode_attention_mma_kernel<Tier, GroupWidth, Query, Out>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, M::shared_bytes),
        "decode attention: shared memory size");
  kernel<<<grid, M::threads, M::shared_bytes, stream>>>(args);
}

}  // namespace kvq::cuda::detail
