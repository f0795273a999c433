// Tensor-core decode attention for the page formats of tile_formats.cuh (fp16 pages and per-token 2/4/8-bit
// uniform codes), post-RoPE keys, head_dim 64 or 128. Same arguments, grid, splits and epilogue as the generic
// kernel in decode_attention.cuh; decode_attention_async picks this one when the tier and the call allow it.
//
// A warp takes 16 tokens at a time (a tile; tiles of a block's range go round-robin to its 4 warps) and keeps its
// own online softmax for up to 8 query heads:
//   scores  S^T (16 tokens x 8 columns) = K (16 x head_dim) . Q^T. A column is a (scale group, query head) pair:
//           the query is zero outside the column's group, so the mma yields per-group dot products and each
//           group's scale and zero point are applied in fp32 after it (score = sum over groups of
//           scale * (q . codes) + zero * sum(q)). Integer keys (2/4/8-bit codes) enter the 8-bit integer mma as
//           unsigned bytes against three signed 8-bit digits of the query (exact 32-bit dot products, the query
//           to ~fp32 precision); fp16 keys and the fp16 sinks and window enter the fp16 mma, with queries that are
//           not fp16 split into fp16 high and low parts after a power-of-two scale per head.
//   softmax in registers: a lane holds 2 tokens x 2 heads; the tile's max per head is a 3-step shuffle.
//   output  O^T (head_dim x 8 heads) += V^T (values dequantized to fp16 with their token's scale) . P^T, P in
//           fp16; the score fragment becomes the P^T operand with one movmatrix transpose.
// A lane reads a quarter of a key row (rows g and g + 8 of the tile) and an eighth of four value rows (tokens
// 2t, 2t+1, 2t+8, 2t+9) from shared memory, where cp.async copies keep several of the warp's next tiles in flight
// (a per-warp pipeline; no block-wide synchronisation while tokens are read).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
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

  // Integer keys (per-token uniform codes) are scored by the 8-bit integer mma, m16n8k32: a lane's quarter row
  // is key_chunk / 4 registers of four codes, two of them per k-step of 32 channels.
  static constexpr bool integer_keys = KF::integer_keys;
  static constexpr int octets = key_chunk / 4, integer_steps = key_chunk / 8;

  // Operands of one tile (keys are scored before the values are decoded, so both are never live at once).
  // `Registers` is pairs (fp16 keys: fp16 pairs in the format's channel order) or octets (integer keys).
  template <int Registers>
  struct KeyFragmentsOf {
    std::uint32_t key[2][Registers];    // rows g, g+8
    KeyScale key_scale[2][score_mmas];  // per row, for this lane's column group of each column block
    bool key_live[2];
  };
  using RowKeyFragments = KeyFragmentsOf<pairs>;  // fp16 rows (sinks, window; fp16 pages)
  using KeyFragments = KeyFragmentsOf<integer_keys ? octets : pairs>;
  struct ValueFragments {
    std::uint32_t value[2][pairs];  // token pairs (2t, 2t+1), (2t+8, 2t+9): fp16 pairs, channels in order
  };
};

