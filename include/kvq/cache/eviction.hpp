// Eviction policies: which tokens of a sequence a cache keeps under a fixed token budget. A policy is a small
// value type satisfying EvictionPolicy: its budget, a validate() that names what is wrong, and select(), which
// turns the sequence's importance (ImportanceScores, accumulated by decode attention; kvq/attention/importance.hpp)
// into a TokenSelection that the cache and the importance rows both apply (evict()). Policies choose WHICH tokens;
// the cache's quantization policy still decides HOW each kept token is stored, so every eviction policy composes
// with every KV preset.
//
//   StreamingLLM (Xiao et al., 2023)  the first `sink_tokens` tokens (attention sinks) and the most recent ones
//   HeavyHitters (H2O, Zhang et al., 2023)  sinks, a recent window, and the tokens of highest accumulated
//                                      attention, per layer and KV head
//   SnapKV (Li et al., 2024)           once, at the end of a prompt: the last `window_tokens` prompt tokens and the
//                                      earlier tokens those queries attended to most (importance accumulated over
//                                      that window only, max-pooled over neighbouring tokens), per layer and KV head
//
// select(context, keep) returns `keep` tokens; `keep` is the budget minus the tokens about to be appended (a cache
// that must never hold more than its budget evicts before it appends), so the recent window counts the incoming
// tokens: a policy keeps recent_tokens - (budget - keep) of the old recent tokens.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <numeric>
#include <optional>
#include <span>
#include <string_view>
#include <string>
#include <vector>

#include "kvq/cache/importance_scores.hpp"
#include "kvq/cache/token_selection.hpp"
#include "kvq/core/error.hpp"

namespace kvq {

// What a policy sees of the sequence it selects from.
struct EvictionContext {
  int layers = 0, kv_heads = 0, sequence = 0;
  std::int64_t length = 0;                    // tokens the sequence holds now
  const ImportanceScores* importance = nullptr;  // null for policies that need none
};

template <class P>
concept EvictionPolicy = requires(const P& policy, const EvictionContext& context, std::int64_t keep) {
  { P::name } -> std::convertible_to<std::string_view>;
  { P::needs_importance } -> std::convertible_to<bool>;
  { policy.budget() } -> std::convertible_to<std::int64_t>;
  policy.validate();
  { policy.select(context, keep) } -> std::same_as<TokenSelection>;
};

namespace detail {

inline void check_keep(std::string_view policy, const EvictionContext& c, std::int64_t keep, std::int64_t budget,
                       std::int64_t floor) {
  require(keep >= floor && keep <= budget && keep < c.length, ErrorCode::invalid_argument,
          std::string(policy) + ": cannot keep " + std::to_string(keep) + " of " + std::to_string(c.length) +
              " tokens with a budget of " + std::to_string(budget) + " (keep must be in [" + std::to_string(floor) +
              ", budget] and below the length)");
}

inline const ImportanceScores& require_importance(std::string_view policy, const EvictionContext& c) {
  require(c.importance != nullptr, ErrorCode::invalid_argument,
          std::string(policy) + " needs importance scores (accumulated by decode attention) and got none");
  require(c.importance->layers() == c.layers && c.importance->kv_heads() == c.kv_heads &&
              c.importance->capacity() >= c.length,
          ErrorCode::invalid_argument, std::string(policy) + ": the importance scores do not match the cache's shape");
  return *c.importance;
}

// Fills `row` (kept.size() == sinks + heavy + recent) with [0, sinks), the `heavy` candidates of [sinks,
// length - recent) with the highest score (ties: the older token), and [length - recent, length), ascending.
inline void keep_heavy(std::span<std::int64_t> row, std::span<const float> score, std::int64_t length,
                       std::int64_t sinks, std::int64_t heavy, std::int64_t recent) {
  std::vector<std::int64_t> candidates(static_cast<std::size_t>(length - recent - sinks));
  std::iota(candidates.begin(), candidates.end(), sinks);
  std::partial_sort(candidates.begin(), candidates.begin() + heavy, candidates.end(), [&](std::int64_t a, std::int64_t b) {
    const float x = score[static_cast<std::size_t>(a)], y = score[static_cast<std::size_t>(b)];
    return x != y ? x > y : a < b;
  });
  std::sort(candidates.begin(), candidates.begin() + heavy);
  std::size_t i = 0;
  for (std::int64_t t = 0; t < sinks; ++t) row[i++] = t;
  for (std::int64_t k = 0; k < heavy; ++k) row[i++] = candidates[static_cast<std::size_t>(k)];
  for (std::int64_t t = length - recent; t < length; ++t) row[i++] = t;
}

inline void require_finite_scores(std::string_view policy, std::span<const float> score, std::int64_t length,
                                  int layer, int head) {
  for (std::int64_t t = 0; t < length; ++t)
    require(std::isfinite(score[static_cast<std::size_t>(t)]), ErrorCode::invalid_argument,
            std::string(policy) + ": importance of token " + std::to_string(t) + " (layer " + std::to_string(layer) +
                ", KV head " + std::to_string(head) + ") is not finite; nothing was evicted");
}

}  // namespace detail

struct StreamingLLM {
  static constexpr std::string_view name = "streaming";
  static constexpr bool needs_importance = false;
  std::int64_t sink_tokens = 4;
  std::int64_t recent_tokens = 0;

