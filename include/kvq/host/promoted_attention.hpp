// Decode attention on the host over a cache with per-token precision tiers (kvq/cache/promoted_tokens.hpp): what
// kvq::decode_attention_reference computes, except that a promoted token is read from its high-precision copy
// instead of the layer's pages. Importance is accumulated exactly as importance.hpp defines it, so promotion keeps
// being driven by the same scores. No device kernel reads promoted copies yet.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvq/attention/decode_plan.hpp"
#include "kvq/attention/importance.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/promoted_tokens.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/host/decode_attention.hpp"

namespace kvq {

// Token `token` of a sequence as attention sees it: its promoted copy when it has one, else as the layer stores it;
// keys rotated by RoPE for their position when the cache stores them before RoPE.
template <class Tier, class HighTier>
void read_promoted_attention_token(const CacheLayerView& v, const TierParams<Tier>& params,
                                   const PromotedTokens<HighTier>& promoted, int layer,
                                   const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style, int sequence,
                                   std::int64_t token, int head, float* key, float* value) {
  static_assert(HighTier::KeyPolicy::head_dim == Tier::KeyPolicy::head_dim, "kvq: the tiers must share head_dim");
  if (const auto* copy = promoted.find(layer, sequence, head, token)) {
    promoted.read(*copy, key, value);
    if (v.key_position == KeyPosition::pre_rope) apply_rope<Tier::KeyPolicy::head_dim>(key, token, rope, style);
    return;
  }
  read_attention_token<Tier>(v, params, rope, style, sequence, token, head, key, value);
}

template <class Tier, class HighTier>
void promoted_decode_attention_reference(const CacheLayerView& v, const TierParams<Tier>& params,
                                         const PromotedTokens<HighTier>& promoted, int layer,
                                         const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style,
                                         int sequence, std::span<const float> query, int q_heads,
                                         const AttentionParams& attention, std::span<double> out,
                                         const ImportanceView& importance = {}) {
  constexpr int d = Tier::KeyPolicy::head_dim;
  require(sequence >= 0 && sequence < v.max_sequences, ErrorCode::invalid_argument,
          "decode attention: sequence " + std::to_string(sequence) + " is outside [0, " + std::to_string(v.max_sequences) + ")");
  require(q_heads > 0 && q_heads % v.kv_heads == 0, ErrorCode::invalid_argument,
          "decode attention: q_heads " + std::to_string(q_heads) + " is not a positive multiple of kv_heads " +
              std::to_string(v.kv_heads));
  require(query.size() == static_cast<std::size_t>(q_heads) * d && out.size() == query.size(), ErrorCode::invalid_argument,
          "decode attention: query and output must hold q_heads * head_dim = " + std::to_string(q_heads * d) + " elements");
  const int group = q_heads / v.kv_heads;
  const double scale = attention.softmax_scale != 0.0f ? attention.softmax_scale : 1.0 / std::sqrt(static_cast<double>(d));
  const std::int64_t length = v.lengths[sequence];
  std::fill(out.begin(), out.end(), 0.0);
  if (length == 0) return;
  std::vector<float> keys(static_cast<std::size_t>(length) * d), values(keys.size());
  std::vector<double> logits(static_cast<std::size_t>(length));
  detail::check_importance_view(importance, v.max_sequences, v.kv_heads, length);
  std::vector<double> weights(importance.enabled() ? static_cast<std::size_t>(length) : 0);
  for (int kv = 0; kv < v.kv_heads; ++kv) {
    std::fill(weights.begin(), weights.end(), 0.0);
    for (std::int64_t t = 0; t < length; ++t)
      read_promoted_attention_token<Tier>(v, params, promoted, layer, rope, style, sequence, t, kv, keys.data() + t * d,
                                          values.data() + t * d);
    for (int g = 0; g < group; ++g) {
      const int h = kv * group + g;
      attend_reference(query.data() + static_cast<std::size_t>(h) * d, keys.data(), values.data(), length, d, scale,
                       attention.soft_cap, logits.data(), out.data() + static_cast<std::size_t>(h) * d,
                       importance.enabled() ? weights.data() : nullptr);
    }
    if (importance.enabled()) {
      float* row = importance.scores + sequence * importance.sequence_stride + kv * importance.head_stride;
      for (std::int64_t t = 0; t < length; ++t) row[t] += static_cast<float>(weights[static_cast<std::size_t>(t)]);
    }
  }
}

}  // namespace kvq
