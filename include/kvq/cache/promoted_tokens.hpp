// Per-token precision tiers inside one cache (mixed precision by importance, as MiKV does): the cache stores every
// token with its layer's policies (the low tier, e.g. 3-bit); PromotedTokens keeps a second, high-precision copy
// (HighTier: per-token policies, e.g. int8) of the most important quantized tokens, at most `fraction` of each
// sequence's quantized tokens per layer and KV head, and attention reads a promoted token from that copy
// (kvq/host/promoted_attention.hpp).
//
// Promotion happens when a token leaves the cache's fp16 window, the last moment its fp16 value exists: the window
// is the observation period during which decode attention accumulates the token's importance
// (ImportanceScores). A promoted token is demoted (its copy dropped; the low tier still holds it, quantized from
// the same fp16 value) when a token leaving the window later scores higher and the store is full. Scores are
// accumulated attention (H2O's), so older tokens have had more steps to collect it; that bias is the policy's.
// Tokens flushed out of the window by the same write that brings them (a prefill chunk longer than the window)
// have no score yet and are never promoted.
//
// Memory: each promoted copy costs the high tier's records (codes and metadata of key and value) plus its 4-byte
// token index; promoted_bytes() counts exactly that, and the planner's promoted_bits_per_element() the same.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "kvq/cache/cache_config.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/importance_scores.hpp"
#include "kvq/cache/sequence_table.hpp"
#include "kvq/cache/token_address.hpp"
#include "kvq/cache/token_selection.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/tensor_layout.hpp"

namespace kvq {

template <class HighTier>
class PromotedTokens {
  using Key = typename HighTier::KeyPolicy;
  using Value = typename HighTier::ValuePolicy;
  static_assert(Key::tokens_per_block == 1 && Value::tokens_per_block == 1,
                "kvq: promoted copies are single tokens: the high tier's policies must be per-token");

 public:
  static constexpr int head_dim = Key::head_dim;
  // Key codes, key meta, value codes (4-byte aligned, as the policy concept asks), value meta.
  static constexpr std::int64_t value_offset = (Key::code_bytes_per_block + Key::meta_bytes_per_block + 3) / 4 * 4;
  static constexpr std::int64_t record_bytes = value_offset + Value::code_bytes_per_block + Value::meta_bytes_per_block;
  static constexpr std::int64_t index_bytes = 4;  // the token a copy belongs to
  static constexpr std::int64_t copy_bytes = record_bytes + index_bytes;

  struct Copy {
    std::int64_t token = 0;
    alignas(4) std::array<std::uint8_t, static_cast<std::size_t>(record_bytes)> bytes{};
  };

  PromotedTokens(const CacheConfig& config, double fraction, TierParams<HighTier> params = {})
      : config_(config), fraction_(fraction), params_(params), rope_(make_rope_table<head_dim>(config.rope)) {
    require(std::isfinite(fraction) && fraction >= 0 && fraction <= 1, ErrorCode::invalid_argument,
            "promoted tokens: the fraction must be in [0, 1], got " + std::to_string(fraction));
    require(config.window_tokens >= 1, ErrorCode::invalid_argument,
            "promoted tokens: the cache needs an fp16 window (window_tokens >= 1): it is where tokens are observed "
            "before they are quantized and promoted");
    copies_.resize(static_cast<std::size_t>(config.layers) * config.max_sequences * config.kv_heads);
  }

  [[nodiscard]] double fraction() const { return fraction_; }
  // Copies allowed for a sequence with `quantized` tokens in pages, per layer and KV head.
  [[nodiscard]] std::int64_t capacity(std::int64_t quantized) const {
    return static_cast<std::int64_t>(std::floor(fraction_ * static_cast<double>(quantized)));
  }

  // Offers the tokens that `plan` flushes out of `layer`'s window: call after cache.reserve() and before
  // cache.write(plan, layer, ...), while the window still holds them.
  // `importance`: the scores accumulated so far (decode attention's, kvq/attention/importance.hpp).
  template <class Cache>
  void before_write(const Cache& cache, const AppendPlan& plan, int layer, const ImportanceScores& importance) {
    // The window slots directly: reserve() already counts these tokens as quantized, write() has not stored them.
    const CacheLayerView v = cache.view(layer);
    const int sinks = config_.sink_tokens, heads = config_.kv_heads;
    float key[head_dim], value[head_dim];
    for (const AppendEntry& e : plan.entries) {
      const std::int64_t limit = capacity(e.new_quantized);
      for (std::int64_t t = sinks + e.old_quantized; t < std::min(sinks + e.new_quantized, e.old_length); ++t)
        for (int head = 0; head < heads; ++head) {
          const std::int64_t offset = window_row_offset(v, e.sequence, window_slot(v, t), head);
          for (int c = 0; c < head_dim; ++c) {
            key[c] = to_float(v.window_keys[offset + c]);
            value[c] = to_float(v.window_values[offset + c]);
          }
          offer(layer, e.sequence, head, t, key, value, importance.row(layer, e.sequence, head), limit);
        }
    }
  }

  // The promoted copy of `token`, or null.
  [[nodiscard]] const Copy* find(int layer, int sequence, int head, std::int64_t token) const {
    for (const Copy& c : copies(layer, sequence, head))
      if (c.token == token) return &c;
    return nullptr;
  }
  [[nodiscard]] const std::vector<Copy>& copies(int layer, int sequence, int head) const {
    return copies_[index(layer, sequence, head)];
  }

