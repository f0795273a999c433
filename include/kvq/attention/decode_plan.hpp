// What a decode-attention call computes (AttentionParams), for which shape (DecodeShape), and how the device
// kernel splits it (DecodePlan): one query token per sequence, GQA, over a CacheLayerView.
//
// Split-KV (flash-decoding): each (sequence, KV head) is cut into `splits` token ranges that run as separate thread
// blocks, each writing an fp32 partial output and its log-sum-exp to the workspace; the last block of a
// (sequence, KV head) to finish combines them. The grid depends only on the plan, never on the lengths the
// kernel reads from the cache, so one plan serves every step of a CUDA graph whose sequences stay within
// `max_length` tokens: the token range of a split is ceil(length / splits) tokens, computed on the device.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "kvq/core/alignment.hpp"
#include "kvq/core/error.hpp"

namespace kvq {

struct AttentionParams {
  float softmax_scale = 0.0f;  // logits = scale * q.k; 0 means 1/sqrt(head_dim)
  float soft_cap = 0.0f;       // > 0: logits = soft_cap * tanh(logits / soft_cap) (Gemma-2 style); 0: off
};

struct DecodeShape {
  int batch = 1;     // query tokens, one per sequence
  int q_heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
};

// Which kernel serves a plan. `automatic` takes the tensor-core kernel where it applies (fp16 pages or per-token
// 2/4/8-bit uniform codes, fp16 value scales, post-RoPE keys, head_dim 64/128, page_tokens a multiple of 16) and
// the generic kernel otherwise; `tensor_core` makes a call that cannot use it an error; `generic` always takes
// the generic kernel (every policy, the reference for comparisons).
enum class DecodeKernel { automatic, tensor_core, generic };

// Query heads one thread block serves from one read of a KV head's data; wider groups are served in chunks.
inline constexpr int decode_max_group = 8;

// The kernels' compile-time group width for `group` query heads per KV head: 4, or 8 (in chunks) above 4.
[[nodiscard]] constexpr int decode_group_width(int group) { return group <= 4 ? 4 : decode_max_group; }

struct DecodePlan {
  DecodeShape shape;
  int group = 1;            // query heads per KV head
  int group_width = 4;      // query heads per thread block: 4 or 8 (the kernel's compile-time width)
  int head_chunks = 1;      // thread blocks per KV head (ceil(group / group_width))
  int splits = 1;           // token ranges per (sequence, KV head, chunk)
  std::int64_t max_length = 0;
  DecodeKernel kernel = DecodeKernel::automatic;
  // Importance bookkeeping (importance.hpp): calls may pass an ImportanceView. The splits of a (sequence, KV head,
  // chunk) then wait for each other (the launch is cooperative, so they are resident together: the planner keeps
  // the grid within one wave), which is why a plan must be made for it.
  bool importance = false;
  // Workspace: fp32 partial outputs [batch][q_heads][splits][head_dim], log2-sum-exp [batch][q_heads][splits],
  // one uint32 arrival counter per (sequence, KV head, chunk) (two with importance), and with importance each
  // query head's log2-domain logits [batch][q_heads][logit_stride], logit_stride >= max_length. Empty when
  // splits == 1 and no importance.
  std::int64_t partial_offset = 0, lse_offset = 0, counter_offset = 0, logit_offset = 0, logit_stride = 0,
               workspace_bytes = 0;

