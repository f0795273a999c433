// Attention-driven token importance (H2O's "accumulated attention"), per KV head: what the decode kernels add up
// while they attend, so importance-aware caches (eviction, precision tiers) need no second pass over the cache.
//
// After a decode step of sequence b, for every KV head k and token t < length(b):
//     scores[b * sequence_stride + k * head_stride + t] += sum over the query heads h of k's group of p_h(t)
// where p_h(t) is the exact softmax probability that step gave token t for head h (scale and soft cap applied),
// so each step adds `group` in total per KV head. Tokens are the sequence's positions as the cache holds them
// (sinks, quantized pages and window alike). The caller owns and zeroes the array; one array per layer.
#pragma once

#include <cstdint>
#include <string>

#include "kvq/core/error.hpp"

namespace kvq {

struct ImportanceView {
  float* scores = nullptr;  // null: no importance bookkeeping
  std::int64_t sequence_stride = 0;
  std::int64_t head_stride = 0;

  [[nodiscard]] bool enabled() const { return scores != nullptr; }
};

namespace detail {
// The view must hold `tokens` entries per (sequence, KV head) without overlap.
inline void check_importance_view(const ImportanceView& v, int sequences, int kv_heads, std::int64_t tokens) {
  if (!v.enabled()) return;
  require(v.head_stride >= tokens && v.sequence_stride >= v.head_stride * kv_heads, ErrorCode::invalid_argument,
          "importance: head_stride " + std::to_string(v.head_stride) + " and sequence_stride " +
              std::to_string(v.sequence_stride) + " do not hold " + std::to_string(tokens) + " tokens x " +
              std::to_string(kv_heads) + " KV heads per sequence without overlap");
  require(sequences >= 0, ErrorCode::invalid_argument, "importance: negative sequence count");
}
}  // namespace detail

}  // namespace kvq
