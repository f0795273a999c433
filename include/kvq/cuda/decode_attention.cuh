// Fused decode attention over the paged quantized cache: one query token per sequence, GQA, split-KV.
// The kernels read packed codes, metadata, outliers, sinks and the fp16 window where they lie and never write an
// fp16 copy of the cache. decode_attention_async sends fp16 and per-token 2/4/8-bit pages to the tensor-core kernel
// (decode_attention_mma.cuh) and every other policy to the generic kernel below (see DecodeKernel).
//
// Generic kernel, work decomposition (see docs/attention.md):
//   grid  = (splits, kv_heads * head_chunks, batch); a block serves `group_width` query heads of one KV head over
//           one token range of one sequence, so every KV byte is read once per block for all its query heads;
//   block = 4 warps; a warp holds `workers` token slots side by side, each slot spread over `lanes_per_token`
//           lanes that own `channels_per_lane` consecutive channels; a slot keeps its own online softmax
//           (running max, sum, fp32 accumulator), so tokens need no block-wide synchronisation;
//   merge = slots merged by shuffles, warps through shared memory, splits through the workspace by the last
//           block to arrive (an atomic ticket), in fp32 and log2-sum-exp.
// Tokens are read per segment (sinks, pages, window) so that every lane of a warp runs the same shuffles.
// Rotated key policies score in the rotated domain (the query is rotated once, fp16 rows are rotated as read)
// when keys are stored after RoPE; rotated value policies accumulate in the rotated domain and the output is
// rotated back once.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "kvq/attention/decode_plan.hpp"
#include "kvq/attention/importance.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/token_address.hpp"
#include "kvq/core/element.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/cuda/decode_attention_mma.cuh"
#include "kvq/cuda/decode_epilogue.cuh"
#include "kvq/cuda/error.cuh"
#include "kvq/cuda/lane_decode.cuh"
#include "kvq/cuda/paged_cache.cuh"
#include "kvq/quant/rotation.hpp"