  [[nodiscard]] float scale(const AttentionParams& p) const {
    return p.softmax_scale != 0.0f ? p.softmax_scale : 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  }
};

// Most splits a plan may have (the split combine holds 8 log-sum-exps per lane).
inline constexpr int decode_max_splits = 256;

struct DecodeTuning {
  // Resident thread blocks per SM, which sizes a wave. 0: the kernel's own occupancy, as measured by the device
  // planner (kvq::cuda::plan_decode); the host planner then assumes 3 (the tensor-core kernel's on Hopper).
  int blocks_per_sm = 0;
  std::int64_t min_split_bytes = 16 * 1024;    // a split reads at least this much KV data (amortises its merge)
  int max_splits = decode_max_splits;          // at most decode_max_splits
  DecodeKernel kernel = DecodeKernel::automatic;
  bool importance = false;                     // plan for importance bookkeeping (see DecodePlan::importance)
};

// Thread blocks per SM the host planner assumes when DecodeTuning::blocks_per_sm is 0.
inline constexpr int decode_default_blocks_per_sm = 3;

namespace detail {
inline void check_decode_shape(const DecodeShape& s) {
  require(s.batch >= 0, ErrorCode::invalid_argument, "decode attention: batch " + std::to_string(s.batch) + " is negative");
  require(s.q_heads > 0 && s.kv_heads > 0, ErrorCode::invalid_argument,
          "decode attention: q_heads (" + std::to_string(s.q_heads) + ") and kv_heads (" + std::to_string(s.kv_heads) +
              ") must be positive");
  require(s.q_heads % s.kv_heads == 0, ErrorCode::invalid_argument,
          "decode attention: q_heads " + std::to_string(s.q_heads) + " is not a multiple of kv_heads " +
              std::to_string(s.kv_heads));
}
}  // namespace detail

// Chooses the split count from the longest sequence, the KV bytes per token and head, and the SM count. Blocks of
// one call all do about the same work, so the time follows the number of waves: the split count is the one that
// fills its waves best (see `score`), with no split shorter than min_split_bytes of KV data.
inline DecodePlan plan_decode(const DecodeShape& shape, std::int64_t max_length, double kv_bytes_per_token_head,
                              int sm_count, const DecodeTuning& tuning = {}) {
  detail::check_decode_shape(shape);
  require(max_length >= 0, ErrorCode::invalid_argument, "plan_decode: max_length " + std::to_string(max_length) + " is negative");
  require(max_length < (std::int64_t{1} << 31), ErrorCode::invalid_argument,
          "plan_decode: max_length " + std::to_string(max_length) + " is beyond the 2^31 tokens the kernel indexes");
  require(sm_count > 0 && kv_bytes_per_token_head > 0 && tuning.blocks_per_sm >= 0 && tuning.max_splits > 0 &&
              tuning.min_split_bytes > 0,
          ErrorCode::invalid_argument, "plan_decode: sm_count, bytes per token and tuning values must be positive");
  require(tuning.max_splits <= decode_max_splits, ErrorCode::invalid_argument,
          "plan_decode: max_splits " + std::to_string(tuning.max_splits) + " is above " +
              std::to_string(decode_max_splits) + ", the most the split combine takes");
  DecodePlan plan;
  plan.shape = shape;
  plan.max_length = max_length;
  plan.kernel = tuning.kernel;
  plan.group = shape.q_heads / shape.kv_heads;
  plan.group_width = decode_group_width(plan.group);
  plan.head_chunks = (plan.group + plan.group_width - 1) / plan.group_width;
  const std::int64_t blocks = std::int64_t{std::max(shape.batch, 1)} * shape.kv_heads * plan.head_chunks;
  const std::int64_t slots =
      std::int64_t{sm_count} * (tuning.blocks_per_sm > 0 ? tuning.blocks_per_sm : decode_default_blocks_per_sm);
  const std::int64_t min_tokens = std::max<std::int64_t>(
      32, static_cast<std::int64_t>(std::ceil(static_cast<double>(tuning.min_split_bytes) / kv_bytes_per_token_head)));
  const std::int64_t useful = std::max<std::int64_t>(1, (max_length + min_tokens - 1) / min_tokens);
  // Candidates: up to two waves' worth of splits (more splits only add merge work once the GPU is full).
  const std::int64_t most = std::clamp<std::int64_t>(std::min(useful, 2 * ((slots + blocks - 1) / blocks)), 1, tuning.max_splits);
  // Score of a split count: the busy fraction of its waves, less 5% for each wave after the first (a wave adds
  // each block's fixed cost once more); ties go to more splits (shorter blocks).
  auto score = [&](std::int64_t splits) {
    const std::int64_t busy = blocks * splits, waves = (busy + slots - 1) / slots;
    return static_cast<double>(busy) / static_cast<double>(waves * slots) - 0.05 * static_cast<double>(waves - 1);
  };
  // Importance: the splits of a group wait for each other, so every block must be resident at once (one wave).
  const std::int64_t most_resident = tuning.importance ? std::max<std::int64_t>(1, slots / blocks) : most;
  std::int64_t splits = 1;
  for (std::int64_t s = 2; s <= std::min(most, most_resident); ++s)
    if (score(s) >= score(splits)) splits = s;
  plan.splits = static_cast<int>(splits);
  plan.importance = tuning.importance;
  const std::int64_t groups = std::int64_t{shape.batch} * shape.kv_heads * plan.head_chunks;
  if (plan.splits > 1) {
    const std::int64_t rows = std::int64_t{shape.batch} * shape.q_heads * plan.splits;
    plan.partial_offset = 0;
    plan.lse_offset = align16(rows * shape.head_dim * 4);
    plan.counter_offset = plan.lse_offset + align16(rows * 4);
    plan.workspace_bytes = plan.counter_offset + align16(groups * 4 * (plan.importance ? 2 : 1));
  }
  if (plan.importance) {
    plan.logit_stride = std::max<std::int64_t>(4, (max_length + 3) / 4 * 4);
    plan.logit_offset = plan.workspace_bytes;
    plan.workspace_bytes += align16(std::int64_t{shape.batch} * shape.q_heads * plan.logit_stride * 4);
  }
  return plan;
}

}  // namespace kvq
