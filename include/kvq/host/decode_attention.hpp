// Decode attention on the host over a CacheLayerView with host pointers (HostPagedKVCache::view, or a download
// of a device cache): the test oracle of the device kernel and a CPU fallback. Everything the device kernel reads
// is read the same way (sinks, pages, window; RoPE at read for pre-RoPE keys; rotated policies mapped back to the
// original domain), then scores, softmax and the weighted sum run in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvq/attention/decode_plan.hpp"
#include "kvq/attention/importance.hpp"
#include "kvq/cache/cache_config.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/token_address.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/rope.hpp"

namespace kvq {

// Key and value of one token and KV head as attention sees them: original domain, keys rotated by RoPE for their
// position when the cache stores them before RoPE.
template <class Tier>
void read_attention_token(const CacheLayerView& v, const TierParams<Tier>& params, const RopeTable<Tier::KeyPolicy::head_dim>& rope,
                          RopeStyle style, int sequence, std::int64_t token, int head, float* key, float* value) {
  using K = typename Tier::KeyPolicy;
  using V = typename Tier::ValuePolicy;
  constexpr int d = K::head_dim;
  const std::int64_t quantized = v.quantized[sequence];
  switch (token_segment(v, quantized, token)) {
    case TokenSegment::sink:
    case TokenSegment::window: {
      const bool sink = token < v.sink_tokens;
      const std::int64_t offset = sink ? sink_row_offset(v, sequence, token, head)
                                       : window_row_offset(v, sequence, window_slot(v, token), head);
      const f16* k = (sink ? v.sink_keys : v.window_keys) + offset;
      const f16* x = (sink ? v.sink_values : v.window_values) + offset;
      for (int c = 0; c < d; ++c) {
        key[c] = to_float(k[c]);
        value[c] = to_float(x[c]);
      }
      break;
    }
    case TokenSegment::quantized: {
      const auto ref = quantized_token<Tier>(v, sequence, token - v.sink_tokens, head);
      K::dequantize(ref.key, ref.key_row, 0, d, key, params.key);
      V::dequantize(ref.value, ref.value_row, 0, d, value, params.value);
      if constexpr (K::rotated) K::unrotate(key, params.key);
      if constexpr (V::rotated) V::unrotate(value, params.value);
      break;
    }
  }
  if (v.key_position == KeyPosition::pre_rope) apply_rope<d>(key, token, rope, style);
}

// One query head over `count` tokens (keys, values: [count][d] floats), in double: softmax(scale q.k, capped) . v.
// `logits` is scratch of `count` doubles; out[d] is overwritten; `weights`, when given, gets each token's softmax
// probability added (importance bookkeeping). Shared by the decode and prefill references.
inline void attend_reference(const float* q, const float* keys, const float* values, std::int64_t count, int d,
                             double scale, float soft_cap, double* logits, double* out, double* weights = nullptr) {
  double top = -INFINITY;
  for (std::int64_t t = 0; t < count; ++t) {
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * keys[t * d + c];
    double logit = dot * scale;
    if (soft_cap > 0) logit = soft_cap * std::tanh(logit / soft_cap);
    logits[t] = logit;
    top = std::max(top, logit);
  }
  std::fill(out, out + d, 0.0);
  double sum = 0;
  for (std::int64_t t = 0; t < count; ++t) {
    const double p = std::exp(logits[t] - top);
    sum += p;
    for (int c = 0; c < d; ++c) out[c] += p * values[t * d + c];
  }
  for (int c = 0; c < d; ++c) out[c] /= sum;
  if (weights != nullptr)
    for (std::int64_t t = 0; t < count; ++t) weights[t] += std::exp(logits[t] - top) / sum;
}

// Decode attention of one sequence over keys and values given by `read(token, head, key, value)` (the original
// domain, RoPE applied, like read_attention_token): the body shared by decode_attention_reference and readers
// that see more than the view (promoted_decode_attention_reference). head_dim is D.
template <int D, class ReadToken>
void decode_attention_reference_with(const CacheLayerView& v, int sequence, std::span<const float> query, int q_heads,
                                     const AttentionParams& attention, std::span<double> out,
                                     const ImportanceView& importance, ReadToken&& read) {
  require(sequence >= 0 && sequence < v.max_sequences, ErrorCode::invalid_argument,
          "decode attention: sequence " + std::to_string(sequence) + " is outside [0, " + std::to_string(v.max_sequences) + ")");
  require(q_heads > 0 && q_heads % v.kv_heads == 0, ErrorCode::invalid_argument,
          "decode attention: q_heads " + std::to_string(q_heads) + " is not a positive multiple of kv_heads " +
              std::to_string(v.kv_heads));
  require(query.size() == static_cast<std::size_t>(q_heads) * D && out.size() == query.size(), ErrorCode::invalid_argument,
          "decode attention: query and output must hold q_heads * head_dim = " + std::to_string(q_heads * D) + " elements");
  const int group = q_heads / v.kv_heads;
  const double scale = attention.softmax_scale != 0.0f ? attention.softmax_scale : 1.0 / std::sqrt(static_cast<double>(D));
  const std::int64_t length = v.lengths[sequence];
  std::fill(out.begin(), out.end(), 0.0);
  if (length == 0) return;
  std::vector<float> keys(static_cast<std::size_t>(length) * D), values(keys.size());
  std::vector<double> logits(static_cast<std::size_t>(length));
  detail::check_importance_view(importance, v.max_sequences, v.kv_heads, length);
  std::vector<double> weights(importance.enabled() ? static_cast<std::size_t>(length) : 0);
  for (int kv = 0; kv < v.kv_heads; ++kv) {
    std::fill(weights.begin(), weights.end(), 0.0);
    for (std::int64_t t = 0; t < length; ++t) read(t, kv, keys.data() + t * D, values.data() + t * D);
    for (int g = 0; g < group; ++g) {
      const int h = kv * group + g;
      attend_reference(query.data() + static_cast<std::size_t>(h) * D, keys.data(), values.data(), length, D, scale,
                       attention.soft_cap, logits.data(), out.data() + static_cast<std::size_t>(h) * D,
                       importance.enabled() ? weights.data() : nullptr);
    }
    if (importance.enabled()) {
      float* row = importance.scores + sequence * importance.sequence_stride + kv * importance.head_stride;
      for (std::int64_t t = 0; t < length; ++t) row[t] += static_cast<float>(weights[static_cast<std::size_t>(t)]);
    }
  }
}

// out[h][c] for the q_heads query heads of one sequence (query: [q_heads][head_dim] floats). A sequence without
// tokens gives zeros (the device kernel does the same). With `importance` enabled, each KV head's row of
// `sequence` gets the step's probabilities added as importance.hpp defines (summed in double, added once).
template <class Tier>
void decode_attention_reference(const CacheLayerView& v, const TierParams<Tier>& params,
                                const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style, int sequence,
                                std::span<const float> query, int q_heads, const AttentionParams& attention,
                                std::span<double> out, const ImportanceView& importance = {}) {
  decode_attention_reference_with<Tier::KeyPolicy::head_dim>(
      v, sequence, query, q_heads, attention, out, importance,
      [&](std::int64_t token, int head, float* key, float* value) {
        read_attention_token<Tier>(v, params, rope, style, sequence, token, head, key, value);
      });
}

}  // namespace kvq