// Three blocks per SM for 4 query heads (register cap 168); 8 heads need more registers and twice the merge
// scratch, and fit two (shared memory allows no more anyway).
template <class Tier, int GroupWidth, bool SoftCap, class Query, class Out>
__global__ void __launch_bounds__(MmaDecode<Tier, GroupWidth>::threads, GroupWidth <= 4 ? 3 : 2)
    decode_attention_mma_kernel(const DecodeArgs<Tier, Query, Out> a) {
  using M = MmaDecode<Tier, GroupWidth>;
  using K = typename M::K;
  using V = typename M::V;
  using KF = typename M::KF;
  using VF = typename M::VF;
  using KeyFragments = typename M::KeyFragments;
  using RowKeyFragments = typename M::RowKeyFragments;
  using ValueFragments = typename M::ValueFragments;
  using RowFormat = TileFormat<Fp16Policy<M::D>>;
  constexpr int D = M::D, H = GroupWidth, KG = M::key_groups, MK = M::score_mmas;
  constexpr int warps = M::warps, threads = M::threads, tile = M::tile, stages = M::stages;
  constexpr bool split_query = !std::is_same_v<Query, f16>;

  // Query rows, each lane chunk of key_chunk channels shifted by one more word: the operand builders' lanes read
  // the same channel of 4 chunks x 8 heads at once, which would otherwise fall in one bank.
  __shared__ float q_rows[H][D + 4];
  auto q_at = [&](int h, int c) -> float& { return q_rows[h][c + c / M::key_chunk]; };
  __shared__ float q_scale[H], q_inverse_scale[H];
  __shared__ float q_sum[KG][H];
  __shared__ float merge_max[warps][H], merge_sum[warps][H];
  extern __shared__ __align__(16) std::uint8_t stage_memory[];  // M::shared_bytes: warps x stages x stage
  // The warps' output rows are merged in the stage memory once every warp is done with its pages (static shared
  // memory for them would cost a third block per SM on fp16 pages).
  static_assert(M::shared_bytes >= sizeof(float) * warps * H * D, "kvq: the merge rows must fit the stage memory");
  auto& merge_acc = *reinterpret_cast<float (*)[warps][H][D]>(stage_memory);

  const CacheLayerView& v = a.view;
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / a.head_chunks, chunk = blockIdx.y % a.head_chunks;
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int first_head = kv_head * a.group + chunk * H;
  const int heads_here = min(H, a.group - chunk * H);

  const int sequence = a.sequences[b];
  // A slot outside the cache, or (importance) a sequence longer than the plan's logit rows: NaN rows.
  const bool valid_sequence = sequence >= 0 && sequence < v.max_sequences &&
                              (a.importance.scores == nullptr || v.lengths[sequence] <= a.logit_stride);
  const std::int64_t length = valid_sequence ? v.lengths[sequence] : 0;
  const std::int64_t quantized = valid_sequence ? v.quantized[sequence] : 0;
  const std::int64_t chunk_tokens = ((length + a.splits - 1) / a.splits + 31) / 32 * 32;
  const std::int64_t begin = min(length, split * chunk_tokens), end = min(length, begin + chunk_tokens);
  const std::int64_t sinks = v.sink_tokens;

  // The block's page tiles: tiles are aligned to 16 quantized tokens, so a tile never straddles a page
  // (page_tokens % 16 == 0); rows outside [lo, hi) of the first and last tile are masked (keys) or zeroed (values).
  const std::int64_t q_from = max(begin, sinks), q_to = min(end, sinks + quantized);
  const int lo = q_from < q_to ? static_cast<int>(q_from - sinks) : 0;
  const int hi = q_from < q_to ? static_cast<int>(q_to - sinks) : 0;
  const int first = lo / tile * tile;
  const int tiles = (hi - first + tile - 1) / tile;
  const int count = warp < tiles ? (tiles - warp + warps - 1) / warps : 0;  // this warp's tiles: warp, warp + 4, ...
  const std::int32_t* page_row = v.page_table + std::int64_t{valid_sequence ? sequence : 0} * v.max_pages_per_sequence;
  std::uint8_t* const my_stages = stage_memory + warp * stages * M::stage_bytes;
  const std::uint8_t* const head_base = v.pages + kv_head * v.head_bytes;

  // Copies one tile's rows (the whole 16-row tile) into a stage. Each plane of a tile is contiguous in the page,
  // so lane l copies the plane's 16-byte pieces l, l + 32, ...; only the destination rows are padded.
  // Byte offsets inside a head's part of a page fit 32 bits (decode_attention_async checks page_bytes < 2^31),
  // so only the page base is 64-bit arithmetic.
  const unsigned page_bytes = static_cast<unsigned>(v.page_bytes);
  const unsigned key_meta_offset = static_cast<unsigned>(v.key_meta_offset);
  const unsigned value_code_offset = static_cast<unsigned>(v.value_code_offset);
  const unsigned value_meta_offset = static_cast<unsigned>(v.value_meta_offset);
  auto issue = [&](std::uint8_t* stage, std::int32_t page, int in_page) {
    const std::uint8_t* head = head_base + static_cast<std::uint64_t>(static_cast<unsigned>(page)) * page_bytes;
    constexpr int key_pieces = M::key_row / 16, value_pieces = M::value_row / 16;
    const unsigned row = static_cast<unsigned>(in_page);
    const unsigned key_source = row * M::key_row;
    const unsigned key_meta_source = key_meta_offset + row * M::key_meta_row;
    const unsigned value_source = value_code_offset + row * M::value_row;
    const unsigned value_meta_source = value_meta_offset + row * M::value_meta_row;
#pragma unroll
    for (int i = lane; i < tile * key_pieces; i += 32)
      copy_async_16(stage + i / key_pieces * M::key_stride + i % key_pieces * 16, head + (key_source + i * 16));
#pragma unroll
    for (int i = lane; i < M::key_meta_row; i += 32)  // tile * key_meta_row bytes = key_meta_row pieces
      copy_async_16(stage + M::key_meta_at + i * 16, head + (key_meta_source + i * 16));
#pragma unroll
    for (int i = lane; i < tile * value_pieces; i += 32)
      copy_async_16(stage + M::value_at + i / value_pieces * M::value_stride + i % value_pieces * 16,
                    head + (value_source + i * 16));
#pragma unroll
    for (int i = lane; i < M::value_meta_row; i += 32)
      copy_async_16(stage + M::value_meta_at + i * 16, head + (value_meta_source + i * 16));
  };

  // Copy cursor: the next tile this warp copies, as (page-table slot, token in page). It moves by warps * tile
  // tokens a step, so no division is needed after the first tile; the page id of a tile is loaded one step before
  // its copy is issued, and the prologue's page ids are loaded together.
  int copy_slot = 0, copy_in_page = 0;
  if (count > 0) {
    const int index = first + warp * tile;
    copy_slot = index / v.page_tokens;
    copy_in_page = index % v.page_tokens;
  }
  auto advance_copy = [&] {
    copy_in_page += warps * tile;
    while (copy_in_page >= v.page_tokens) copy_in_page -= v.page_tokens, ++copy_slot;
  };
  std::int32_t copy_page = 0;
  {
    std::int32_t pages[stages];
    int in_pages[stages];
#pragma unroll
    for (int i = 0; i < stages; ++i) {
      pages[i] = i < count ? page_row[copy_slot] : 0;
      in_pages[i] = copy_in_page;
      if (i < count) advance_copy();
    }
#pragma unroll
    for (int i = 0; i < stages; ++i) {
      if (i < count) issue(my_stages + i * M::stage_bytes, pages[i], in_pages[i]);
      commit_async_copies();
    }
    copy_page = stages < count ? page_row[copy_slot] : 0;
  }

  // Queries (while the first copies are in flight): rows in shared memory, per-group sums for zero points, and
  // per head the scale of its operand. fp16 operand (fp16 keys, sinks, window): a power-of-two scale putting the
  // largest |q| in [128, 256) for non-fp16 queries, so fp16 high and low parts hold the value to ~22 bits.
  // 8-bit operand (integer keys): q ~ s (hi + mid / 254 + lo / 254^2) with s = max|q| / 127 and hi, mid, lo in
  // [-127, 127]: at most max|q| * 6e-8 per element, about fp32's own rounding (two parts, ~1.6e-5, measured too
  // coarse: keys with outlier channels turn it into logit errors of 1e-3). A head with a non-finite query gets a
  // NaN scale (NaN rows, as fp16 would give).
  __shared__ float q_integer_scale[H];
  for (int i = threadIdx.x; i < H * D; i += threads) {
    const int h = i / D, c = i % D;
    q_at(h, c) = h < heads_here ? to_float(a.query[(std::int64_t{b} * a.q_heads + first_head + h) * D + c]) : 0.0f;
  }
  __syncthreads();
  // One warp per head (heads w, w + 4): lanes reduce the largest |q| and the per-group sums.
  for (int h = warp; h < H; h += warps) {
    float top = 0.0f;
    bool finite = true;
    for (int c = lane; c < D; c += 32) {
      top = fmaxf(top, fabsf(q_at(h, c)));
      finite = finite && isfinite(q_at(h, c));
    }
#pragma unroll
    for (int mask = 16; mask > 0; mask /= 2) top = fmaxf(top, __shfl_xor_sync(0xFFFFFFFFu, top, mask));
    finite = __all_sync(0xFFFFFFFFu, finite);
    const int exponent = split_query && top > 0.0f && top <= 3.0e38f ? max(-100, ilogbf(top) - 7) : 0;
    if (lane == 0) {
      q_scale[h] = ldexpf(1.0f, exponent), q_inverse_scale[h] = ldexpf(1.0f, -exponent);
      q_integer_scale[h] = finite ? top / 127.0f : NAN;
    }
#pragma unroll
    for (int group = 0; group < KG; ++group) {
      float sum = 0.0f;
      for (int c = group * KF::group_size + lane; c < (group + 1) * KF::group_size; c += 32) sum += q_at(h, c);
#pragma unroll
      for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, mask);
      if (lane == 0) q_sum[group][h] = sum;
    }
  }
  __syncthreads();

  // Query operands: column n = 8 m + g is (group n / H, head n % H), zero outside the group of this lane's chunk.
  const int chunk_group = t * M::key_chunk / KF::group_size;
  auto column_on = [&](int m) {
    const int n = 8 * m + g;
    return n / H == chunk_group && n % H < heads_here;
  };
  struct Fp16Operand {
    std::uint32_t high[MK][M::k_steps][2], low[split_query ? MK : 1][M::k_steps][2];
  };
  // fp16 operand, channels in the order of fp16 rows (RowFormat::key_channel).
  auto fp16_operand = [&](Fp16Operand& q) {
#pragma unroll
    for (int m = 0; m < MK; ++m) {
      const int h = (8 * m + g) % H;
      const bool on = column_on(m);
#pragma unroll
      for (int s = 0; s < M::k_steps; ++s)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float x[2];
#pragma unroll
          for (int e = 0; e < 2; ++e)
            x[e] = on ? q_at(h, t * M::key_chunk + RowFormat::key_channel(2 * s + r, e)) * q_inverse_scale[h] : 0.0f;
          q.high[m][s][r] = pack_half2(x[0], x[1]);
          if constexpr (split_query) {
            const float2 back = __half22float2(bits_half2(q.high[m][s][r]));
            q.low[m][s][r] = pack_half2(x[0] - back.x, x[1] - back.y);
          }
        }
    }
  };
  // 8-bit operand of integer keys: register 2 s + r of a lane's row chunk holds the codes KF::key_octet_channel
  // gives, so byte j of query register (s, r) is the query at the same channel.
  struct IntegerOperand {
    std::uint32_t part[3][MK][M::integer_steps][2];  // hi, mid, lo
  };
  auto integer_operand = [&](IntegerOperand& q) {
    if constexpr (M::integer_keys) {
      constexpr int per_word = KF::octets_per_word;
#pragma unroll
      for (int m = 0; m < MK; ++m) {
        const int h = (8 * m + g) % H;
        const bool on = column_on(m);
        const float inverse = q_integer_scale[h] > 0.0f ? 1.0f / q_integer_scale[h] : 0.0f;
#pragma unroll
        for (int s = 0; s < M::integer_steps; ++s)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int octet = 2 * s + r, word = octet / per_word;
            std::uint32_t packed[3] = {0, 0, 0};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const int c = t * M::key_chunk + word * KF::codes_per_word + KF::key_octet_channel(octet % per_word, j);
              float x = on ? q_at(h, c) * inverse : 0.0f;
#pragma unroll
              for (int k = 0; k < 3; ++k) {
                const float digit = fminf(127.0f, fmaxf(-127.0f, rintf(x)));
                packed[k] |= (static_cast<std::uint32_t>(static_cast<int>(digit)) & 0xFFu) << (8 * j);
                x = (x - digit) * 254.0f;
              }
            }
#pragma unroll
            for (int k = 0; k < 3; ++k) q.part[k][m][s][r] = packed[k];
          }
      }
    }
  };

  // This lane's score columns 8 m + 2 t + j: the operand's scale and the group sum of q that multiplies zero points.
  float col_scale[MK][2], col_integer_scale[MK][2], col_sum[MK][2];
  int key_group[MK];