namespace kvq::cuda {

namespace detail {

// Channels one lane owns, lanes per token and token slots per warp for a head size and group width: registers
// hold channels_per_lane x group_width query values and as many accumulators.
// Tuning knobs (compile definitions) for experiments; the defaults are what docs/benchmarks.md measured.
#ifndef KVQ_DECODE_CHANNELS_PER_LANE
#define KVQ_DECODE_CHANNELS_PER_LANE 16
#endif
#ifndef KVQ_DECODE_TOKENS_PER_STEP
#define KVQ_DECODE_TOKENS_PER_STEP 2
#endif

template <int HeadDim, int GroupWidth>
struct DecodeGeometry {
  static constexpr int channels_per_lane = GroupWidth <= 4 ? KVQ_DECODE_CHANNELS_PER_LANE : 8;
  static constexpr int lanes_per_token = HeadDim / channels_per_lane;
  static constexpr int workers = 32 / lanes_per_token;
  static constexpr int warps = 4;
  static constexpr int threads = 32 * warps;
  static constexpr int tokens_per_step = KVQ_DECODE_TOKENS_PER_STEP;  // tokens a slot loads before it computes
  static_assert(HeadDim % channels_per_lane == 0 && lanes_per_token >= 2 && lanes_per_token <= 32 &&
                    (lanes_per_token & (lanes_per_token - 1)) == 0,
                "kvq: decode attention supports head_dim 32, 64, 128 and 256");
};

template <class Tier, int GroupWidth, class Query, class Out>
__global__ void __launch_bounds__(DecodeGeometry<Tier::KeyPolicy::head_dim, GroupWidth>::threads)
    decode_attention_kernel(const DecodeArgs<Tier, Query, Out> a) {
  using K = typename Tier::KeyPolicy;
  using V = typename Tier::ValuePolicy;
  constexpr int D = K::head_dim;
  using G = DecodeGeometry<D, GroupWidth>;
  constexpr int N = G::channels_per_lane, L = G::lanes_per_token, U = G::tokens_per_step;
  constexpr int slots = G::workers * G::warps;
  static_assert(!K::rotated || is_rotated_policy<K>, "kvq: decode attention rotates only RotatedPolicy keys");
  static_assert(!V::rotated || is_rotated_policy<V>, "kvq: decode attention rotates only RotatedPolicy values");

  __shared__ float merge_acc[G::warps][GroupWidth][D];
  __shared__ float merge_max[G::warps][GroupWidth], merge_sum[G::warps][GroupWidth];

  const CacheLayerView& v = a.view;
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / a.head_chunks, chunk = blockIdx.y % a.head_chunks;
  const int b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int lane_in_token = lane % L, slot_in_warp = lane / L;
  const int slot = warp * G::workers + slot_in_warp;
  const int first_channel = lane_in_token * N;
  const int first_head = kv_head * a.group + chunk * GroupWidth;
  const int heads_here = min(GroupWidth, a.group - chunk * GroupWidth);

  const int sequence = a.sequences[b];
  // A slot outside the cache, or (importance) a sequence longer than the plan's logit rows: NaN rows.
  const bool valid_sequence = sequence >= 0 && sequence < v.max_sequences &&
                              (a.importance.scores == nullptr || v.lengths[sequence] <= a.logit_stride);
  const std::int64_t length = valid_sequence ? v.lengths[sequence] : 0;
  const std::int64_t quantized = valid_sequence ? v.quantized[sequence] : 0;
  const std::int64_t chunk_tokens = ((length + a.splits - 1) / a.splits + 31) / 32 * 32;
  const std::int64_t begin = min(length, split * chunk_tokens), end = min(length, begin + chunk_tokens);
  const bool keys_rotated_domain = K::rotated && v.key_position == KeyPosition::post_rope;

  // Query heads of this block in registers (lane's channels), rotated once when keys are scored rotated.
  float q[GroupWidth][N];
#pragma unroll
  for (int h = 0; h < GroupWidth; ++h) {
    const Query* row = a.query + (std::int64_t{b} * a.q_heads + first_head + min(h, heads_here - 1)) * D + first_channel;
#pragma unroll
    for (int c = 0; c < N; ++c) q[h][c] = h < heads_here ? to_float(row[c]) : 0.0f;
    if constexpr (K::rotated)
      if (keys_rotated_domain) rotate_lanes<D, N, L>(q[h], lane_in_token, a.params.key.seed, false);
  }

  float run_max[GroupWidth], run_sum[GroupWidth], acc[GroupWidth][N];
#pragma unroll
  for (int h = 0; h < GroupWidth; ++h) {
    run_max[h] = -INFINITY;
    run_sum[h] = 0.0f;
#pragma unroll
    for (int c = 0; c < N; ++c) acc[h][c] = 0.0f;
  }

  // Scores U tokens (keys already in the scoring domain) and folds their values into the slot's softmax state.
  // Token of step u of a loop at `base`: base + u * slots + slot.
  const bool keep_logits = a.importance.scores != nullptr && lane_in_token == 0;
  float* const logits = keep_logits ? logit_row(a, b, first_head) : nullptr;  // head h's row at h * logit_stride
  auto attend = [&](float (&key)[U][N], float (&value)[U][N], const bool (&live)[U], std::int64_t base) {
    float score[U][GroupWidth];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int h = 0; h < GroupWidth; ++h) {
        float s = 0.0f;
#pragma unroll
        for (int c = 0; c < N; ++c) s = fmaf(q[h][c], key[u][c], s);
#pragma unroll
        for (int mask = 1; mask < L; mask *= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, mask);
        score[u][h] = a.soft_cap > 0.0f ? a.soft_cap * log2_e * tanhf(s * a.scale_log2 / a.soft_cap) : s * a.scale_log2;
        if (keep_logits && live[u] && h < heads_here) store_logit(logits + h * a.logit_stride, base + u * slots + slot, score[u][h]);
      }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!live[u]) continue;
#pragma unroll
      for (int h = 0; h < GroupWidth; ++h) {
        const float z = score[u][h];
        if (z > run_max[h]) {
          const float factor = exp2f(run_max[h] - z);
          run_sum[h] *= factor;
#pragma unroll
          for (int c = 0; c < N; ++c) acc[h][c] *= factor;
          run_max[h] = z;
        }
        const float p = exp2f(z - run_max[h]);
        run_sum[h] += p;
#pragma unroll
        for (int c = 0; c < N; ++c) acc[h][c] = fmaf(p, value[u][c], acc[h][c]);
      }
    }
  };

  // fp16 rows (sinks, window): tokens [from, to), row offset of token t given by `row_of`.
  auto attend_fp16 = [&](std::int64_t from, std::int64_t to, const f16* keys, const f16* values, auto row_of) {
    for (std::int64_t base = from; base < to; base += slots * U) {
      float key[U][N], value[U][N];
      bool live[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const std::int64_t t = base + u * slots + slot;
        live[u] = t < to;
        if (live[u]) {
          const std::int64_t offset = row_of(t) + first_channel;
          load_f16_lanes<N>(keys + offset, key[u]);
          load_f16_lanes<N>(values + offset, value[u]);
        } else {
#pragma unroll
          for (int c = 0; c < N; ++c) key[u][c] = value[u][c] = 0.0f;
        }
        if (v.key_position == KeyPosition::pre_rope) rope_lanes<D, N, L>(key[u], lane_in_token, t, a.rope, a.style);
        if constexpr (K::rotated)
          if (keys_rotated_domain) rotate_lanes<D, N, L>(key[u], lane_in_token, a.params.key.seed, false);
        if constexpr (V::rotated) rotate_lanes<D, N, L>(value[u], lane_in_token, a.params.value.seed, false);
      }
      attend(key, value, live, base);
    }
  };

  if (valid_sequence) {
    const std::int64_t sinks = v.sink_tokens;
    // Sinks.
    attend_fp16(begin, min(end, sinks), v.sink_keys, v.sink_values,
                [&](std::int64_t t) { return sink_row_offset(v, sequence, t, kv_head); });
    // Pages.
    const std::int32_t* page_row = v.page_table + std::int64_t{sequence} * v.max_pages_per_sequence;
    const std::int64_t q_from = max(begin, sinks), q_to = min(end, sinks + quantized);
    // Page ids are read one step ahead, so the page-table load is not on the path of every step's data loads.
    auto page_of = [&](std::int64_t t) { return t < q_to ? page_row[static_cast<int>(t - sinks) / v.page_tokens] : 0; };
    std::int32_t next_page[U];
#pragma unroll
    for (int u = 0; u < U; ++u) next_page[u] = page_of(q_from + u * slots + slot);
    for (std::int64_t base = q_from; base < q_to; base += slots * U) {
      float key[U][N], value[U][N];
      bool live[U];
      std::int32_t page[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        page[u] = next_page[u];
        next_page[u] = page_of(base + (U + u) * slots + slot);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const std::int64_t t = base + u * slots + slot;
        live[u] = t < q_to;
        if (live[u]) {
          const int index = static_cast<int>(t - sinks);
          const auto ref = quantized_token_in_page<Tier>(v, page[u], index % v.page_tokens, kv_head);
          LaneDecoder<K, N>::decode(ref.key, ref.key_row, first_channel, key[u], a.params.key);
          LaneDecoder<V, N>::decode(ref.value, ref.value_row, first_channel, value[u], a.params.value);
        } else {
#pragma unroll
          for (int c = 0; c < N; ++c) key[u][c] = value[u][c] = 0.0f;
        }
        if (v.key_position == KeyPosition::pre_rope) {
          if constexpr (K::rotated) rotate_lanes<D, N, L>(key[u], lane_in_token, a.params.key.seed, true);
          rope_lanes<D, N, L>(key[u], lane_in_token, t, a.rope, a.style);
        }
      }
      attend(key, value, live, base);
    }
    // Window: slots follow the token order from the first window token, wrapping at window_capacity.
    const std::int64_t w_from = max(begin, sinks + quantized);
    attend_fp16(w_from, end, v.window_keys, v.window_values,
                [&](std::int64_t t) { return window_row_offset(v, sequence, window_slot(v, t), kv_head); });
  }

  // Merge the slots of a warp (lanes that own the same channels differ in the bits above lanes_per_token).
