// The importance-driven cache schemes of the CPU backend, each one flag value.
//
// `--evict`: which tokens the CPU backend's cache keeps under a token budget (kvq/cache/eviction.hpp), as one
// flag value: "streaming:BUDGET[:SINKS]", "h2o:BUDGET[:RECENT]" or "snapkv:BUDGET[:WINDOW[:POOL]]". The policy
// decides which tokens stay; the --kv preset still decides how each is stored, so every scheme composes with
// every preset. Semantics (docs/importance.md): streaming and h2o never let the cache hold more than BUDGET
// tokens (they evict before appending); snapkv compresses the prompt once, to BUDGET tokens, when the prompt
// ends (Backend::set_prompt_length), and lets the generated tokens accumulate after it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "kvq/cache/eviction.hpp"

namespace kvq::llama {

struct EvictionScheme {
  enum class Kind { none, streaming, h2o, snapkv };
  Kind kind = Kind::none;
  StreamingLLM streaming{};
  HeavyHitters h2o{};
  SnapKV snapkv{};

  [[nodiscard]] bool enabled() const { return kind != Kind::none; }
  [[nodiscard]] bool needs_importance() const { return kind == Kind::h2o || kind == Kind::snapkv; }
  [[nodiscard]] std::int64_t budget() const;
  [[nodiscard]] std::string describe() const;  // "h2o: 256 tokens (128 recent, 128 heavy hitters)"
  // Tokens the cache holds after a sequence of `tokens` tokens whose first `prompt` are the prompt.
  [[nodiscard]] std::int64_t tokens_held(std::int64_t tokens, std::int64_t prompt) const;
};

// "" -> no eviction. kvq::Error(invalid_argument) naming the problem for anything else that does not parse or
// whose policy does not validate (e.g. a budget below the sinks + recent window).
EvictionScheme parse_eviction_scheme(std::string_view spec);

// `--promote FRACTION[:WINDOW]`: per-token precision tiers (kvq/cache/promoted_tokens.hpp): besides its --kv
// storage, up to FRACTION of each sequence's quantized tokens per layer and KV head keep an int8 copy, chosen by
// accumulated attention as they leave an fp16 window of at least WINDOW tokens (default 32), the observation period.
struct PromotionScheme {
  double fraction = 0;
  int window_tokens = 32;

  [[nodiscard]] bool enabled() const { return fraction > 0; }
  [[nodiscard]] std::string describe() const;  // "promote 10% to int8 (window 32)"
};

// "" -> none; kvq::Error(invalid_argument) naming the problem otherwise.
PromotionScheme parse_promotion_scheme(std::string_view spec);

}  // namespace kvq::llama