#pragma unroll
  for (int m = 0; m < MK; ++m) {
    key_group[m] = (8 * m + 2 * t) / H;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int n = 8 * m + 2 * t + j, group = n / H, h = n % H;
      const bool on = group < KG && h < heads_here;
      col_scale[m][j] = on ? q_scale[h] : 0.0f;
      col_integer_scale[m][j] = on ? q_integer_scale[h] : 0.0f;
      col_sum[m][j] = on ? q_sum[group][h] : 0.0f;
    }
  }
  const bool head_on[2] = {2 * t < heads_here, 2 * t + 1 < heads_here};
  // Logit in the log2 domain; the soft cap (a compile-time choice, so the common path carries no tanh) as
  // cap * log2(e) * tanh(raw * scale / cap).
  const float cap_outer = SoftCap ? a.soft_cap * log2_e : 0.0f;
  const float cap_inner = SoftCap ? a.scale_log2 / a.soft_cap : 0.0f;
  auto logit = [&](float raw) {
    if constexpr (SoftCap) {
      return cap_outer * tanhf(raw * cap_inner);
    } else {
      return raw * a.scale_log2;
    }
  };

  // Online softmax state for heads 2t and 2t+1; acc[i] holds channels (2i, 2i+1) of value chunk g.
  float run_max[2] = {-INFINITY, -INFINITY}, run_sum[2] = {0.0f, 0.0f};
  float acc[M::m_tiles][4];