#pragma unroll
  for (int mask = L; mask < 32; mask *= 2)
#pragma unroll
    for (int h = 0; h < GroupWidth; ++h) {
      const float other_max = __shfl_xor_sync(0xFFFFFFFFu, run_max[h], mask);
      const float other_sum = __shfl_xor_sync(0xFFFFFFFFu, run_sum[h], mask);
      const float top = fmaxf(run_max[h], other_max);
      const float mine = run_max[h] == -INFINITY ? 0.0f : exp2f(run_max[h] - top);
      const float theirs = other_max == -INFINITY ? 0.0f : exp2f(other_max - top);
      run_sum[h] = run_sum[h] * mine + other_sum * theirs;
#pragma unroll
      for (int c = 0; c < N; ++c) acc[h][c] = acc[h][c] * mine + __shfl_xor_sync(0xFFFFFFFFu, acc[h][c], mask) * theirs;
      run_max[h] = top;
    }
  if (slot_in_warp == 0) {
#pragma unroll
    for (int h = 0; h < GroupWidth; ++h) {
#pragma unroll
      for (int c = 0; c < N; ++c) merge_acc[warp][h][first_channel + c] = acc[h][c];
      if (lane_in_token == 0) {
        merge_max[warp][h] = run_max[h];
        merge_sum[warp][h] = run_sum[h];
      }
    }
  }
  __syncthreads();

  finish_decode_block<V, D, GroupWidth, G::warps, G::threads>(a, merge_acc, merge_max, merge_sum, valid_sequence, b, split,
                                                                  first_head, heads_here,
                                                                  DecodeBlockRange{sequence, kv_head, begin, end});
}

}  // namespace detail

