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
  decode_attention_reference_with<Tier::KeyPolicy::head_dim>(
      v, sequence, query, q_heads, attention, out, importance,
      [&](std::int64_t token, int head, float* key, float* value) {
        read_promoted_attention_token<Tier>(v, params, promoted, layer, rope, style, sequence, token, head, key, value);
      });
}

}  // namespace kvq
