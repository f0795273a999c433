// Causal attention for a prefill chunk over a kvq host cache layer that already holds the chunk's keys and
// values: what kvq::decode_attention_reference computes for one query, done for `count` queries with every key
// and value read (and dequantized) once per chunk and KV head instead of once per query. Tokens are read with
// kvq::read_attention_token, exactly as the reference reads them; scores, softmax and sums run in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/host/decode_attention.hpp"

namespace kvq::llama {

// Queries at positions [first, first + count) of sequence 0; out[i] attends to tokens [0, first + i].
// query/out: [count][q_heads][head_dim] floats.
template <class Tier>
void prefill_attention(const CacheLayerView& view, const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style,
                       std::int64_t first, std::int64_t count, const float* query, int q_heads, float* out) {
  constexpr int d = Tier::KeyPolicy::head_dim;
  static_assert(std::is_empty_v<typename Tier::KeyPolicy::Params> && std::is_empty_v<typename Tier::ValuePolicy::Params>,
                "kvq: the CPU backend passes default policy parameters; give it the cache's for policies that have some");
  const TierParams<Tier> params{};
  const std::int64_t length = first + count;
  require(view.lengths[0] >= length, ErrorCode::invalid_argument, "prefill attention: the cache does not hold the chunk yet");
  const int group = q_heads / view.kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<float> keys(static_cast<std::size_t>(length) * d), values(keys.size());
  std::vector<double> logits(static_cast<std::size_t>(length)), sum(d);
  for (int kv = 0; kv < view.kv_heads; ++kv) {
    for (std::int64_t t = 0; t < length; ++t)
      read_attention_token<Tier>(view, params, rope, style, 0, t, kv, keys.data() + t * d, values.data() + t * d);
    for (int g = 0; g < group; ++g) {
      const int head = kv * group + g;
      for (std::int64_t i = 0; i < count; ++i) {
        const float* q = query + (i * q_heads + head) * d;
        const std::int64_t visible = first + i + 1;
        double top = -INFINITY;
        for (std::int64_t t = 0; t < visible; ++t) {
          double dot = 0;
          for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * keys[static_cast<std::size_t>(t * d + c)];
          logits[static_cast<std::size_t>(t)] = dot * scale;
          top = std::max(top, dot * scale);
        }
        std::fill(sum.begin(), sum.end(), 0.0);
        double total = 0;
        for (std::int64_t t = 0; t < visible; ++t) {
          const double p = std::exp(logits[static_cast<std::size_t>(t)] - top);
          total += p;
          for (int c = 0; c < d; ++c) sum[static_cast<std::size_t>(c)] += p * values[static_cast<std::size_t>(t * d + c)];
        }
        float* o = out + (i * q_heads + head) * d;
        for (int c = 0; c < d; ++c) o[c] = static_cast<float>(sum[static_cast<std::size_t>(c)] / total);
      }
    }
  }
}

}  // namespace kvq::llama