namespace detail {
// Which kernel serves a tier over a view: the tensor-core kernel where it applies and the plan allows, else the
// generic one; a plan that insists on tensor cores where they do not apply is an error naming the requirement.
template <class Tier>
bool takes_tensor_core_kernel(const CacheLayerView& view, DecodeKernel kernel) {
  bool tensor_core = false;
  if constexpr (tensor_core_decode_supported<Tier>)
    tensor_core = kernel != DecodeKernel::generic && view.key_position == KeyPosition::post_rope &&
                  view.page_tokens % 16 == 0 && view.page_bytes < (std::int64_t{1} << 31);
  require(tensor_core || kernel != DecodeKernel::tensor_core, ErrorCode::invalid_argument,
          "decode attention: the plan asks for the tensor-core kernel, which needs fp16 or per-token 2/4/8-bit "
          "uniform pages (fp16 value scales), post-RoPE keys, head_dim 64 or 128, page_tokens a multiple of 16 and "
          "pages under 2 GiB");
  return tensor_core;
}
}  // namespace detail

using kvq::kv_bytes_per_token_head;  // page_layout.hpp: what plan_decode is given

inline int device_sm_count() {
  int device = 0, count = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device), "SM count");
  return count;
}

// Zeroes the workspace's arrival counters; needed once before a workspace is first used (every call leaves them
// zero again).
inline void clear_decode_workspace_async(const DecodePlan& plan, void* workspace, cudaStream_t stream) {
  if (plan.splits == 1) return;  // no counters
  const std::int64_t counters_end = plan.importance ? plan.logit_offset : plan.workspace_bytes;
  check(cudaMemsetAsync(static_cast<std::uint8_t*>(workspace) + plan.counter_offset, 0,
                        static_cast<std::size_t>(counters_end - plan.counter_offset), stream),
        "decode attention: clear workspace");
}