  [[nodiscard]] std::int64_t budget() const { return sink_tokens + recent_tokens; }
  void validate() const {
    require(sink_tokens >= 0 && recent_tokens >= 1, ErrorCode::invalid_argument,
            "streaming: needs sink_tokens >= 0 and recent_tokens >= 1, got " + std::to_string(sink_tokens) + " and " +
                std::to_string(recent_tokens));
  }
  [[nodiscard]] TokenSelection select(const EvictionContext& c, std::int64_t keep) const {
    validate();
    detail::check_keep(name, c, keep, budget(), sink_tokens);
    std::vector<std::int64_t> tokens;
    for (std::int64_t t = 0; t < sink_tokens; ++t) tokens.push_back(t);
    for (std::int64_t t = c.length - (keep - sink_tokens); t < c.length; ++t) tokens.push_back(t);
    return TokenSelection::everywhere(c.layers, c.kv_heads, tokens);
  }
};

struct HeavyHitters {
  static constexpr std::string_view name = "h2o";
  static constexpr bool needs_importance = true;
  std::int64_t budget_tokens = 0;
  std::int64_t recent_tokens = 0;
  std::int64_t sink_tokens = 0;

  [[nodiscard]] std::int64_t budget() const { return budget_tokens; }
  void validate() const {
    require(sink_tokens >= 0 && recent_tokens >= 0, ErrorCode::invalid_argument,
            "h2o: sink_tokens and recent_tokens must be >= 0");
    require(budget_tokens >= sink_tokens + recent_tokens && budget_tokens >= 1, ErrorCode::invalid_argument,
            "h2o: the budget of " + std::to_string(budget_tokens) + " tokens is below sinks + recent window (" +
                std::to_string(sink_tokens) + " + " + std::to_string(recent_tokens) + ")");
  }
  [[nodiscard]] TokenSelection select(const EvictionContext& c, std::int64_t keep) const {
    validate();
    const ImportanceScores& importance = detail::require_importance(name, c);
    detail::check_keep(name, c, keep, budget_tokens, sink_tokens);
    const std::int64_t recent = std::max<std::int64_t>(0, recent_tokens - (budget_tokens - keep));
    const std::int64_t heavy = keep - sink_tokens - recent;
    TokenSelection selection(c.layers, c.kv_heads, keep);
    for (int layer = 0; layer < c.layers; ++layer)
      for (int head = 0; head < c.kv_heads; ++head) {
        const auto score = importance.row(layer, c.sequence, head);
        detail::require_finite_scores(name, score, c.length, layer, head);
        detail::keep_heavy(selection.row(layer, head), score, c.length, sink_tokens, heavy, recent);
      }
    return selection;
  }
};

struct SnapKV {
  static constexpr std::string_view name = "snapkv";
  static constexpr bool needs_importance = true;
  std::int64_t budget_tokens = 0;
  std::int64_t window_tokens = 32;  // the observation window: the prompt's last queries, always kept
  int pool_kernel = 7;              // max-pooling width over neighbouring tokens (odd; 1 = none)

