// Causal attention for a prefill chunk over a kvq host cache layer that already holds the chunk's keys and
// values: per query, what kvq::decode_attention_reference computes, for `count` queries at once. Every key and
// value is read once per chunk and KV head with kvq::read_attention_token, exactly as the reference reads them
// (dequantized, original domain); the products then run through BLAS in float (cpu_math.hpp), since a prefill
// chunk is a matrix product, not the reference's per-token loop in double.
#pragma once

#include <cstdint>
#include <vector>

#include "kvq/attention/importance.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/host/decode_attention.hpp"
#include "runtime/cpu_math.hpp"

namespace kvq::llama {

// Queries at positions [first, first + count) of sequence 0; out[i] attends to tokens [0, first + i].
// query/out: [count][q_heads][head_dim] floats. `importance` (sequence 0's rows) gets the chunk's attention added.
// `read(token, kv_head, key, value)` reads a token as attention sees it (read_attention_token, or the promoted
// reader of kvq/host/promoted_attention.hpp).
template <int d, class Reader>
void prefill_attention_with(const CacheLayerView& view, Reader&& read, std::int64_t first, std::int64_t count,
                            const float* query, int q_heads, float* out, const ImportanceView& importance) {
  const std::int64_t length = first + count;
  require(view.lengths[0] >= length, ErrorCode::invalid_argument,
          "prefill attention: the cache does not hold the chunk yet");
  const int group = q_heads / view.kv_heads;
  std::vector<float> keys(static_cast<std::size_t>(length) * d), values(keys.size());
  for (int kv = 0; kv < view.kv_heads; ++kv) {
    for (std::int64_t t = 0; t < length; ++t)
      read(t, kv, keys.data() + t * d, values.data() + t * d);
    causal_attention(query, keys.data(), values.data(), first, count, q_heads, kv * group, group, d, out,
                     importance.enabled() ? importance.scores + kv * importance.head_stride : nullptr);
  }
}

template <class Tier>
void prefill_attention(const CacheLayerView& view, const TierParams<Tier>& params,
                       const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style, std::int64_t first,
                       std::int64_t count, const float* query, int q_heads, float* out,
                       const ImportanceView& importance = {}) {
  prefill_attention_with<Tier::KeyPolicy::head_dim>(
      view,
      [&](std::int64_t t, int kv, float* key, float* value) {
        read_attention_token<Tier>(view, params, rope, style, 0, t, kv, key, value);
      },
      first, count, query, q_heads, out, importance);
}

}  // namespace kvq::llama