// Decode attention for plan.shape.batch queries over one cache layer:
//   query     [batch][q_heads][head_dim] (fp16, bf16 or float), RoPE already applied for the query's position;
//   out       [batch][q_heads][head_dim];
//   sequences [batch] cache sequence slots (device memory); a slot outside the cache gives NaN rows;
//   workspace plan.workspace_bytes of device memory, 16-byte aligned, cleared once (clear_decode_workspace_async).
// Query head h attends with KV head h / (q_heads / kv_heads). A sequence without tokens gives zeros.
// importance (optional; kvq/attention/importance.hpp): device array, indexed by the cache sequence slot, whose
// rows get this step's attention probabilities added; needs a plan made with DecodeTuning::importance, whose
// max_length bounds every sequence's length (a longer sequence gets NaN rows and no importance).
// Asynchronous on `stream`; nothing is allocated. Valid inside CUDA-graph capture.
template <class Tier, TensorElement Query, TensorElement Out>
void decode_attention_async(const CacheLayerView& view, const TierParams<Tier>& params,
                            const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style, const DecodePlan& plan,
                            const AttentionParams& attention, const Query* query, Out* out,
                            const std::int32_t* sequences, void* workspace, std::int64_t workspace_bytes,
                            cudaStream_t stream, const ImportanceView& importance = {}) {
  constexpr int d = Tier::KeyPolicy::head_dim;
  const DecodeShape& s = plan.shape;
  kvq::detail::check_decode_shape(s);
  require(s.head_dim == d && view.head_dim == d, ErrorCode::invalid_argument,
          "decode attention: plan head_dim " + std::to_string(s.head_dim) + " and cache head_dim " +
              std::to_string(view.head_dim) + " must both be the tier's " + std::to_string(d));
  require(s.kv_heads == view.kv_heads, ErrorCode::invalid_argument,
          "decode attention: plan has " + std::to_string(s.kv_heads) + " KV heads, the cache " + std::to_string(view.kv_heads));
  require(plan.group == s.q_heads / s.kv_heads && (plan.group_width == 4 || plan.group_width == 8) &&
              plan.head_chunks == (plan.group + plan.group_width - 1) / plan.group_width && plan.splits >= 1 &&
              plan.splits <= decode_max_splits,
          ErrorCode::invalid_argument, "decode attention: the plan was not made by plan_decode for this shape");
  require(std::isfinite(attention.softmax_scale) && attention.softmax_scale >= 0.0f && std::isfinite(attention.soft_cap) &&
              attention.soft_cap >= 0.0f,
          ErrorCode::invalid_argument, "decode attention: softmax_scale and soft_cap must be finite and >= 0");
  require(!importance.enabled() || plan.importance, ErrorCode::invalid_argument,
          "decode attention: importance bookkeeping needs a plan made with DecodeTuning::importance");
  require(!plan.importance || (plan.logit_stride % 4 == 0 && plan.logit_offset % 16 == 0), ErrorCode::invalid_argument,
          "decode attention: the plan's logit rows are not 16-byte aligned (the plan was not made by plan_decode)");
  if (importance.enabled())
    kvq::detail::check_importance_view(importance, view.max_sequences, view.kv_heads, plan.max_length);
  if (s.batch == 0) return;
  require(query != nullptr && out != nullptr && sequences != nullptr, ErrorCode::invalid_argument,
          "decode attention: query, out and sequences must not be null");
  require(view.pages != nullptr && view.lengths != nullptr && view.page_table != nullptr, ErrorCode::invalid_argument,
          "decode attention: the cache view has no storage");
  require(workspace_bytes >= plan.workspace_bytes && (plan.workspace_bytes == 0 || workspace != nullptr) &&
              reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0,
          ErrorCode::invalid_argument,
          "decode attention: workspace of " + std::to_string(workspace_bytes) + " bytes given, the plan needs " +
              std::to_string(plan.workspace_bytes) + " (16-byte aligned)");
  auto* base = static_cast<std::uint8_t*>(workspace);
  detail::DecodeArgs<Tier, Query, Out> args{view,
                                            params,
                                            rope,
                                            style,
                                            query,
                                            out,
                                            sequences,
                                            s.q_heads,
                                            plan.group,
                                            plan.head_chunks,
                                            plan.splits,
                                            plan.scale(attention) * (attention.soft_cap > 0.0f ? 1.0f : detail::log2_e),
                                            attention.soft_cap,
                                            reinterpret_cast<float*>(base + plan.partial_offset),
                                            reinterpret_cast<float*>(base + plan.lse_offset),
                                            reinterpret_cast<unsigned*>(base + plan.counter_offset),
                                            importance,
                                            reinterpret_cast<float*>(base + plan.logit_offset),
                                            plan.logit_stride};
  const bool cooperative = importance.enabled() && plan.splits > 1;
  const dim3 grid(static_cast<unsigned>(plan.splits), static_cast<unsigned>(s.kv_heads * plan.head_chunks),
                  static_cast<unsigned>(s.batch));
  const bool tensor_core = detail::takes_tensor_core_kernel<Tier>(view, plan.kernel);
  if constexpr (detail::tensor_core_decode_supported<Tier>) {
    if (tensor_core) {
      const bool soft_cap = attention.soft_cap > 0.0f;
      if (plan.group_width == 4) {
        soft_cap ? detail::launch_decode_attention_mma<Tier, 4, true>(args, grid, cooperative, stream)
                 : detail::launch_decode_attention_mma<Tier, 4, false>(args, grid, cooperative, stream);
      } else {
        soft_cap ? detail::launch_decode_attention_mma<Tier, 8, true>(args, grid, cooperative, stream)
                 : detail::launch_decode_attention_mma<Tier, 8, false>(args, grid, cooperative, stream);
      }
      check_launch("decode attention (tensor cores)");
      return;
    }
  }
  if (plan.group_width == 4) {
    detail::launch_decode_kernel(detail::decode_attention_kernel<Tier, 4, Query, Out>, args, grid,
                                 detail::DecodeGeometry<d, 4>::threads, 0, cooperative, stream);
  } else {
    detail::launch_decode_kernel(detail::decode_attention_kernel<Tier, 8, Query, Out>, args, grid,
                                 detail::DecodeGeometry<d, 8>::threads, 0, cooperative, stream);
  }
  check_launch("decode attention");
}