#pragma unroll
  for (int i = 0; i < M::m_tiles; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

  // Raw scores of a tile (rows g, g+8 x heads 2t, 2t+1) from fp16 keys: fp16 mma, two accumulators (even and odd
  // k-steps) to halve the chain of dependent mmas.
  auto fp16_scores = [&](const auto& f, const Fp16Operand& q, float (&score)[2][2]) {
    float c[2][MK][4];
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int m = 0; m < MK; ++m) c[e][m][0] = c[e][m][1] = c[e][m][2] = c[e][m][3] = 0.0f;
#pragma unroll
    for (int s = 0; s < M::k_steps; ++s) {
      const std::uint32_t key[4] = {f.key[0][2 * s], f.key[1][2 * s], f.key[0][2 * s + 1], f.key[1][2 * s + 1]};
#pragma unroll
      for (int m = 0; m < MK; ++m) {
        mma_16x8x16(c[s % 2][m], key, q.high[m][s][0], q.high[m][s][1]);
        if constexpr (split_query) mma_16x8x16(c[s % 2][m], key, q.low[m][s][0], q.low[m][s][1]);
      }
    }
#pragma unroll
    for (int row = 0; row < 2; ++row)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float raw[MK];
#pragma unroll
        for (int m = 0; m < MK; ++m)
          raw[m] = f.key_scale[row][m].scale * ((c[0][m][2 * row + j] + c[1][m][2 * row + j]) * col_scale[m][j]) +
                   f.key_scale[row][m].zero * col_sum[m][j];
#pragma unroll
        for (int m = 1; m < MK; ++m) raw[0] += raw[m];
        score[row][j] = raw[0];
      }
  };
  // The same from integer key codes: exact 32-bit dot products with the three query parts (independent chains).
  [[maybe_unused]] IntegerOperand q_integer;
  auto integer_scores = [&](const KeyFragments& f, float (&score)[2][2]) {
    int dot[3][MK][4];
#pragma unroll
    for (int k = 0; k < 3; ++k)
#pragma unroll
      for (int m = 0; m < MK; ++m)
#pragma unroll
        for (int i = 0; i < 4; ++i) dot[k][m][i] = 0;
#pragma unroll
    for (int s = 0; s < M::integer_steps; ++s) {
      const std::uint32_t key[4] = {f.key[0][2 * s], f.key[1][2 * s], f.key[0][2 * s + 1], f.key[1][2 * s + 1]};
#pragma unroll
      for (int k = 0; k < 3; ++k)
#pragma unroll
        for (int m = 0; m < MK; ++m) mma_16x8x32_u8s8(dot[k][m], key, q_integer.part[k][m][s][0], q_integer.part[k][m][s][1]);
    }
#pragma unroll
    for (int row = 0; row < 2; ++row)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float raw[MK];
#pragma unroll
        for (int m = 0; m < MK; ++m) {
          const int e = 2 * row + j;
          const float dot_q = static_cast<float>(dot[0][m][e]) +
                              (static_cast<float>(dot[1][m][e]) + static_cast<float>(dot[2][m][e]) * (1.0f / 254.0f)) *
                                  (1.0f / 254.0f);
          raw[m] = f.key_scale[row][m].scale * (dot_q * col_integer_scale[m][j]) + f.key_scale[row][m].zero * col_sum[m][j];
        }
#pragma unroll
        for (int m = 1; m < MK; ++m) raw[0] += raw[m];
        score[row][j] = raw[0];
      }
  };

  // Folds a tile's raw scores into the softmax state and returns P^T as the B operand of the value mma.
  // Rows g, g + 8 of a tile are tokens first_token + g, first_token + g + 8 (importance keeps their logits).
  const bool keep_logits = a.importance.scores != nullptr;
  float* const logit_rows[2] = {keep_logits && head_on[0] ? logit_row(a, b, first_head + 2 * t) : nullptr,
                                keep_logits && head_on[1] ? logit_row(a, b, first_head + 2 * t + 1) : nullptr};
  auto softmax = [&](float (&p)[2][2], const bool (&live)[2], std::uint32_t& p0, std::uint32_t& p1,
                     std::int64_t first_token) {
    if constexpr (H == 4 && KG >= 2) {  // the other group's half of each score
#pragma unroll
      for (int row = 0; row < 2; ++row)
#pragma unroll
        for (int j = 0; j < 2; ++j) p[row][j] += __shfl_xor_sync(0xFFFFFFFFu, p[row][j], 2);
    }
#pragma unroll
    for (int row = 0; row < 2; ++row)
#pragma unroll
      for (int j = 0; j < 2; ++j) p[row][j] = live[row] && head_on[j] ? logit(p[row][j]) : -INFINITY;
    if (keep_logits) {
#pragma unroll
      for (int row = 0; row < 2; ++row)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          if (live[row] && head_on[j]) store_logit(logit_rows[j], first_token + g + 8 * row, p[row][j]);
    }
    float top[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) top[j] = fmaxf(p[0][j], p[1][j]);
#pragma unroll
    for (int mask = 4; mask <= 16; mask *= 2)
#pragma unroll
      for (int j = 0; j < 2; ++j) top[j] = fmaxf(top[j], __shfl_xor_sync(0xFFFFFFFFu, top[j], mask));
    float factor[2];
    bool moved = false;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float new_max = fmaxf(run_max[j], top[j]);
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      factor[j] = exp2_approx(run_max[j] - base);
      moved = moved || new_max != run_max[j];
      p[0][j] = exp2_approx(p[0][j] - base);
      p[1][j] = exp2_approx(p[1][j] - base);
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

  // The fp16 operand serves fp16 pages for the whole block; with integer keys only the sinks and window use it,
  // and it is built where they are read.
  [[maybe_unused]] Fp16Operand q_fp16;
  if constexpr (M::integer_keys) {
    integer_operand(q_integer);
  } else {
    fp16_operand(q_fp16);
  }

  // fp16 rows (sinks, window) of tokens [from, to); `row_of(token)` is the row's element offset.
  auto attend_rows = [&](std::int64_t from, std::int64_t to, const f16* keys, const f16* values, auto row_of) {
    if (from + std::int64_t{warp} * tile >= to) return;
    [[maybe_unused]] Fp16Operand q_rows_operand;
    if constexpr (M::integer_keys) fp16_operand(q_rows_operand);
    const Fp16Operand& q = M::integer_keys ? q_rows_operand : q_fp16;
    for (std::int64_t base = from + std::int64_t{warp} * tile; base < to; base += warps * tile) {
      RowKeyFragments f;
#pragma unroll
      for (int row = 0; row < 2; ++row) {
        const std::int64_t token = base + g + 8 * row;
        f.key_live[row] = token < to;
#pragma unroll
        for (int m = 0; m < MK; ++m) f.key_scale[row][m] = {1.0f, 0.0f};
        const f16* k = keys + (f.key_live[row] ? row_of(token) : 0) + t * M::key_chunk;
#pragma unroll
        for (int p = 0; p < M::pairs; ++p)
          f.key[row][p] = f.key_live[row] ? static_cast<std::uint32_t>(k[RowFormat::key_channel(p, 0)].bits) |
                                                static_cast<std::uint32_t>(k[RowFormat::key_channel(p, 1)].bits) << 16
                                          : 0u;
      }
      float raw[2][2];
      fp16_scores(f, q, raw);
      std::uint32_t p0, p1;
      softmax(raw, f.key_live, p0, p1, base);
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
          RowFormat::value_pairs(w[2 * pair][i], w[2 * pair + 1][i], 0, 0, out);
          vf.value[pair][2 * i] = out[0];
          vf.value[pair][2 * i + 1] = out[1];
        }
      accumulate(vf, p0, p1);
    }
  };

  // Page tiles: decoders of a staged tile. `Masked` (first and last tile of the range only) checks each row
  // against [lo, hi); interior tiles skip the checks.
  const int value_group = g * M::value_chunk / VF::group_size;
  auto decode_keys = [&]<bool Masked>(const std::uint8_t* stage, int index, KeyFragments& f) {
#pragma unroll
    for (int row = 0; row < 2; ++row) {
      const int r = g + 8 * row;
      f.key_live[row] = !Masked || (index + r >= lo && index + r < hi);
      std::uint32_t words[M::key_words];
      load_words<M::key_bytes>(stage + r * M::key_stride + t * M::key_bytes, words);
      if constexpr (M::integer_keys) {
        constexpr int per_word = KF::octets_per_word;
#pragma unroll
        for (int w = 0; w < M::key_words; ++w) {
          std::uint32_t out[per_word];
          KF::key_octets(words[w], out);
#pragma unroll
          for (int i = 0; i < per_word; ++i) f.key[row][w * per_word + i] = out[i];
        }
      } else {
        constexpr int per_word = KF::codes_per_word / 2;
#pragma unroll
        for (int w = 0; w < M::key_words; ++w) {
          std::uint32_t out[per_word];
          KF::key_pairs(words[w], out);
#pragma unroll
          for (int i = 0; i < per_word; ++i) f.key[row][w * per_word + i] = out[i];
        }
      }
#pragma unroll
      for (int m = 0; m < MK; ++m)
        f.key_scale[row][m] = key_group[m] < KG ? KF::key_scale(KF::load_key_meta(stage + M::key_meta_at + r * M::key_meta_row, key_group[m]))
                                                : KeyScale{0.0f, 0.0f};
    }
  };
  auto decode_values = [&]<bool Masked>(const std::uint8_t* stage, int index, ValueFragments& f) {
    std::uint32_t words[4][M::value_words], meta[4];
#pragma unroll
    for (int k4 = 0; k4 < 4; ++k4) {
      const int r = 2 * t + (k4 & 1) + 8 * (k4 >> 1);
      const bool live = !Masked || (index + r >= lo && index + r < hi);
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
  auto read_tile = [&]<bool Masked>(const std::uint8_t* stage, int index, ValueFragments& vf, std::uint32_t& p0,
                                    std::uint32_t& p1) {
    {
      KeyFragments f;
      decode_keys.template operator()<Masked>(stage, index, f);
      float raw[2][2];
      if constexpr (M::integer_keys) {
        integer_scores(f, raw);
      } else {
        fp16_scores(f, q_fp16, raw);
      }
      softmax(raw, f.key_live, p0, p1, sinks + index);
    }
    decode_values.template operator()<Masked>(stage, index, vf);
  };

  if (valid_sequence) {
    attend_rows(begin, min(end, sinks), v.sink_keys, v.sink_values,
                [&](std::int64_t token) { return sink_row_offset(v, sequence, token, kv_head); });

    // The warp's page tiles through its pipeline of `stages` copies in flight.
    std::uint8_t* stage = my_stages;
    for (int i = 0; i < count; ++i) {
      wait_async_copies<stages - 1>();
      __syncwarp();
      const int index = first + (warp + i * warps) * tile;
      std::uint32_t p0, p1;
      ValueFragments f;
      if (index < lo || index + tile > hi) {
        read_tile.template operator()<true>(stage, index, f, p0, p1);
      } else {
        read_tile.template operator()<false>(stage, index, f, p0, p1);
      }
      __syncwarp();  // every lane has read the stage: refill it
      if (i + stages < count) {
        issue(stage, copy_page, copy_in_page);
        advance_copy();
        if (i + stages + 1 < count) copy_page = page_row[copy_slot];
      }
      commit_async_copies();
      stage = stage + M::stage_bytes == my_stages + stages * M::stage_bytes ? my_stages : stage + M::stage_bytes;
      accumulate(f, p0, p1);
    }

    const std::int64_t w_from = max(begin, sinks + quantized);
    attend_rows(w_from, end, v.window_keys, v.window_values,
                [&](std::int64_t token) { return window_row_offset(v, sequence, window_slot(v, token), kv_head); });
  }

  // Warp state -> shared memory (sums over the 8 lanes that share a head), then the common epilogue.
  __syncthreads();  // every warp has read its last stage: the merge rows may overwrite them
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
                                               heads_here, DecodeBlockRange{sequence, kv_head, begin, end});
}