  [[nodiscard]] std::int64_t budget() const { return budget_tokens; }
  void validate() const {
    require(window_tokens >= 1 && budget_tokens >= window_tokens, ErrorCode::invalid_argument,
            "snapkv: the budget of " + std::to_string(budget_tokens) + " tokens is below its observation window of " +
                std::to_string(window_tokens));
    require(pool_kernel >= 1 && pool_kernel % 2 == 1, ErrorCode::invalid_argument,
            "snapkv: pool_kernel must be odd and >= 1, got " + std::to_string(pool_kernel));
  }
  // The importance rows must hold only the observation window's attention (ImportanceScores::clear() before it).
  [[nodiscard]] TokenSelection select(const EvictionContext& c, std::int64_t keep) const {
    validate();
    const ImportanceScores& importance = detail::require_importance(name, c);
    detail::check_keep(name, c, keep, budget_tokens, window_tokens);
    const std::int64_t prefix = c.length - window_tokens;  // candidates: the prompt before the window
    std::vector<float> pooled(static_cast<std::size_t>(c.length), 0.0f);
    TokenSelection selection(c.layers, c.kv_heads, keep);
    for (int layer = 0; layer < c.layers; ++layer)
      for (int head = 0; head < c.kv_heads; ++head) {
        const auto score = importance.row(layer, c.sequence, head);
        detail::require_finite_scores(name, score, c.length, layer, head);
        for (std::int64_t t = 0; t < prefix; ++t) {
          float top = score[static_cast<std::size_t>(t)];
          for (std::int64_t u = std::max<std::int64_t>(0, t - pool_kernel / 2);
               u <= std::min<std::int64_t>(prefix - 1, t + pool_kernel / 2); ++u)
            top = std::max(top, score[static_cast<std::size_t>(u)]);
          pooled[static_cast<std::size_t>(t)] = top;
        }
        detail::keep_heavy(selection.row(layer, head), pooled, c.length, 0, keep - window_tokens, window_tokens);
      }
    return selection;
  }
};

// Evicts `sequence` of `cache` (HostPagedKVCache) down to `keep` tokens chosen by `policy`, compacting `importance`
// (when given) with the same selection. A sequence of `keep` tokens or fewer is left alone. Returns the selection
// applied (for anything else indexed by token, e.g. PromotedTokens::retain), or nothing if no token was dropped.
// Any error (policy, scores, selection) is thrown before the cache or the scores change.
template <class Cache, EvictionPolicy Policy>
std::optional<TokenSelection> evict(Cache& cache, ImportanceScores* importance, int sequence, const Policy& policy,
                                    std::int64_t keep) {
  const std::int64_t length = cache.sequences().sequence(sequence).length;
  policy.validate();
  if (length <= keep) return std::nullopt;
  const EvictionContext context{cache.config().layers, cache.config().kv_heads, sequence, length, importance};
  const TokenSelection selection = policy.select(context, keep);
  selection.validate(context.layers, context.kv_heads, length);
  if (importance != nullptr)
    require(importance->capacity() >= length && importance->layers() == context.layers &&
                importance->kv_heads() == context.kv_heads,
            ErrorCode::invalid_argument, "evict: the importance scores do not match the cache's shape");
  cache.retain(sequence, selection);
  if (importance != nullptr) importance->retain(sequence, selection, length);
  return selection;
}

}  // namespace kvq