// Resident thread blocks per SM of the kernel that decode_attention_async will launch for this tier, view, group
// width and query/output types (the occupancy API on the current device).
template <class Tier, TensorElement Query = f16, TensorElement Out = Query>
int decode_blocks_per_sm(const CacheLayerView& view, int group_width, DecodeKernel kernel) {
  require(group_width == 4 || group_width == 8, ErrorCode::invalid_argument, "decode attention: group width must be 4 or 8");
  if constexpr (detail::tensor_core_decode_supported<Tier>) {
    if (detail::takes_tensor_core_kernel<Tier>(view, kernel))
      return group_width == 4 ? detail::mma_decode_blocks_per_sm<Tier, 4, Query, Out>()
                              : detail::mma_decode_blocks_per_sm<Tier, 8, Query, Out>();
  } else {
    detail::takes_tensor_core_kernel<Tier>(view, kernel);  // refuses DecodeKernel::tensor_core
  }
  constexpr int d = Tier::KeyPolicy::head_dim;
  int blocks = 0;
  if (group_width == 4) {
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, detail::decode_attention_kernel<Tier, 4, Query, Out>,
                                                        detail::DecodeGeometry<d, 4>::threads, 0),
          "decode attention: occupancy");
  } else {
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, detail::decode_attention_kernel<Tier, 8, Query, Out>,
                                                        detail::DecodeGeometry<d, 8>::threads, 0),
          "decode attention: occupancy");
  }
  return blocks;
}

// The device planner: plan_decode (kvq/attention/decode_plan.hpp) for one layer of a device cache, with the SM
// count of the current device, the layer's KV bytes per token and, unless tuning.blocks_per_sm is set, the
// measured occupancy of the kernel the call will take, so the split count fills whole waves. Query and Out are
// the element types the calls will use (occupancy differs between them).
template <TensorElement Query = f16, TensorElement Out = Query, class Tiers>
DecodePlan plan_decode(const PagedKVCache<Tiers>& cache, int layer, const DecodeShape& shape, std::int64_t max_length,
                       DecodeTuning tuning = {}) {
  kvq::detail::check_decode_shape(shape);
  const CacheLayerView view = cache.view(layer);
  DecodePlan plan;
  Tiers::visit(view.tier, [&]<class Tier>() {
    if (tuning.blocks_per_sm == 0) {
      const int width = decode_group_width(shape.q_heads / shape.kv_heads);
      tuning.blocks_per_sm = std::max(1, decode_blocks_per_sm<Tier, Query, Out>(view, width, tuning.kernel));
    }
    plan = kvq::plan_decode(shape, max_length, kv_bytes_per_token_head<Tier>(), device_sm_count(), tuning);
  });
  return plan;
}

// The same for one layer of a device cache (its tier, parameters and RoPE table).
template <class Tiers, TensorElement Query, TensorElement Out>
void decode_attention_async(const PagedKVCache<Tiers>& cache, int layer, const DecodePlan& plan,
                            const AttentionParams& attention, const Query* query, Out* out,
                            const std::int32_t* sequences, void* workspace, std::int64_t workspace_bytes,
                            cudaStream_t stream, const ImportanceView& importance = {}) {
  const CacheLayerView view = cache.view(layer);
  Tiers::visit(view.tier, [&]<class Tier>() {
    decode_attention_async<Tier>(view, cache.template params<Tier>(layer), cache.rope_table(), cache.config().rope.style,
                                 plan, attention, query, out, sequences, workspace, workspace_bytes, stream, importance);
  });
}

}  // namespace kvq::cuda