template <class Tier, int GroupWidth, bool SoftCap, class Query, class Out>
constexpr auto* mma_decode_kernel = &decode_attention_mma_kernel<Tier, GroupWidth, SoftCap, Query, Out>;

// Raises the kernel's dynamic shared-memory limit once per device (a host call on every launch costs
// microseconds at short contexts).
template <class Tier, int GroupWidth, bool SoftCap, class Query, class Out>
void prepare_decode_attention_mma() {
  static std::atomic<std::uint64_t> prepared_devices{0};
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const std::uint64_t bit = device < 64 ? std::uint64_t{1} << device : 0;
  if (bit != 0 && (prepared_devices.load(std::memory_order_acquire) & bit) != 0) return;
  check(cudaFuncSetAttribute(mma_decode_kernel<Tier, GroupWidth, SoftCap, Query, Out>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, MmaDecode<Tier, GroupWidth>::shared_bytes),
        "decode attention: shared memory size");
  prepared_devices.fetch_or(bit, std::memory_order_acq_rel);
}

template <class Tier, int GroupWidth, bool SoftCap, class Query, class Out>
void launch_decode_attention_mma(const DecodeArgs<Tier, Query, Out>& args, dim3 grid, bool cooperative,
                                 cudaStream_t stream) {
  prepare_decode_attention_mma<Tier, GroupWidth, SoftCap, Query, Out>();
  launch_decode_kernel(mma_decode_kernel<Tier, GroupWidth, SoftCap, Query, Out>, args, grid,
                       MmaDecode<Tier, GroupWidth>::threads, MmaDecode<Tier, GroupWidth>::shared_bytes, cooperative,
                       stream);
}

// Resident blocks per SM of the kernel a tier and group width use (the planner sizes one wave with it).
template <class Tier, int GroupWidth, class Query, class Out>
int mma_decode_blocks_per_sm() {
  prepare_decode_attention_mma<Tier, GroupWidth, false, Query, Out>();
  int blocks = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, mma_decode_kernel<Tier, GroupWidth, false, Query, Out>,
                                                      MmaDecode<Tier, GroupWidth>::threads,
                                                      MmaDecode<Tier, GroupWidth>::shared_bytes),
        "decode attention: occupancy");
  return blocks;
}

}  // namespace kvq::cuda::detail