  // A copy as the cache would store the token: original domain, keys as stored (rotated when post-RoPE).
  void read(const Copy& copy, float* key, float* value) const {
    const std::uint8_t* b = copy.bytes.data();
    Key::dequantize({b, b + Key::code_bytes_per_block}, 0, 0, head_dim, key, params_.key);
    b += value_offset;
    Value::dequantize({b, b + Value::code_bytes_per_block}, 0, 0, head_dim, value, params_.value);
    if constexpr (Key::rotated) Key::unrotate(key, params_.key);
    if constexpr (Value::rotated) Value::unrotate(value, params_.value);
  }

  // Bytes the copies take now (records and token indices), all layers and sequences.
  [[nodiscard]] std::int64_t promoted_bytes() const {
    std::int64_t count = 0;
    for (const auto& list : copies_) count += static_cast<std::int64_t>(list.size());
    return count * copy_bytes;
  }

  void reset(int sequence) {
    for_each_list(sequence, [](std::vector<Copy>& list) { list.clear(); });
  }
  // After the cache's truncate: copies of tokens no longer in pages (gone, or back in the fp16 window) are dropped.
  void truncate(int sequence, std::int64_t quantized) {
    const std::int64_t end = config_.sink_tokens + quantized;
    for_each_list(sequence, [&](std::vector<Copy>& list) {
      std::erase_if(list, [&](const Copy& c) { return c.token >= end; });
    });
  }
  // After the cache's retain(sequence, keep) (which left `quantized` tokens in pages): copies follow their tokens to
  // their new positions (post-RoPE keys re-rotated and re-quantized in the high tier, as the cache does), copies of
  // evicted tokens and of tokens now in the fp16 sinks or window are dropped, and the newest over capacity go.
  void retain(int sequence, const TokenSelection& keep, std::int64_t quantized) {
    keep.validate(config_.layers, config_.kv_heads, std::numeric_limits<std::int64_t>::max());
    const std::int64_t begin = config_.sink_tokens, end = config_.sink_tokens + quantized;
    for (int layer = 0; layer < config_.layers; ++layer)
      for (int head = 0; head < config_.kv_heads; ++head) {
        std::vector<Copy>& list = copies_[index(layer, sequence, head)];
        const auto row = keep.row(layer, head);
        std::vector<Copy> kept;
        for (Copy& c : list) {
          const auto at = std::lower_bound(row.begin(), row.end(), c.token);
          if (at == row.end() || *at != c.token) continue;
          const std::int64_t position = at - row.begin();
          if (position < begin || position >= end) continue;
          if (config_.key_position == KeyPosition::post_rope && position != c.token) {
            float key[head_dim], value[head_dim];
            read(c, key, value);
            apply_inverse_rope<head_dim>(key, c.token, rope_, config_.rope.style);
            apply_rope<head_dim>(key, position, rope_, config_.rope.style);
            store(c, key, value);
          }
          c.token = position;
          kept.push_back(c);
        }
        std::sort(kept.begin(), kept.end(), [](const Copy& a, const Copy& b) { return a.token < b.token; });
        if (static_cast<std::int64_t>(kept.size()) > capacity(quantized)) kept.resize(static_cast<std::size_t>(capacity(quantized)));
        list = std::move(kept);
      }
  }

 private:
  void offer(int layer, int sequence, int head, std::int64_t token, const float* key, const float* value,
             std::span<const float> score, std::int64_t limit) {
    require(std::isfinite(score[static_cast<std::size_t>(token)]), ErrorCode::invalid_argument,
            "promoted tokens: importance of token " + std::to_string(token) + " (layer " + std::to_string(layer) +
                ", KV head " + std::to_string(head) + ") is not finite");
    std::vector<Copy>& list = copies_[index(layer, sequence, head)];
    auto weakest = std::min_element(list.begin(), list.end(), [&](const Copy& a, const Copy& b) {
      return score[static_cast<std::size_t>(a.token)] < score[static_cast<std::size_t>(b.token)];
    });
    Copy copy;
    copy.token = token;
    if (static_cast<std::int64_t>(list.size()) < limit) {
      store(copy, key, value);
      list.push_back(copy);
    } else if (weakest != list.end() && score[static_cast<std::size_t>(token)] > score[static_cast<std::size_t>(weakest->token)]) {
      store(copy, key, value);
      *weakest = copy;  // demoted: the low tier's copy is what attention reads for it from now on
    }
  }

  void store(Copy& copy, const float* key, const float* value) const {
    float k[head_dim], v[head_dim];
    std::copy(key, key + head_dim, k);
    std::copy(value, value + head_dim, v);
    std::uint8_t* b = copy.bytes.data();
    quantize_block<Key>(k, 1, {b, b + Key::code_bytes_per_block}, params_.key);
    b += value_offset;
    quantize_block<Value>(v, 1, {b, b + Value::code_bytes_per_block}, params_.value);
  }

  template <class F>
  void for_each_list(int sequence, F&& f) {
    require(sequence >= 0 && sequence < config_.max_sequences, ErrorCode::invalid_argument,
            "promoted tokens: sequence " + std::to_string(sequence) + " is outside the cache");
    for (int layer = 0; layer < config_.layers; ++layer)
      for (int head = 0; head < config_.kv_heads; ++head) f(copies_[index(layer, sequence, head)]);
  }
  [[nodiscard]] std::size_t index(int layer, int sequence, int head) const {
    return (static_cast<std::size_t>(layer) * config_.max_sequences + static_cast<std::size_t>(sequence)) * config_.kv_heads +
           static_cast<std::size_t>(head);
  }

  CacheConfig config_;
  double fraction_;
  TierParams<HighTier> params_;
  RopeTable<head_dim> rope_;
  std::vector<std::vector<Copy>> copies_;  // [layer][sequence][head]: at most capacity() copies each
};

}  // namespace kvq
